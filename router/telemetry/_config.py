"""Reading the standard ``OTEL_*`` environment variables into a plan of what
to export, without touching OpenTelemetry. Pure, so it is testable with a
plain dict.

Exporting is opt-in: a signal is exported over OTLP when an endpoint is given
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or the signal's own
``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``) or when
``OTEL_{TRACES,METRICS}_EXPORTER`` names ``otlp`` explicitly (then the
default endpoint is used). ``console`` prints to stdout, ``none`` turns the
signal off. ``OTEL_SDK_DISABLED=true`` turns everything off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

GRPC = "grpc"
HTTP = "http/protobuf"
_PROTOCOLS = {"grpc": GRPC, "http/protobuf": HTTP, "http": HTTP}
DEFAULT_ENDPOINT = {GRPC: "http://localhost:4317", HTTP: "http://localhost:4318"}
_SIGNAL_PATH = {"traces": "v1/traces", "metrics": "v1/metrics"}

SAMPLERS = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable has a value this sidecar cannot use."""

    def __init__(self, key: str, value: str, problem: str) -> None:
        super().__init__(f"{key}={value!r}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ExporterPlan:
    """How one signal (traces or metrics) leaves the process."""

    kind: str  # "otlp" | "console"
    protocol: str = GRPC
    endpoint: str = ""  # for HTTP: the full URL including /v1/<signal>
    insecure: bool | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class TelemetryPlan:
    disabled: bool
    traces: ExporterPlan | None
    metrics: ExporterPlan | None
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    metric_interval_s: float | None = None

    @property
    def exports_anything(self) -> bool:
        return not self.disabled and (self.traces is not None or self.metrics is not None)


def _get(env: Mapping[str, str], key: str) -> str:
    return env.get(key, "").strip()


def _truthy(value: str) -> bool:
    return value.strip().lower() == "true"


def parse_key_values(text: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` with percent-encoded values (W3C baggage style), as
    ``OTEL_EXPORTER_OTLP_HEADERS`` and ``OTEL_RESOURCE_ATTRIBUTES`` use."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if "=" not in part:
            continue
        key, value = part.split("=", 1)
        key = unquote(key.strip())
        if key:
            out[key] = unquote(value.strip())
    return out


def _exporter_plan(env: Mapping[str, str], signal: str) -> ExporterPlan | None:
    sig = signal.upper()
    names_key = f"OTEL_{sig}_EXPORTER"
    names = [n.strip().lower() for n in _get(env, names_key).split(",") if n.strip()]
    if "none" in names:
        return None
    endpoint_key = f"OTEL_EXPORTER_OTLP_{sig}_ENDPOINT"
    signal_endpoint = _get(env, endpoint_key)
    base_endpoint = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    wants_otlp = "otlp" in names or (not names and (signal_endpoint or base_endpoint))
    if not wants_otlp:
        if "console" in names:
            return ExporterPlan("console")
        unknown = [n for n in names if n not in ("otlp", "console")]
        if unknown:
            raise TelemetryConfigError(names_key, ",".join(names), "supported exporters are otlp, console and none")
        return None

    proto_key = f"OTEL_EXPORTER_OTLP_{sig}_PROTOCOL"
    raw_proto = _get(env, proto_key) or _get(env, "OTEL_EXPORTER_OTLP_PROTOCOL") or GRPC
    protocol = _PROTOCOLS.get(raw_proto.lower())
    if protocol is None:
        key = proto_key if _get(env, proto_key) else "OTEL_EXPORTER_OTLP_PROTOCOL"
        raise TelemetryConfigError(key, raw_proto, "supported protocols are grpc and http/protobuf")

    if signal_endpoint:
        endpoint = signal_endpoint  # used as is, per the specification
    else:
        endpoint = base_endpoint or DEFAULT_ENDPOINT[protocol]
        if protocol == HTTP:
            endpoint = endpoint.rstrip("/") + "/" + _SIGNAL_PATH[signal]

    insecure_raw = _get(env, f"OTEL_EXPORTER_OTLP_{sig}_INSECURE") or _get(env, "OTEL_EXPORTER_OTLP_INSECURE")
    headers = parse_key_values(_get(env, "OTEL_EXPORTER_OTLP_HEADERS"))
    headers.update(parse_key_values(_get(env, f"OTEL_EXPORTER_OTLP_{sig}_HEADERS")))
    timeout_raw = _get(env, f"OTEL_EXPORTER_OTLP_{sig}_TIMEOUT") or _get(env, "OTEL_EXPORTER_OTLP_TIMEOUT")
    timeout_s = None
    if timeout_raw:
        try:
            timeout_s = float(timeout_raw) / 1000.0  # the variable is in milliseconds
        except ValueError:
            raise TelemetryConfigError("OTEL_EXPORTER_OTLP_TIMEOUT", timeout_raw, "must be a number of milliseconds") from None
    return ExporterPlan(
        "otlp", protocol, endpoint,
        insecure=_truthy(insecure_raw) if insecure_raw else None,
        headers=headers, timeout_s=timeout_s,
    )


def read_plan(env: Mapping[str, str]) -> TelemetryPlan:
    if _truthy(_get(env, "OTEL_SDK_DISABLED")):
        return TelemetryPlan(disabled=True, traces=None, metrics=None)
    sampler = (_get(env, "OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if sampler not in SAMPLERS:
        raise TelemetryConfigError("OTEL_TRACES_SAMPLER", sampler, f"supported samplers are {', '.join(SAMPLERS)}")
    arg_raw = _get(env, "OTEL_TRACES_SAMPLER_ARG")
    sampler_arg = 1.0
    if arg_raw and sampler.endswith("traceidratio"):
        try:
            sampler_arg = float(arg_raw)
        except ValueError:
            raise TelemetryConfigError("OTEL_TRACES_SAMPLER_ARG", arg_raw, "must be a number between 0 and 1") from None
        if not 0.0 <= sampler_arg <= 1.0:
            raise TelemetryConfigError("OTEL_TRACES_SAMPLER_ARG", arg_raw, "must be between 0 and 1")
    interval_raw = _get(env, "OTEL_METRIC_EXPORT_INTERVAL")
    interval = None
    if interval_raw:
        try:
            interval = float(interval_raw) / 1000.0
        except ValueError:
            raise TelemetryConfigError("OTEL_METRIC_EXPORT_INTERVAL", interval_raw, "must be a number of milliseconds") from None
    return TelemetryPlan(
        disabled=False,
        traces=_exporter_plan(env, "traces"),
        metrics=_exporter_plan(env, "metrics"),
        sampler=sampler,
        sampler_arg=sampler_arg,
        service_name=_get(env, "OTEL_SERVICE_NAME") or None,
        resource_attributes=parse_key_values(_get(env, "OTEL_RESOURCE_ATTRIBUTES")),
        metric_interval_s=interval,
    )
