"""Python clients for the skill-router sidecar (router.v1.RouterService).

    async with AsyncRouterClient("127.0.0.1:50051") as client:
        resp = await client.execute("Summarise this contract", domain="legal", complexity=8)
        print(resp.text, resp.cost.saved_usd)

    with RouterClient("127.0.0.1:50051", timeout=5) as client:
        print(client.route("2+2?", complexity=1).selections)

Every call takes ``timeout`` (seconds; the gRPC deadline the sidecar bounds
its backend calls by) and ``metadata`` (extra gRPC metadata, for example a
W3C ``traceparent``). ``stats(window=3600)`` reads the stored aggregates
of the last hour. The generated messages are ``skill_router_client.pb``
(``skill_router_client.v1.router_pb2``): this package never imports the
top-level name ``router``. Errors are ``grpc.RpcError``; ``error_details`` reads
the field violation or retry delay the sidecar attaches.

A sidecar with TLS, mTLS and a token (docs/security.md)::

    tls = TlsConfig(ca_file="ca.crt", cert_file="client.crt", key_file="client.key")
    async with AsyncRouterClient("router:50051", tls=tls, token=os.environ["SKILL_ROUTER_TOKEN"]) as client:
        ...
"""

from __future__ import annotations

from ._client import (
    AsyncRouterClient,
    ErrorDetails,
    Priority,
    RouterClient,
    TlsConfig,
    build_context,
    error_details,
    feedback_request,
    stats_request,
)
from .v1 import router_pb2 as pb

__all__ = ["AsyncRouterClient", "ErrorDetails", "Priority", "RouterClient", "TlsConfig", "build_context",
           "error_details", "feedback_request", "pb", "stats_request"]
