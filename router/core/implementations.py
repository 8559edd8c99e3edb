"""Dynamic implementation selection (the seed's ``selectOptimalImplementation``).

Candidates are checked in configuration order; each says whether it fits and
why not. Those that fit are scored:

    fit = 100                                  (meets the quality floor)
        + cost_weight    · 1 / cost_per_query  (cost floored at MIN_COST)
        + latency_weight · 1000 / expected_latency_ms
        + complexity_weight · (1 − |optimal − complexity| / 10)

with the seed's weights 10, 5 and 20 (``RoutingPolicy.fit_weights``,
config ``routing.implementation_weights``). When none meets the floor, the
highest-quality available one is taken and the choice says so (or, with a
strict floor, the skill gets no implementation). Unavailable implementations
(an open circuit breaker) are skipped.

The second scorer, ``implementation_policy: expected_quality``
(``choose_by_expected_quality``), reads measured quality
(``core.quality``) in the query's context instead of declared quality:

    utility = q − cost_weight · cost_per_query / max cost of the candidates

where ``q`` is the posterior mean, or, for a bounded share of choices
(``exploration``), a Thompson sample of the posterior drawn from the
``random.Random`` passed in, so that an implementation never chosen can
still prove itself. Candidates whose ``q`` meets the quality floor compete
on utility (ties: cheaper, then configuration order); when none meets it,
the highest ``q`` is taken (or none, with a strict floor). ``cost_weight``
0 always takes the best quality; a large one the cheapest that meets the
floor (the per-request knob ``context.cost_weight``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from .quality import NoFeedback, QualityView
from .types import FitWeights, ImplementationSpec, Query, SkillSpec

QUALITY_BONUS = 100.0
COST_WEIGHT = 10.0
LATENCY_WEIGHT = 5.0
COMPLEXITY_WEIGHT = 20.0
SEED_WEIGHTS = FitWeights(QUALITY_BONUS, COST_WEIGHT, LATENCY_WEIGHT, COMPLEXITY_WEIGHT)
MIN_COST = 1e-4  # a free implementation scores as one costing $0.0001
MIN_LATENCY_MS = 1.0


@dataclass(frozen=True, slots=True)
class ImplRejection:
    implementation: ImplementationSpec
    reason: str
    fit_score: float = 0.0


@dataclass(frozen=True, slots=True)
class ImplementationChoice:
    implementation: ImplementationSpec | None  # None: the skill has no usable implementation
    fit_score: float
    meets_quality_floor: bool
    reason: str
    rejected: tuple[ImplRejection, ...]


@dataclass(frozen=True, slots=True)
class Learned:
    """What the expected_quality policy reads: the measured-quality view and
    the seeded random source of its Thompson samples (owned by the runtime)."""

    view: QualityView
    rng: random.Random
    cost_weight: float = 0.5
    exploration: float = 0.1


def fit_score(impl: ImplementationSpec, complexity: float, weights: FitWeights = SEED_WEIGHTS) -> float:
    return (
        weights.quality_bonus
        + weights.cost / max(impl.cost_per_query, MIN_COST)
        + weights.latency * 1000.0 / max(impl.expected_latency_ms, MIN_LATENCY_MS)
        + weights.complexity * (1.0 - abs(impl.optimal_complexity - complexity) / 10.0)
    )


def is_supported(impl: ImplementationSpec, query: Query, unavailable: Mapping[str, str]) -> tuple[bool, str]:
    if impl.name in unavailable:
        return False, unavailable[impl.name]
    if impl.quality < query.required_quality:
        return False, f"quality {impl.quality:g} below the floor {query.required_quality:g}"
    return True, ""


def choose_implementation(
    skill: SkillSpec,
    query: Query,
    *,
    dynamic: bool = True,
    strict_floor: bool = False,
    unavailable: Mapping[str, str] | None = None,
    weights: FitWeights = SEED_WEIGHTS,
    learned: Learned | None = None,
) -> ImplementationChoice:
    """Pick the implementation of ``skill`` for ``query``.

    ``unavailable`` maps implementation names to why they cannot be used now
    (for example an open circuit breaker). ``learned`` set: the
    expected_quality policy (``choose_by_expected_quality``) when dynamic.
    """
    unavailable = unavailable or {}
    impls = skill.implementations
    if dynamic and learned is not None:
        return choose_by_expected_quality(skill, query, learned, strict_floor=strict_floor, unavailable=unavailable)
    if not dynamic:
        default = skill.default_implementation
        if default.name not in unavailable:
            return ImplementationChoice(default, 0.0, default.quality >= query.required_quality,
                                        "default implementation (dynamic routing off)",
                                        tuple(ImplRejection(i, "not the default") for i in impls if i is not default))
    rejected: list[ImplRejection] = []
    fitting: list[tuple[float, int, ImplementationSpec]] = []
    for idx, impl in enumerate(impls):
        ok, why = is_supported(impl, query, unavailable)
        if ok:
            fitting.append((fit_score(impl, query.complexity, weights), idx, impl))
        else:
            rejected.append(ImplRejection(impl, why))
    if fitting:
        # Highest fit first; ties go to the earlier configured implementation.
        fitting.sort(key=lambda t: (-t[0], t[1]))
        best_fit, _, best = fitting[0]
        for fit, _, impl in fitting[1:]:
            rejected.append(ImplRejection(impl, f"lower fit {fit:.1f} < {best_fit:.1f}", fit))
        reason = "only implementation meeting the quality floor" if len(fitting) == 1 else f"best fit of {len(fitting)} meeting the quality floor"
        return ImplementationChoice(best, best_fit, True, reason, tuple(rejected))

    available = [(i.quality, -idx, i) for idx, i in enumerate(impls) if i.name not in unavailable]
    if not available:
        return ImplementationChoice(None, 0.0, False, "every implementation is unavailable", tuple(rejected))
    if strict_floor:
        return ImplementationChoice(None, 0.0, False,
                                    f"no implementation meets the quality floor {query.required_quality:g}", tuple(rejected))
    _, _, best = max(available, key=lambda t: (t[0], t[1]))
    reason = f"no implementation meets the quality floor {query.required_quality:g}; took the highest quality ({best.quality:g})"
    return ImplementationChoice(best, 0.0, False, reason, tuple(r for r in rejected if r.implementation is not best))


def choose_by_expected_quality(
    skill: SkillSpec,
    query: Query,
    learned: Learned,
    *,
    strict_floor: bool = False,
    unavailable: Mapping[str, str] | None = None,
) -> ImplementationChoice:
    """The expected_quality policy (see the module's docstring)."""
    unavailable = unavailable or {}
    rejected: list[ImplRejection] = [ImplRejection(i, unavailable[i.name]) for i in skill.implementations
                                     if i.name in unavailable]
    cands = [(idx, i) for idx, i in enumerate(skill.implementations) if i.name not in unavailable]
    if not cands:
        return ImplementationChoice(None, 0.0, False, "every implementation is unavailable", tuple(rejected))
    w = learned.cost_weight if query.cost_weight is None else query.cost_weight
    explore = learned.exploration > 0 and learned.rng.random() < learned.exploration
    max_cost = max(MIN_COST, max(i.cost_per_query for _, i in cands))
    scored = []
    for idx, impl in cands:
        post = learned.view.estimate(skill.name, impl.name, impl.quality, query.domain, query.complexity)
        q = learned.rng.betavariate(post.alpha, post.beta) if explore else post.mean
        utility = q - w * impl.cost_per_query / max_cost
        scored.append((q >= query.required_quality, utility, q, idx, impl, post))
    how = "Thompson sample" if explore else "posterior mean"
    meeting = [t for t in scored if t[0]]
    if meeting:
        meeting.sort(key=lambda t: (-t[1], t[4].cost_per_query, t[3]))
        _, best_u, best_q, _, best, post = meeting[0]
        for _, u, q, _, impl, _ in meeting[1:]:
            rejected.append(ImplRejection(impl, f"lower utility {u:.3f} < {best_u:.3f} (quality {q:.3f}, {how})", u))
        for _, u, q, _, impl, _ in scored:
            if not _ok(impl, meeting):
                rejected.append(ImplRejection(impl, f"expected quality {q:.3f} below the floor "
                                                    f"{query.required_quality:g} ({how})", u))
        ctx = f" in {post.context}" if post.context else ""
        reason = (f"best quality per cost: expected quality {best_q:.3f}{ctx} ({how}, {post.ratings} ratings), "
                  f"utility {best_u:.3f} at cost_weight {w:g}")
        return ImplementationChoice(best, best_u, True, reason, tuple(rejected))
    if strict_floor:
        return ImplementationChoice(None, 0.0, False,
                                    f"no implementation's expected quality meets the floor {query.required_quality:g}",
                                    tuple(rejected))
    scored.sort(key=lambda t: (-t[2], t[3]))
    _, best_u, best_q, _, best, _ = scored[0]
    for _, u, q, _, impl, _ in scored[1:]:
        rejected.append(ImplRejection(impl, f"expected quality {q:.3f} below the floor {query.required_quality:g}", u))
    reason = (f"no implementation's expected quality meets the floor {query.required_quality:g}; "
              f"took the highest ({best_q:.3f}, {how})")
    return ImplementationChoice(best, best_u, False, reason, tuple(rejected))


def _ok(impl: ImplementationSpec, meeting: list[tuple[bool, float, float, int, ImplementationSpec, object]]) -> bool:
    return any(t[4] is impl for t in meeting)


def no_feedback(seed: int = 0, cost_weight: float = 0.5, exploration: float = 0.0) -> Learned:
    """The expected_quality policy with no ratings (declared quality as is)."""
    return Learned(NoFeedback(), random.Random(seed), cost_weight, exploration)
