"""One query's routing decision: score → select top-k → choose an
implementation per chosen skill. The pure part of Route and Execute.

A chosen skill with no usable implementation is rejected and the next-best
skill below the top k steps in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .implementations import ImplementationChoice, choose_implementation
from .scoring import score_skills
from .selection import Chosen, RejectionReason, SelectionResult, SkillRejection, select
from .signals import Signals
from .synthesis import baseline_cost
from .types import Query, RoutingPolicy, SkillSpec


@dataclass(frozen=True, slots=True)
class PlannedSkill:
    chosen: Chosen
    choice: ImplementationChoice

    @property
    def name(self) -> str:
        return self.chosen.name

    @property
    def skill(self) -> SkillSpec:
        return self.chosen.score.skill


@dataclass(frozen=True, slots=True)
class RoutePlan:
    query: Query
    k: int
    planned: tuple[PlannedSkill, ...]
    rejected: tuple[SkillRejection, ...]
    standby: tuple[PlannedSkill, ...]  # next-best activated skills, best first, with implementations
    baseline_cost: float
    baseline_skills: int
    moe_enabled: bool
    signals: Signals | None = None  # what the query was routed on (None: the text was not read)


def plan_route(
    skills: tuple[SkillSpec, ...],
    query: Query,
    policy: RoutingPolicy,
    success_rates: Mapping[str, float],
    unavailable: Mapping[str, Mapping[str, str]] | None = None,
    *,
    utilization: Mapping[str, float] | None = None,
    load_bias: float = 0.0,
    signals: Signals | None = None,
) -> RoutePlan:
    """``unavailable`` maps skill → implementation → why it cannot be used now
    (an open circuit breaker); ``utilization`` and ``load_bias`` feed the
    optional load bias of the ranking; ``signals`` (from query understanding)
    add the text-relevance term and the out-of-scope rule to scoring."""
    unavailable = unavailable or {}
    scores = score_skills(skills, query, success_rates, policy.default_success_rate,
                          utilization=utilization, load_bias=load_bias, signals=signals)
    sel: SelectionResult = select(scores, query, policy)
    dynamic = policy.moe_enabled and policy.dynamic_routing_enabled

    def choose(c: Chosen) -> ImplementationChoice:
        return choose_implementation(c.score.skill, query, dynamic=dynamic,
                                     strict_floor=policy.strict_quality_floor,
                                     unavailable=unavailable.get(c.name, {}), weights=policy.fit_weights)

    planned: list[PlannedSkill] = []
    rejected = list(sel.rejected)
    below = [r for r in rejected if r.reason is RejectionReason.BELOW_TOP_K]
    standby: list[PlannedSkill] = []
    missing = 0
    for c in sel.chosen:
        ch = choose(c)
        if ch.implementation is None:
            rejected.append(SkillRejection(c.score, RejectionReason.NO_IMPLEMENTATION, ch.reason))
            missing += 1
        else:
            planned.append(PlannedSkill(c, ch))
    # For each chosen skill without an implementation, the next-best skill
    # below the top k steps in. They go after the chosen ones, so the plan
    # stays best first (forced first), like the selection.
    while missing and below:
        nxt = below.pop(0)
        rejected.remove(nxt)
        nch = choose(Chosen(nxt.score))
        if nch.implementation is not None:
            planned.append(PlannedSkill(Chosen(nxt.score), nch))
            missing -= 1
        else:
            rejected.append(SkillRejection(nxt.score, RejectionReason.NO_IMPLEMENTATION, nch.reason))
    for r in below:
        nch = choose(Chosen(r.score))
        if nch.implementation is not None:
            standby.append(PlannedSkill(Chosen(r.score), nch))
    base, n = baseline_cost(s.skill for s in sel.activated)
    return RoutePlan(query, sel.k, tuple(planned), tuple(rejected), tuple(standby), base, n, policy.moe_enabled,
                     signals)


