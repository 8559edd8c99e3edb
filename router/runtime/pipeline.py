"""The orchestrator: the one place that owns the order of a query's stages,
and nothing else.

    plan       score → top-k → implementation per skill          (core.routing)  ← Route stops here
    call       per chosen skill: its implementation's caller     (runtime.calls, chosen at start-up)
               → one typed CallResult; refused → the next-best
               skill steps in; failed while time and the retry
               budget remain → the skill's next implementation,
               or the next-best skill, steps in
    synthesize weights, text, quality, cost ledger                 (core.synthesis)
    report     one QueryRecord per Execute received, whatever its
               outcome: to the live registry, the observer and the
               metrics store

The orchestrator never knows how a call was made (direct, coalesced or
batched): it awaits ``caller.call(request)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from router.core.admission import RejectReason
from router.core.batching import split_cost
from router.core.errors import (
    AllSkillsFailed,
    DeadlineExceeded,
    NoSkillActivated,
    Overloaded,
    ShuttingDown,
)
from router.core.implementations import Learned, choose_implementation
from router.core.routing import PlannedSkill, RoutePlan, SkillIndex, StandbyQueue, learned_for, plan_route
from router.core.selection import RejectionReason
from router.core.signals import apply_signals
from router.core.synthesis import QueryOutcome, SkillOutcome, Status, Synthesis, account, synthesize
from router.core.types import ImplementationSpec, Query, RoutingPolicy

from .calls import CallOutcome, CallRequest, CallResult
from .events import QueryEvents
from .observer import NullObserver, NullSink, Observer, QueryObservation, QueryRecord, RecordSink
from .ports import SkillCall, Understanding
from .registry import LiveRegistry
from .skills import SkillRuntime

# Answer with the skills that did reply a little before the caller's deadline,
# instead of letting the deadline pass with nothing.
DEADLINE_MARGIN_S = 0.010
DEADLINE_MARGIN_FRACTION = 0.02
# A failed call is replaced only while this much of the deadline remains.
MIN_FALLBACK_S = 0.1

_STATUS = {CallOutcome.OK: Status.OK, CallOutcome.FAILED: Status.FAILED, CallOutcome.TIMED_OUT: Status.TIMED_OUT,
           CallOutcome.DEADLINE: Status.DEADLINE, CallOutcome.REFUSED: Status.REFUSED}


@dataclass(frozen=True, slots=True)
class ShedSkill:
    """A skill (implementation) dropped for a query: refused by admission,
    or its call failed; ``replaced_by`` stepped in (empty when none could)."""

    skill: str
    implementation: str
    reason: RejectReason
    detail: str
    replaced_by: str = ""
    replaced_by_implementation: str = ""


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    query_id: str
    plan: RoutePlan
    selection_us: int


@dataclass(frozen=True, slots=True)
class ExecuteOutcome:
    query_id: str
    trace_id: str
    outcome: QueryOutcome
    plan: RoutePlan
    ran: tuple[PlannedSkill, ...]  # the skills that ran, in the order of ``outcomes``
    outcomes: tuple[SkillOutcome, ...]
    shed: tuple[ShedSkill, ...]
    synthesis: Synthesis
    selection_us: int
    execution_us: int
    total_us: int


@dataclass
class _QueryRun:
    """The state of one Execute while it runs."""

    qid: str
    query: Query
    obs: QueryObservation
    arrived: float  # wall clock, unix seconds
    t_start: int  # monotonic ns
    deadline_at: float  # the pipeline's clock: when to answer with what we have
    caller_deadline_at: float  # the pipeline's clock: the caller's own deadline
    plan: RoutePlan | None = None
    t_select: tuple[int, int] = (0, 0)
    t_executed: int = 0
    standby: StandbyQueue | None = None
    skill_set: tuple[str, ...] = ()
    max_utilization: float = 0.0  # of the chosen skills' gates at dispatch
    avg_queue_depth: float = 0.0
    ran: list[PlannedSkill] = field(default_factory=list)
    outcomes: list[SkillOutcome] = field(default_factory=list)
    shed: list[ShedSkill] = field(default_factory=list)
    synthesis: Synthesis | None = None
    events: QueryEvents | None = None  # a streaming caller (ExecuteStream); None for Execute
    cache_hits: list[str] = field(default_factory=list)  # skills answered from the cache
    cache_misses: list[str] = field(default_factory=list)  # skills looked up and fetched
    policy: RoutingPolicy | None = None  # an experiment arm's policy (None: the pipeline's)
    arm: str = ""  # "experiment/arm" ("" when none)
    shadow: bool = False  # a shadow run of the control arm


class _Utilization:
    """The load bias's input, read only for the skills a query scores."""

    __slots__ = ("_runtimes",)

    def __init__(self, runtimes: Mapping[str, SkillRuntime]) -> None:
        self._runtimes = runtimes

    def get(self, name: str, default: float = 0.0) -> float:
        rt = self._runtimes.get(name)
        return rt.gate.utilization if rt is not None else default


class Pipeline:
    def __init__(
        self,
        index: SkillIndex,
        policy: RoutingPolicy,
        runtimes: Mapping[str, SkillRuntime],
        registry: LiveRegistry,
        *,
        observer: Observer | None = None,
        sink: RecordSink | None = None,
        load_bias: float = 0.0,
        default_deadline_s: float = 30.0,
        hash_query: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        understanding: Understanding | None = None,
        learned: Learned | None = None,
    ) -> None:
        self.index = index
        self.policy = policy
        self.runtimes = runtimes
        self.registry = registry
        self.observer: Observer = observer or NullObserver()
        self.sink: RecordSink = sink or NullSink()
        self.load_bias = load_bias
        self.default_deadline_s = default_deadline_s
        # The metrics row's query_hash: a keyed hash (the composition root
        # keys it from the environment or a key file beside the store).
        self._hash_query = hash_query or _process_keyed_hash()
        self._clock = clock
        self._wall = wall
        self._new_id = new_id
        self._utilization = _Utilization(runtimes)
        self.understanding = understanding
        # The measured quality and random source the expected_quality
        # implementation policy reads (runtime.feedback.QualityRegistry).
        self.learned = learned
        self._draining = False
        self.in_flight = 0  # queries being executed now

    # ---- lifecycle -------------------------------------------------------

    @property
    def skill_names(self) -> list[str]:
        return [s.name for s in self.index.skills]

    def start_draining(self) -> None:
        """Refuse new queries (ShuttingDown); the server's grace period lets
        the ones in flight finish."""
        self._draining = True

    async def aclose(self) -> None:
        """Flush the batchers and shared calls (after the server stopped)."""
        for rt in self.runtimes.values():
            await rt.aclose()

    def __repr__(self) -> str:
        busy = sum(1 for rt in self.runtimes.values() if rt.gate.in_flight)
        return (f"<Pipeline {len(self.index)} skills [in-flight {self.in_flight} queries | {busy} skills busy"
                f" | impaired {sorted(self.registry.impaired)}{' | draining' if self._draining else ''}]>")

    # ---- plan ------------------------------------------------------------

    def unavailable(self, now: float) -> dict[str, dict[str, str]]:
        """skill → implementation → why no call gets through now; only the
        skills with a breaker that is not closed are looked at."""
        out = {}
        for name in list(self.registry.impaired):
            rt = self.runtimes.get(name)  # None: a skill of a newer config generation
            down = rt.unavailable(now) if rt is not None else None
            if down:
                out[name] = down
        return out

    async def _plan(self, query: Query, explain_all: bool,
                    policy: RoutingPolicy | None = None) -> tuple[RoutePlan, int, int]:
        t0 = time.monotonic_ns()
        # Query understanding: signals from the text where the caller left a gap.
        signals = None if self.understanding is None else await self.understanding.understand(query)
        if signals is not None:
            query = apply_signals(query, signals)
        plan = plan_route(self.index, query, policy or self.policy, self.registry.rates,
                          self.unavailable(self._clock()),
                          utilization=self._utilization if self.load_bias else None, load_bias=self.load_bias,
                          explain_all=explain_all, signals=signals, learned=self.learned)
        return plan, t0, time.monotonic_ns()

    async def route(self, query: Query, *, explain_all: bool = False) -> RouteOutcome:
        if self._draining:
            raise ShuttingDown()
        qid = self._new_id()
        obs = self.observer.start_query("route", qid)
        try:
            plan, t0, t1 = await self._plan(query, explain_all)
            obs.selection(plan, t0, t1)
            self.registry.record_route()
        except BaseException as exc:
            obs.finish(None, exc)
            raise
        obs.finish(None)
        return RouteOutcome(qid, plan, (t1 - t0) // 1000)

    # ---- execute ---------------------------------------------------------

    async def execute(self, query: Query, timeout_s: float | None, *, explain_all: bool = False,
                      events: QueryEvents | None = None, policy: RoutingPolicy | None = None, arm: str = "",
                      shadow: bool = False) -> ExecuteOutcome:
        """Run one query. ``events`` (ExecuteStream) is told the routing
        decision, each skill's deltas and result and each shed skill as they
        happen; the run itself is the same. ``policy``/``arm``/``shadow``: an
        experiment arm's run (see ``runtime.experiments``); its record carries
        the arm."""
        timeout_s = self.default_deadline_s if timeout_s is None else timeout_s
        now = self._clock()
        # Keep a margin so the skills that did answer are returned before the
        # caller's deadline passes.
        budget_s = max(0.0, timeout_s - min(DEADLINE_MARGIN_S + timeout_s * DEADLINE_MARGIN_FRACTION, timeout_s / 2))
        qid = self._new_id()
        run = _QueryRun(qid, query, self.observer.start_query("execute", qid), self._wall(), time.monotonic_ns(),
                        now + budget_s, now + timeout_s, events=events, policy=policy, arm=arm, shadow=shadow)
        self.in_flight += 1
        outcome = QueryOutcome.FAILED
        error: BaseException | None = None
        try:
            if self._draining:
                raise ShuttingDown()
            outcome = await self._execute(run, explain_all)
            return self._result(run, outcome)
        except asyncio.CancelledError as exc:
            outcome = QueryOutcome.DEADLINE if self._clock() >= run.caller_deadline_at else QueryOutcome.CANCELLED
            error = exc
            raise
        except (Overloaded, ShuttingDown) as exc:
            outcome, error = QueryOutcome.REFUSED, exc
            raise
        except NoSkillActivated as exc:
            outcome, error = QueryOutcome.UNROUTED, exc
            raise
        except DeadlineExceeded as exc:
            outcome, error = QueryOutcome.DEADLINE, exc
            raise
        except BaseException as exc:
            outcome, error = QueryOutcome.FAILED, exc
            raise
        finally:
            self.in_flight -= 1
            record = self._record(run, outcome)
            if not run.shadow:  # a shadow's cost is counted apart (runtime.experiments), not in the totals
                self.registry.record_query(record)
            self.sink.submit(record)
            run.obs.finish(record, error)

    async def _execute(self, run: _QueryRun, explain_all: bool) -> QueryOutcome:
        plan, t0, t1 = await self._plan(run.query, explain_all, run.policy)
        query = run.query = plan.query  # with the signals' domain and complexity
        run.plan, run.t_select = plan, (t0, t1)
        run.obs.selection(plan, t0, t1)
        if not plan.planned:
            self._raise_if_breakers_block(plan)
            raise NoSkillActivated(query.domain, query.complexity,
                                   {r.name: r.detail for r in plan.rejected
                                    if r.reason is RejectionReason.NOT_ACTIVATED})
        if run.events is not None:
            run.events.routed(run.qid, run.obs.trace_id, plan)
        gates = [self.runtimes[p.name].gate for p in plan.planned]
        run.standby = StandbyQueue(plan)
        run.skill_set = tuple(p.name for p in plan.planned)
        run.max_utilization = max(g.utilization for g in gates)
        run.avg_queue_depth = sum(g.queued for g in gates) / len(gates)
        slots = await asyncio.gather(*(self._slot(p, run) for p in plan.planned))
        run.t_executed = time.monotonic_ns()
        for slot in slots:
            if slot is not None:
                run.ran.append(slot[0])
                run.outcomes.append(slot[1])
        if not run.outcomes:
            retry = min((self.runtimes[s.skill].gate.retry_after_s() for s in run.shed), default=1.0)
            raise Overloaded("every candidate skill is saturated: "
                             + "; ".join(f"{s.skill}: {s.reason}" for s in run.shed), retry)
        run.synthesis = synthesize(run.outcomes, plan.baseline_cost, plan.baseline_skills)
        run.obs.synthesis(run.synthesis, run.t_executed, time.monotonic_ns())
        if run.synthesis.any_ok:
            return QueryOutcome.OK if all(o.ok for o in run.outcomes) else QueryOutcome.PARTIAL
        if all(o.status in (Status.DEADLINE, Status.TIMED_OUT) for o in run.outcomes) \
                and self._clock() >= run.deadline_at - 0.001:
            raise DeadlineExceeded("the deadline passed before any skill answered: "
                                   + "; ".join(f"{o.skill}: {o.error}" for o in run.outcomes))
        raise AllSkillsFailed({o.skill: o.error for o in run.outcomes})

    def _raise_if_breakers_block(self, plan: RoutePlan) -> None:
        """Activated skills left out only because no implementation's breaker
        lets a call through are saturated, not unfit: Overloaded, with the
        time until one may take calls again."""
        now = self._clock()
        blocked: dict[str, tuple[float, str]] = {}
        for r in plan.rejected:
            if r.reason is not RejectionReason.NO_IMPLEMENTATION:
                continue
            rt = self.runtimes[r.name]
            why = rt.unavailable(now)
            wait = rt.available_in_s(now)
            if wait is not None and all(i.name in why for i in rt.spec.implementations):
                blocked[r.name] = (wait, "; ".join(why.values()))
        if blocked:
            raise Overloaded("every candidate skill is unavailable: "
                             + "; ".join(f"{name}: {why}" for name, (_, why) in blocked.items()),
                             max(0.05, min(wait for wait, _ in blocked.values())))

    # ---- one chosen skill -----------------------------------------------

    async def _slot(self, planned: PlannedSkill, run: _QueryRun) -> tuple[PlannedSkill, SkillOutcome] | None:
        """Run one chosen skill. Refused: the next-best skill steps in.
        Failed while time and the retry budget remain: the skill's next
        implementation (or the next-best skill) steps in. None: nothing
        could take the query."""
        current: PlannedSkill | None = planned
        replaced, reason = "", ""
        tried: set[tuple[str, str]] = set()
        failed: tuple[PlannedSkill, SkillOutcome] | None = None
        while current is not None:
            impl = current.choice.implementation
            assert impl is not None
            tried.add((current.name, impl.name))
            rt = self.runtimes[current.name]
            result, outcome = await self._call(current, rt, impl, run, replaced, reason)
            if result.outcome in (CallOutcome.OK, CallOutcome.DEADLINE):
                return current, outcome
            if result.refusal is not None:
                rt.shed(result.refusal)
                why, detail = result.refusal.reason, str(result.refusal)
                nxt = self._standby(run)
            else:
                failed = (current, outcome)
                why, detail = RejectReason.CALL_FAILED, outcome.error
                nxt = self._fallback(current, rt, run, tried)
            if nxt is None and why is RejectReason.CALL_FAILED:
                return failed
            nxt_impl = nxt.choice.implementation if nxt is not None else None
            shed = ShedSkill(current.name, impl.name, why, detail, nxt.name if nxt else "",
                             nxt_impl.name if nxt_impl else "")
            run.shed.append(shed)
            if run.events is not None:
                run.events.shed(shed)
            run.obs.event("skill.shed", {"router.skill": current.name, "router.shed.reason": str(why),
                                         "router.shed.replaced_by": nxt.name if nxt else ""})
            replaced, reason = f"{current.name}/{impl.name}", str(why)
            current = nxt
        return failed

    def _standby(self, run: _QueryRun) -> PlannedSkill | None:
        assert run.standby is not None
        return run.standby.pop(self.unavailable(self._clock()))

    def _fallback(self, failed: PlannedSkill, rt: SkillRuntime, run: _QueryRun,
                  tried: set[tuple[str, str]]) -> PlannedSkill | None:
        """Who steps in for a failed call: the skill's next implementation,
        else the next-best skill; only while time remains for a call and the
        skill's retry budget has a token (a failing backend must not turn
        every query into several)."""
        now = self._clock()
        if run.deadline_at - now < MIN_FALLBACK_S or not rt.budget.try_spend(now):
            return None
        down = dict(rt.unavailable(now))
        down.update({i: "failed for this query" for s, i in tried if s == failed.name})
        p = run.policy or self.policy
        choice = choose_implementation(failed.skill, run.query, dynamic=p.moe_enabled and p.dynamic_routing_enabled,
                                       strict_floor=p.strict_quality_floor, unavailable=down, weights=p.fit_weights,
                                       learned=learned_for(p, self.learned))
        if choice.implementation is not None:
            return PlannedSkill(failed.chosen, choice)
        return self._standby(run)

    async def _call(self, planned: PlannedSkill, rt: SkillRuntime, impl: ImplementationSpec, run: _QueryRun,
                    replaced: str, reason: str) -> tuple[CallResult, SkillOutcome]:
        q = run.query
        with run.obs.skill_call(planned) as sk:
            if replaced:
                sk.event("skill.stepped_in", {"router.stepped_in_for": replaced, "router.step_in.reason": reason})
            call = SkillCall(query_id=run.qid, skill=planned.name, implementation=impl, query=q.text,
                             domain=q.domain, complexity=q.complexity, system_prompt=planned.skill.system_prompt,
                             metadata=q.metadata, headers=sk.headers)
            events = run.events
            on_delta = None if events is None else (
                lambda text, attempt, skill=planned.name, impl=impl.name: events.delta(skill, impl, text, attempt))
            result = await rt.callers[impl.name].call(CallRequest(call, q.priority, run.deadline_at, sk, run.skill_set,
                                                                  on_delta))
            outcome = self._outcome(planned, impl, result, replaced, reason)
            if result.cached:
                run.cache_hits.append(planned.name)
            elif result.cache_missed:
                run.cache_misses.append(planned.name)
            if events is not None and result.outcome is not CallOutcome.REFUSED:
                events.skill_result(outcome)
            if result.outcome in (CallOutcome.OK, CallOutcome.FAILED, CallOutcome.TIMED_OUT) and not result.cached:
                # The skill's own record: refusals, the caller's deadline and cache hits say nothing of it.
                self.registry.record_call(planned.name, outcome.ok, outcome.latency_ms)
            sk.finish(outcome, queue_wait_ms=outcome.queue_wait_ms, attempts=outcome.attempts)
        return result, outcome

    @staticmethod
    def _outcome(planned: PlannedSkill, impl: ImplementationSpec, r: CallResult, replaced: str,
                 reason: str) -> SkillOutcome:
        common = {"latency_ms": r.latency_s * 1000, "quality": impl.quality, "queue_wait_ms": r.queue_wait_s * 1000,
                  "attempts": r.attempts, "batch_size": r.batch_size, "shared_by": r.shared_by,
                  "stepped_in_for": replaced, "step_in_reason": reason}
        score = planned.chosen.score.score
        if r.reply is None or not r.ok:
            return SkillOutcome(planned.name, impl.name, impl.model, score, _STATUS[r.outcome], error=r.error, **common)
        reply = r.reply
        cost = reply.cost if reply.cost is not None else impl.cost_per_query
        if r.cached:  # a hit costs nothing; the ledger counts what it saved
            return SkillOutcome(planned.name, impl.name, reply.model or impl.model, score, Status.OK,
                                output=reply.output, cost=0.0, input_tokens=reply.input_tokens,
                                output_tokens=reply.output_tokens, cached=True, cache_age_ms=r.cache_age_s * 1000,
                                cache_saved=cost, **common)
        return SkillOutcome(planned.name, impl.name, reply.model or impl.model, score, Status.OK, output=reply.output,
                            cost=split_cost(cost, r.shared_by), input_tokens=reply.input_tokens,
                            output_tokens=reply.output_tokens, **common)

    # ---- results and records ---------------------------------------------

    def _result(self, run: _QueryRun, outcome: QueryOutcome) -> ExecuteOutcome:
        assert run.plan is not None and run.synthesis is not None
        t0, t1 = run.t_select
        return ExecuteOutcome(run.qid, run.obs.trace_id, outcome, run.plan, tuple(run.ran), tuple(run.outcomes),
                              tuple(run.shed), run.synthesis, (t1 - t0) // 1000, (run.t_executed - t1) // 1000,
                              (time.monotonic_ns() - run.t_start) // 1000)

    def _record(self, run: _QueryRun, outcome: QueryOutcome) -> QueryRecord:
        """The query's row of the metrics store (the seed's brain_moe_metrics)."""
        plan, query = run.plan, run.query
        t_done = time.monotonic_ns()
        t0, t1 = run.t_select if plan is not None else (run.t_start, run.t_start)
        t_exec = run.t_executed or (t_done if plan is not None and plan.planned else t1)
        top = run.ran[0] if run.ran else (plan.planned[0] if plan is not None and plan.planned else None)
        baseline = plan.baseline_cost if plan is not None else 0.0
        acc = account(outcome, run.synthesis, baseline)
        return QueryRecord(
            query_id=run.qid, timestamp=run.arrived, rpc="execute", status=outcome.value,
            query_hash=self._hash_query(query.text), domain=query.domain, complexity=query.complexity,
            skills_considered=len(self.index), skills_selected=len(run.ran),
            top_skill=top.name if top else "", top_skill_score=top.chosen.score.score if top else 0.0,
            selection_time_ms=(t1 - t0) / 1e6, execution_time_ms=(t_exec - t1) / 1e6,
            total_time_ms=(t_done - run.t_start) / 1e6,
            total_cost=acc.cost, cost_saved=acc.saved, baseline_cost=baseline, quality_score=acc.quality,
            max_utilization=run.max_utilization, avg_queue_depth=run.avg_queue_depth,
            skills=tuple(p.name for p in run.ran), skills_ok=tuple(o.skill for o in run.outcomes if o.ok),
            trace_id=run.obs.trace_id, skills_cached=tuple(run.cache_hits),
            skills_cache_missed=tuple(run.cache_misses),
            cache_saved=run.synthesis.ledger.cache_saved if run.synthesis is not None else 0.0,
            **_signal_columns(plan),
            implementations=tuple(o.implementation for o in run.outcomes),
            arm=run.arm, shadow=run.shadow, declared_quality=acc.quality,
        )


def _process_keyed_hash() -> Callable[[str], str]:
    """The default ``hash_query``: HMAC-SHA256 keyed with a random key of this
    process (the composition root passes one keyed from the environment or
    a key file beside the store)."""
    key = secrets.token_bytes(32)
    return lambda text: hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]


__all__ = ["ExecuteOutcome", "Pipeline", "RouteOutcome", "ShedSkill"]


def _signal_columns(plan: RoutePlan | None) -> dict[str, str]:
    sig = plan.signals if plan is not None else None
    if sig is None:
        return {}
    return {"domain_source": sig.domain_source.value, "complexity_source": sig.complexity_source.value,
            "signal_method": sig.method}
