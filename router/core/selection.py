"""Top-k selection with a dynamic k.

k comes from, in order: the request's top_k, the config's fixed top_k, the
dynamic-k rule (the seed's: complexity > 7 → 5, else 3). Forced skills take
their places first (and raise k when there are more of them than k);
``all_skills`` and the non-MoE mode choose every activated skill.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .scoring import SkillScore, rank_key
from .types import Query, RoutingPolicy

MAX_TOP_K = 32


class RejectionReason(enum.Enum):
    NOT_ACTIVATED = "not_activated"
    BELOW_TOP_K = "below_top_k"
    EXCLUDED = "excluded"
    NO_IMPLEMENTATION = "no_implementation"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Chosen:
    score: SkillScore
    forced: bool = False

    @property
    def name(self) -> str:
        return self.score.skill.name


@dataclass(frozen=True, slots=True)
class SkillRejection:
    score: SkillScore
    reason: RejectionReason
    detail: str

    @property
    def name(self) -> str:
        return self.score.skill.name


@dataclass(frozen=True, slots=True)
class SelectionResult:
    k: int
    chosen: tuple[Chosen, ...]
    rejected: tuple[SkillRejection, ...]
    # Every activated, non-excluded skill, best first: the all-skills
    # baseline and the pool of next-best skills.
    activated: tuple[SkillScore, ...]


def choose_k(query: Query, policy: RoutingPolicy) -> int:
    if query.top_k is not None:
        return query.top_k
    if policy.top_k is not None:
        return policy.top_k
    return policy.dynamic_k.k_for(query.complexity)


def select(scores: tuple[SkillScore, ...], query: Query, policy: RoutingPolicy) -> SelectionResult:
    rejected: list[SkillRejection] = []
    eligible: list[SkillScore] = []
    by_name = {s.name: s for s in scores}
    # A disabled or excluded skill is never run, even when forced: it gets its
    # DISABLED / EXCLUDED rejection below and no place among the chosen.
    forced_names = list(dict.fromkeys(
        n for n in query.force_skills
        if n in by_name and by_name[n].skill.enabled and n not in query.exclude_skills
    ))
    for s in scores:
        if not s.skill.enabled:
            rejected.append(SkillRejection(s, RejectionReason.DISABLED, "disabled in the configuration"))
        elif s.name in query.exclude_skills:
            rejected.append(SkillRejection(s, RejectionReason.EXCLUDED, "excluded by the request"))
        elif s.name in forced_names:
            continue
        elif not s.activated:
            rejected.append(SkillRejection(s, RejectionReason.NOT_ACTIVATED, s.reason))
        else:
            eligible.append(s)

    forced = [Chosen(by_name[n], forced=True) for n in forced_names]
    activated = tuple(sorted(eligible + [c.score for c in forced if c.score.activated], key=rank_key))

    if not policy.moe_enabled:
        # The old behaviour: every activated skill, ordered by priority.
        order = sorted(eligible, key=lambda s: (s.skill.priority, s.name))
        chosen = forced + [Chosen(s) for s in order]
        return SelectionResult(len(chosen), tuple(chosen), tuple(rejected), activated)

    ranked = sorted(eligible, key=rank_key)
    if query.all_skills:
        k = len(forced) + len(ranked)
    else:
        k = max(choose_k(query, policy), len(forced))
    room = max(0, k - len(forced))
    chosen = forced + [Chosen(s) for s in ranked[:room]]
    for pos, s in enumerate(ranked[room:], start=room + len(forced) + 1):
        rejected.append(SkillRejection(s, RejectionReason.BELOW_TOP_K, f"ranked {pos} of {len(ranked) + len(forced)}, k={k}"))
    return SelectionResult(k, tuple(chosen), tuple(rejected), activated)
