"""Translate between the wire (router.v1 messages) and the core's types.
Nothing here decides anything."""

from __future__ import annotations

from router.core.errors import InvalidArgument
from router.core.implementations import ImplementationChoice
from router.core.query import make_query
from router.core.routing import PlannedSkill, RoutePlan
from router.core.selection import RejectionReason
from router.core.synthesis import SkillOutcome, Status
from router.core.types import ImplementationSpec, Priority, Query, RoutingPolicy
from router.v1 import router_pb2 as pb

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
}


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
                            priority_weight=s.priority_weight, rank_score=s.rank_score),
        implementation=choice_pb(p.choice),
    )


def plan_parts(plan: RoutePlan) -> tuple[list[pb.Selection], list[pb.Rejection]]:
    selections = [selection_pb(p) for p in plan.planned]
    rejections = [pb.Rejection(skill=r.name, reason=_REJECTION[r.reason], detail=r.detail,
                               score=r.score.score, rank_score=r.score.rank_score) for r in plan.rejected]
    return selections, rejections


def result_pb(o: SkillOutcome, weight: float) -> pb.SkillResult:
    return pb.SkillResult(
        skill=o.skill, implementation=o.implementation, model=o.model, weight=weight, status=_STATUS[o.status],
        output=o.output, error=o.error, cost_usd=o.cost, latency_ms=o.latency_ms,
        input_tokens=o.input_tokens, output_tokens=o.output_tokens, quality=o.quality,
    )
