#!/usr/bin/env bash
# CI check for the TypeScript client: the committed code in
# clients/typescript/src/gen/ is exactly what buf and the pinned
# protoc-gen-es generate now from proto/ (clients/typescript/buf.gen.yaml).
# Regenerates into a temporary directory and diffs; exits 1 with the diff on
# any difference. Fix with `npm run gen` in clients/typescript and commit
# src/gen/. Needs `npm ci` in clients/typescript (local plugins, offline).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/../clients/typescript"

if [ ! -x node_modules/.bin/buf ] || [ ! -x node_modules/.bin/protoc-gen-es ]; then
  echo "${0##*/}: buf or protoc-gen-es missing: run 'npm ci' in clients/typescript first" >&2
  exit 2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# npx puts node_modules/.bin on PATH, where buf.gen.yaml's local plugin is.
npx --no-install buf generate -o "$tmp"
mkdir -p "$tmp/src/gen"

if [ ! -d src/gen ]; then
  echo "check-gen-ts: clients/typescript/src/gen/ is generated but missing from the repo" >&2
  status=1
elif diff -ru src/gen "$tmp/src/gen"; then
  status=0
else
  status=1
fi

if [ "$status" -ne 0 ]; then
  echo >&2
  echo "check-gen-ts: generated TypeScript is out of date (diff above: committed -> regenerated)." >&2
  echo "check-gen-ts: run 'npm run gen' in clients/typescript and commit clients/typescript/src/gen/." >&2
  echo "check-gen-ts: generator versions: buf $(npx --no-install buf --version)," \
    "protoc-gen-es $(node -p 'require("@bufbuild/protoc-gen-es/package.json").version')" >&2
  exit 1
fi
echo "check-gen-ts: generated code up to date (clients/typescript/src/gen)"
