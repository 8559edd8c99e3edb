#!/usr/bin/env bash
# Lint the contract and regenerate its Python code into router/v1/ (the
# server's) and clients/python/skill_router_client/v1/ (the standalone client's).
#
#   npm ci                      # once: installs the pinned buf
#   bash scripts/gen-proto.sh
#
# Needs the repo's .venv (grpcio-tools), or PYTHON pointing at an interpreter
# that has it. Runs offline: local plugins only (buf.gen.yaml).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

# buf hides protoc's stderr, so say plainly when the generator is missing.
if ! tools/python -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "${0##*/}: grpcio-tools not importable by tools/python (.venv, \$PYTHON or python3);" \
    "create the venv with the dev extras: pip install -e '.[dev]'" >&2
  exit 2
fi
npx --no-install buf lint
# Remove what the last run wrote, so a deleted proto leaves no stale module.
# (buf's own `clean` would wipe the output root, which is the repo root.)
find router clients/python/skill_router_client -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \) -delete
npx --no-install buf generate
bash scripts/client-proto.sh router/v1 clients/python/skill_router_client/v1
