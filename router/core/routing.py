"""One query's routing decision: score → select top-k → choose an
implementation per chosen skill. The pure part of Route and Execute.

A chosen skill with no usable implementation is rejected and the next-best
skill below the top k steps in. Standby skills (the next-best, for when a
chosen skill is shed or fails at run time) get their implementation only
when they are needed: ``StandbyQueue``.

Cost per query grows with the skills a query could activate, not with every
registered skill: ``SkillIndex`` (built once) rules out the skills whose
activation domains do not include the query's domain without scoring them,
and they are spelled out as rejections only when the request explains all
(or while there is room under ``MAX_REJECTIONS``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from .implementations import ImplementationChoice, Learned, choose_implementation
from .scoring import score_skill, score_skills
from .selection import (
    MAX_REJECTIONS,
    Chosen,
    RejectionReason,
    ReserveEntry,
    SelectionResult,
    SkillRejection,
    select,
)
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


class SkillIndex:
    """The configured skills, indexed by the domains their activation rule
    admits, so a query scores only the skills it could activate. Immutable."""

    __slots__ = ("_anywhere", "_by_domain", "_position", "skills")

    def __init__(self, skills: Iterable[SkillSpec]) -> None:
        self.skills = tuple(skills)
        self._position = {s.name: i for i, s in enumerate(self.skills)}
        by_domain: dict[str, list[int]] = {}
        anywhere: list[int] = []
        for i, s in enumerate(self.skills):
            if s.activation.domains:
                for d in s.activation.domains:
                    by_domain.setdefault(d, []).append(i)
            else:
                anywhere.append(i)
        self._anywhere = tuple(anywhere)
        self._by_domain = {d: tuple(sorted(set(v) | set(anywhere))) for d, v in by_domain.items()}

    def __len__(self) -> int:
        return len(self.skills)

    def candidates(self, domain: str) -> tuple[int, ...]:
        """Positions (configuration order) of the skills that may activate
        in ``domain``: those restricted to it and those not restricted."""
        return self._by_domain.get(domain, self._anywhere)

    def position(self, name: str) -> int | None:
        return self._position.get(name)

    def __repr__(self) -> str:
        return f"<SkillIndex {len(self.skills)} skills | {len(self._by_domain)} domains | {len(self._anywhere)} anywhere>"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    query: Query
    k: int
    planned: tuple[PlannedSkill, ...]
    rejected: tuple[SkillRejection, ...]  # bounded: see ``rejections_omitted``
    # The activated skills below the top k, as a heap: ``StandbyQueue`` pops
    # the next best and chooses its implementation when one is needed.
    reserve: tuple[ReserveEntry, ...]
    baseline_cost: float
    baseline_skills: int
    moe_enabled: bool
    rejections_omitted: int = 0
    policy: RoutingPolicy = RoutingPolicy()
    # What was unavailable when the plan was made (skill → implementation → why).
    unavailable: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    signals: Signals | None = None  # what the query was routed on (None: the text was not read)
    # The measured-quality view and random source of the expected_quality
    # policy (None under the seed policy).
    learned: Learned | None = None

    def next_best(self, n: int) -> list[str]:
        """The names of the ``n`` best activated skills below the top k, best
        first, without choosing their implementations (cheap: for spans)."""
        return [score.name for _, score in heapq.nsmallest(n, self.reserve)]

    @property
    def standby(self) -> tuple[PlannedSkill, ...]:
        """Every standby with an implementation, best first, as things stood
        when the plan was made (for tests and explanations: it chooses an
        implementation for each; the runtime pops a ``StandbyQueue``)."""
        return tuple(StandbyQueue(self))


def _choose(c: Chosen, query: Query, policy: RoutingPolicy,
            unavailable: Mapping[str, Mapping[str, str]], learned: Learned | None = None) -> ImplementationChoice:
    return choose_implementation(c.score.skill, query,
                                 dynamic=policy.moe_enabled and policy.dynamic_routing_enabled,
                                 strict_floor=policy.strict_quality_floor,
                                 unavailable=unavailable.get(c.name, {}), weights=policy.fit_weights,
                                 learned=learned)


def learned_for(policy: RoutingPolicy, learned: Learned | None) -> Learned | None:
    """The ``learned`` inputs the policy uses: None under the seed policy."""
    return learned if policy.implementation_policy == "expected_quality" else None


class StandbyQueue:
    """The next-best activated skills of a plan, popped best first, each
    given an implementation as it is popped (skipping those with none
    usable). One per query; mutable, owned by the query's run."""

    __slots__ = ("_heap", "_learned", "_policy", "_query", "_unavailable")

    def __init__(self, plan: RoutePlan) -> None:
        self._heap = list(plan.reserve)  # already a heap
        self._query = plan.query
        self._policy = plan.policy
        self._unavailable = plan.unavailable
        self._learned = plan.learned

    def pop(self, unavailable: Mapping[str, Mapping[str, str]] | None = None) -> PlannedSkill | None:
        """The next best standby with a usable implementation now."""
        down = self._unavailable if unavailable is None else unavailable
        while self._heap:
            _, score = heapq.heappop(self._heap)
            chosen = Chosen(score)
            choice = _choose(chosen, self._query, self._policy, down, self._learned)
            if choice.implementation is not None:
                return PlannedSkill(chosen, choice)
        return None

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[PlannedSkill]:
        while (p := self.pop()) is not None:
            yield p


def plan_route(
    skills: tuple[SkillSpec, ...] | SkillIndex,
    query: Query,
    policy: RoutingPolicy,
    success_rates: Mapping[str, float],
    unavailable: Mapping[str, Mapping[str, str]] | None = None,
    *,
    utilization: Mapping[str, float] | None = None,
    load_bias: float = 0.0,
    explain_all: bool = False,
    max_rejections: int = MAX_REJECTIONS,
    signals: Signals | None = None,
    learned: Learned | None = None,
) -> RoutePlan:
    """``unavailable`` maps skill → implementation → why it cannot be used now
    (an open circuit breaker); ``utilization`` and ``load_bias`` feed the
    optional load bias of the ranking; ``signals`` (from query understanding)
    add the text-relevance term and the out-of-scope rule to scoring.
    Rejections are spelled out up to ``max_rejections`` unless ``explain_all``.
    ``learned``: the measured quality the expected_quality implementation
    policy reads (ignored under the seed policy)."""
    unavailable = unavailable or {}
    learned = learned_for(policy, learned)
    index = skills if isinstance(skills, SkillIndex) else SkillIndex(skills)
    every = index.skills
    positions = index.candidates(query.domain)
    # A forced skill, and the out-of-scope fallback, are scored whatever their domain.
    wanted = [*query.force_skills, *([signals.fallback_skill] if signals is not None and signals.fallback_skill else [])]
    if wanted:
        extra = {p for n in wanted if (p := index.position(n)) is not None}
        positions = tuple(sorted(set(positions) | extra))
    scores = score_skills(tuple(every[i] for i in positions), query, success_rates, policy.default_success_rate,
                          utilization=utilization, load_bias=load_bias, signals=signals)
    bound = None if explain_all else max_rejections
    not_scored = len(every) - len(positions)
    sel: SelectionResult = select(scores, query, policy, max_rejections=bound, not_scored=not_scored)
    rejected = list(sel.rejected)
    omitted = sel.omitted
    if not_scored and (bound is None or len(rejected) < bound):
        # Spell out the skills the index ruled out, while there is room.
        scored = set(positions)
        ql = query.text.lower()
        for i, s in enumerate(every):
            if bound is not None and len(rejected) >= bound:
                break
            if i in scored:
                continue
            sc = score_skill(s, query, success_rates.get(s.name, policy.default_success_rate), ql, signals=signals)
            if not s.enabled:
                rejected.append(SkillRejection(sc, RejectionReason.DISABLED, "disabled in the configuration"))
            elif s.name in query.exclude_skills:
                rejected.append(SkillRejection(sc, RejectionReason.EXCLUDED, "excluded by the request"))
            else:
                rejected.append(SkillRejection(sc, RejectionReason.NOT_ACTIVATED, sc.reason))
            omitted -= 1

    planned: list[PlannedSkill] = []
    reserve = list(sel.reserve)
    missing = 0
    for c in sel.chosen:
        ch = _choose(c, query, policy, unavailable, learned)
        if ch.implementation is None:
            rejected.append(SkillRejection(c.score, RejectionReason.NO_IMPLEMENTATION, ch.reason))
            missing += 1
        else:
            planned.append(PlannedSkill(c, ch))
    # For each chosen skill without an implementation, the next-best skill
    # below the top k steps in. They go after the chosen ones, so the plan
    # stays best first (forced first), like the selection.
    while missing and reserve:
        _, nxt = heapq.heappop(reserve)
        rejected = [r for r in rejected if not (r.reason is RejectionReason.BELOW_TOP_K and r.name == nxt.name)]
        nch = _choose(Chosen(nxt), query, policy, unavailable, learned)
        if nch.implementation is not None:
            planned.append(PlannedSkill(Chosen(nxt), nch))
            missing -= 1
        else:
            rejected.append(SkillRejection(nxt, RejectionReason.NO_IMPLEMENTATION, nch.reason))
    if not explain_all and len(rejected) > max_rejections:
        omitted += len(rejected) - max_rejections
        rejected = rejected[:max_rejections]
    base, n = baseline_cost(s.skill for s in sel.activated)
    return RoutePlan(query, sel.k, tuple(planned), tuple(rejected), tuple(reserve), base, n, policy.moe_enabled,
                     max(0, omitted), policy, unavailable, signals, learned)
