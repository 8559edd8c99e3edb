#!/usr/bin/env bash
# Copy the generated router.v1 Python code into the standalone client
# (clients/python/skill_router_client/v1/), rewriting its imports so the
# client never imports the top-level name `router` (an app may have its own).
#
#   bash scripts/client-proto.sh SRC_DIR DEST_DIR
#
# Only the Python module paths change: the proto file name and the package
# inside the serialized descriptor stay `router/v1/router.proto` /
# `router.v1`, so the server's copy and the client's copy register the same
# file in protobuf's default pool and share their message classes when both
# are loaded in one process. Called by gen-proto.sh and check-gen.sh.
set -euo pipefail
src=$1
dest=$2
mkdir -p "$dest"
for f in router_pb2.py router_pb2.pyi router_pb2_grpc.py; do
  [ -f "$src/$f" ] || { echo "${0##*/}: $src/$f missing (run buf generate first)" >&2; exit 2; }
  sed -e 's/^from router\.v1 import /from skill_router_client.v1 import /' \
      -e "s/'router\\.v1\\.router_pb2'/'skill_router_client.v1.router_pb2'/" \
      "$src/$f" > "$dest/$f"
  if grep -nE '^(from|import) router(\.|\b)' "$dest/$f" >&2; then
    echo "${0##*/}: $dest/$f still imports the top-level name router" >&2
    exit 1
  fi
done
