"""The server's front door: who may call, and how many at once.

``AuthInterceptor``  every RPC but ``grpc.health.v1`` must carry
                     ``authorization: Bearer <token>`` matching the server's
                     token (compared in constant time); otherwise
                     UNAUTHENTICATED. The token is never logged or echoed.
``CallLimiter``      at most ``limit`` RouterService calls at once; the next
                     one is refused at once with RESOURCE_EXHAUSTED and a
                     RetryInfo, and counted (``refused``), instead of waiting
                     in gRPC's own queue, whose limits cancel calls silently.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from router.core.errors import Overloaded

from .errors import RateLimitedLog, abort_with

log = logging.getLogger("router.service")

HEALTH_PREFIX = "/grpc.health.v1.Health/"
ROUTER_PREFIX = "/router.v1.RouterService/"


def _ignore(data: bytes) -> None:
    return None


def refusing_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str,
                     trailing: tuple[tuple[str, bytes | str], ...] = ()) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts with ``code``
    without reading the request."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message, trailing_metadata=trailing)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message, trailing_metadata=trailing)
        yield  # pragma: no cover - an async generator that never yields

    ser = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_ignore, response_serializer=ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=_ignore, response_serializer=ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, request_deserializer=_ignore, response_serializer=ser)
    return grpc.stream_stream_rpc_method_handler(stream, request_deserializer=_ignore, response_serializer=ser)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the server token must not be empty")
        self._expected = f"Bearer {token}".encode()
        self.refused = 0
        self._log = RateLimitedLog(log)

    def __repr__(self) -> str:  # never the token
        return f"<AuthInterceptor refused={self.refused}>"

    def allows(self, metadata: Any) -> bool:
        given = b""
        for key, value in metadata or ():
            if key.lower() == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                break
        return hmac.compare_digest(given, self._expected)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(HEALTH_PREFIX) or self.allows(details.invocation_metadata):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return handler
        self.refused += 1
        self._log.warning("refused a call to %s without a valid bearer token", method)
        return refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED,
                                "missing or invalid 'authorization: Bearer <token>' metadata")


class CallLimiter(grpc.aio.ServerInterceptor):
    """At most ``limit`` RouterService calls in the server at once."""

    def __init__(self, limit: int, retry_after_s: float = 0.5) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0
        self._log = RateLimitedLog(log, interval_s=10.0)

    def __repr__(self) -> str:
        return f"<CallLimiter in-flight {self.in_flight}/{self.limit} | refused {self.refused}>"

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or not details.method.startswith(ROUTER_PREFIX):
            return handler
        inner = handler.unary_unary
        limiter = self

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if limiter.in_flight >= limiter.limit:
                limiter.refused += 1
                limiter._log.warning("refused a call: %d RouterService calls in flight (server.max_concurrent_rpcs "
                                     "%d); %d refused so far", limiter.in_flight, limiter.limit, limiter.refused)
                await abort_with(context, Overloaded(
                    f"the sidecar has {limiter.limit} calls in flight (server.max_concurrent_rpcs); retry later",
                    limiter.retry_after_s))
            limiter.in_flight += 1
            try:
                return await inner(request, context)
            finally:
                limiter.in_flight -= 1

        return grpc.unary_unary_rpc_method_handler(
            limited, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
