import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]

class SignalSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_SOURCE_UNSPECIFIED: _ClassVar[SignalSource]
    SIGNAL_SOURCE_CALLER: _ClassVar[SignalSource]
    SIGNAL_SOURCE_INFERRED: _ClassVar[SignalSource]
    SIGNAL_SOURCE_DEFAULT: _ClassVar[SignalSource]

class RejectionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECTION_REASON_UNSPECIFIED: _ClassVar[RejectionReason]
    REJECTION_REASON_NOT_ACTIVATED: _ClassVar[RejectionReason]
    REJECTION_REASON_BELOW_TOP_K: _ClassVar[RejectionReason]
    REJECTION_REASON_EXCLUDED: _ClassVar[RejectionReason]
    REJECTION_REASON_NO_IMPLEMENTATION: _ClassVar[RejectionReason]
    REJECTION_REASON_DISABLED: _ClassVar[RejectionReason]

class SkillStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SKILL_STATUS_UNSPECIFIED: _ClassVar[SkillStatus]
    SKILL_STATUS_OK: _ClassVar[SkillStatus]
    SKILL_STATUS_FAILED: _ClassVar[SkillStatus]
    SKILL_STATUS_TIMED_OUT: _ClassVar[SkillStatus]
    SKILL_STATUS_DEADLINE_EXCEEDED: _ClassVar[SkillStatus]
    SKILL_STATUS_REFUSED: _ClassVar[SkillStatus]

class ShedReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHED_REASON_UNSPECIFIED: _ClassVar[ShedReason]
    SHED_REASON_QUEUE_FULL: _ClassVar[ShedReason]
    SHED_REASON_BREAKER_OPEN: _ClassVar[ShedReason]
    SHED_REASON_EXPECTED_WAIT: _ClassVar[ShedReason]
    SHED_REASON_QUEUE_TIMEOUT: _ClassVar[ShedReason]
    SHED_REASON_DEADLINE: _ClassVar[ShedReason]
    SHED_REASON_DISPLACED: _ClassVar[ShedReason]
    SHED_REASON_CALL_FAILED: _ClassVar[ShedReason]
    SHED_REASON_SHARED_LIMIT: _ClassVar[ShedReason]
    SHED_REASON_RATE_LIMITED: _ClassVar[ShedReason]

class QueryOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_OUTCOME_UNSPECIFIED: _ClassVar[QueryOutcome]
    QUERY_OUTCOME_OK: _ClassVar[QueryOutcome]
    QUERY_OUTCOME_PARTIAL: _ClassVar[QueryOutcome]
    QUERY_OUTCOME_FAILED: _ClassVar[QueryOutcome]
    QUERY_OUTCOME_REFUSED: _ClassVar[QueryOutcome]
    QUERY_OUTCOME_UNROUTED: _ClassVar[QueryOutcome]
    QUERY_OUTCOME_DEADLINE: _ClassVar[QueryOutcome]
    QUERY_OUTCOME_CANCELLED: _ClassVar[QueryOutcome]

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_STATE_CLOSED: _ClassVar[BreakerState]
    BREAKER_STATE_OPEN: _ClassVar[BreakerState]
    BREAKER_STATE_HALF_OPEN: _ClassVar[BreakerState]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_LOW: Priority
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority
SIGNAL_SOURCE_UNSPECIFIED: SignalSource
SIGNAL_SOURCE_CALLER: SignalSource
SIGNAL_SOURCE_INFERRED: SignalSource
SIGNAL_SOURCE_DEFAULT: SignalSource
REJECTION_REASON_UNSPECIFIED: RejectionReason
REJECTION_REASON_NOT_ACTIVATED: RejectionReason
REJECTION_REASON_BELOW_TOP_K: RejectionReason
REJECTION_REASON_EXCLUDED: RejectionReason
REJECTION_REASON_NO_IMPLEMENTATION: RejectionReason
REJECTION_REASON_DISABLED: RejectionReason
SKILL_STATUS_UNSPECIFIED: SkillStatus
SKILL_STATUS_OK: SkillStatus
SKILL_STATUS_FAILED: SkillStatus
SKILL_STATUS_TIMED_OUT: SkillStatus
SKILL_STATUS_DEADLINE_EXCEEDED: SkillStatus
SKILL_STATUS_REFUSED: SkillStatus
SHED_REASON_UNSPECIFIED: ShedReason
SHED_REASON_QUEUE_FULL: ShedReason
SHED_REASON_BREAKER_OPEN: ShedReason
SHED_REASON_EXPECTED_WAIT: ShedReason
SHED_REASON_QUEUE_TIMEOUT: ShedReason
SHED_REASON_DEADLINE: ShedReason
SHED_REASON_DISPLACED: ShedReason
SHED_REASON_CALL_FAILED: ShedReason
SHED_REASON_SHARED_LIMIT: ShedReason
SHED_REASON_RATE_LIMITED: ShedReason
QUERY_OUTCOME_UNSPECIFIED: QueryOutcome
QUERY_OUTCOME_OK: QueryOutcome
QUERY_OUTCOME_PARTIAL: QueryOutcome
QUERY_OUTCOME_FAILED: QueryOutcome
QUERY_OUTCOME_REFUSED: QueryOutcome
QUERY_OUTCOME_UNROUTED: QueryOutcome
QUERY_OUTCOME_DEADLINE: QueryOutcome
QUERY_OUTCOME_CANCELLED: QueryOutcome
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_STATE_CLOSED: BreakerState
BREAKER_STATE_OPEN: BreakerState
BREAKER_STATE_HALF_OPEN: BreakerState

class QueryContext(_message.Message):
    __slots__ = ("domain", "complexity", "required_quality", "priority", "top_k", "force_skills", "exclude_skills", "all_skills", "metadata", "cost_weight")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    COMPLEXITY_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FORCE_SKILLS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SKILLS_FIELD_NUMBER: _ClassVar[int]
    ALL_SKILLS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    COST_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    domain: str
    complexity: float
    required_quality: float
    priority: Priority
    top_k: int
    force_skills: _containers.RepeatedScalarFieldContainer[str]
    exclude_skills: _containers.RepeatedScalarFieldContainer[str]
    all_skills: bool
    metadata: _containers.ScalarMap[str, str]
    cost_weight: float
    def __init__(self, domain: _Optional[str] = ..., complexity: _Optional[float] = ..., required_quality: _Optional[float] = ..., priority: _Optional[_Union[Priority, str]] = ..., top_k: _Optional[int] = ..., force_skills: _Optional[_Iterable[str]] = ..., exclude_skills: _Optional[_Iterable[str]] = ..., all_skills: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ..., cost_weight: _Optional[float] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("query", "context", "explain_all")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_ALL_FIELD_NUMBER: _ClassVar[int]
    query: str
    context: QueryContext
    explain_all: bool
    def __init__(self, query: _Optional[str] = ..., context: _Optional[_Union[QueryContext, _Mapping]] = ..., explain_all: _Optional[bool] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("query_id", "selections", "rejections", "k", "selection_time_us", "moe_enabled", "rejections_omitted", "signals")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SELECTION_TIME_US_FIELD_NUMBER: _ClassVar[int]
    MOE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    selections: _containers.RepeatedCompositeFieldContainer[Selection]
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    k: int
    selection_time_us: int
    moe_enabled: bool
    rejections_omitted: int
    signals: Signals
    def __init__(self, query_id: _Optional[str] = ..., selections: _Optional[_Iterable[_Union[Selection, _Mapping]]] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., k: _Optional[int] = ..., selection_time_us: _Optional[int] = ..., moe_enabled: _Optional[bool] = ..., rejections_omitted: _Optional[int] = ..., signals: _Optional[_Union[Signals, _Mapping]] = ...) -> None: ...

class DomainScore(_message.Message):
    __slots__ = ("domain", "score")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    score: float
    def __init__(self, domain: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Signals(_message.Message):
    __slots__ = ("domain", "domain_source", "domains", "complexity", "complexity_source", "method", "out_of_scope", "best_relevance", "out_of_scope_threshold", "fallback_skill")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_SOURCE_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    COMPLEXITY_FIELD_NUMBER: _ClassVar[int]
    COMPLEXITY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SCOPE_FIELD_NUMBER: _ClassVar[int]
    BEST_RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SCOPE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_SKILL_FIELD_NUMBER: _ClassVar[int]
    domain: str
    domain_source: SignalSource
    domains: _containers.RepeatedCompositeFieldContainer[DomainScore]
    complexity: float
    complexity_source: SignalSource
    method: str
    out_of_scope: bool
    best_relevance: float
    out_of_scope_threshold: float
    fallback_skill: str
    def __init__(self, domain: _Optional[str] = ..., domain_source: _Optional[_Union[SignalSource, str]] = ..., domains: _Optional[_Iterable[_Union[DomainScore, _Mapping]]] = ..., complexity: _Optional[float] = ..., complexity_source: _Optional[_Union[SignalSource, str]] = ..., method: _Optional[str] = ..., out_of_scope: _Optional[bool] = ..., best_relevance: _Optional[float] = ..., out_of_scope_threshold: _Optional[float] = ..., fallback_skill: _Optional[str] = ...) -> None: ...

class ScoreParts(_message.Message):
    __slots__ = ("activated", "domain_bonus", "complexity_fit", "success_rate", "success_factor", "priority_weight", "rank_score", "load_factor", "text_relevance", "text_term")
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_BONUS_FIELD_NUMBER: _ClassVar[int]
    COMPLEXITY_FIT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FACTOR_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FACTOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_TERM_FIELD_NUMBER: _ClassVar[int]
    activated: bool
    domain_bonus: float
    complexity_fit: float
    success_rate: float
    success_factor: float
    priority_weight: float
    rank_score: float
    load_factor: float
    text_relevance: float
    text_term: float
    def __init__(self, activated: _Optional[bool] = ..., domain_bonus: _Optional[float] = ..., complexity_fit: _Optional[float] = ..., success_rate: _Optional[float] = ..., success_factor: _Optional[float] = ..., priority_weight: _Optional[float] = ..., rank_score: _Optional[float] = ..., load_factor: _Optional[float] = ..., text_relevance: _Optional[float] = ..., text_term: _Optional[float] = ...) -> None: ...

class Implementation(_message.Message):
    __slots__ = ("name", "model", "backend", "quality", "cost_per_query_usd", "expected_latency_ms", "optimal_complexity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    COST_PER_QUERY_USD_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    OPTIMAL_COMPLEXITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    backend: str
    quality: float
    cost_per_query_usd: float
    expected_latency_ms: float
    optimal_complexity: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., quality: _Optional[float] = ..., cost_per_query_usd: _Optional[float] = ..., expected_latency_ms: _Optional[float] = ..., optimal_complexity: _Optional[float] = ...) -> None: ...

class ImplementationChoice(_message.Message):
    __slots__ = ("implementation", "fit_score", "meets_quality_floor", "reason", "rejections")
    IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    FIT_SCORE_FIELD_NUMBER: _ClassVar[int]
    MEETS_QUALITY_FLOOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    implementation: Implementation
    fit_score: float
    meets_quality_floor: bool
    reason: str
    rejections: _containers.RepeatedCompositeFieldContainer[ImplementationRejection]
    def __init__(self, implementation: _Optional[_Union[Implementation, _Mapping]] = ..., fit_score: _Optional[float] = ..., meets_quality_floor: _Optional[bool] = ..., reason: _Optional[str] = ..., rejections: _Optional[_Iterable[_Union[ImplementationRejection, _Mapping]]] = ...) -> None: ...

class ImplementationRejection(_message.Message):
    __slots__ = ("name", "reason", "fit_score")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIT_SCORE_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    fit_score: float
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ..., fit_score: _Optional[float] = ...) -> None: ...

class Selection(_message.Message):
    __slots__ = ("skill", "score", "parts", "implementation", "forced")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    skill: str
    score: float
    parts: ScoreParts
    implementation: ImplementationChoice
    forced: bool
    def __init__(self, skill: _Optional[str] = ..., score: _Optional[float] = ..., parts: _Optional[_Union[ScoreParts, _Mapping]] = ..., implementation: _Optional[_Union[ImplementationChoice, _Mapping]] = ..., forced: _Optional[bool] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("skill", "reason", "detail", "score", "rank_score")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    skill: str
    reason: RejectionReason
    detail: str
    score: float
    rank_score: float
    def __init__(self, skill: _Optional[str] = ..., reason: _Optional[_Union[RejectionReason, str]] = ..., detail: _Optional[str] = ..., score: _Optional[float] = ..., rank_score: _Optional[float] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("query", "context", "explain_all")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_ALL_FIELD_NUMBER: _ClassVar[int]
    query: str
    context: QueryContext
    explain_all: bool
    def __init__(self, query: _Optional[str] = ..., context: _Optional[_Union[QueryContext, _Mapping]] = ..., explain_all: _Optional[bool] = ...) -> None: ...

class SkillResult(_message.Message):
    __slots__ = ("skill", "implementation", "model", "weight", "status", "output", "error", "cost_usd", "latency_ms", "input_tokens", "output_tokens", "quality", "queue_wait_ms", "attempts", "batch_size", "shared_by", "stepped_in_for", "step_in_reason", "cached", "cache_age_ms", "cache_saved_usd")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARED_BY_FIELD_NUMBER: _ClassVar[int]
    STEPPED_IN_FOR_FIELD_NUMBER: _ClassVar[int]
    STEP_IN_REASON_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CACHE_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    skill: str
    implementation: str
    model: str
    weight: float
    status: SkillStatus
    output: str
    error: str
    cost_usd: float
    latency_ms: float
    input_tokens: int
    output_tokens: int
    quality: float
    queue_wait_ms: float
    attempts: int
    batch_size: int
    shared_by: int
    stepped_in_for: str
    step_in_reason: ShedReason
    cached: bool
    cache_age_ms: float
    cache_saved_usd: float
    def __init__(self, skill: _Optional[str] = ..., implementation: _Optional[str] = ..., model: _Optional[str] = ..., weight: _Optional[float] = ..., status: _Optional[_Union[SkillStatus, str]] = ..., output: _Optional[str] = ..., error: _Optional[str] = ..., cost_usd: _Optional[float] = ..., latency_ms: _Optional[float] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., quality: _Optional[float] = ..., queue_wait_ms: _Optional[float] = ..., attempts: _Optional[int] = ..., batch_size: _Optional[int] = ..., shared_by: _Optional[int] = ..., stepped_in_for: _Optional[str] = ..., step_in_reason: _Optional[_Union[ShedReason, str]] = ..., cached: _Optional[bool] = ..., cache_age_ms: _Optional[float] = ..., cache_saved_usd: _Optional[float] = ...) -> None: ...

class ShedSkill(_message.Message):
    __slots__ = ("skill", "reason", "detail", "replaced_by", "implementation", "replaced_by_implementation")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REPLACED_BY_FIELD_NUMBER: _ClassVar[int]
    IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    REPLACED_BY_IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    skill: str
    reason: ShedReason
    detail: str
    replaced_by: str
    implementation: str
    replaced_by_implementation: str
    def __init__(self, skill: _Optional[str] = ..., reason: _Optional[_Union[ShedReason, str]] = ..., detail: _Optional[str] = ..., replaced_by: _Optional[str] = ..., implementation: _Optional[str] = ..., replaced_by_implementation: _Optional[str] = ...) -> None: ...

class CostLedger(_message.Message):
    __slots__ = ("actual_usd", "baseline_usd", "saved_usd", "saved_fraction", "baseline_skills", "cache_saved_usd")
    ACTUAL_USD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_USD_FIELD_NUMBER: _ClassVar[int]
    SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    SAVED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SKILLS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    actual_usd: float
    baseline_usd: float
    saved_usd: float
    saved_fraction: float
    baseline_skills: int
    cache_saved_usd: float
    def __init__(self, actual_usd: _Optional[float] = ..., baseline_usd: _Optional[float] = ..., saved_usd: _Optional[float] = ..., saved_fraction: _Optional[float] = ..., baseline_skills: _Optional[int] = ..., cache_saved_usd: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("selection_us", "execution_us", "total_us")
    SELECTION_US_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    selection_us: int
    execution_us: int
    total_us: int
    def __init__(self, selection_us: _Optional[int] = ..., execution_us: _Optional[int] = ..., total_us: _Optional[int] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("query_id", "trace_id", "text", "selections", "results", "rejections", "cost", "timing", "quality", "k", "moe_enabled", "shed", "outcome", "rejections_omitted", "signals", "experiment_arm")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MOE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ARM_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    trace_id: str
    text: str
    selections: _containers.RepeatedCompositeFieldContainer[Selection]
    results: _containers.RepeatedCompositeFieldContainer[SkillResult]
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    cost: CostLedger
    timing: Timing
    quality: float
    k: int
    moe_enabled: bool
    shed: _containers.RepeatedCompositeFieldContainer[ShedSkill]
    outcome: QueryOutcome
    rejections_omitted: int
    signals: Signals
    experiment_arm: str
    def __init__(self, query_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., text: _Optional[str] = ..., selections: _Optional[_Iterable[_Union[Selection, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[SkillResult, _Mapping]]] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., cost: _Optional[_Union[CostLedger, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., quality: _Optional[float] = ..., k: _Optional[int] = ..., moe_enabled: _Optional[bool] = ..., shed: _Optional[_Iterable[_Union[ShedSkill, _Mapping]]] = ..., outcome: _Optional[_Union[QueryOutcome, str]] = ..., rejections_omitted: _Optional[int] = ..., signals: _Optional[_Union[Signals, _Mapping]] = ..., experiment_arm: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("window",)
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    window: _duration_pb2.Duration
    def __init__(self, window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SkillStats(_message.Message):
    __slots__ = ("skill", "in_flight", "concurrency_limit", "utilization", "queue_depth", "calls", "failures", "success_rate", "latency_p50_ms", "latency_p99_ms", "rejected", "shed", "timed_out", "queue_depth_by_priority", "queue_capacity", "mean_queue_wait_ms", "implementations", "batches", "mean_batch_size", "mean_batch_wait_ms", "coalesced_calls", "cache_hits", "cache_misses", "cache_saved_usd")
    class QueueDepthByPriorityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SKILL_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_BY_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MEAN_QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    IMPLEMENTATIONS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    COALESCED_CALLS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    skill: str
    in_flight: int
    concurrency_limit: int
    utilization: float
    queue_depth: int
    calls: int
    failures: int
    success_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    rejected: int
    shed: int
    timed_out: int
    queue_depth_by_priority: _containers.ScalarMap[str, int]
    queue_capacity: int
    mean_queue_wait_ms: float
    implementations: _containers.RepeatedCompositeFieldContainer[ImplementationStats]
    batches: int
    mean_batch_size: float
    mean_batch_wait_ms: float
    coalesced_calls: int
    cache_hits: int
    cache_misses: int
    cache_saved_usd: float
    def __init__(self, skill: _Optional[str] = ..., in_flight: _Optional[int] = ..., concurrency_limit: _Optional[int] = ..., utilization: _Optional[float] = ..., queue_depth: _Optional[int] = ..., calls: _Optional[int] = ..., failures: _Optional[int] = ..., success_rate: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., rejected: _Optional[int] = ..., shed: _Optional[int] = ..., timed_out: _Optional[int] = ..., queue_depth_by_priority: _Optional[_Mapping[str, int]] = ..., queue_capacity: _Optional[int] = ..., mean_queue_wait_ms: _Optional[float] = ..., implementations: _Optional[_Iterable[_Union[ImplementationStats, _Mapping]]] = ..., batches: _Optional[int] = ..., mean_batch_size: _Optional[float] = ..., mean_batch_wait_ms: _Optional[float] = ..., coalesced_calls: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., cache_saved_usd: _Optional[float] = ...) -> None: ...

class ImplementationStats(_message.Message):
    __slots__ = ("name", "breaker_state", "half_open_at", "consecutive_failures", "failure_rate", "times_opened", "declared_quality", "measured_quality", "ratings", "measured_quality_low", "measured_quality_high")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    HALF_OPEN_AT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    TIMES_OPENED_FIELD_NUMBER: _ClassVar[int]
    DECLARED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_LOW_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_HIGH_FIELD_NUMBER: _ClassVar[int]
    name: str
    breaker_state: BreakerState
    half_open_at: _timestamp_pb2.Timestamp
    consecutive_failures: int
    failure_rate: float
    times_opened: int
    declared_quality: float
    measured_quality: float
    ratings: int
    measured_quality_low: float
    measured_quality_high: float
    def __init__(self, name: _Optional[str] = ..., breaker_state: _Optional[_Union[BreakerState, str]] = ..., half_open_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., consecutive_failures: _Optional[int] = ..., failure_rate: _Optional[float] = ..., times_opened: _Optional[int] = ..., declared_quality: _Optional[float] = ..., measured_quality: _Optional[float] = ..., ratings: _Optional[int] = ..., measured_quality_low: _Optional[float] = ..., measured_quality_high: _Optional[float] = ...) -> None: ...

class Totals(_message.Message):
    __slots__ = ("queries", "avg_skills_per_query", "cost_usd", "cost_saved_usd", "baseline_cost_usd", "routes", "failed_queries", "outcomes", "answered", "avg_quality", "avg_cost_per_query_usd", "cache_hits", "cache_misses", "cache_saved_usd", "feedback_received", "avg_feedback_score")
    class OutcomesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    AVG_SKILLS_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    COST_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COST_USD_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    FAILED_QUERIES_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    AVG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    AVG_COST_PER_QUERY_USD_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    AVG_FEEDBACK_SCORE_FIELD_NUMBER: _ClassVar[int]
    queries: int
    avg_skills_per_query: float
    cost_usd: float
    cost_saved_usd: float
    baseline_cost_usd: float
    routes: int
    failed_queries: int
    outcomes: _containers.ScalarMap[str, int]
    answered: int
    avg_quality: float
    avg_cost_per_query_usd: float
    cache_hits: int
    cache_misses: int
    cache_saved_usd: float
    feedback_received: int
    avg_feedback_score: float
    def __init__(self, queries: _Optional[int] = ..., avg_skills_per_query: _Optional[float] = ..., cost_usd: _Optional[float] = ..., cost_saved_usd: _Optional[float] = ..., baseline_cost_usd: _Optional[float] = ..., routes: _Optional[int] = ..., failed_queries: _Optional[int] = ..., outcomes: _Optional[_Mapping[str, int]] = ..., answered: _Optional[int] = ..., avg_quality: _Optional[float] = ..., avg_cost_per_query_usd: _Optional[float] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., cache_saved_usd: _Optional[float] = ..., feedback_received: _Optional[int] = ..., avg_feedback_score: _Optional[float] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("skills", "totals", "uptime_seconds", "moe_enabled", "window", "config_generation", "config_loaded_at", "config_source", "shared_state", "experiments")
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MOE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONFIG_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SHARED_STATE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    skills: _containers.RepeatedCompositeFieldContainer[SkillStats]
    totals: Totals
    uptime_seconds: float
    moe_enabled: bool
    window: WindowStats
    config_generation: int
    config_loaded_at: _timestamp_pb2.Timestamp
    config_source: str
    shared_state: SharedStateStats
    experiments: _containers.RepeatedCompositeFieldContainer[ArmStats]
    def __init__(self, skills: _Optional[_Iterable[_Union[SkillStats, _Mapping]]] = ..., totals: _Optional[_Union[Totals, _Mapping]] = ..., uptime_seconds: _Optional[float] = ..., moe_enabled: _Optional[bool] = ..., window: _Optional[_Union[WindowStats, _Mapping]] = ..., config_generation: _Optional[int] = ..., config_loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., config_source: _Optional[str] = ..., shared_state: _Optional[_Union[SharedStateStats, _Mapping]] = ..., experiments: _Optional[_Iterable[_Union[ArmStats, _Mapping]]] = ...) -> None: ...

class SharedStateStats(_message.Message):
    __slots__ = ("backend", "connected", "detail", "fallbacks", "reconnects", "worker", "workers")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    connected: bool
    detail: str
    fallbacks: int
    reconnects: int
    worker: int
    workers: int
    def __init__(self, backend: _Optional[str] = ..., connected: _Optional[bool] = ..., detail: _Optional[str] = ..., fallbacks: _Optional[int] = ..., reconnects: _Optional[int] = ..., worker: _Optional[int] = ..., workers: _Optional[int] = ...) -> None: ...

class ArmStats(_message.Message):
    __slots__ = ("experiment", "arm", "shadow", "queries", "cost_usd", "avg_latency_ms", "measured_quality", "measured_quality_low", "measured_quality_high", "ratings", "agreement", "current_k")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    AVG_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_LOW_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_HIGH_FIELD_NUMBER: _ClassVar[int]
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_K_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    arm: str
    shadow: bool
    queries: int
    cost_usd: float
    avg_latency_ms: float
    measured_quality: float
    measured_quality_low: float
    measured_quality_high: float
    ratings: int
    agreement: float
    current_k: int
    def __init__(self, experiment: _Optional[str] = ..., arm: _Optional[str] = ..., shadow: _Optional[bool] = ..., queries: _Optional[int] = ..., cost_usd: _Optional[float] = ..., avg_latency_ms: _Optional[float] = ..., measured_quality: _Optional[float] = ..., measured_quality_low: _Optional[float] = ..., measured_quality_high: _Optional[float] = ..., ratings: _Optional[int] = ..., agreement: _Optional[float] = ..., current_k: _Optional[int] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("query_id", "score", "skill_scores")
    class SkillScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SKILL_SCORES_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    score: float
    skill_scores: _containers.ScalarMap[str, float]
    def __init__(self, query_id: _Optional[str] = ..., score: _Optional[float] = ..., skill_scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RatedImplementation(_message.Message):
    __slots__ = ("skill", "implementation", "score", "measured_quality", "ratings")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    skill: str
    implementation: str
    score: float
    measured_quality: float
    ratings: int
    def __init__(self, skill: _Optional[str] = ..., implementation: _Optional[str] = ..., score: _Optional[float] = ..., measured_quality: _Optional[float] = ..., ratings: _Optional[int] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("query_id", "rated", "query_score")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    RATED_FIELD_NUMBER: _ClassVar[int]
    QUERY_SCORE_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    rated: _containers.RepeatedCompositeFieldContainer[RatedImplementation]
    query_score: float
    def __init__(self, query_id: _Optional[str] = ..., rated: _Optional[_Iterable[_Union[RatedImplementation, _Mapping]]] = ..., query_score: _Optional[float] = ...) -> None: ...

class HourlyTrend(_message.Message):
    __slots__ = ("hour", "queries", "avg_cost_usd", "avg_response_ms", "avg_quality")
    HOUR_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    AVG_COST_USD_FIELD_NUMBER: _ClassVar[int]
    AVG_RESPONSE_MS_FIELD_NUMBER: _ClassVar[int]
    AVG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    hour: _timestamp_pb2.Timestamp
    queries: int
    avg_cost_usd: float
    avg_response_ms: float
    avg_quality: float
    def __init__(self, hour: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queries: _Optional[int] = ..., avg_cost_usd: _Optional[float] = ..., avg_response_ms: _Optional[float] = ..., avg_quality: _Optional[float] = ...) -> None: ...

class WindowStats(_message.Message):
    __slots__ = ("available", "store", "since", "until", "queries", "errors", "avg_skills_selected", "avg_cost_per_query_usd", "cost_saved_usd", "avg_cost_saved_usd", "avg_response_ms", "p99_response_ms", "avg_quality", "skill_distribution", "hourly", "rows_dropped", "outcomes", "answered", "cache_hits", "cache_misses", "cache_saved_usd", "rated_queries", "avg_measured_quality", "avg_declared_quality")
    class SkillDistributionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OutcomesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class CacheHitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class CacheMissesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    AVG_SKILLS_SELECTED_FIELD_NUMBER: _ClassVar[int]
    AVG_COST_PER_QUERY_USD_FIELD_NUMBER: _ClassVar[int]
    COST_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    AVG_COST_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    AVG_RESPONSE_MS_FIELD_NUMBER: _ClassVar[int]
    P99_RESPONSE_MS_FIELD_NUMBER: _ClassVar[int]
    AVG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    SKILL_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    HOURLY_FIELD_NUMBER: _ClassVar[int]
    ROWS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    RATED_QUERIES_FIELD_NUMBER: _ClassVar[int]
    AVG_MEASURED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    AVG_DECLARED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    available: bool
    store: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    queries: int
    errors: int
    avg_skills_selected: float
    avg_cost_per_query_usd: float
    cost_saved_usd: float
    avg_cost_saved_usd: float
    avg_response_ms: float
    p99_response_ms: float
    avg_quality: float
    skill_distribution: _containers.ScalarMap[str, int]
    hourly: _containers.RepeatedCompositeFieldContainer[HourlyTrend]
    rows_dropped: int
    outcomes: _containers.ScalarMap[str, int]
    answered: int
    cache_hits: _containers.ScalarMap[str, int]
    cache_misses: _containers.ScalarMap[str, int]
    cache_saved_usd: float
    rated_queries: int
    avg_measured_quality: float
    avg_declared_quality: float
    def __init__(self, available: _Optional[bool] = ..., store: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queries: _Optional[int] = ..., errors: _Optional[int] = ..., avg_skills_selected: _Optional[float] = ..., avg_cost_per_query_usd: _Optional[float] = ..., cost_saved_usd: _Optional[float] = ..., avg_cost_saved_usd: _Optional[float] = ..., avg_response_ms: _Optional[float] = ..., p99_response_ms: _Optional[float] = ..., avg_quality: _Optional[float] = ..., skill_distribution: _Optional[_Mapping[str, int]] = ..., hourly: _Optional[_Iterable[_Union[HourlyTrend, _Mapping]]] = ..., rows_dropped: _Optional[int] = ..., outcomes: _Optional[_Mapping[str, int]] = ..., answered: _Optional[int] = ..., cache_hits: _Optional[_Mapping[str, int]] = ..., cache_misses: _Optional[_Mapping[str, int]] = ..., cache_saved_usd: _Optional[float] = ..., rated_queries: _Optional[int] = ..., avg_measured_quality: _Optional[float] = ..., avg_declared_quality: _Optional[float] = ...) -> None: ...

class ExecuteEvent(_message.Message):
    __slots__ = ("routed", "delta", "skill_result", "shed", "done", "elapsed_ms")
    ROUTED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SKILL_RESULT_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    routed: StreamRouted
    delta: SkillDelta
    skill_result: SkillResult
    shed: ShedSkill
    done: ExecuteResponse
    elapsed_ms: float
    def __init__(self, routed: _Optional[_Union[StreamRouted, _Mapping]] = ..., delta: _Optional[_Union[SkillDelta, _Mapping]] = ..., skill_result: _Optional[_Union[SkillResult, _Mapping]] = ..., shed: _Optional[_Union[ShedSkill, _Mapping]] = ..., done: _Optional[_Union[ExecuteResponse, _Mapping]] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class StreamRouted(_message.Message):
    __slots__ = ("query_id", "trace_id", "selections", "rejections", "k", "moe_enabled", "rejections_omitted")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MOE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    trace_id: str
    selections: _containers.RepeatedCompositeFieldContainer[Selection]
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    k: int
    moe_enabled: bool
    rejections_omitted: int
    def __init__(self, query_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., selections: _Optional[_Iterable[_Union[Selection, _Mapping]]] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., k: _Optional[int] = ..., moe_enabled: _Optional[bool] = ..., rejections_omitted: _Optional[int] = ...) -> None: ...

class SkillDelta(_message.Message):
    __slots__ = ("skill", "implementation", "text", "attempt")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    skill: str
    implementation: str
    text: str
    attempt: int
    def __init__(self, skill: _Optional[str] = ..., implementation: _Optional[str] = ..., text: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...
