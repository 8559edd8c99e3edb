"""Building the providers and exporters from the ``OTEL_*`` variables.

Nothing is exported unless an exporter is configured (see ``_config``);
then the observer is ``NullObserver`` and the server span is a no-op, so an
unconfigured sidecar pays nothing for telemetry. Spans leave through a
``BatchSpanProcessor`` (a background thread), metrics through a periodic
reader: never on the request path.

The providers are private to this ``Telemetry`` (not installed as the
global ones unless ``install_global`` is set), so several can coexist in
one process, as the tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from opentelemetry import metrics as metrics_api
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from router.runtime.observer import NullObserver, Observer

from ._config import GRPC, ExporterPlan, TelemetryPlan, read_plan
from ._metrics import Instruments, LiveStats, RefusedCounts
from ._observer import OtelObserver
from ._server import (
    NULL_SERVER_SPAN_CONTEXT,
    W3C_PROPAGATOR,
    ServerSpan,
    TracingInterceptor,
    outbound_propagator,
    start_server_span,
)

log = logging.getLogger(__name__)

# Spans per OTLP export (the SDK defaults to 512; see setup_telemetry).
DEFAULT_EXPORT_BATCH = 64

INSTRUMENTATION_SCOPE = "router"


def _sampler(plan: TelemetryPlan) -> sampling.Sampler:
    name, arg = plan.sampler, plan.sampler_arg
    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(arg)
    if name == "parentbased_always_off":
        return sampling.ParentBased(sampling.ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return sampling.ParentBasedTraceIdRatio(arg)
    return sampling.ParentBased(sampling.ALWAYS_ON)


def _otlp_kwargs(p: ExporterPlan) -> dict[str, Any]:
    kw: dict[str, Any] = {"endpoint": p.endpoint}
    if p.headers:
        kw["headers"] = dict(p.headers)
    if p.timeout_s is not None:
        kw["timeout"] = p.timeout_s
    return kw


def _span_exporter(p: ExporterPlan) -> SpanExporter:
    if p.kind == "console":
        return ConsoleSpanExporter()
    kw = _otlp_kwargs(p)
    if p.protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
        if p.insecure is not None:
            kw["insecure"] = p.insecure
        return GrpcSpanExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
    return HttpSpanExporter(**kw)


def _metric_exporter(p: ExporterPlan) -> MetricExporter:
    if p.kind == "console":
        return ConsoleMetricExporter()
    kw = _otlp_kwargs(p)
    if p.protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
        if p.insecure is not None:
            kw["insecure"] = p.insecure
        return GrpcMetricExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
    return HttpMetricExporter(**kw)


def _resource(settings: Any, plan: TelemetryPlan) -> Resource:
    attrs: dict[str, Any] = {SERVICE_NAME: getattr(settings, "service_name", None) or "skill-router"}
    version = getattr(settings, "service_version", None)
    if version:
        attrs[SERVICE_VERSION] = version
    attrs.update(plan.resource_attributes)
    if plan.service_name:
        attrs[SERVICE_NAME] = plan.service_name  # OTEL_SERVICE_NAME wins, per the specification
    return Resource.create(attrs)


class Telemetry:
    """The telemetry of one sidecar: the observer for the pipeline, the
    SERVER span for the service, and the flush at shutdown."""

    def __init__(self, plan: TelemetryPlan, observer: Observer, tracer: trace.Tracer | None = None,
                 tracer_provider: TracerProvider | None = None,
                 meter_provider: MeterProvider | None = None,
                 instruments: Instruments | None = None,
                 propagator: TextMapPropagator = W3C_PROPAGATOR,
                 exporters: Iterable[Any] = ()) -> None:
        self.plan = plan
        self.observer = observer
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.propagator = propagator
        self._instruments = instruments
        self._tracer = tracer
        self._closed = False
        self.gave_up = False  # aclose() ran out of time
        self._exporters = tuple(exporters)

    def __repr__(self) -> str:
        traces = self.plan.traces.kind + "/" + self.plan.traces.protocol if self.plan.traces else "off"
        metrics = self.plan.metrics.kind + "/" + self.plan.metrics.protocol if self.plan.metrics else "off"
        return f"<Telemetry traces={traces} metrics={metrics}{' closed' if self._closed else ''}>"

    @property
    def enabled(self) -> bool:
        """Whether anything is exported (traces, metrics or both)."""
        return self._tracer is not None

    def server_span(self, method: str, metadata: Iterable[Any] | None,
                    peer: str | None = None) -> contextlib.AbstractContextManager[ServerSpan]:
        """The SERVER span of one RPC, continuing the caller's trace context
        from ``metadata``; current for the ``with`` block. ``method`` is the
        full gRPC method (``/router.v1.RouterService/Execute``) or a bare name."""
        if self._tracer is None:
            return NULL_SERVER_SPAN_CONTEXT
        return start_server_span(self._tracer, self.propagator, method, metadata, peer)

    def server_interceptor(self) -> TracingInterceptor:
        """A grpc.aio interceptor doing ``server_span`` for every RPC (use
        this or ``server_span``, not both)."""
        return TracingInterceptor(self.server_span, enabled=self.enabled)

    def set_live_stats(self, live_stats: LiveStats | None) -> None:
        """The source of the per-skill gauges: ``() -> iterable of (skill,
        in_flight, utilization, queue_depth)``, called at each metric export."""
        if self._instruments is not None:
            self._instruments.set_live_stats(live_stats)

    def set_refused(self, refused: RefusedCounts | None) -> None:
        """The source of ``router.rpc.refused``: ``() -> {reason: count}``,
        called at each metric export."""
        if self._instruments is not None:
            self._instruments.set_refused(refused)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Blocking: export what is pending now."""
        ok = True
        if self.tracer_provider is not None:
            ok = self.tracer_provider.force_flush(int(timeout_s * 1000)) and ok
        if self.meter_provider is not None:
            ok = self.meter_provider.force_flush(int(timeout_s * 1000)) and ok
        return ok

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Blocking: flush and stop the exporters. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=timeout_s * 1000)

    async def aflush(self, timeout_s: float = 10.0) -> bool:
        return await asyncio.to_thread(self.force_flush, timeout_s)

    async def aclose(self, timeout_s: float = 10.0) -> bool:
        """``shutdown`` off the event loop, given at most ``timeout_s``: an
        exporter whose collector does not answer retries for longer than a
        container's grace period. Past it, give up (what is pending is
        dropped), say so once, and return False. The shutdown goes on in a
        daemon thread, which never holds the process's exit."""
        if self._closed or (self.tracer_provider is None and self.meter_provider is None):
            self._closed = True
            return True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def run() -> None:
            outcome: BaseException | None = None
            try:
                self.shutdown(timeout_s)
            except BaseException as exc:  # reported on the loop
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(settle, outcome)

        threading.Thread(target=run, name="telemetry-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            self.gave_up = True
            # Closing the exporters cancels the export in flight; left alone it
            # would hold the process's exit (gRPC waits for its calls) until
            # OTEL_EXPORTER_OTLP_TIMEOUT.
            # The SDK would then log each cancelled export and the second
            # shutdown; this line is the one that says what happened.
            logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
            for exporter in self._exporters:
                with contextlib.suppress(Exception):
                    exporter.shutdown()
            log.warning("telemetry: the exporters did not flush within %.1fs (what the shutdown grace left "
                        "them); giving up, pending spans and metrics are dropped", timeout_s)
            return False
        return True


def setup_telemetry(settings: Any = None, env: Mapping[str, str] = os.environ, *,
                    live_stats: LiveStats | None = None, redact: Callable[[str], str] | None = None,
                    install_global: bool = False) -> Telemetry:
    """Build the telemetry from ``settings`` (the config's ``telemetry``
    section, ``router.config.TelemetrySettings``, or any object with its
    attributes; None: its defaults) and the ``OTEL_*`` variables in ``env``.
    ``install_global`` also makes these providers the process-wide ones
    (for other instrumentations).
    ``redact`` (the sidecar's secrets) is applied to every error text on a
    span, before the shape-based ``scrub``.

    Raises ``TelemetryConfigError`` naming the variable when one is unusable.
    """
    settings = settings if settings is not None else SimpleNamespace()  # every attribute's default below
    plan = read_plan(env)
    if not plan.exports_anything:
        return Telemetry(plan, NullObserver())

    resource = _resource(settings, plan)
    exporters: list[Any] = []
    tracer_provider: TracerProvider | None = None
    if plan.traces is not None:
        tracer_provider = TracerProvider(sampler=_sampler(plan), resource=resource)
        # Encoding an export batch holds the GIL; the SDK's default of 512
        # spans stalls the event loop for tens of ms (bench/tracing_overhead:
        # Route p99 15 ms → 4 ms with 32). OTEL_BSP_MAX_EXPORT_BATCH_SIZE wins.
        batch = None if env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") else DEFAULT_EXPORT_BATCH
        span_exporter = _span_exporter(plan.traces)
        exporters.append(span_exporter)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter, max_export_batch_size=batch))
        tracer: trace.Tracer = tracer_provider.get_tracer(INSTRUMENTATION_SCOPE)
    else:
        # Metrics only: no spans, but the caller's trace context passes
        # through unchanged to the skill backends (the no-op tracer's spans
        # carry their parent's context), sampled flag included.
        tracer = trace.NoOpTracer()

    meter_provider: MeterProvider | None = None
    if plan.metrics is not None:
        interval = None if plan.metric_interval_s is None else plan.metric_interval_s * 1000
        metric_exporter = _metric_exporter(plan.metrics)
        exporters.append(metric_exporter)
        reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval)
        meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
        meter = meter_provider.get_meter(INSTRUMENTATION_SCOPE)
    else:
        meter = NoOpMeterProvider().get_meter(INSTRUMENTATION_SCOPE)
    instruments = Instruments(meter)
    instruments.set_live_stats(live_stats)

    if install_global:
        if tracer_provider is not None:
            trace.set_tracer_provider(tracer_provider)
        if meter_provider is not None:
            metrics_api.set_meter_provider(meter_provider)

    observer = OtelObserver(
        tracer, instruments, outbound_propagator(getattr(settings, "baggage_allowlist", ())), redact=redact,
        record_query_text=bool(getattr(settings, "record_query_text", False)),
        max_query_text_chars=int(getattr(settings, "max_query_text_chars", 2048)),
    )
    log.info("telemetry: traces=%s metrics=%s",
             plan.traces.endpoint or plan.traces.kind if plan.traces else "off",
             plan.metrics.endpoint or plan.metrics.kind if plan.metrics else "off")
    return Telemetry(plan, observer, tracer, tracer_provider, meter_provider, instruments, exporters=exporters)
