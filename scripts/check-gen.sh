#!/usr/bin/env bash
# CI check: the contract is lint-clean and the committed generated code is
# exactly what buf generates now. Regenerates into a temporary directory and
# diffs; exits 1 with the diff on any difference. Fix with
# `bash scripts/gen-proto.sh` and commit the result.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

# buf hides protoc's stderr, so say plainly when the generator is missing.
if ! tools/python -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "${0##*/}: grpcio-tools not importable by tools/python (.venv, \$PYTHON or python3);" \
    "create the venv with the dev extras: pip install -e '.[dev]'" >&2
  exit 2
fi
npx --no-install buf lint

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx --no-install buf generate -o "$tmp"
bash scripts/client-proto.sh "$tmp/router/v1" "$tmp/clients/python/skill_router_client/v1"

# Every directory that holds generated code, now or in the commit (so a stale
# module from a deleted proto is caught as well as a changed one).
dirs=$(
  {
    (cd "$tmp" && find . -type f -exec dirname {} \;)
    find router clients/python/skill_router_client -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \) -exec dirname {} \;
  } | sed 's|^\./||' | sort -u
)

status=0
for dir in $dirs; do
  mkdir -p "$tmp/$dir"
  if [ ! -d "$dir" ]; then
    echo "check-gen: $dir/ is generated but missing from the repo" >&2
    status=1
    continue
  fi
  # Hand-written files allowed next to generated ones: the package marker.
  if ! diff -ru --exclude=__init__.py --exclude=__pycache__ "$dir" "$tmp/$dir"; then
    status=1
  fi
done

if [ "$status" -ne 0 ]; then
  python_bin=${PYTHON:-.venv/bin/python}
  [ -x "$python_bin" ] || python_bin=python3
  echo >&2
  echo "check-gen: generated code is out of date (diff above: committed -> regenerated)." >&2
  echo "check-gen: run 'bash scripts/gen-proto.sh' and commit router/v*/ and clients/python/skill_router_client/v*/." >&2
  echo "check-gen: generator versions: buf $(npx --no-install buf --version)," \
    "$("$python_bin" -c 'import importlib.metadata as m; print("grpcio-tools", m.version("grpcio-tools"), "protobuf", m.version("protobuf"))' 2>/dev/null || echo 'grpcio-tools unknown')" >&2
  exit 1
fi
echo "check-gen: lint clean, generated code up to date (${dirs//$'\n'/ })"
