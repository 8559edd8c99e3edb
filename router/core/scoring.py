"""Relevance scoring, as the seed defines it.

relevance = 0 when the skill is not activated, else
    (1 + 0.3·[domain preferred] + max(0, 0.5 − 0.1·|optimal − complexity|))
    × (0.7 + 0.3·recent success rate)
rank score = relevance × (1 / priority)   (priority 1 is the highest)

Scoring reads no load probe: selection ranks, admission decides capacity.
The one optional exception is the load bias (off by default): like the
load-correction bias of MoE gates, rank × (1 − bias · utilization) makes a
hot skill lose ties; utilization is passed in as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .admission import load_penalty
from .types import Query, SkillSpec

DOMAIN_BONUS = 0.3
COMPLEXITY_FIT_MAX = 0.5
COMPLEXITY_FIT_SLOPE = 0.1
SUCCESS_FLOOR = 0.7
SUCCESS_WEIGHT = 0.3


@dataclass(frozen=True, slots=True)
class SkillScore:
    skill: SkillSpec
    activated: bool
    reason: str  # why it is not activated; "" when it is
    domain_bonus: float
    complexity_fit: float
    success_rate: float
    success_factor: float
    priority_weight: float
    score: float  # relevance
    rank_score: float
    load_factor: float = 1.0  # 1 − load_bias · utilization (1 when the bias is off)

    @property
    def name(self) -> str:
        return self.skill.name


def score_skill(skill: SkillSpec, query: Query, success_rate: float, query_lower: str | None = None) -> SkillScore:
    """A skill the request forces is scored as if activated (it keeps
    ``activated=False`` and the reason), so it takes a real share of the
    synthesis instead of a weight of 0."""
    ql = query.text.lower() if query_lower is None else query_lower
    priority_weight = 1.0 / skill.priority
    success_rate = min(1.0, max(0.0, success_rate))
    success_factor = SUCCESS_FLOOR + success_rate * SUCCESS_WEIGHT
    activated, reason = skill.activation.matches(ql, query.domain, query.complexity)
    if not activated and skill.name not in query.force_skills:
        return SkillScore(skill, False, reason, 0.0, 0.0, success_rate, success_factor, priority_weight, 0.0, 0.0)
    domain_bonus = DOMAIN_BONUS if query.domain in skill.preferred_domains else 0.0
    complexity_fit = max(0.0, COMPLEXITY_FIT_MAX - abs(skill.optimal_complexity - query.complexity) * COMPLEXITY_FIT_SLOPE)
    score = (1.0 + domain_bonus + complexity_fit) * success_factor
    return SkillScore(
        skill, activated, reason, domain_bonus, complexity_fit, success_rate, success_factor,
        priority_weight, score, score * priority_weight,
    )


def score_skills(
    skills: tuple[SkillSpec, ...], query: Query, success_rates: Mapping[str, float], default_success_rate: float = 1.0,
    *, utilization: Mapping[str, float] | None = None, load_bias: float = 0.0,
) -> tuple[SkillScore, ...]:
    """Score every skill; the result keeps the skills' configuration order."""
    ql = query.text.lower()
    scores = tuple(score_skill(s, query, success_rates.get(s.name, default_success_rate), ql) for s in skills)
    if load_bias <= 0 or not utilization:
        return scores
    out = []
    for sc in scores:
        factor = load_penalty(utilization.get(sc.name, 0.0), load_bias)
        out.append(replace(sc, rank_score=sc.rank_score * factor, load_factor=factor) if sc.activated else sc)
    return tuple(out)


def rank_key(s: SkillScore) -> tuple[float, int, str]:
    """Best first; ties break by priority (lower number first), then by name."""
    return (-s.rank_score, s.skill.priority, s.skill.name)
