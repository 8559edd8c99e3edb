"""The routing core's vocabulary: frozen dataclasses, no behaviour.

Everything here is built once from the config (skills, implementations,
policy) or once per query (the query and its context), and never mutated.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class BackendKind(enum.StrEnum):
    """How an implementation's backend is called (``router.backends``)."""

    OPENAI = "openai"  # an OpenAI-compatible chat completions server
    HTTP = "http"  # the web app's own skill endpoint (the JSON contract in router.backends._http)


class Priority(enum.IntEnum):
    """Priority of a query; a larger value is admitted first."""

    LOW = 1
    NORMAL = 2
    HIGH = 3


@dataclass(frozen=True, slots=True)
class ActivationRule:
    """When a skill is activated by a query (the seed's ``skill.activation``).

    Every part that is set must match: the query's domain is one of
    ``domains`` (empty: any domain), its complexity lies in
    ``[min_complexity, max_complexity]``, and, when ``keywords`` is set, the
    query text contains one of them (case-insensitive).
    """

    domains: frozenset[str] = frozenset()
    min_complexity: float = 0.0
    max_complexity: float = 10.0
    keywords: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Matching is case-insensitive: the query is lowercased once per query,
        # so the keywords are lowercased once here.
        object.__setattr__(self, "keywords", tuple(k.lower() for k in self.keywords))

    def matches(self, query_lower: str, domain: str, complexity: float) -> tuple[bool, str]:
        if self.domains and domain not in self.domains:
            return False, f"domain {domain!r} not in {sorted(self.domains)}"
        if not (self.min_complexity <= complexity <= self.max_complexity):
            return False, (
                f"complexity {complexity:g} outside "
                f"[{self.min_complexity:g}, {self.max_complexity:g}]"
            )
        if self.keywords and not any(k in query_lower for k in self.keywords):
            return False, f"none of the keywords {list(self.keywords)} in the query"
        return True, ""


@dataclass(frozen=True, slots=True)
class ImplementationSpec:
    """One backend (model) of a skill, as configured."""

    name: str
    backend: BackendKind
    url: str
    model: str
    quality: float
    cost_per_query: float
    expected_latency_ms: float
    optimal_complexity: float
    api_key_env: str | None = None
    price_per_input_token: float | None = None
    price_per_output_token: float | None = None
    timeout_s: float = 30.0
    max_connections: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", BackendKind(self.backend))  # a bad kind fails here, by name


@dataclass(frozen=True, slots=True)
class SkillSpec:
    """A skill as configured. ``implementations[default_index]`` is the one
    the all-skills baseline (and the non-MoE mode) uses."""

    name: str
    priority: int
    activation: ActivationRule
    preferred_domains: frozenset[str]
    optimal_complexity: float
    concurrency_limit: int
    queue_depth: int
    implementations: tuple[ImplementationSpec, ...]
    default_index: int = 0
    enabled: bool = True
    description: str = ""
    system_prompt: str = ""

    @property
    def default_implementation(self) -> ImplementationSpec:
        return self.implementations[self.default_index]


@dataclass(frozen=True, slots=True)
class DynamicKRule:
    """k grows for complex queries: complexity > threshold → high_k, else low_k
    (the seed's default: > 7 → 5, else 3)."""

    threshold: float = 7.0
    high_k: int = 5
    low_k: int = 3

    def k_for(self, complexity: float) -> int:
        return self.high_k if complexity > self.threshold else self.low_k


@dataclass(frozen=True, slots=True)
class FitWeights:
    """The weights of implementation choice's fit score (the seed's defaults):
    quality_bonus for meeting the floor, cost · 1/cost_per_query,
    latency · 1000/expected_latency_ms, complexity · (1 − |optimal − c|/10).
    With the seed's numbers cost dominates, so the cheapest implementation
    that meets the floor wins; raise ``complexity`` to let complex queries
    reach for the implementation made for them."""

    quality_bonus: float = 100.0
    cost: float = 10.0
    latency: float = 5.0
    complexity: float = 20.0


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Global routing settings (config plus the seed's environment overrides)."""

    moe_enabled: bool = True
    top_k: int | None = None  # a fixed k overrides the dynamic rule when set
    dynamic_k: DynamicKRule = DynamicKRule()
    dynamic_routing_enabled: bool = True
    quality_threshold: float = 0.85
    strict_quality_floor: bool = False
    default_complexity: float = 5.0
    default_success_rate: float = 1.0
    fit_weights: FitWeights = FitWeights()
    # How an implementation is chosen: "seed" (the fit score, exact) or
    # "expected_quality" (measured quality per cost, core.implementations).
    implementation_policy: str = "seed"
    cost_weight: float = 0.5  # expected_quality: quality given up per unit of normalized cost
    exploration: float = 0.1  # expected_quality: share of choices made on a Thompson sample


@dataclass(frozen=True, slots=True)
class Query:
    """One query after validation, in core terms."""

    text: str
    domain: str = "general"
    complexity: float = 5.0
    required_quality: float = 0.85
    priority: Priority = Priority.NORMAL
    top_k: int | None = None
    force_skills: tuple[str, ...] = ()
    exclude_skills: frozenset[str] = frozenset()
    all_skills: bool = False
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Whether the caller set the domain / complexity (else they are defaults
    # that query understanding may replace with values read from the text).
    domain_given: bool = False
    complexity_given: bool = False
    cost_weight: float | None = None  # the request's cost knob (None: the policy's)
