"""The orchestrator: the one place that owns the order of a query's stages.

    plan       score → top-k → implementation per skill          (core.routing)  ← Route stops here
    admit      per chosen skill: gate, breaker; a saturated skill is shed and
               the next-best activated skill steps in              (runtime.gate, core.admission)
    call       batched (one permit per batch), coalesced (single flight) or
               direct, with retries inside the deadline            (runtime.batcher, runtime.retry)
    synthesize weights, text, quality, cost ledger                 (core.synthesis)
    report     observer (spans, metrics), one metrics-store row    (observer hook)

Each decision is a function of ``router.core``; this module wires them,
enforces the caller's deadline and feeds outcomes back into the live
registry that the next query reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from router.core.admission import GateRejected, RejectReason
from router.core.batching import batch_key, should_batch, split_cost
from router.core.breaker import CircuitBreaker, is_breaker_failure
from router.core.errors import (
    AllSkillsFailed,
    BackendError,
    BackendTimeout,
    DeadlineExceeded,
    NoSkillActivated,
    Overloaded,
    ShuttingDown,
)
from router.core.implementations import ImplementationChoice
from router.core.routing import PlannedSkill, RoutePlan, plan_route
from router.core.selection import RejectionReason
from router.core.signals import apply_signals
from router.core.synthesis import SkillOutcome, Status, Synthesis, synthesize
from router.core.types import ImplementationSpec, Priority, Query, RoutingPolicy, SkillSpec

from .batcher import Batch, Batcher, BatcherGroup
from .observer import NullObserver, NullSink, Observer, QueryObservation, QueryRecord, RecordSink, SkillObservation
from .ports import Backend, SkillCall, SkillReply, Understanding
from .registry import LiveRegistry
from .retry import RetryResult, call_with_retries
from .skills import AdmissionOptions, SkillRuntime

# Answer with the skills that did reply a little before the caller's deadline,
# instead of letting the deadline pass with nothing.
DEADLINE_MARGIN_S = 0.010
DEADLINE_MARGIN_FRACTION = 0.02


class BackendLookup(Protocol):
    def get(self, skill: str, implementation: str) -> Backend: ...


@dataclass(frozen=True, slots=True)
class ShedSkill:
    """A chosen skill that could not take the query."""

    skill: str
    reason: str  # a RejectReason value
    detail: str
    replaced_by: str = ""


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
    ran: tuple[PlannedSkill, ...]  # the skills that ran, in the order of ``outcomes``
    outcomes: tuple[SkillOutcome, ...]
    shed: tuple[ShedSkill, ...]
    synthesis: Synthesis
    selection_us: int
    execution_us: int
    total_us: int


@dataclass(slots=True)
class _Item:
    """One caller's call waiting in a batcher."""

    call: SkillCall
    priority: Priority
    deadline_s: float  # the caller's own deadline, on the pipeline's clock


@dataclass
class _QueryRun:
    """The state of one Execute while it runs."""

    qid: str
    query: Query
    obs: QueryObservation
    plan: RoutePlan
    arrived: float  # wall clock, unix seconds
    t_start: int  # monotonic ns: arrival, then selection start and end
    t_select: tuple[int, int]
    deadline_s: float  # on the pipeline's clock (seconds)
    standby: list[PlannedSkill]
    skill_set: tuple[str, ...]
    max_utilization: float  # of the chosen skills' gates at dispatch
    avg_queue_depth: float
    shed: list[ShedSkill] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        skills: tuple[SkillSpec, ...],
        policy: RoutingPolicy,
        backends: BackendLookup,
        registry: LiveRegistry,
        runtimes: Mapping[str, SkillRuntime],
        *,
        admission: AdmissionOptions = AdmissionOptions(),
        observer: Observer | None = None,
        sink: RecordSink | None = None,
        default_deadline_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        understanding: Understanding | None = None,
    ) -> None:
        self.skills = skills
        self.policy = policy
        self.backends = backends
        self.registry = registry
        self.runtimes = dict(runtimes)
        self.admission = admission
        self.observer: Observer = observer or NullObserver()
        self.sink: RecordSink = sink or NullSink()
        self.default_deadline_s = default_deadline_s
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self._new_id = new_id
        self.understanding = understanding
        self._draining = False
        self.in_flight = 0  # queries being executed now
        for rt in self.runtimes.values():
            rt.batchers = BatcherGroup(self._batcher_factory(rt), name=rt.name)

    # ---- lifecycle -------------------------------------------------------

    @property
    def skill_names(self) -> list[str]:
        return [s.name for s in self.skills]

    def start_draining(self) -> None:
        """Refuse new queries (ShuttingDown); the server's grace period lets
        the ones in flight finish."""
        self._draining = True

    async def aclose(self) -> None:
        """Flush the batchers and shared calls (after the server stopped)."""
        for rt in self.runtimes.values():
            if rt.batchers is not None:
                await rt.batchers.aclose()
            await rt.flights.aclose()

    def _admit(self) -> None:
        if self._draining:
            raise ShuttingDown()

    # ---- plan ------------------------------------------------------------

    async def _plan(self, query: Query) -> tuple[RoutePlan, int, int]:
        t0 = time.monotonic_ns()
        # Query understanding: signals from the text where the caller left a gap.
        signals = None if self.understanding is None else await self.understanding.understand(query)
        if signals is not None:
            query = apply_signals(query, signals)
        now = self._clock()
        unavailable = {n: u for n, rt in self.runtimes.items() if (u := rt.unavailable(now))}
        utilization = {n: rt.gate.utilization for n, rt in self.runtimes.items()} if self.admission.load_bias else None
        plan = plan_route(self.skills, query, self.policy, self.registry.success_rates(), unavailable,
                          utilization=utilization, load_bias=self.admission.load_bias, signals=signals)
        return plan, t0, time.monotonic_ns()

    async def route(self, query: Query) -> RouteOutcome:
        self._admit()
        qid = self._new_id()
        obs = self.observer.start_query("route", qid)
        try:
            plan, t0, t1 = await self._plan(query)
            obs.selection(plan, t0, t1)
            self.registry.record_route()
        except BaseException as exc:
            obs.finish(None, exc)
            raise
        obs.finish(None)
        return RouteOutcome(qid, plan, (t1 - t0) // 1000)

    # ---- execute ---------------------------------------------------------

    async def execute(self, query: Query, timeout_s: float | None) -> ExecuteOutcome:
        self._admit()
        self.in_flight += 1
        try:
            return await self._execute(query, self.default_deadline_s if timeout_s is None else timeout_s)
        finally:
            self.in_flight -= 1

    async def _execute(self, query: Query, timeout_s: float) -> ExecuteOutcome:
        arrived = self._wall()
        t_start = time.monotonic_ns()
        # Keep a margin so the skills that did answer are returned before the
        # caller's deadline passes.
        budget_s = max(0.0, timeout_s - min(DEADLINE_MARGIN_S + timeout_s * DEADLINE_MARGIN_FRACTION, timeout_s / 2))
        qid = self._new_id()
        obs = self.observer.start_query("execute", qid)
        record: QueryRecord | None = None
        try:
            plan, t0, t1 = await self._plan(query)
            query = plan.query  # with the signals' domain and complexity
            obs.selection(plan, t0, t1)
            if not plan.planned:
                self._raise_if_breakers_block(plan)
                raise NoSkillActivated(query.domain, query.complexity,
                                       {r.name: r.detail for r in plan.rejected
                                        if r.reason is RejectionReason.NOT_ACTIVATED})
            gates = [self.runtimes[p.name].gate for p in plan.planned]
            run = _QueryRun(qid, query, obs, plan, arrived, t_start, (t0, t1), self._clock() + budget_s,
                            list(plan.standby), tuple(p.name for p in plan.planned),
                            max(g.utilization for g in gates), sum(g.queued for g in gates) / len(gates))
            slots = await asyncio.gather(*(self._slot(p, run) for p in plan.planned))
            done = [s for s in slots if s is not None]
            t2 = time.monotonic_ns()
            if not done:
                retry = min((self.runtimes[s.skill].gate.retry_after_s() for s in run.shed), default=1.0)
                detail = "; ".join(f"{s.skill}: {s.reason}" for s in run.shed)
                self.registry.record_query(skills_selected=0, cost=0.0, baseline=plan.baseline_cost, failed=True)
                record = self._record(run, [], [], None, t2, t2, "resource_exhausted")
                self.sink.submit(record)
                raise Overloaded(f"every candidate skill is saturated: {detail}", retry)
            ran = [p for p, _ in done]
            outcomes = [o for _, o in done]
            synthesis = synthesize(outcomes, plan.baseline_cost, plan.baseline_skills)
            t3 = time.monotonic_ns()
            obs.synthesis(synthesis, t2, t3)
            failed = not synthesis.any_ok
            self.registry.record_query(skills_selected=len(ran), cost=synthesis.ledger.actual,
                                       baseline=plan.baseline_cost, failed=failed)
            record = self._record(run, ran, outcomes, synthesis, t2, t3, "ok" if not failed else "unavailable")
            self.sink.submit(record)
            if failed:
                if all(o.status is Status.TIMED_OUT for o in outcomes) and self._clock() >= run.deadline_s - 0.001:
                    raise DeadlineExceeded("the deadline passed before any skill answered: "
                                           + "; ".join(f"{o.skill}: {o.error}" for o in outcomes))
                raise AllSkillsFailed({o.skill: o.error for o in outcomes})
        except BaseException as exc:
            obs.finish(record, exc)
            raise
        obs.finish(record)
        return ExecuteOutcome(qid, obs.trace_id, plan, tuple(ran), tuple(outcomes), tuple(run.shed), synthesis,
                              (t1 - t0) // 1000, (t2 - t1) // 1000, (t3 - t_start) // 1000)

    def _raise_if_breakers_block(self, plan: RoutePlan) -> None:
        """Activated skills left out only because no implementation's breaker
        lets a call through are saturated, not unfit: Overloaded, with the
        time until one may take calls again."""
        now = self._clock()
        blocked: dict[str, tuple[float, str]] = {}
        for r in plan.rejected:
            rt = self.runtimes[r.name]
            if r.reason is not RejectionReason.NO_IMPLEMENTATION:
                continue
            why = rt.unavailable(now)
            wait = rt.available_in_s(now)
            if wait is not None and all(i.name in why for i in rt.spec.implementations):
                blocked[r.name] = (wait, "; ".join(why.values()))
        if blocked:
            raise Overloaded("every candidate skill is unavailable: "
                             + "; ".join(f"{name}: {why}" for name, (_, why) in blocked.items()),
                             max(0.05, min(wait for wait, _ in blocked.values())))

    async def _slot(self, planned: PlannedSkill | None, run: _QueryRun) -> tuple[PlannedSkill, SkillOutcome] | None:
        """Run one chosen skill; when it cannot take the query, shed it and
        let the next-best activated skill step in. None: nothing could."""
        while planned is not None:
            rt = self.runtimes[planned.name]
            impl = planned.choice.implementation
            assert impl is not None
            remaining = run.deadline_s - self._clock()
            if self._batches(rt, impl, run.query.priority)[0]:
                # An item joining a batch needs no permit of its own: the
                # batch takes one as it goes (and sheds its items if refused).
                ok, why = rt.breakers[impl.name].would_allow(self._clock())
                why = "" if ok else RejectReason.BREAKER_OPEN
            else:
                # Queue only while the call itself would still fit before the deadline.
                ok, why = rt.gate.can_admit(run.query.priority, remaining - rt.service_time_s,
                                            breaker=rt.breakers[impl.name])
            refused: str | None = None  # refused before queueing (the gate counted nothing yet)
            if ok:
                try:
                    return planned, await self._run_skill(planned, rt, impl, run)
                except GateRejected as exc:
                    why = exc.reason.value if isinstance(exc.reason, RejectReason) else str(exc.reason)
                    detail = str(exc)
            else:
                detail = f"{planned.name}: {why}"
                refused = why
            rt.gate.note_shed(refused)
            nxt = self._next_standby(run)
            run.shed.append(ShedSkill(planned.name, why, detail, nxt.name if nxt else ""))
            run.obs.event("skill.shed", {"router.skill": planned.name, "router.shed.reason": why,
                                         "router.shed.replaced_by": nxt.name if nxt else ""})
            planned = nxt
        return None

    def _next_standby(self, run: _QueryRun) -> PlannedSkill | None:
        """The next-best activated skill not yet chosen whose implementation
        is usable now."""
        while run.standby:
            p = run.standby.pop(0)
            impl = p.choice.implementation
            if impl is not None and impl.name not in self.runtimes[p.name].unavailable(self._clock()):
                return p
        return None

    async def _run_skill(self, planned: PlannedSkill, rt: SkillRuntime, impl: ImplementationSpec,
                         run: _QueryRun) -> SkillOutcome:
        skill = planned.skill
        score = planned.chosen.score.score
        with run.obs.skill_call(planned) as sk:
            call = SkillCall(query_id=run.qid, skill=skill.name, implementation=impl, query=run.query.text,
                             domain=run.query.domain, complexity=run.query.complexity,
                             system_prompt=skill.system_prompt, metadata=run.query.metadata, headers=sk.headers)
            t0 = self._clock()
            batch_size, shared_by, wait_ms, attempts = 1, 1, 0.0, 1
            try:
                batch_ok = self._batches(rt, impl, run.query.priority)[0]
                remaining = run.deadline_s - self._clock()
                if batch_ok:
                    assert rt.batchers is not None
                    key = batch_key(rt.batching.key, rt.name, impl.name, run.query.domain, run.skill_set,
                                    run.query.complexity)
                    item = await self._within(remaining, rt.batchers.submit(
                        key, _Item(call, run.query.priority, run.deadline_s), tag=sk, deadline_s=remaining))
                    reply, attempts, wait_ms = item.value
                    batch_size = item.batch_size
                    sk.event("batch.joined", {"router.batch.id": item.batch_id, "router.batch.size": item.batch_size,
                                              "router.batch.wait_ms": item.wait_s * 1000})
                elif rt.batching.enabled:
                    # A backend that cannot batch still gains: identical calls
                    # in flight share one (single flight).
                    flight_key = (impl.name, impl.model, call.query, call.domain, call.system_prompt,
                                  round(call.complexity, 1))
                    # The shared call is not bound to its first caller's
                    # deadline: each caller stops waiting at its own.
                    flight_deadline = max(run.deadline_s, self._clock() + impl.timeout_s)
                    fr = await self._within(remaining, rt.flights.run_detailed(
                        flight_key, lambda: self._gated(rt, impl, run.query.priority, flight_deadline, sk,
                                                        lambda t: self.backends.get(rt.name, impl.name).call(call, t))))
                    (reply, attempts, wait_ms), shared_by = fr.value, fr.sharers
                else:
                    reply, attempts, wait_ms = await self._gated(
                        rt, impl, run.query.priority, run.deadline_s, sk,
                        lambda t: self.backends.get(rt.name, impl.name).call(call, t))
            except GateRejected as exc:
                sk.event("skill.shed", {"router.shed.reason": str(exc.reason)})
                sk.finish(SkillOutcome(skill.name, impl.name, impl.model, score, Status.FAILED,
                                       error=f"shed: {exc}", latency_ms=(self._clock() - t0) * 1000,
                                       quality=impl.quality))
                raise
            except (BackendError, DeadlineExceeded, ShuttingDown) as exc:
                timed_out = isinstance(exc, (BackendTimeout, DeadlineExceeded))
                outcome = SkillOutcome(skill.name, impl.name, impl.model, score,
                                       Status.TIMED_OUT if timed_out else Status.FAILED, error=str(exc),
                                       latency_ms=(self._clock() - t0) * 1000, quality=impl.quality,
                                       queue_wait_ms=wait_ms, attempts=getattr(exc, "attempts", attempts))
            else:
                cost = reply.cost if reply.cost is not None else impl.cost_per_query
                outcome = SkillOutcome(skill.name, impl.name, reply.model or impl.model, score, Status.OK,
                                       output=reply.output, cost=split_cost(cost, shared_by),
                                       latency_ms=(self._clock() - t0) * 1000, input_tokens=reply.input_tokens,
                                       output_tokens=reply.output_tokens, quality=impl.quality,
                                       queue_wait_ms=wait_ms, attempts=attempts, batch_size=batch_size,
                                       shared_by=shared_by)
            self.registry.record_call(skill.name, outcome.ok, outcome.latency_ms)
            sk.finish(outcome, queue_wait_ms=outcome.queue_wait_ms, attempts=outcome.attempts)
            return outcome

    @staticmethod
    def _batches(rt: SkillRuntime, impl: ImplementationSpec, priority: Priority) -> tuple[bool, str]:
        return should_batch(priority, enabled=rt.batching.enabled, supports_batch=rt.can_batch.get(impl.name, False),
                            priority_bypass=rt.batching.priority_bypass)

    async def _within(self, remaining_s: float, shared: Awaitable[Any]) -> Any:
        """Wait for a shared call (a batch, a single flight) no longer than
        this caller's own deadline. Leaving does not stop the shared call:
        it goes on for the callers still waiting."""
        bound = asyncio.timeout(max(0.0, remaining_s))
        try:
            async with bound:
                return await shared
        except TimeoutError:
            if bound.expired():
                raise BackendTimeout(f"no answer within {remaining_s * 1000:.0f} ms") from None
            raise

    async def _gated(self, rt: SkillRuntime, impl: ImplementationSpec, priority: Priority, deadline_s: float,
                     events: SkillObservation | None, send: Callable[[float], Any]) -> tuple[Any, int, float]:
        """One backend request under one permit of the skill's gate, through
        the implementation's breaker, with retries inside the deadline.
        Returns (value, attempts, queue wait ms); raises the last
        BackendError, or GateRejected when the skill cannot take it."""
        breaker = rt.breakers[impl.name]
        # Wait for a slot only while the call would still fit before the deadline.
        wait_s = max(0.0, deadline_s - self._clock() - rt.service_time_s)
        async with rt.gate.acquire(priority, timeout_s=wait_s) as permit:
            ok, why = breaker.allow(self._clock())
            if not ok:
                permit.ignore()
                raise GateRejected(RejectReason.BREAKER_OPEN, rt.gate.retry_after_s(), gate=rt.name, detail=why)
            wait_ms = permit.queue_wait_s * 1000

            async def attempt(n: int) -> Any:
                t = min(impl.timeout_s, deadline_s - self._clock())
                if t <= 0:
                    raise BackendTimeout(f"the deadline passed before attempt {n}")
                try:
                    return await asyncio.wait_for(send(t), t)
                except TimeoutError:
                    raise BackendTimeout(f"no answer within {t * 1000:.0f} ms") from None

            def on_retry(n: int, err: BackendError, decision: Any) -> None:
                if events is not None:
                    events.event("retry", {"router.retry.attempt": n, "router.retry.delay_ms": decision.delay_s * 1000,
                                           "error.type": type(err).__name__, "router.retry.reason": decision.reason})

            try:
                result: RetryResult = await call_with_retries(
                    attempt, policy=self.admission.retry, rng=self._rng, clock=self._clock, deadline_at=deadline_s,
                    budget=rt.budget, on_retry=on_retry)
            except BaseException:
                breaker.on_ignore(self._clock())
                raise
            now = self._clock()
            if result.ok:
                breaker.on_success(now)
            elif is_breaker_failure(result.error):  # type: ignore[arg-type]
                breaker.on_failure(now, str(result.error))
            else:
                breaker.on_ignore(now)
            self._report_transitions(breaker, events)
            if not result.ok:
                permit.dropped()
                err = result.error
                assert err is not None
                err.attempts = result.attempts  # type: ignore[attr-defined]
                raise err
            return result.value, result.attempts, wait_ms

    @staticmethod
    def _report_transitions(breaker: CircuitBreaker, events: SkillObservation | None) -> None:
        for t in breaker.drain_transitions():
            if events is not None:
                events.event("breaker.transition", {"router.breaker": t.breaker, "router.breaker.from": str(t.from_state),
                                                    "router.breaker.to": str(t.to_state),
                                                    "router.breaker.reason": t.reason})

    # ---- batching --------------------------------------------------------

    def _batcher_factory(self, rt: SkillRuntime) -> Callable[[Any], Batcher]:
        def make(key: Any) -> Batcher:
            impl = next(i for i in rt.spec.implementations if i.name == key[1])
            return Batcher(lambda batch: self._send_batch(rt, impl, batch),
                           window_s=rt.batching.window_s, max_batch_size=rt.batching.max_batch_size,
                           clock=self._clock, is_idle=lambda: rt.gate.in_flight == 0 and rt.gate.queued == 0,
                           expected_latency_s=impl.expected_latency_ms / 1000.0, name=f"{rt.name}/{impl.name}")
        return make

    async def _send_batch(self, rt: SkillRuntime, impl: ImplementationSpec,
                          batch: Batch[_Item]) -> Sequence[tuple[SkillReply, int, float] | BaseException]:
        """One batch = one backend request = one permit of the skill's gate."""
        priority = max(i.priority for i in batch.items)
        # The batch serves its callers up to the latest deadline among them;
        # each caller stops waiting at its own (``_within``).
        deadline = max(i.deadline_s for i in batch.items)
        backend = self.backends.get(rt.name, impl.name)
        calls = [i.call for i in batch.items]
        with self.observer.batch(rt.name, impl, batch.batch_id, batch.size, batch.first_wait_s, batch.tags):
            replies, attempts, wait_ms = await self._gated(rt, impl, priority, deadline, None,
                                                           lambda t: backend.call_batch(calls, t))
        return [r if isinstance(r, BaseException) else (r, attempts, wait_ms) for r in replies]

    # ---- records ---------------------------------------------------------

    def _record(self, run: _QueryRun, ran: Sequence[PlannedSkill], outcomes: Sequence[SkillOutcome],
                synthesis: Synthesis | None, t_executed: int, t_done: int, status: str) -> QueryRecord:
        """The query's row of the metrics store (the seed's brain_moe_metrics)."""
        plan, query = run.plan, run.query
        t0, t1 = run.t_select
        top = ran[0] if ran else (plan.planned[0] if plan.planned else None)
        return QueryRecord(
            query_id=run.qid, timestamp=run.arrived, rpc="execute", status=status,
            query_hash=hashlib.sha256(query.text.encode()).hexdigest()[:16],
            domain=query.domain, complexity=query.complexity,
            skills_considered=len(self.skills), skills_selected=len(ran),
            top_skill=top.name if top else "", top_skill_score=top.chosen.score.score if top else 0.0,
            selection_time_ms=(t1 - t0) / 1e6, execution_time_ms=(t_executed - t1) / 1e6,
            total_time_ms=(t_done - run.t_start) / 1e6,
            total_cost=synthesis.ledger.actual if synthesis else 0.0,
            cost_saved=synthesis.ledger.saved if synthesis else 0.0, baseline_cost=plan.baseline_cost,
            quality_score=synthesis.quality if synthesis else 0.0,
            synthesis_quality=synthesis.quality if synthesis else 0.0,
            max_utilization=run.max_utilization, avg_queue_depth=run.avg_queue_depth,
            skills=tuple(p.name for p in ran), skills_ok=tuple(o.skill for o in outcomes if o.ok),
            trace_id=run.obs.trace_id,
            **_signal_columns(plan),
        )


def _signal_columns(plan: RoutePlan) -> dict[str, str]:
    sig = plan.signals
    if sig is None:
        return {}
    return {"domain_source": sig.domain_source.value, "complexity_source": sig.complexity_source.value,
            "signal_method": sig.method}

__all__ = ["ExecuteOutcome", "ImplementationChoice", "Pipeline", "RouteOutcome", "ShedSkill"]
