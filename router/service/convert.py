"""Translate between the wire (router.v1 messages) and the core's types.
Nothing here decides anything."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp

from router.core.admission import RejectReason
from router.core.breaker import BreakerState
from router.core.errors import InvalidArgument
from router.core.implementations import ImplementationChoice
from router.core.query import make_query
from router.core.routing import PlannedSkill, RoutePlan
from router.core.selection import RejectionReason
from router.core.signals import Signals, SignalSource
from router.core.synthesis import QueryOutcome, SkillOutcome, Status
from router.core.types import ImplementationSpec, Priority, Query, RoutingPolicy
from router.runtime.experiments import ArmLive
from router.runtime.feedback import FeedbackReceipt
from router.runtime.pipeline import ShedSkill
from router.runtime.stats import SkillSnapshot
from router.v1 import router_pb2 as pb

if TYPE_CHECKING:  # plain data from the metrics store; no import at run time
    from router.storage import WindowAggregate

_PRIORITY = {
    pb.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    pb.PRIORITY_LOW: Priority.LOW,
    pb.PRIORITY_NORMAL: Priority.NORMAL,
    pb.PRIORITY_HIGH: Priority.HIGH,
}
_REJECTION = {
    RejectionReason.NOT_ACTIVATED: pb.REJECTION_REASON_NOT_ACTIVATED,
    RejectionReason.BELOW_TOP_K: pb.REJECTION_REASON_BELOW_TOP_K,
    RejectionReason.EXCLUDED: pb.REJECTION_REASON_EXCLUDED,
    RejectionReason.NO_IMPLEMENTATION: pb.REJECTION_REASON_NO_IMPLEMENTATION,
    RejectionReason.DISABLED: pb.REJECTION_REASON_DISABLED,
}
_STATUS = {
    Status.OK: pb.SKILL_STATUS_OK,
    Status.FAILED: pb.SKILL_STATUS_FAILED,
    Status.TIMED_OUT: pb.SKILL_STATUS_TIMED_OUT,
    Status.DEADLINE: pb.SKILL_STATUS_DEADLINE_EXCEEDED,
    Status.REFUSED: pb.SKILL_STATUS_REFUSED,
}
_OUTCOME = {
    QueryOutcome.OK: pb.QUERY_OUTCOME_OK,
    QueryOutcome.PARTIAL: pb.QUERY_OUTCOME_PARTIAL,
    QueryOutcome.FAILED: pb.QUERY_OUTCOME_FAILED,
    QueryOutcome.REFUSED: pb.QUERY_OUTCOME_REFUSED,
    QueryOutcome.UNROUTED: pb.QUERY_OUTCOME_UNROUTED,
    QueryOutcome.DEADLINE: pb.QUERY_OUTCOME_DEADLINE,
    QueryOutcome.CANCELLED: pb.QUERY_OUTCOME_CANCELLED,
}


def outcome_pb(o: QueryOutcome) -> int:
    return _OUTCOME[o]


def query_from_request(req: pb.RouteRequest | pb.ExecuteRequest, policy: RoutingPolicy, known_skills: list[str]) -> Query:
    ctx = req.context
    if ctx.priority not in _PRIORITY:
        raise InvalidArgument("context.priority", f"unknown priority value {ctx.priority}")
    return make_query(
        text=req.query,
        policy=policy,
        known_skills=known_skills,
        domain=ctx.domain,
        complexity=ctx.complexity if ctx.HasField("complexity") else None,
        required_quality=ctx.required_quality if ctx.HasField("required_quality") else None,
        priority=_PRIORITY[ctx.priority],
        top_k=ctx.top_k if ctx.HasField("top_k") else None,
        force_skills=list(ctx.force_skills),
        exclude_skills=list(ctx.exclude_skills),
        all_skills=ctx.all_skills,
        metadata=dict(ctx.metadata),
        cost_weight=ctx.cost_weight if ctx.HasField("cost_weight") else None,
    )


def implementation_pb(impl: ImplementationSpec) -> pb.Implementation:
    return pb.Implementation(
        name=impl.name, model=impl.model, backend=impl.backend, quality=impl.quality,
        cost_per_query_usd=impl.cost_per_query, expected_latency_ms=impl.expected_latency_ms,
        optimal_complexity=impl.optimal_complexity,
    )


def choice_pb(choice: ImplementationChoice) -> pb.ImplementationChoice:
    msg = pb.ImplementationChoice(
        fit_score=choice.fit_score, meets_quality_floor=choice.meets_quality_floor, reason=choice.reason,
        rejections=[pb.ImplementationRejection(name=r.implementation.name, reason=r.reason, fit_score=r.fit_score)
                    for r in choice.rejected],
    )
    if choice.implementation is not None:
        msg.implementation.CopyFrom(implementation_pb(choice.implementation))
    return msg


def selection_pb(p: PlannedSkill) -> pb.Selection:
    s = p.chosen.score
    return pb.Selection(
        skill=p.name, score=s.score, forced=p.chosen.forced,
        parts=pb.ScoreParts(activated=s.activated, domain_bonus=s.domain_bonus, complexity_fit=s.complexity_fit,
                            success_rate=s.success_rate, success_factor=s.success_factor,
                            priority_weight=s.priority_weight, rank_score=s.rank_score, load_factor=s.load_factor,
                            text_relevance=s.text_relevance, text_term=s.text_term),
        implementation=choice_pb(p.choice),
    )


def plan_parts(plan: RoutePlan, ran: Sequence[PlannedSkill] | None = None) -> tuple[list[pb.Selection], list[pb.Rejection]]:
    """The selections (the skills that ran, when given, else the plan's) and
    the rejections."""
    selections = [selection_pb(p) for p in (plan.planned if ran is None else ran)]
    rejections = [pb.Rejection(skill=r.name, reason=_REJECTION[r.reason], detail=r.detail,
                               score=r.score.score, rank_score=r.score.rank_score) for r in plan.rejected]
    return selections, rejections


_SOURCE = {SignalSource.CALLER: pb.SIGNAL_SOURCE_CALLER, SignalSource.INFERRED: pb.SIGNAL_SOURCE_INFERRED,
           SignalSource.DEFAULT: pb.SIGNAL_SOURCE_DEFAULT}


def signals_pb(sig: Signals | None) -> pb.Signals | None:
    if sig is None:
        return None
    return pb.Signals(
        domain=sig.domain, domain_source=_SOURCE[sig.domain_source],
        domains=[pb.DomainScore(domain=d.domain, score=d.score) for d in sig.domains],
        complexity=sig.complexity, complexity_source=_SOURCE[sig.complexity_source], method=sig.method,
        out_of_scope=sig.out_of_scope, best_relevance=sig.best_relevance, out_of_scope_threshold=sig.threshold,
        fallback_skill=sig.fallback_skill)


def result_pb(o: SkillOutcome, weight: float, redact: Callable[[str], str] | None = None) -> pb.SkillResult:
    """``redact`` is the final net over the backend's error text."""
    return pb.SkillResult(
        skill=o.skill, implementation=o.implementation, model=o.model, weight=weight, status=_STATUS[o.status],
        output=o.output, error=redact(o.error) if redact is not None and o.error else o.error, cost_usd=o.cost,
        latency_ms=o.latency_ms,
        input_tokens=o.input_tokens, output_tokens=o.output_tokens, quality=o.quality,
        queue_wait_ms=o.queue_wait_ms, attempts=o.attempts, batch_size=o.batch_size, shared_by=o.shared_by,
        stepped_in_for=o.stepped_in_for,
        step_in_reason=_SHED.get(RejectReason(o.step_in_reason), pb.SHED_REASON_UNSPECIFIED) if o.step_in_reason
        else pb.SHED_REASON_UNSPECIFIED,
        cached=o.cached, cache_age_ms=o.cache_age_ms, cache_saved_usd=o.cache_saved if o.cached else 0.0,
    )


_SHED = {
    RejectReason.QUEUE_FULL: pb.SHED_REASON_QUEUE_FULL,
    RejectReason.BREAKER_OPEN: pb.SHED_REASON_BREAKER_OPEN,
    RejectReason.EXPECTED_WAIT: pb.SHED_REASON_EXPECTED_WAIT,
    RejectReason.QUEUE_TIMEOUT: pb.SHED_REASON_QUEUE_TIMEOUT,
    RejectReason.DEADLINE: pb.SHED_REASON_DEADLINE,
    RejectReason.DISPLACED: pb.SHED_REASON_DISPLACED,
    RejectReason.CALL_FAILED: pb.SHED_REASON_CALL_FAILED,
    RejectReason.SHARED_LIMIT: pb.SHED_REASON_SHARED_LIMIT,
    RejectReason.RATE_LIMITED: pb.SHED_REASON_RATE_LIMITED,
}


def shed_pb(s: ShedSkill, redact: Callable[[str], str] | None = None) -> pb.ShedSkill:
    """``redact``: a failed call's detail is the backend's error text."""
    detail = redact(s.detail) if redact is not None and s.detail else s.detail
    return pb.ShedSkill(skill=s.skill, reason=_SHED[s.reason], detail=detail, replaced_by=s.replaced_by,
                        implementation=s.implementation, replaced_by_implementation=s.replaced_by_implementation)


_BREAKER = {BreakerState.CLOSED: pb.BREAKER_STATE_CLOSED, BreakerState.OPEN: pb.BREAKER_STATE_OPEN,
            BreakerState.HALF_OPEN: pb.BREAKER_STATE_HALF_OPEN}


def skill_stats_pb(s: SkillSnapshot, wall_now: float) -> pb.SkillStats:
    msg = pb.SkillStats(
        skill=s.skill, in_flight=s.in_flight, concurrency_limit=s.concurrency_limit, utilization=s.utilization,
        queue_depth=s.queued, calls=s.calls, failures=s.failures, success_rate=s.success_rate,
        latency_p50_ms=s.latency_p50_ms, latency_p99_ms=s.latency_p99_ms, rejected=s.rejected, shed=s.shed,
        timed_out=s.timed_out, queue_depth_by_priority=dict(s.queue_by_priority or {}),
        queue_capacity=s.queue_capacity, mean_queue_wait_ms=s.mean_queue_wait_ms, batches=s.batches,
        mean_batch_size=s.mean_batch_size, mean_batch_wait_ms=s.mean_batch_wait_ms,
        coalesced_calls=s.coalesced_calls, cache_hits=s.cache_hits, cache_misses=s.cache_misses,
        cache_saved_usd=s.cache_saved)
    for i in s.implementations:
        m = msg.implementations.add(name=i.name, breaker_state=_BREAKER[i.breaker_state],
                                    consecutive_failures=i.consecutive_failures, failure_rate=i.failure_rate,
                                    times_opened=i.times_opened, declared_quality=i.declared_quality,
                                    measured_quality=i.measured_quality, ratings=i.ratings,
                                    measured_quality_low=i.measured_low, measured_quality_high=i.measured_high)
        if i.half_open_in_s is not None:
            m.half_open_at.FromNanoseconds(int((wall_now + i.half_open_in_s) * 1e9))
    return msg


def timestamp_pb(unix_s: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(unix_s * 1e9))
    return t


def arm_stats_pb(a: ArmLive) -> pb.ArmStats:
    m, lo, hi = a.quality()
    return pb.ArmStats(experiment=a.experiment, arm=a.arm, shadow=a.shadow, queries=a.queries, cost_usd=a.cost,
                       avg_latency_ms=a.avg_latency_ms, measured_quality=m, measured_quality_low=lo,
                       measured_quality_high=hi, ratings=a.ratings, agreement=a.agreement, current_k=a.current_k)


def feedback_pb(r: FeedbackReceipt) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(query_id=r.query_id, query_score=r.query_score, rated=[
        pb.RatedImplementation(skill=x.skill, implementation=x.implementation, score=x.score,
                               measured_quality=x.measured_quality, ratings=x.ratings) for x in r.rated])


def window_pb(agg: WindowAggregate | None, store: str, dropped: int) -> pb.WindowStats:
    if agg is None:
        return pb.WindowStats(available=False)
    msg = pb.WindowStats(
        available=True, store=store, queries=agg.queries, errors=agg.errors,
        avg_skills_selected=agg.avg_skills_selected, avg_cost_per_query_usd=agg.avg_cost_per_query,
        cost_saved_usd=agg.cost_saved_total, avg_cost_saved_usd=agg.avg_cost_saved,
        avg_response_ms=agg.avg_response_time_ms, p99_response_ms=agg.p99_response_time_ms,
        avg_quality=agg.avg_quality, skill_distribution=dict(agg.skill_distribution), rows_dropped=dropped,
        outcomes=dict(agg.outcomes), answered=agg.queries - agg.errors, cache_hits=dict(agg.cache_hits),
        cache_misses=dict(agg.cache_misses), cache_saved_usd=agg.cache_saved_total, rated_queries=agg.rated,
        avg_measured_quality=agg.avg_measured_quality, avg_declared_quality=agg.avg_declared_quality)
    msg.since.FromNanoseconds(int(agg.since * 1e9))
    msg.until.FromNanoseconds(int(agg.until * 1e9))
    for h in agg.hourly:
        t = msg.hourly.add(queries=h.queries, avg_cost_usd=h.avg_cost, avg_response_ms=h.avg_total_time_ms,
                           avg_quality=h.avg_quality)
        t.hour.FromNanoseconds(int(h.hour * 1e9))
    return msg
