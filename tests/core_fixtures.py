"""Test data for the pure routing core: SkillSpec / ImplementationSpec /
Query / RoutingPolicy builders and the seed's example sets.

Built directly from the core's dataclasses (never through the config loader),
so the core's tests do not depend on the config format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from router.core.scoring import SkillScore, score_skills
from router.core.selection import SelectionResult, select
from router.core.types import (
    ActivationRule,
    DynamicKRule,
    ImplementationSpec,
    Priority,
    Query,
    RoutingPolicy,
    SkillSpec,
)

__all__ = [
    "KIMI_K2_IMPLS",
    "SEED_DEFAULT_COSTS",
    "ActivationRule",
    "DynamicKRule",
    "ImplementationSpec",
    "Priority",
    "Query",
    "RoutingPolicy",
    "SkillSpec",
    "impl",
    "kimi_k2",
    "names",
    "policy",
    "query",
    "run_select",
    "scores_for",
    "seed_skills",
    "skill",
]


def impl(
    name: str = "default",
    *,
    quality: float = 0.9,
    cost: float = 0.01,
    latency_ms: float = 1000.0,
    optimal: float = 5.0,
    backend: str = "openai",
    model: str | None = None,
) -> ImplementationSpec:
    return ImplementationSpec(
        name=name,
        backend=backend,
        url=f"http://127.0.0.1:9/{name}",
        model=model or f"model-{name}",
        quality=quality,
        cost_per_query=cost,
        expected_latency_ms=latency_ms,
        optimal_complexity=optimal,
    )


def skill(
    name: str,
    *,
    priority: int = 1,
    domains: Iterable[str] = (),
    min_complexity: float = 0.0,
    max_complexity: float = 10.0,
    keywords: Iterable[str] = (),
    preferred: Iterable[str] = (),
    optimal: float = 5.0,
    implementations: Iterable[ImplementationSpec] | None = None,
    default_index: int = 0,
    enabled: bool = True,
    cost: float = 0.01,
) -> SkillSpec:
    impls = tuple(implementations) if implementations is not None else (impl(f"{name}-impl", cost=cost),)
    return SkillSpec(
        name=name,
        priority=priority,
        activation=ActivationRule(
            domains=frozenset(domains),
            min_complexity=min_complexity,
            max_complexity=max_complexity,
            keywords=tuple(keywords),
        ),
        preferred_domains=frozenset(preferred),
        optimal_complexity=optimal,
        concurrency_limit=4,
        queue_depth=16,
        implementations=impls,
        default_index=default_index,
        enabled=enabled,
    )


def query(
    text: str = "a question",
    *,
    domain: str = "general",
    complexity: float = 5.0,
    required_quality: float = 0.85,
    top_k: int | None = None,
    force: Iterable[str] = (),
    exclude: Iterable[str] = (),
    all_skills: bool = False,
    priority: Priority = Priority.NORMAL,
    metadata: Mapping[str, str] | None = None,
) -> Query:
    return Query(
        text=text,
        domain=domain,
        complexity=complexity,
        required_quality=required_quality,
        priority=priority,
        top_k=top_k,
        force_skills=tuple(force),
        exclude_skills=frozenset(exclude),
        all_skills=all_skills,
        metadata=MappingProxyType(dict(metadata or {})),
    )


def policy(**kw) -> RoutingPolicy:
    return RoutingPolicy(**kw)


def scores_for(
    skills: Iterable[SkillSpec], q: Query, rates: Mapping[str, float] | None = None, default_rate: float = 1.0
) -> tuple[SkillScore, ...]:
    return score_skills(tuple(skills), q, rates or {}, default_rate)


def run_select(
    skills: Iterable[SkillSpec],
    q: Query,
    pol: RoutingPolicy | None = None,
    rates: Mapping[str, float] | None = None,
) -> SelectionResult:
    pol = pol or RoutingPolicy()
    return select(scores_for(skills, q, rates, pol.default_success_rate), q, pol)


def names(items) -> list[str]:
    return [i.name for i in items]


# The seed's kimiK2 implementations (Pattern 5).
KIMI_K2_IMPLS = (
    impl("tongyi-deepresearch", quality=0.95, cost=0.05, latency_ms=2000, optimal=8),
    impl("nvidia-nemotron", quality=0.90, cost=0.02, latency_ms=1500, optimal=6),
    impl("gemini-flash", quality=0.85, cost=0.01, latency_ms=800, optimal=4),
)


def kimi_k2(**kw) -> SkillSpec:
    kw.setdefault("implementations", KIMI_K2_IMPLS)
    return skill("kimiK2", **kw)


# The seed's four brain skills and their default costs (Cost Breakdown:
# $0.05 + $0.02 + $0.02 + $0.01 = $0.10 per query when all fire).
SEED_DEFAULT_COSTS = {"kimiK2": 0.05, "trm": 0.02, "gepa": 0.02, "ace": 0.01}


def seed_skills() -> tuple[SkillSpec, ...]:
    return (
        kimi_k2(priority=1, preferred=("legal", "research"), optimal=8),  # default: tongyi, $0.05
        skill("trm", priority=2, preferred=("math",), optimal=3, cost=0.02),
        skill("gepa", priority=2, preferred=("legal",), optimal=6, cost=0.02),
        skill("ace", priority=3, optimal=5, cost=0.01),
    )
