"""A real OTLP receiver for tests: what a collector would receive.

``OtlpGrpcReceiver`` is a grpc.aio server on 127.0.0.1:<ephemeral>
implementing ``opentelemetry.proto.collector.{trace,metrics}.v1``
``TraceService/Export`` and ``MetricsService/Export``;
``OtlpHttpReceiver`` is the same over OTLP/HTTP (protobuf bodies on
``/v1/traces`` and ``/v1/metrics``), on aiohttp. Both decode what they get
into plain ``ReceivedSpan`` / ``ReceivedMetric`` values.

    async with OtlpGrpcReceiver() as rx:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, ...}
        ...
        spans = await rx.wait_for_spans(5)
        roots = build_tree(spans)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = [
    "OtlpGrpcReceiver",
    "OtlpHttpReceiver",
    "ReceivedMetric",
    "ReceivedSpan",
    "SpanNode",
    "any_value",
    "attributes_of",
    "build_tree",
]


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(v.kvlist_value.values)
    return getattr(v, kind)


def attributes_of(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # "SERVER" | "CLIENT" | "INTERNAL" | ...
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    status_code: str  # "UNSET" | "OK" | "ERROR"
    status_message: str
    resource: dict[str, Any]
    scope: str
    flags: int = 0
    links: tuple[tuple[str, str], ...] = ()  # (trace_id, span_id) of each linked span

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True)
class ReceivedMetric:
    name: str
    unit: str
    kind: str  # "sum" | "gauge" | "histogram" | ...
    points: tuple[tuple[dict[str, Any], Any], ...]  # (attributes, value or histogram count)
    resource: dict[str, Any]


@dataclass
class SpanNode:
    span: ReceivedSpan
    children: list[SpanNode] = field(default_factory=list)

    def child(self, name: str) -> SpanNode:
        found = [c for c in self.children if c.span.name == name]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} children named {name!r} under {self.span.name!r}: "
                                 f"{[c.span.name for c in self.children]}")
        return found[0]

    def render(self, indent: int = 0) -> str:
        lines = ["  " * indent + f"{self.span.name} [{self.span.kind}]"]
        for c in self.children:
            lines.append(c.render(indent + 1))
        return "\n".join(lines)


def build_tree(spans: list[ReceivedSpan]) -> list[SpanNode]:
    """Roots first (spans whose parent was not received), children in start order."""
    nodes = {s.span_id: SpanNode(s) for s in spans}
    roots: list[SpanNode] = []
    for s in sorted(spans, key=lambda s: (s.start_ns, s.name)):
        node = nodes[s.span_id]
        parent = nodes.get(s.parent_span_id) if s.parent_span_id else None
        (parent.children if parent is not None else roots).append(node)
    return roots


def _decode_spans(req: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in req.resource_spans:
        resource = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(ReceivedSpan(
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    name=s.name,
                    kind=trace_pb2.Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"),
                    start_ns=s.start_time_unix_nano,
                    end_ns=s.end_time_unix_nano,
                    attributes=attributes_of(s.attributes),
                    events=tuple((e.name, attributes_of(e.attributes)) for e in s.events),
                    status_code=trace_pb2.Status.StatusCode.Name(s.status.code).removeprefix("STATUS_CODE_"),
                    status_message=s.status.message,
                    resource=resource,
                    scope=ss.scope.name,
                    flags=s.flags,
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                ))
    return out


def _decode_metrics(req: metrics_service_pb2.ExportMetricsServiceRequest) -> list[ReceivedMetric]:
    out = []
    for rm in req.resource_metrics:
        resource = attributes_of(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind)
                points = []
                for p in data.data_points:
                    attrs = attributes_of(p.attributes)
                    if kind == "histogram":
                        value: Any = {"count": p.count, "sum": p.sum}
                    else:
                        value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                    points.append((attrs, value))
                out.append(ReceivedMetric(m.name, m.unit, kind, tuple(points), resource))
    return out


class _Store:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.metrics: list[ReceivedMetric] = []
        self.trace_requests = 0
        self.metric_requests = 0
        self.request_headers: list[dict[str, str]] = []
        self._changed = asyncio.Condition()

    async def add_spans(self, spans: list[ReceivedSpan], headers: dict[str, str]) -> None:
        async with self._changed:
            self.trace_requests += 1
            self.request_headers.append(headers)
            self.spans.extend(spans)
            self._changed.notify_all()

    async def add_metrics(self, metrics: list[ReceivedMetric], headers: dict[str, str]) -> None:
        async with self._changed:
            self.metric_requests += 1
            self.request_headers.append(headers)
            self.metrics.extend(metrics)
            self._changed.notify_all()

    async def wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(ready)
        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; have "
                                 f"{len(self.spans)} spans {[s.name for s in self.spans]}, "
                                 f"{len(self.metrics)} metric batches") from None


class _ReceiverBase:
    def __init__(self) -> None:
        self._store = _Store()

    @property
    def spans(self) -> list[ReceivedSpan]:
        return list(self._store.spans)

    @property
    def metrics(self) -> list[ReceivedMetric]:
        return list(self._store.metrics)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        return list(self._store.request_headers)

    def clear(self) -> None:
        self._store.spans.clear()
        self._store.metrics.clear()

    async def wait_for_spans(self, n: int, timeout: float = 10.0,
                             where: Callable[[ReceivedSpan], bool] | None = None) -> list[ReceivedSpan]:
        """At least ``n`` received spans (matching ``where``), then all of them."""
        def matching() -> list[ReceivedSpan]:
            return [s for s in self._store.spans if where is None or where(s)]
        await self._store.wait(lambda: len(matching()) >= n, timeout, f"{n} spans")
        return matching()

    async def wait_for_metric(self, name: str, timeout: float = 10.0) -> list[ReceivedMetric]:
        def found() -> list[ReceivedMetric]:
            return [m for m in self._store.metrics if m.name == name]
        await self._store.wait(lambda: bool(found()), timeout, f"metric {name}")
        return found()

    def metric_points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        return [p for m in self._store.metrics if m.name == name for p in m.points]

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    async def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: _Store) -> None:
        self._store = store

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        await self._store.add_spans(_decode_spans(request), headers)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: _Store) -> None:
        self._store = store

    async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        await self._store.add_metrics(_decode_metrics(request), headers)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpGrpcReceiver(_ReceiverBase):
    """OTLP/gRPC, insecure, on 127.0.0.1:<ephemeral>."""

    def __init__(self) -> None:
        super().__init__()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OtlpGrpcReceiver:
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self._store), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsServicer(self._store), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None


class OtlpHttpReceiver(_ReceiverBase):
    """OTLP/HTTP with protobuf bodies, on 127.0.0.1:<ephemeral>."""

    def __init__(self) -> None:
        super().__init__()
        self._runner: Any = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OtlpHttpReceiver:
        from aiohttp import web

        async def traces(request: web.Request) -> web.Response:
            req = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
            await self._store.add_spans(_decode_spans(req), dict(request.headers))
            return web.Response(body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                                content_type="application/x-protobuf")

        async def metrics(request: web.Request) -> web.Response:
            req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(await request.read())
            await self._store.add_metrics(_decode_metrics(req), dict(request.headers))
            return web.Response(body=metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString(),
                                content_type="application/x-protobuf")

        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        app.router.add_post("/v1/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

