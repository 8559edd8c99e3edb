"""OpenTelemetry traces and metrics for the router; the only package that
imports OpenTelemetry.

    telemetry = setup_telemetry(config.telemetry)          # + the OTEL_* variables
    pipeline = Pipeline(..., observer=telemetry.observer)
    server = grpc.aio.server(interceptors=[telemetry.server_interceptor(), ...])
    #   or, in a servicer:  with telemetry.server_span(method, context.invocation_metadata()):
    telemetry.set_live_stats(registry.live_stats)
    ...
    await telemetry.aclose()                                # flush at shutdown

See docs/observability.md for the span tree, attributes and metrics.
"""

from ._config import TelemetryConfigError, TelemetryPlan, read_plan
from ._metrics import LiveStat, LiveStats
from ._observer import OtelObserver, scrub
from ._server import W3C_PROPAGATOR, ServerSpan, TracingInterceptor, extract_context, split_method
from ._setup import Telemetry, setup_telemetry

__all__ = [
    "W3C_PROPAGATOR",
    "LiveStat",
    "LiveStats",
    "OtelObserver",
    "ServerSpan",
    "Telemetry",
    "TelemetryConfigError",
    "TelemetryPlan",
    "TracingInterceptor",
    "extract_context",
    "read_plan",
    "scrub",
    "setup_telemetry",
    "split_method",
]
