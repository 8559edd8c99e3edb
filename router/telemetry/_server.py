"""The RPC's SERVER span, continuing the caller's W3C trace context.

Two ways in, use one: ``Telemetry.server_span(method, metadata)`` around a
servicer method, or ``Telemetry.server_interceptor()`` on the grpc.aio
server. Either makes the SERVER span the current span for the handler, so
the query span the pipeline starts becomes its child.

(opentelemetry-instrumentation-grpc has an aio server interceptor, but it
reads the global tracer and propagator, wraps the servicer context in a
proxy (wrapt), records ``context.abort`` as an exception, and adds two
packages for what is ~100 lines here.)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
import grpc.aio
from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from router.core.errors import RouterError

from ._observer import record_exception, scrub

W3C_PROPAGATOR: TextMapPropagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


class AllowlistBaggagePropagator(TextMapPropagator):
    """W3C baggage, injected only for the allowed keys (none by default):
    a caller's baggage may carry user ids or tokens meant for its own
    services, not for every model provider the sidecar calls."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = frozenset(keys)
        self._inner = W3CBaggagePropagator()

    def extract(self, carrier: CarrierT, context: Context | None = None,
                getter: Getter[CarrierT] = default_getter) -> Context:
        return self._inner.extract(carrier, context=context, getter=getter)

    def inject(self, carrier: CarrierT, context: Context | None = None,
               setter: Setter[CarrierT] = default_setter) -> None:
        if not self._keys:
            return
        kept = {k: v for k, v in otel_baggage.get_all(context).items() if k in self._keys}
        if not kept:
            return
        ctx = Context()
        for key, value in kept.items():
            ctx = otel_baggage.set_baggage(key, value, ctx)
        self._inner.inject(carrier, context=ctx, setter=setter)

    @property
    def fields(self) -> set[str]:
        return self._inner.fields


def outbound_propagator(baggage_allowlist: Iterable[str] = ()) -> TextMapPropagator:
    """What the sidecar sends to its backends: the W3C trace context, and
    baggage only for ``baggage_allowlist``."""
    return CompositePropagator([TraceContextTextMapPropagator(), AllowlistBaggagePropagator(baggage_allowlist)])

# The gRPC codes that are the server's fault; the others (INVALID_ARGUMENT,
# NOT_FOUND, RESOURCE_EXHAUSTED, ...) leave a SERVER span's status unset,
# as the RPC semantic conventions say.
_SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
SKIPPED_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def extract_context(metadata: Iterable[Any] | None, propagator: TextMapPropagator = W3C_PROPAGATOR) -> Context:
    """The caller's trace context (``traceparent``, ``tracestate``,
    ``baggage``) from gRPC metadata: ``(key, value)`` pairs, a
    ``grpc.aio.Metadata`` or ``invocation_metadata()``. A fresh root context
    when there is none; binary (``-bin``) entries are ignored."""
    carrier: dict[str, str] = {}
    if metadata:
        fields = propagator.fields
        for item in metadata:
            key, value = item[0], item[1]
            if isinstance(value, str):
                key = key.lower()
                if key in fields:
                    carrier[key] = value
    if not carrier:
        return Context()
    return propagator.extract(carrier, context=Context())


def split_method(method: str) -> tuple[str, str]:
    """``/router.v1.RouterService/Execute`` → (``router.v1.RouterService``, ``Execute``)."""
    path = method.lstrip("/")
    if "/" in path:
        service, _, name = path.rpartition("/")
        return service, name
    return "", path


def _code_of(code: Any) -> grpc.StatusCode | None:
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, str):
        return grpc.StatusCode.__members__.get(code.upper())
    if isinstance(code, int):
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return c
    return None


class ServerSpan:
    """A handle on the RPC's SERVER span for the servicer."""

    __slots__ = ("_code", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self._code: grpc.StatusCode | None = None

    def __repr__(self) -> str:
        return f"<ServerSpan trace={self.trace_id or '-'} code={self._code.name if self._code else '-'}>"

    @property
    def trace_id(self) -> str:
        sc = self.span.get_span_context()
        return format(sc.trace_id, "032x") if sc.is_valid else ""

    def set_code(self, code: grpc.StatusCode | str | int, details: str = "") -> None:
        """The RPC's final status; OK when never set and no exception escapes."""
        c = _code_of(code)
        if c is None:
            return
        self._code = c
        if self.span.is_recording():
            self.span.set_attribute("rpc.grpc.status_code", c.value[0])
            if c in _SERVER_ERRORS:
                self.span.set_attribute("error.type", c.name)
                self.span.set_status(Status(StatusCode.ERROR, scrub(details) or c.name))

    def set_attribute(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

    def _fail(self, exc: BaseException) -> None:
        if self._code is not None:
            return
        if isinstance(exc, grpc.aio.AbortError):
            return  # the code was set by whoever aborted; the interceptor reads it
        if isinstance(exc, asyncio.CancelledError):
            self.set_code(grpc.StatusCode.CANCELLED)
            return
        self.set_code(grpc.StatusCode.UNKNOWN, type(exc).__name__)
        if self.span.is_recording() and not isinstance(exc, RouterError):
            self.span.set_attribute("error.type", type(exc).__name__)
            record_exception(self.span, exc)


class _NullServerSpan(ServerSpan):
    __slots__ = ()

    def set_code(self, code: grpc.StatusCode | str | int, details: str = "") -> None:
        pass

    def set_attribute(self, key: str, value: Any) -> None:
        pass


NULL_SERVER_SPAN = _NullServerSpan(trace.INVALID_SPAN)


class _NullServerSpanContext:
    """``server_span`` when telemetry is off: one shared, stateless object."""

    __slots__ = ()

    def __enter__(self) -> ServerSpan:
        return NULL_SERVER_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


NULL_SERVER_SPAN_CONTEXT = _NullServerSpanContext()


def _peer_attributes(peer: str | None) -> dict[str, Any]:
    # grpc peers look like "ipv4:127.0.0.1:5123", "ipv6:[::1]:5123", "unix:/path".
    if not peer:
        return {}
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        out: dict[str, Any] = {"network.peer.address": host.strip("[]")}
        if port.isdigit():
            out["network.peer.port"] = int(port)
        return out
    return {}


@contextlib.contextmanager
def start_server_span(tracer: Tracer, propagator: TextMapPropagator, method: str,
                      metadata: Iterable[Any] | None, peer: str | None = None) -> Iterator[ServerSpan]:
    parent = extract_context(metadata, propagator)
    service, name = split_method(method)
    attrs: dict[str, Any] = {"rpc.system": "grpc", "rpc.method": name}
    if service:
        attrs["rpc.service"] = service
    attrs.update(_peer_attributes(peer))
    span = tracer.start_span(f"{service}/{name}" if service else name, context=parent,
                             kind=SpanKind.SERVER, attributes=attrs)
    handle = ServerSpan(span)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield handle
    except BaseException as exc:
        handle._fail(exc)
        raise
    finally:
        otel_context.detach(token)
        if handle._code is None:
            handle.set_code(grpc.StatusCode.OK)
        span.end()


ServerSpanFactory = Callable[[str, Any, Any], contextlib.AbstractContextManager[ServerSpan]]


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every async RPC handler in ``server_span``; health checks and
    reflection are left alone. Disabled (telemetry off), it only passes
    through."""

    def __init__(self, server_span: ServerSpanFactory, *, enabled: bool = True,
                 skip_prefixes: tuple[str, ...] = SKIPPED_METHOD_PREFIXES) -> None:
        self._server_span = server_span
        self._enabled = enabled
        self._skip = skip_prefixes
        # method → (the handler grpc gave, our wrapper of it): built once per method.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not self._enabled or handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = handler if method.startswith(self._skip) else self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            fn, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream is not None:
            fn, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        elif handler.stream_unary is not None:
            fn, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        else:
            fn, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        if inspect.isasyncgenfunction(fn):
            behavior = self._wrap_stream(fn, method)
        elif inspect.iscoroutinefunction(fn):
            behavior = self._wrap_unary(fn, method)
        else:
            return handler  # a sync handler runs in grpc's thread pool; not ours to move
        return make(behavior, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _wrap_unary(self, fn: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._server_span(method, context.invocation_metadata(), _peer(context)) as span:
                try:
                    return await fn(request, context)
                finally:
                    _settle(span, context)
        return behavior

    def _wrap_stream(self, fn: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self._server_span(method, context.invocation_metadata(), _peer(context)) as span:
                try:
                    async for item in fn(request, context):
                        yield item
                finally:
                    _settle(span, context)
        return behavior


def _peer(context: grpc.aio.ServicerContext) -> str | None:
    return context.peer()


def _settle(span: ServerSpan, context: grpc.aio.ServicerContext) -> None:
    # The code set by context.abort()/set_code(); None when the handler set none.
    code = context.code()
    if code is not None and span._code is None:
        details = context.details() or ""
        span.set_code(code, details if isinstance(details, str) else "")
