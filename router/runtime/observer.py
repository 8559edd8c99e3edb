"""The one hook through which the pipeline reports what it does.

The pipeline calls an ``Observer`` at each stage; ``router.telemetry``
implements it with OpenTelemetry spans and metrics. The default observer
does nothing and costs nothing. The metrics store receives one
``QueryRecord`` per executed query through a ``RecordSink``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from router.core.routing import PlannedSkill, RoutePlan
from router.core.synthesis import SkillOutcome, Synthesis
from router.core.types import ImplementationSpec


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One row of the seed's ``brain_moe_metrics`` table, plus ids."""

    query_id: str
    timestamp: float  # unix seconds, when the query arrived
    rpc: str  # "execute"
    status: str  # the query's outcome: a router.core.synthesis.QueryOutcome value
    query_hash: str
    domain: str
    complexity: float
    skills_considered: int
    skills_selected: int
    top_skill: str
    top_skill_score: float
    selection_time_ms: float
    execution_time_ms: float
    total_time_ms: float
    total_cost: float  # spent, answered or not
    cost_saved: float  # baseline_cost − total_cost when answered, else 0
    baseline_cost: float  # every activated skill at its default implementation
    quality_score: float | None  # the synthesis's quality; None when not answered
    max_utilization: float
    avg_queue_depth: float
    skills: tuple[str, ...] = ()
    skills_ok: tuple[str, ...] = ()
    trace_id: str = ""
    # Query understanding: where the domain and complexity came from
    # (caller | inferred | default) and the method; never the text.
    domain_source: str = ""
    complexity_source: str = ""
    signal_method: str = ""
    # The response cache (new columns at the end: older tables gain them).
    skills_cached: tuple[str, ...] = ()  # skills answered from the cache
    skills_cache_missed: tuple[str, ...] = ()  # skills looked up in the cache and fetched
    cache_saved: float = 0.0  # what the cached answers would have cost
    implementations: tuple[str, ...] = ()  # the implementation each of ``skills`` ran
    # Where quality_score comes from: "declared" (the synthesis of declared
    # qualities) or "feedback" (the web app's rating, set when it arrives).
    quality_source: str = "declared"
    declared_quality: float | None = None  # the synthesis's declared quality (kept when feedback replaces quality_score)
    arm: str = ""  # "experiment/arm" the query ran in ("" when none)
    shadow: bool = False  # a shadow run of the control arm: never returned to the caller


class SkillObservation(Protocol):
    """One live skill execution (a CLIENT span in OpenTelemetry)."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Propagation headers to send to the backend."""

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None: ...

    def finish(self, outcome: SkillOutcome, *, queue_wait_ms: float = 0.0, attempts: int = 1) -> None: ...


class QueryObservation(Protocol):
    """One query, from arrival to answer."""

    @property
    def trace_id(self) -> str: ...

    def selection(self, plan: RoutePlan, start_ns: int, end_ns: int) -> None: ...

    def skill_call(self, planned: PlannedSkill) -> contextlib.AbstractContextManager[SkillObservation]: ...

    def synthesis(self, synthesis: Synthesis, start_ns: int, end_ns: int) -> None: ...

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None: ...

    def finish(self, record: QueryRecord | None, error: BaseException | None = None) -> None: ...


class Observer(Protocol):
    def start_query(self, rpc: str, query_id: str) -> QueryObservation: ...

    def batch(self, skill: str, implementation: ImplementationSpec, batch_id: str, size: int,
              first_wait_s: float, tags: Sequence[Any]) -> contextlib.AbstractContextManager[Any]:
        """One batched backend request carrying ``size`` queries; ``tags``
        are the ``SkillObservation``s of the queries it carries (for span
        links)."""


class RecordSink(Protocol):
    def submit(self, record: QueryRecord) -> None:
        """Take a record without blocking; drop (and count) it when full."""


# ---- the do-nothing defaults ------------------------------------------------

@dataclass
class _NullSkill:
    headers: Mapping[str, str] = field(default_factory=dict)

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def finish(self, outcome: SkillOutcome, *, queue_wait_ms: float = 0.0, attempts: int = 1) -> None:
        pass


_NULL_SKILL = _NullSkill()


class _NullQuery:
    trace_id = ""

    def selection(self, plan: RoutePlan, start_ns: int, end_ns: int) -> None:
        pass

    @contextlib.contextmanager
    def skill_call(self, planned: PlannedSkill) -> Iterator[SkillObservation]:
        yield _NULL_SKILL

    def synthesis(self, synthesis: Synthesis, start_ns: int, end_ns: int) -> None:
        pass

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def finish(self, record: QueryRecord | None, error: BaseException | None = None) -> None:
        pass


_NULL_QUERY = _NullQuery()


class NullObserver:
    def start_query(self, rpc: str, query_id: str) -> QueryObservation:
        return _NULL_QUERY

    def batch(self, skill: str, implementation: ImplementationSpec, batch_id: str, size: int,
              first_wait_s: float, tags: Sequence[Any]) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


class NullSink:
    def submit(self, record: QueryRecord) -> None:
        pass
