"""Generated code for the router.v1 contract, the client's own copy.

Everything else in this package is written by `bash scripts/gen-proto.sh`
(via scripts/client-proto.sh, from the same proto as the server's router.v1);
never edit it by hand. CI regenerates it and fails on any difference
(`bash scripts/check-gen.sh`).
"""
