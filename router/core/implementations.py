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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
) -> ImplementationChoice:
    """Pick the implementation of ``skill`` for ``query``.

    ``unavailable`` maps implementation names to why they cannot be used now
    (for example an open circuit breaker).
    """
    unavailable = unavailable or {}
    impls = skill.implementations
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
