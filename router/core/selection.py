"""Top-k selection with a dynamic k.

k comes from, in order: the request's top_k, the config's fixed top_k, the
dynamic-k rule (the seed's: complexity > 7 → 5, else 3). Forced skills take
their places first (and raise k when there are more of them than k);
``all_skills`` and the non-MoE mode choose every activated skill.

The top k are taken with a heap (O(n log k)), never a full sort; the
activated skills left below the top k stay a heap (``reserve``) that the
runtime pops only when a standby is needed. Rejections are spelled out up to
``max_rejections`` (best-ranked BELOW_TOP_K first); the rest are counted in
``omitted``.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass

from .scoring import SkillScore, rank_key
from .types import Query, RoutingPolicy

MAX_TOP_K = 32
MAX_REJECTIONS = 20  # rejections spelled out in a response unless the request explains all

# A reserve entry: (rank key, the score). Tuples compare by the key first,
# and rank keys are unique (they end with the skill's name).
ReserveEntry = tuple[tuple[float, int, str], SkillScore]


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
    rejected: tuple[SkillRejection, ...]  # at most ``max_rejections`` unless unbounded
    # Every activated, non-excluded skill (the all-skills baseline), in no
    # particular order.
    activated: tuple[SkillScore, ...]
    # The activated skills below the top k, as a heap of (rank key, score):
    # ``heapq.heappop`` on a copy gives the next best.
    reserve: tuple[ReserveEntry, ...] = ()
    omitted: int = 0  # rejections not spelled out


def choose_k(query: Query, policy: RoutingPolicy) -> int:
    if query.top_k is not None:
        return query.top_k
    if policy.top_k is not None:
        return policy.top_k
    return policy.dynamic_k.k_for(query.complexity)


def select(scores: tuple[SkillScore, ...] | list[SkillScore], query: Query, policy: RoutingPolicy, *,
           max_rejections: int | None = None, not_scored: int = 0) -> SelectionResult:
    """``scores``: the skills that could be activated (the rest were ruled
    out by an index and are counted in ``not_scored``). ``max_rejections``
    None spells out every rejection."""
    rejected: list[SkillRejection] = []
    eligible: list[SkillScore] = []
    by_name = {s.name: s for s in scores} if query.force_skills else {}
    # A disabled or excluded skill is never run, even when forced: it gets its
    # DISABLED / EXCLUDED rejection below and no place among the chosen.
    forced_names = list(dict.fromkeys(
        n for n in query.force_skills
        if n in by_name and by_name[n].skill.enabled and n not in query.exclude_skills
    ))
    forced_set = set(forced_names)
    for s in scores:
        if not s.skill.enabled:
            rejected.append(SkillRejection(s, RejectionReason.DISABLED, "disabled in the configuration"))
        elif s.name in query.exclude_skills:
            rejected.append(SkillRejection(s, RejectionReason.EXCLUDED, "excluded by the request"))
        elif s.name in forced_set:
            continue
        elif not s.activated:
            rejected.append(SkillRejection(s, RejectionReason.NOT_ACTIVATED, s.reason))
        else:
            eligible.append(s)

    forced = [Chosen(by_name[n], forced=True) for n in forced_names]
    activated = tuple(eligible + [c.score for c in forced if c.score.activated])

    if not policy.moe_enabled:
        # The old behaviour: every activated skill, ordered by priority.
        order = sorted(eligible, key=lambda s: (s.skill.priority, s.name))
        chosen = forced + [Chosen(s) for s in order]
        return _bounded(len(chosen), chosen, rejected, [], activated, max_rejections, not_scored, 0)

    if query.all_skills:
        k = len(forced) + len(eligible)
    else:
        k = max(choose_k(query, policy), len(forced))
    room = max(0, k - len(forced))
    heap: list[ReserveEntry] = [(rank_key(s), s) for s in eligible]
    heapq.heapify(heap)  # O(n); the top k and the standbys are popped from it
    top = [heapq.heappop(heap)[1] for _ in range(min(room, len(heap)))]
    chosen = forced + [Chosen(s) for s in top]
    below: list[SkillRejection] = []
    total = len(top) + len(heap) + len(forced)
    shown = len(heap) if max_rejections is None else min(len(heap), max(0, max_rejections - len(rejected)))
    for pos, (_, s) in enumerate(heapq.nsmallest(shown, heap), start=room + len(forced) + 1):
        below.append(SkillRejection(s, RejectionReason.BELOW_TOP_K, f"ranked {pos} of {total}, k={k}"))
    return _bounded(k, chosen, rejected, below, activated, max_rejections, not_scored, len(heap) - len(below),
                    tuple(heap))


def _bounded(k: int, chosen: list[Chosen], rejected: list[SkillRejection], below: list[SkillRejection],
             activated: tuple[SkillScore, ...], max_rejections: int | None, not_scored: int, below_hidden: int,
             reserve: tuple[ReserveEntry, ...] = ()) -> SelectionResult:
    """The best-ranked BELOW_TOP_K rejections first (they say why the query
    got the skills it got), then the rest, up to the bound."""
    out = below + rejected
    omitted = not_scored + below_hidden
    if max_rejections is not None and len(out) > max_rejections:
        omitted += len(out) - max_rejections
        out = out[:max_rejections]
    return SelectionResult(k, tuple(chosen), tuple(out), activated, reserve, omitted)
