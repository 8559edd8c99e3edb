"""Signals: what the router knows about a query before it scores skills.

The text is read once, by an encoder behind the ``Understanding`` port
(``router.understanding``); what comes out is typed data, and the decisions
(scoring, selection, implementation choice) read only that data:

    text ──encoder──▶ TextReading (raw: per-skill and per-domain scores, a complexity estimate)
         ──resolve_signals (here, pure)──▶ Signals ──▶ apply_signals(query) ──▶ plan_route

A value the caller gives always wins: ``context.domain`` and
``context.complexity`` are kept as given (source ``caller``); a gap is
filled from the text (source ``inferred``) or, when the text says nothing
usable, from the policy's default (source ``default``).

Text relevance is a number in [0, 1] per skill with examples. Encoders
report a raw similarity per skill (a linear model's margin, a cosine) and
the threshold calibrated on the examples (the similarity that in-scope
examples held out from fitting reach, at a low quantile); relevance is the
raw score mapped through a logistic centred on that threshold::

    relevance = 1 / (1 + exp(−(raw − calibrated_threshold) / scale))

so relevance 0.5 is the calibrated boundary for every encoder, and the
out-of-scope threshold (default 0.5) is set in relevance units. A query
is out of scope when no skill with examples reaches it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .types import Query

DEFAULT_OUT_OF_SCOPE_THRESHOLD = 0.5  # in relevance units: the calibrated boundary


class SignalSource(enum.StrEnum):
    """Where a signal's value came from."""

    CALLER = "caller"
    INFERRED = "inferred"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class DomainScore:
    domain: str
    score: float  # relevance of the domain's examples to the text, 0-1


@dataclass(frozen=True, slots=True)
class Calibration:
    """Maps an encoder's raw similarity to relevance (see the module docstring)."""

    threshold: float  # raw similarity at relevance 0.5
    scale: float  # raw units per logistic unit (> 0)

    def relevance(self, raw: float) -> float:
        z = (raw - self.threshold) / self.scale
        if z < -40:
            return 0.0
        if z > 40:
            return 1.0
        return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True, slots=True)
class TextReading:
    """What an encoder read from the text, before any decision."""

    method: str  # e.g. "tfidf-linear", "embeddings:text-embedding-3-small"
    skill_relevance: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # 0-1
    domain_relevance: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # 0-1
    complexity: float | None = None  # 0-10 estimate, None when not estimated


@dataclass(frozen=True, slots=True)
class Signals:
    """The signals a query is routed on; each value with its source."""

    domain: str
    domain_source: SignalSource
    complexity: float
    complexity_source: SignalSource
    domains: tuple[DomainScore, ...] = ()  # inferred domains, best first (also when the caller's domain won)
    relevance: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # per skill with examples
    out_of_scope: bool = False
    best_relevance: float = 0.0
    threshold: float = DEFAULT_OUT_OF_SCOPE_THRESHOLD
    fallback_skill: str = ""  # activated when out of scope ("" none)
    method: str = "none"

    def text_relevance(self, skill: str) -> float | None:
        """The skill's text relevance, None when the skill has no examples."""
        return self.relevance.get(skill)


def resolve_signals(
    query: Query,
    reading: TextReading,
    *,
    threshold: float = DEFAULT_OUT_OF_SCOPE_THRESHOLD,
    domain_threshold: float = DEFAULT_OUT_OF_SCOPE_THRESHOLD,
    fallback_skill: str = "",
    max_domains: int = 5,
) -> Signals:
    """Decide the query's signals from the caller's values and the text.

    - domain: the caller's when given; else the best inferred domain whose
      relevance reaches ``domain_threshold``; else the query's default.
    - complexity: the caller's when given; else the estimate; else the default.
    - out of scope: some skill has examples and none reaches ``threshold``.
    """
    ranked = tuple(sorted((DomainScore(d, s) for d, s in reading.domain_relevance.items()),
                          key=lambda d: (-d.score, d.domain)))[:max_domains]
    if query.domain_given:
        domain, dsrc = query.domain, SignalSource.CALLER
    elif ranked and ranked[0].score >= domain_threshold:
        domain, dsrc = ranked[0].domain, SignalSource.INFERRED
    else:
        domain, dsrc = query.domain, SignalSource.DEFAULT
    if query.complexity_given:
        complexity, csrc = query.complexity, SignalSource.CALLER
    elif reading.complexity is not None:
        complexity, csrc = min(10.0, max(0.0, reading.complexity)), SignalSource.INFERRED
    else:
        complexity, csrc = query.complexity, SignalSource.DEFAULT
    rel = reading.skill_relevance
    best = max(rel.values(), default=0.0)
    return Signals(
        domain=domain, domain_source=dsrc, complexity=complexity, complexity_source=csrc, domains=ranked,
        relevance=MappingProxyType(dict(rel)), out_of_scope=bool(rel) and best < threshold,
        best_relevance=best, threshold=threshold, fallback_skill=fallback_skill, method=reading.method,
    )


def apply_signals(query: Query, signals: Signals) -> Query:
    """The query with the signals' domain and complexity (the caller's values
    are unchanged: a signal from the caller resolves to itself)."""
    if signals.domain == query.domain and signals.complexity == query.complexity:
        return query
    return replace(query, domain=signals.domain, complexity=signals.complexity)
