"""Generated code for the router.v1 contract (proto/router/v1/).

Everything else in this package is written by `bash scripts/gen-proto.sh`;
never edit it by hand. CI regenerates it and fails on any difference
(`bash scripts/check-gen.sh`).
"""
