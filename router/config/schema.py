"""The config file's shape, validated with pydantic v2.

Every model forbids unknown keys (a typo is an error, not a silent default)
and is strict about types (``top_k: "3"`` or ``enabled: 1`` is an error; an
integer is accepted where a number is expected). Ranges raise messages of the
form ``must be between 0 and 1, got 1.5``.

The sections that are plain settings (``routing``, ``server``, ``admission``,
``batching``, ``telemetry``, ``storage``) are frozen and are handed out as is
by ``RouterConfig``; the ``skills`` entries are turned into the core's
``SkillSpec``/``ImplementationSpec`` by ``router.config.loader``.

A cross-field check that fails raises ``FieldProblem`` with the key path below
the model it is raised in, so the error names the exact key.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from router.core.selection import MAX_TOP_K
from router.core.types import DynamicKRule, FitWeights, RoutingPolicy

__all__ = [
    "ActivationEntry",
    "AdaptiveLimitSettings",
    "AdmissionSettings",
    "ArmEntry",
    "AuthSettings",
    "BatchingSettings",
    "BreakerSettings",
    "CacheSettings",
    "ConfigFile",
    "DomainEntry",
    "DynamicKSettings",
    "EmbeddingsSettings",
    "ExperimentEntry",
    "FeedbackSettings",
    "FieldProblem",
    "ImplementationEntry",
    "KScheduleEntry",
    "RateLimitEntry",
    "RetrySettings",
    "RoutingSettings",
    "ServerSettings",
    "ShadowEntry",
    "SkillBatchingOverride",
    "SkillCacheOverride",
    "SkillEntry",
    "StateSettings",
    "StorageSettings",
    "TelemetrySettings",
    "TlsSettings",
    "UnderstandingSettings",
]


class FieldProblem(ValueError):
    """A cross-field check failed at ``subpath`` below the model raising it."""

    def __init__(self, subpath: tuple[str | int, ...], problem: str) -> None:
        super().__init__(problem)
        self.subpath = subpath
        self.problem = problem


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _range(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> AfterValidator:
    """A bound check with a message a person reads once and understands."""
    if lo is not None and hi is not None and not lo_open and not hi_open:
        want = f"must be between {_num(lo)} and {_num(hi)}"
    else:
        parts = []
        if lo is not None:
            parts.append(f"greater than {_num(lo)}" if lo_open else f"at least {_num(lo)}")
        if hi is not None:
            parts.append(f"less than {_num(hi)}" if hi_open else f"at most {_num(hi)}")
        want = "must be " + " and ".join(parts)

    def check(v: Any) -> Any:
        ok = True
        if lo is not None:
            ok = ok and (v > lo if lo_open else v >= lo)
        if hi is not None:
            ok = ok and (v < hi if hi_open else v <= hi)
        if not ok:
            raise ValueError(f"{want}, got {_num(v)}")
        return v

    return AfterValidator(check)


Unit = Annotated[float, _range(0.0, 1.0)]
Complexity = Annotated[float, _range(0.0, 10.0)]
PositiveInt = Annotated[int, _range(1)]
NonNegativeInt = Annotated[int, _range(0)]
PositiveFloat = Annotated[float, _range(0.0, lo_open=True)]
NonNegativeFloat = Annotated[float, _range(0.0)]
TopK = Annotated[int, _range(1, MAX_TOP_K)]
CostWeight = Annotated[float, _range(0.0, 100.0)]

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_SECRET_PREFIXES = ("SK-", "SK_", "BEARER", "GHP_", "XOX", "AIZA")


def _name(kind: str):
    def check(v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(
                f"{kind} name {v!r} must start with a letter and hold only letters, digits, '_', '.', '-' (at most 64)"
            )
        return v

    return AfterValidator(check)


SkillName = Annotated[str, _name("skill")]
ImplementationName = Annotated[str, _name("implementation")]


def _nonempty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


NonEmptyStr = Annotated[str, AfterValidator(_nonempty)]


def _lower_list(values: list[str]) -> list[str]:
    out = []
    for v in values:
        v = v.strip().lower()
        if not v:
            raise ValueError("entries must not be empty")
        out.append(v)
    return list(dict.fromkeys(out))


LowerList = Annotated[list[str], AfterValidator(_lower_list)]


class Section(BaseModel):
    """Base of every model: strict, frozen, no unknown keys, and an empty
    section (``batching:`` with every key commented out) means the defaults."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _none_is_empty(cls, data: Any) -> Any:
        return {} if data is None else data


# --- routing -------------------------------------------------------------------


class DynamicKSettings(Section):
    """k for a query when no fixed top_k is set: complexity > threshold → high_k, else low_k."""

    threshold: Complexity = 7.0
    high_k: TopK = 5
    low_k: TopK = 3

    @model_validator(mode="after")
    def _grows(self) -> DynamicKSettings:
        if self.high_k < self.low_k:
            raise FieldProblem(("high_k",), f"must be at least low_k ({self.low_k}): k grows for complex queries, got {self.high_k}")
        return self

    def to_rule(self) -> DynamicKRule:
        return DynamicKRule(threshold=self.threshold, high_k=self.high_k, low_k=self.low_k)


class ImplementationWeights(Section):
    """Weights of implementation choice's fit score; the seed's by default."""

    quality_bonus: NonNegativeFloat = 100.0
    cost: NonNegativeFloat = 10.0
    latency: NonNegativeFloat = 5.0
    complexity: NonNegativeFloat = 20.0

    def to_weights(self) -> FitWeights:
        return FitWeights(self.quality_bonus, self.cost, self.latency, self.complexity)


class RoutingSettings(Section):
    moe_enabled: bool = True
    top_k: TopK | None = None
    dynamic_k: DynamicKSettings = DynamicKSettings()
    dynamic_routing_enabled: bool = True
    quality_threshold: Unit = 0.85
    strict_quality_floor: bool = False
    default_complexity: Complexity = 5.0
    default_success_rate: Unit = 1.0
    success_window: PositiveInt = 50
    implementation_weights: ImplementationWeights = ImplementationWeights()
    # Activated when query understanding finds a query out of scope (no
    # skill's examples resemble it enough); None: no skill is activated then.
    fallback_skill: str | None = None
    # "seed": the fit score (exact); "expected_quality": measured quality per
    # cost (see docs/feedback.md).
    implementation_policy: Literal["seed", "expected_quality"] = "seed"
    cost_weight: CostWeight = 0.5  # expected_quality's default cost knob (context.cost_weight overrides)
    exploration: Unit = 0.1  # expected_quality: share of choices made on a Thompson sample

    def to_policy(self) -> RoutingPolicy:
        return RoutingPolicy(
            moe_enabled=self.moe_enabled,
            top_k=self.top_k,
            dynamic_k=self.dynamic_k.to_rule(),
            dynamic_routing_enabled=self.dynamic_routing_enabled,
            quality_threshold=self.quality_threshold,
            strict_quality_floor=self.strict_quality_floor,
            default_complexity=self.default_complexity,
            default_success_rate=self.default_success_rate,
            fit_weights=self.implementation_weights.to_weights(),
            implementation_policy=self.implementation_policy,
            cost_weight=self.cost_weight,
            exploration=self.exploration,
        )


# --- server --------------------------------------------------------------------

_LISTEN_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def _listen(v: str) -> str:
    if v.startswith("unix:") and len(v) > 5:
        return v
    m = _LISTEN_RE.fullmatch(v)
    if not m or int(m.group(1)) > 65535:
        raise ValueError(f"must be HOST:PORT (port 0-65535, 0 picks a free one), [IPv6]:PORT or unix:PATH, got {v!r}")
    return v


def _admin_listen(v: str | None) -> str | None:
    if v is None or v.strip() == "":
        return None  # empty or null: no admin endpoint
    m = _LISTEN_RE.fullmatch(v)
    if not m or int(m.group(1)) > 65535:
        raise ValueError(f"must be HOST:PORT or [IPv6]:PORT (port 0 picks a free one; empty or null turns it off), "
                         f"got {v!r}")
    return v


class TlsSettings(Section):
    """TLS for the server; with ``client_ca_file``, mTLS (clients must present
    a certificate signed by that CA)."""

    cert_file: NonEmptyStr
    key_file: NonEmptyStr
    client_ca_file: NonEmptyStr | None = None


class AuthSettings(Section):
    """``token_env``: the NAME of the environment variable holding the bearer
    token every RPC but health must carry (``authorization: Bearer <token>``)."""

    token_env: str | None = None

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME_RE.fullmatch(v):
            raise ValueError("must be the NAME of an environment variable (upper-case letters, digits and '_', "
                             "e.g. SKILL_ROUTER_TOKEN), not the token itself; the value given is not shown")
        return v


GrpcOptionValue = Annotated[int | str, Field(union_mode="left_to_right")]


def _grpc_option_names(v: dict[str, int | str]) -> dict[str, int | str]:
    for key in v:
        if not key.startswith("grpc."):
            raise FieldProblem((key,), "a gRPC channel argument name starts with 'grpc.' "
                                       "(e.g. grpc.max_receive_message_length)")
    return v


class ServerSettings(Section):
    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:50051"
    # The admin HTTP endpoint (dashboard, /api/dashboard, /metrics).
    admin_listen: Annotated[str | None, AfterValidator(_admin_listen)] = "127.0.0.1:9464"
    grace_period_s: NonNegativeFloat = 10.0
    default_deadline_s: PositiveFloat = 30.0
    # RouterService calls in the server at once; more are refused at once
    # (RESOURCE_EXHAUSTED + RetryInfo), not queued in gRPC core.
    max_concurrent_rpcs: PositiveInt | None = 1000
    tls: TlsSettings | None = None
    auth: AuthSettings = AuthSettings()
    reflection: bool | None = None  # None: on when listening on loopback
    # A plaintext port serving grpc.health.v1 only (for probes without TLS).
    health_listen: Annotated[str, AfterValidator(_listen)] | None = None
    grpc_options: Annotated[dict[str, GrpcOptionValue], AfterValidator(_grpc_option_names)] = {}
    # Processes serving the one port (SO_REUSEPORT), supervised by the
    # parent. Limits never multiply by it: shared through state.redis_url,
    # else split exactly among the workers.
    workers: Annotated[int, _range(1, 64)] = 1


# --- admission -----------------------------------------------------------------


class BreakerSettings(Section):
    failure_threshold: PositiveInt = 5
    failure_rate: Annotated[float, _range(0.0, 1.0, lo_open=True)] = 0.5
    window: PositiveInt = 20
    min_calls: PositiveInt = 10
    cooldown_s: PositiveFloat = 30.0
    half_open_probes: PositiveInt = 1

    @model_validator(mode="after")
    def _fits_window(self) -> BreakerSettings:
        if self.min_calls > self.window:
            raise FieldProblem(("min_calls",), f"must be at most window ({self.window}), got {self.min_calls}")
        return self


class RetrySettings(Section):
    max_attempts: PositiveInt = 3
    base_backoff_ms: NonNegativeFloat = 50.0
    max_backoff_ms: NonNegativeFloat = 2000.0
    jitter: Unit = 0.2
    budget_ratio: Unit = 0.2

    @model_validator(mode="after")
    def _ordered(self) -> RetrySettings:
        if self.max_backoff_ms < self.base_backoff_ms:
            raise FieldProblem(
                ("max_backoff_ms",),
                f"must be at least base_backoff_ms ({_num(self.base_backoff_ms)}), got {_num(self.max_backoff_ms)}",
            )
        return self


class AdaptiveLimitSettings(Section):
    enabled: bool = False
    algorithm: Literal["aimd", "gradient2"] = "aimd"
    min_limit: PositiveInt = 1
    max_limit: PositiveInt = 100
    backoff_ratio: Annotated[float, _range(0.0, 1.0, lo_open=True, hi_open=True)] = 0.9

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveLimitSettings:
        if self.max_limit < self.min_limit:
            raise FieldProblem(("max_limit",), f"must be at least min_limit ({self.min_limit}), got {self.max_limit}")
        return self


class AdmissionSettings(Section):
    enabled: bool = True
    default_concurrency_limit: PositiveInt = 10
    default_queue_depth: NonNegativeInt = 50
    queue_timeout_s: PositiveFloat = 5.0
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    load_bias: NonNegativeFloat = 0.0
    adaptive_limit: AdaptiveLimitSettings = AdaptiveLimitSettings()


# --- batching, telemetry, storage ---------------------------------------------


class BatchingSettings(Section):
    enabled: bool = False
    window_ms: NonNegativeFloat = 100.0
    max_batch_size: PositiveInt = 16
    key: Literal["implementation", "seed"] = "implementation"
    priority_bypass: bool = True


class TelemetrySettings(Section):
    """What the config decides about telemetry (where to export comes from
    ``OTEL_*``). The one definition: ``router.telemetry.setup_telemetry``
    reads these attributes."""

    record_query_text: bool = False
    max_query_text_chars: PositiveInt = 2048  # the query text on a span is cut here
    service_name: NonEmptyStr = "skill-router"
    service_version: NonEmptyStr | None = None  # the resource's service.version
    # Baggage keys forwarded to the backends (the caller's W3C trace
    # context always is); empty: no baggage leaves the sidecar.
    baggage_allowlist: list[NonEmptyStr] = []


class StorageSettings(Section):
    sqlite_path: NonEmptyStr | None = "skill-router-metrics.db"
    postgres_dsn: NonEmptyStr | None = None
    retention_days: PositiveInt | None = 30
    batch_size: PositiveInt = 200
    flush_interval_s: PositiveFloat = 1.0
    buffer_size: PositiveInt = 10000

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> StorageSettings:
        if self.buffer_size < self.batch_size:
            raise FieldProblem(("buffer_size",), f"must be at least batch_size ({self.batch_size}), got {self.buffer_size}")
        return self


# --- query understanding ---------------------------------------------------------


class EmbeddingsSettings(Section):
    """The OpenAI-compatible ``/v1/embeddings`` endpoint of the ``embeddings`` encoder."""

    url: Annotated[str, AfterValidator(lambda v: check_url(v))]
    model: NonEmptyStr
    api_key_env: str | None = None
    timeout_s: PositiveFloat = 10.0
    max_connections: PositiveInt = 4
    batch_size: PositiveInt = 64  # examples per request at start-up
    cache_dir: NonEmptyStr | None = ".skill-router-cache"  # relative to the config file; None: no disk cache

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        return ImplementationEntry._env_name(v)


class UnderstandingSettings(Section):
    """Signals from the query text (see docs/config.md#query-understanding)."""

    encoder: Literal["local", "embeddings", "none"] = "local"
    # Relevance (0-1) a skill's examples must reach for a query to be in
    # scope; None: 0.5, the boundary calibrated on the examples.
    out_of_scope_threshold: Annotated[float, _range(0.0, 1.0, lo_open=True, hi_open=True)] | None = None
    estimate_complexity: bool = True  # estimate 0-10 from the text when the caller sets none
    embeddings: EmbeddingsSettings | None = None

    @model_validator(mode="after")
    def _endpoint(self) -> UnderstandingSettings:
        if self.encoder == "embeddings" and self.embeddings is None:
            raise FieldProblem(("embeddings",), "is required when encoder is 'embeddings' (url and model)")
        return self


def _examples(values: list[str]) -> list[str]:
    out = []
    for i, v in enumerate(values):
        v = " ".join(v.split())
        if not v:
            raise ValueError(f"entry {i} is empty")
        out.append(v)
    return list(dict.fromkeys(out))


Examples = Annotated[list[str], AfterValidator(_examples)]


class DomainEntry(Section):
    """Example queries of a domain, for inferring a query's domain from its text."""

    examples: Examples = []
    examples_file: NonEmptyStr | None = None  # one example per line, relative to the config file

    @model_validator(mode="after")
    def _some(self) -> DomainEntry:
        if not self.examples and self.examples_file is None:
            raise FieldProblem(("examples",), "a domain needs examples or examples_file")
        return self


def _redis_url(v: str | None) -> str | None:
    if v is None:
        return v
    if not v.startswith(("redis://", "rediss://", "unix://")):
        shown = _url_without_userinfo(v)
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {shown[:200]!r}")
    return v


class StateSettings(Section):
    """Shared state (limits, leases, rate limits) across replicas and
    workers. No redis_url: in-process."""

    redis_url: Annotated[str | None, AfterValidator(_redis_url)] = None
    key_prefix: NonEmptyStr = "skill-router"
    # Every Redis command's bound; past it the call is decided on local limits.
    timeout_ms: Annotated[float, _range(1, 10_000)] = 100.0
    # How long a slot stays taken if its process dies before giving it back
    # (a live process renews the leases it holds every third of it).
    lease_s: Annotated[float, _range(1, 3600)] = 30.0


class CacheSettings(Section):
    """The response cache: answers reused instead of paid for twice."""

    enabled: bool = False  # the skills' default; a skill's own cache.enabled wins
    max_entries: PositiveInt = 10000  # in-process LRU bound
    ttl_s: PositiveFloat = 300.0  # the skills' default time to live


# --- feedback and experiments ------------------------------------------------


class FeedbackSettings(Section):
    """Measured quality from the web app's ratings (docs/feedback.md)."""

    prior_strength: PositiveFloat = 10.0  # pseudo-ratings behind the declared quality
    half_life_s: PositiveFloat = 7 * 24 * 3600.0  # ratings this old weigh half
    memory_ttl_s: PositiveFloat = 3600.0  # how long an answered query can be rated
    memory_max_entries: PositiveInt = 100_000
    complexity_bands: list[Complexity] = [3.5, 7.0]  # boundaries of the context's complexity bands
    max_cells: PositiveInt = 10_000  # context cells (skill, implementation, domain, band) learned at most
    seed: int | None = None  # the random source of Thompson sampling and shadow sampling (None: random)

    @field_validator("complexity_bands")
    @classmethod
    def _ascending(cls, v: list[float]) -> list[float]:
        if v != sorted(set(v)):
            raise ValueError(f"must be strictly ascending, got {v}")
        return v


class KScheduleEntry(Section):
    """Start at start_k; step down by one (to end_k) while the measured
    quality at the lower k stays within margin of the current k's."""

    start_k: TopK = 5
    end_k: TopK = 3
    margin: Unit = 0.02
    min_ratings: PositiveInt = 50  # ratings at both k before a step
    probe_share: Unit = 0.2  # share of the arm's queries run at the lower k to measure it

    @model_validator(mode="after")
    def _down(self) -> KScheduleEntry:
        if self.end_k > self.start_k:
            raise FieldProblem(("end_k",), f"must be at most start_k ({self.start_k}), got {self.end_k}")
        return self


class ArmEntry(Section):
    """One arm: how its queries are routed (nothing set: as configured)."""

    top_k: TopK | None = None
    all_skills: bool = False
    implementation_policy: Literal["seed", "expected_quality", "static"] | None = None
    k_schedule: KScheduleEntry | None = None

    @model_validator(mode="after")
    def _one_k(self) -> ArmEntry:
        set_ = [n for n, v in (("top_k", self.top_k), ("all_skills", self.all_skills or None),
                               ("k_schedule", self.k_schedule)) if v is not None]
        if len(set_) > 1:
            raise FieldProblem((set_[1],), f"set at most one of top_k, all_skills, k_schedule (also {set_[0]})")
        return self


class ShadowEntry(Section):
    share: Unit = 0.0  # of the treatment arms' queries, run again in the control arm in the background
    max_concurrent: PositiveInt = 4  # shadow runs at once; beyond it a shadow is skipped (counted)


class ExperimentEntry(Section):
    enabled: bool = True
    share: Unit = 1.0  # of the queries that carry the key
    key: NonEmptyStr = "user_id"  # context.metadata key hashed (with the experiment's name) to assign an arm
    control: NonEmptyStr
    arms: dict[NonEmptyStr, ArmEntry]
    shadow: ShadowEntry = ShadowEntry()

    @model_validator(mode="after")
    def _control_is_an_arm(self) -> ExperimentEntry:
        if len(self.arms) < 2:
            raise FieldProblem(("arms",), f"needs at least two arms, got {len(self.arms)}")
        if self.control not in self.arms:
            raise FieldProblem(("control",), f"{self.control!r} names no arm (have: {', '.join(self.arms)})")
        return self


# --- skills --------------------------------------------------------------------


class ActivationEntry(Section):
    domains: LowerList = []
    min_complexity: Complexity = 0.0
    max_complexity: Complexity = 10.0
    keywords: LowerList = []

    @model_validator(mode="after")
    def _ordered(self) -> ActivationEntry:
        if self.max_complexity < self.min_complexity:
            raise FieldProblem(
                ("max_complexity",),
                f"must be at least min_complexity ({_num(self.min_complexity)}), got {_num(self.max_complexity)}",
            )
        return self


class SkillCacheOverride(Section):
    """Opt a skill in or out of the cache (a skill whose answers depend on
    time or on the user says no)."""

    enabled: bool | None = None  # None: cache.enabled
    ttl_s: PositiveFloat | None = None  # None: cache.ttl_s


class SkillBatchingOverride(Section):
    enabled: bool | None = None
    window_ms: NonNegativeFloat | None = None
    max_batch_size: PositiveInt | None = None


def _url_without_userinfo(v: str) -> str:
    scheme, sep, rest = v.partition("://")
    if not sep:
        return v
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


def check_url(v: str) -> str:
    from urllib.parse import urlsplit

    shown = _url_without_userinfo(v)  # never echo credentials
    try:
        parts = urlsplit(v)
        has_userinfo = "@" in parts.netloc
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        problem = str(exc) if "@" not in v else "unparsable"
        raise ValueError(f"is not a valid URL ({problem}): {shown[:200]!r}") from None
    if has_userinfo:
        raise ValueError(
            f"must not contain credentials (user:password@); put the key in an environment variable and name it "
            f"in api_key_env (URL without them: {shown[:200]!r})")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {shown[:200]!r}")
    return v


class RateLimitEntry(Section):
    """A provider's rate limit for one implementation (e.g. OpenRouter's)."""

    rpm: PositiveInt | None = None  # requests per minute
    tpm: PositiveInt | None = None  # tokens per minute (expected_input_tokens + expected_output_tokens per call)

    @model_validator(mode="after")
    def _some(self) -> RateLimitEntry:
        if self.rpm is None and self.tpm is None:
            raise FieldProblem(("rpm",), "set rpm, tpm or both (or drop rate_limit)")
        return self


class ImplementationEntry(Section):
    name: ImplementationName
    backend: Literal["openai", "http"]
    url: Annotated[str, AfterValidator(check_url)]
    model: str = ""
    api_key_env: str | None = None
    quality: Unit
    cost_per_query: NonNegativeFloat | None = None
    price_per_input_token: NonNegativeFloat | None = None
    price_per_output_token: NonNegativeFloat | None = None
    expected_input_tokens: NonNegativeInt | None = None
    expected_output_tokens: NonNegativeInt | None = None
    expected_latency_ms: PositiveFloat
    optimal_complexity: Complexity | None = None  # None: the skill's
    timeout_s: PositiveFloat = 30.0
    max_connections: PositiveInt = 10
    batch: Literal["none", "openai_completions", "http_batch"] = "none"
    # Bound of one answer's (decoded) body; over it the call fails.
    max_response_bytes: PositiveInt = 4 * 1024 * 1024
    rate_limit: RateLimitEntry | None = None

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        # Never echo the value: it may be the key itself.
        looks_secret = (
            v.upper().startswith(_SECRET_PREFIXES)
            or (len(v) >= 16 and "_" not in v and any(c.isdigit() for c in v))
        )
        if not _ENV_NAME_RE.fullmatch(v) or looks_secret:
            raise ValueError(
                "must be the NAME of the environment variable holding the key (upper-case letters, digits "
                "and '_', e.g. OPENROUTER_API_KEY), not the key itself; the value given is not shown"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ImplementationEntry:
        if self.backend == "openai" and not self.model.strip():
            raise FieldProblem(("model",), "is required for the openai backend (the model id sent in the request)")
        if self.batch == "openai_completions" and self.backend != "openai":
            raise FieldProblem(("batch",), f"'openai_completions' needs backend 'openai', not {self.backend!r}")
        if self.batch == "http_batch" and self.backend != "http":
            raise FieldProblem(("batch",), f"'http_batch' needs backend 'http', not {self.backend!r}")
        if self.rate_limit is not None and self.rate_limit.tpm is not None and (
                self.expected_input_tokens is None and self.expected_output_tokens is None):
            raise FieldProblem(("rate_limit", "tpm"), "needs expected_input_tokens or expected_output_tokens "
                                                      "(what one call counts against tpm)")
        if self.cost_per_query is None:
            missing = [
                k for k in ("price_per_input_token", "price_per_output_token", "expected_input_tokens", "expected_output_tokens")
                if getattr(self, k) is None
            ]
            if missing:
                raise FieldProblem(
                    ("cost_per_query",),
                    "is required unless price_per_input_token, price_per_output_token, expected_input_tokens "
                    f"and expected_output_tokens are all set to derive it (missing: {', '.join(missing)})",
                )
        return self

    @property
    def derived_cost(self) -> float:
        """The declared cost per query, or the one the per-token prices give."""
        if self.cost_per_query is not None:
            return self.cost_per_query
        assert self.price_per_input_token is not None and self.price_per_output_token is not None
        assert self.expected_input_tokens is not None and self.expected_output_tokens is not None
        cost = (
            self.price_per_input_token * self.expected_input_tokens
            + self.price_per_output_token * self.expected_output_tokens
        )
        return cost if math.isfinite(cost) else 0.0


class SkillEntry(Section):
    description: str = ""
    enabled: bool = True
    priority: PositiveInt = 1
    activation: ActivationEntry = ActivationEntry()
    preferred_domains: LowerList = []
    optimal_complexity: Complexity = 5.0
    concurrency_limit: PositiveInt | None = None  # None: admission.default_concurrency_limit
    queue_depth: NonNegativeInt | None = None  # None: admission.default_queue_depth
    queue_timeout_s: PositiveFloat | None = None  # None: admission.queue_timeout_s
    batching: SkillBatchingOverride = SkillBatchingOverride()
    cache: SkillCacheOverride = SkillCacheOverride()
    # Settings of this skill that the BRAIN_* variables must not replace.
    pinned: list[Literal["concurrency_limit", "queue_depth", "batching"]] = []
    system_prompt: str = ""
    implementations: Annotated[list[ImplementationEntry], Field(min_length=1)]
    default_implementation: str | None = None  # None: the first
    examples: Examples = []  # example queries: text relevance and out of scope
    examples_file: NonEmptyStr | None = None  # one example per line, relative to the config file

    @model_validator(mode="after")
    def _pins_what_it_sets(self) -> SkillEntry:
        for i, key in enumerate(self.pinned):
            unset = (getattr(self, key) is None if key != "batching"
                     else self.batching.enabled is None and self.batching.window_ms is None)
            if unset:
                raise FieldProblem(("pinned", i), f"pins {key} but the skill sets no {key} of its own")
            if key in self.pinned[:i]:
                raise FieldProblem(("pinned", i), f"{key} is pinned twice")
        return self

    @model_validator(mode="after")
    def _names(self) -> SkillEntry:
        seen: dict[str, int] = {}
        for i, impl in enumerate(self.implementations):
            if impl.name in seen:
                raise FieldProblem(
                    ("implementations", i, "name"),
                    f"duplicate implementation name {impl.name!r} (also implementations[{seen[impl.name]}])",
                )
            seen[impl.name] = i
        if self.default_implementation is not None and self.default_implementation not in seen:
            raise FieldProblem(
                ("default_implementation",),
                f"{self.default_implementation!r} names no implementation of this skill (have: {', '.join(seen)})",
            )
        return self

    @property
    def default_index(self) -> int:
        if self.default_implementation is None:
            return 0
        return [i.name for i in self.implementations].index(self.default_implementation)


class ConfigFile(Section):
    """The whole file."""

    routing: RoutingSettings = RoutingSettings()
    server: ServerSettings = ServerSettings()
    admission: AdmissionSettings = AdmissionSettings()
    batching: BatchingSettings = BatchingSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    storage: StorageSettings = StorageSettings()
    understanding: UnderstandingSettings = UnderstandingSettings()
    domains: dict[Annotated[str, _name("domain")], DomainEntry] = {}
    state: StateSettings = StateSettings()
    cache: CacheSettings = CacheSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    experiments: dict[NonEmptyStr, ExperimentEntry] = {}
    skills: dict[SkillName, SkillEntry] = {}

    @model_validator(mode="after")
    def _some_skill(self) -> ConfigFile:
        if not self.skills:
            raise FieldProblem(("skills",), "at least one skill must be configured")
        if not any(s.enabled for s in self.skills.values()):
            raise FieldProblem(("skills",), "every skill is disabled; enable at least one")
        fb = self.routing.fallback_skill
        if fb is not None and fb not in self.skills:
            raise FieldProblem(("routing", "fallback_skill"),
                               f"{fb!r} names no configured skill (have: {', '.join(self.skills)})")
        return self
