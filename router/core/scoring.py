"""Relevance scoring, as the seed defines it.

relevance = 0 when the skill is not activated, else
    (1 + 0.3·[domain preferred] + max(0, 0.5 − 0.1·|optimal − complexity|)
       + TEXT_WEIGHT·text relevance)
    × (0.7 + 0.3·recent success rate)
rank score = relevance × (1 / priority)   (priority 1 is the highest)

The text term is this project's addition to the seed: ``text relevance``
(0-1, ``router.core.signals``) is how closely the query resembles the
skill's configured examples. A skill without examples has no text term
(0), so with no examples configured the formula is exactly the seed's.
With signals, a query out of scope (no skill with examples resembles it
enough) activates no skill with examples (a skill whose keywords matched
stays: keywords are an explicit rule); ``routing.fallback_skill``, when
set, is activated instead, whatever its own activation rule says.

Scoring reads no load probe: selection ranks, admission decides capacity.
The one optional exception is the load bias (off by default): like the
load-correction bias of MoE gates, rank × (1 − bias · utilization) makes a
hot skill lose ties; utilization is passed in as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .admission import load_penalty
from .signals import Signals
from .types import Query, SkillSpec

DOMAIN_BONUS = 0.3
COMPLEXITY_FIT_MAX = 0.5
COMPLEXITY_FIT_SLOPE = 0.1
SUCCESS_FLOOR = 0.7
SUCCESS_WEIGHT = 0.3
# Weight of text relevance (0-1) in the sum: a perfect match counts twice
# the domain bonus; among skills that differ only by their examples, the
# closest one ranks first.
TEXT_WEIGHT = 1.0


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
    text_relevance: float = 0.0  # 0-1, from the skill's examples (0 when it has none)
    text_term: float = 0.0  # TEXT_WEIGHT · text_relevance, the part of the sum it adds

    @property
    def name(self) -> str:
        return self.skill.name


def score_skill(skill: SkillSpec, query: Query, success_rate: float, query_lower: str | None = None,
                signals: Signals | None = None) -> SkillScore:
    """A skill the request forces is scored as if activated (it keeps
    ``activated=False`` and the reason), so it takes a real share of the
    synthesis instead of a weight of 0."""
    ql = query.text.lower() if query_lower is None else query_lower
    priority_weight = 1.0 / skill.priority
    success_rate = min(1.0, max(0.0, success_rate))
    success_factor = SUCCESS_FLOOR + success_rate * SUCCESS_WEIGHT
    activated, reason = skill.activation.matches(ql, query.domain, query.complexity)
    text_relevance = None if signals is None else signals.text_relevance(skill.name)
    if signals is not None and signals.out_of_scope:
        if skill.name == signals.fallback_skill:
            activated, reason = True, ""
        elif text_relevance is not None and activated and not skill.activation.keywords:
            activated, reason = False, (
                f"out of scope: no skill's text relevance reaches {signals.threshold:.2f} "
                f"(best {signals.best_relevance:.2f}, this skill {text_relevance:.2f})")
    tr = text_relevance or 0.0
    if not activated and skill.name not in query.force_skills:
        return SkillScore(skill, False, reason, 0.0, 0.0, success_rate, success_factor, priority_weight, 0.0, 0.0,
                          text_relevance=tr)
    domain_bonus = DOMAIN_BONUS if query.domain in skill.preferred_domains else 0.0
    complexity_fit = max(0.0, COMPLEXITY_FIT_MAX - abs(skill.optimal_complexity - query.complexity) * COMPLEXITY_FIT_SLOPE)
    text_term = TEXT_WEIGHT * tr
    score = (1.0 + domain_bonus + complexity_fit + text_term) * success_factor
    return SkillScore(
        skill, activated, reason, domain_bonus, complexity_fit, success_rate, success_factor,
        priority_weight, score, score * priority_weight, text_relevance=tr, text_term=text_term,
    )


def score_skills(
    skills: tuple[SkillSpec, ...], query: Query, success_rates: Mapping[str, float], default_success_rate: float = 1.0,
    *, utilization: Mapping[str, float] | None = None, load_bias: float = 0.0, signals: Signals | None = None,
) -> tuple[SkillScore, ...]:
    """Score every skill; the result keeps the skills' configuration order."""
    ql = query.text.lower()
    scores = tuple(score_skill(s, query, success_rates.get(s.name, default_success_rate), ql, signals)
                   for s in skills)
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
