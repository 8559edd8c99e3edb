"""The orchestrator: the one place that owns the order of a query's stages.

    plan (score → top-k → implementation)   ← Route stops here
    execute each chosen skill concurrently, within the deadline
    synthesize (weights, text, quality, cost ledger)
    report (observer spans/metrics, one metrics-store row)

Each stage is a small function of ``router.core``; this module only wires
them, enforces the deadline and feeds outcomes back into the live registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

from router.core.errors import AllSkillsFailed, BackendError, DeadlineExceeded, ShuttingDown
from router.core.routing import PlannedSkill, RoutePlan, plan_route
from router.core.synthesis import SkillOutcome, Status, Synthesis, synthesize
from router.core.types import Query, RoutingPolicy, SkillSpec

from .observer import NullObserver, NullSink, Observer, QueryObservation, QueryRecord, RecordSink
from .ports import Backend, SkillCall
from .registry import LiveRegistry

# Answer with the skills that did reply a little before the caller's deadline,
# instead of letting the deadline pass with nothing.
DEADLINE_MARGIN_S = 0.010
DEADLINE_MARGIN_FRACTION = 0.02


class BackendLookup(Protocol):
    def get(self, skill: str, implementation: str) -> Backend: ...


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    query_id: str
    plan: RoutePlan
    selection_us: int


@dataclass(frozen=True, slots=True)
class ExecuteOutcome:
    query_id: str
    trace_id: str
    plan: RoutePlan
    outcomes: tuple[SkillOutcome, ...]
    synthesis: Synthesis
    selection_us: int
    execution_us: int
    total_us: int


class Pipeline:
    def __init__(
        self,
        skills: tuple[SkillSpec, ...],
        policy: RoutingPolicy,
        backends: BackendLookup,
        registry: LiveRegistry,
        *,
        observer: Observer | None = None,
        sink: RecordSink | None = None,
        default_deadline_s: float = 30.0,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.skills = skills
        self.policy = policy
        self.backends = backends
        self.registry = registry
        self.observer: Observer = observer or NullObserver()
        self.sink: RecordSink = sink or NullSink()
        self.default_deadline_s = default_deadline_s
        self._clock_ns = clock_ns
        self._wall = wall
        self._new_id = new_id
        self._skill_by_name = {s.name: s for s in skills}
        self._draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- lifecycle -------------------------------------------------------

    @property
    def skill_names(self) -> list[str]:
        return [s.name for s in self.skills]

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start_draining(self) -> None:
        self._draining = True

    async def drained(self) -> None:
        await self._idle.wait()

    def _enter(self) -> None:
        if self._draining:
            raise ShuttingDown()
        self._in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    # ---- stages ----------------------------------------------------------

    def _plan(self, query: Query) -> tuple[RoutePlan, int, int]:
        t0 = self._clock_ns()
        plan = plan_route(self.skills, query, self.policy, self.registry.success_rates())
        return plan, t0, self._clock_ns()

    def route(self, query: Query) -> RouteOutcome:
        self._enter()
        try:
            qid = self._new_id()
            obs = self.observer.start_query("route", qid)
            try:
                plan, t0, t1 = self._plan(query)
                obs.selection(plan, t0, t1)
                self.registry.record_route()
            except BaseException as exc:
                obs.finish(None, exc)
                raise
            obs.finish(None)
            return RouteOutcome(qid, plan, (t1 - t0) // 1000)
        finally:
            self._leave()

    async def execute(self, query: Query, timeout_s: float | None) -> ExecuteOutcome:
        self._enter()
        try:
            return await self._execute(query, self.default_deadline_s if timeout_s is None else timeout_s)
        finally:
            self._leave()

    async def _execute(self, query: Query, timeout_s: float) -> ExecuteOutcome:
        arrived = self._wall()
        t_start = self._clock_ns()
        deadline_ns = t_start + int(timeout_s * 1e9)
        qid = self._new_id()
        obs = self.observer.start_query("execute", qid)
        record: QueryRecord | None = None
        try:
            plan, t0, t1 = self._plan(query)
            obs.selection(plan, t0, t1)
            if not plan.planned:
                raise AllSkillsFailed({})
            budget_s = max(0.0, (deadline_ns - self._clock_ns()) / 1e9)
            budget_s -= min(DEADLINE_MARGIN_S + budget_s * DEADLINE_MARGIN_FRACTION, budget_s / 2)
            outcomes = await asyncio.gather(*(self._run_skill(p, query, qid, obs, budget_s) for p in plan.planned))
            t2 = self._clock_ns()
            synthesis = synthesize(outcomes, plan.baseline_cost, plan.baseline_skills)
            t3 = self._clock_ns()
            obs.synthesis(synthesis, t2, t3)
            failed = not synthesis.any_ok
            self.registry.record_query(skills_selected=len(plan.planned), cost=synthesis.ledger.actual,
                                       baseline=plan.baseline_cost, failed=failed)
            record = self._record(qid, arrived, query, plan, outcomes, synthesis, t_start, t0, t1, t2, t3, obs.trace_id,
                                  "ok" if not failed else "unavailable")
            self.sink.submit(record)
            if failed:
                if all(o.status is Status.TIMED_OUT for o in outcomes) and self._clock_ns() >= deadline_ns - int(DEADLINE_MARGIN_S * 2e9):
                    raise DeadlineExceeded("the deadline passed before any skill answered: "
                                           + "; ".join(f"{o.skill}: {o.error}" for o in outcomes))
                raise AllSkillsFailed({o.skill: o.error for o in outcomes})
        except BaseException as exc:
            obs.finish(record, exc)
            raise
        obs.finish(record)
        return ExecuteOutcome(qid, obs.trace_id, plan, tuple(outcomes), synthesis,
                              (t1 - t0) // 1000, (t2 - t1) // 1000, (t3 - t_start) // 1000)

    async def _run_skill(self, planned: PlannedSkill, query: Query, qid: str, obs: QueryObservation,
                         budget_s: float) -> SkillOutcome:
        impl = planned.choice.implementation
        assert impl is not None  # plan_route only plans skills with an implementation
        skill = planned.skill
        backend = self.backends.get(skill.name, impl.name)
        live = self.registry.skills[skill.name]
        timeout_s = min(budget_s, impl.timeout_s)
        with obs.skill_call(planned) as sk:
            call = SkillCall(query_id=qid, skill=skill.name, implementation=impl, query=query.text,
                             domain=query.domain, complexity=query.complexity, system_prompt=skill.system_prompt,
                             metadata=query.metadata, headers=sk.headers)
            t0 = self._clock_ns()
            live.in_flight += 1
            try:
                reply = await asyncio.wait_for(backend.call(call, timeout_s), timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                outcome = self._failed(planned, Status.TIMED_OUT, f"no answer within {timeout_s * 1000:.0f} ms", t0)
            except BackendError as exc:
                status = Status.TIMED_OUT if exc.kind == "timeout" else Status.FAILED
                outcome = self._failed(planned, status, str(exc), t0)
            else:
                latency_ms = (self._clock_ns() - t0) / 1e6
                cost = reply.cost if reply.cost is not None else impl.cost_per_query
                outcome = SkillOutcome(skill.name, impl.name, reply.model or impl.model, planned.chosen.score.score,
                                       Status.OK, output=reply.output, cost=cost, latency_ms=latency_ms,
                                       input_tokens=reply.input_tokens, output_tokens=reply.output_tokens,
                                       quality=impl.quality)
            finally:
                live.in_flight -= 1
            self.registry.record_call(skill.name, outcome.ok, outcome.latency_ms)
            sk.finish(outcome)
            return outcome

    def _failed(self, planned: PlannedSkill, status: Status, error: str, t0: int) -> SkillOutcome:
        impl = planned.choice.implementation
        assert impl is not None
        return SkillOutcome(planned.name, impl.name, impl.model, planned.chosen.score.score, status,
                            error=error, latency_ms=(self._clock_ns() - t0) / 1e6, quality=impl.quality)

    def _record(self, qid: str, arrived: float, query: Query, plan: RoutePlan, outcomes: list[SkillOutcome],
                synthesis: Synthesis, t_start: int, t0: int, t1: int, t2: int, t3: int, trace_id: str,
                status: str) -> QueryRecord:
        top = plan.planned[0] if plan.planned else None
        return QueryRecord(
            query_id=qid, timestamp=arrived, rpc="execute", status=status,
            query_hash=hashlib.sha256(query.text.encode()).hexdigest()[:16],
            domain=query.domain, complexity=query.complexity,
            skills_considered=len(self.skills), skills_selected=len(plan.planned),
            top_skill=top.name if top else "", top_skill_score=top.chosen.score.score if top else 0.0,
            selection_time_ms=(t1 - t0) / 1e6, execution_time_ms=(t2 - t1) / 1e6, total_time_ms=(t3 - t_start) / 1e6,
            total_cost=synthesis.ledger.actual, cost_saved=synthesis.ledger.saved, baseline_cost=plan.baseline_cost,
            quality_score=synthesis.quality, synthesis_quality=synthesis.quality,
            max_utilization=0.0, avg_queue_depth=0.0,
            skills=tuple(p.name for p in plan.planned), skills_ok=tuple(o.skill for o in outcomes if o.ok),
            trace_id=trace_id,
        )

    def skill_spec(self, name: str) -> SkillSpec:
        return self._skill_by_name[name]

    def success_rates(self) -> Mapping[str, float]:
        return self.registry.success_rates()
