"""Weighted synthesis of the skills' results and the cost ledger.

A skill's weight is its share of the chosen skills' relevance scores (the
seed's ``skill.score / totalScore``). The synthesized text lists the answers
that succeeded, heaviest first; quality is the weighted mean of the declared
quality of the implementations that answered.

Every Execute ends in one ``QueryOutcome``; ``account`` turns it into the
ledger's row: a query that was not answered saved nothing and has no
quality (so averages of quality run over answered queries only).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .types import SkillSpec


class Status(enum.Enum):
    OK = "ok"
    FAILED = "failed"  # error status, bad answer, connection error
    TIMED_OUT = "timed_out"  # the implementation's own timeout passed
    DEADLINE = "deadline"  # the caller's deadline cut the call short
    REFUSED = "refused"  # admission would not take it (and nobody stepped in)


class QueryOutcome(enum.StrEnum):
    """How one Execute ended: one row and one count each."""

    OK = "ok"  # every skill that ran answered
    PARTIAL = "partial"  # answered, but some skill that ran failed
    FAILED = "failed"  # every skill that ran failed (UNAVAILABLE)
    REFUSED = "refused"  # no skill could take it: saturated, breakers open, draining (RESOURCE_EXHAUSTED/UNAVAILABLE)
    UNROUTED = "unrouted"  # no skill is activated by it (FAILED_PRECONDITION)
    DEADLINE = "deadline"  # the caller's deadline passed before an answer (DEADLINE_EXCEEDED)
    CANCELLED = "cancelled"  # the caller went away

    @property
    def answered(self) -> bool:
        return self in (QueryOutcome.OK, QueryOutcome.PARTIAL)


@dataclass(frozen=True, slots=True)
class SkillOutcome:
    """What one chosen skill's call produced."""

    skill: str
    implementation: str
    model: str
    score: float
    status: Status
    output: str = ""
    error: str = ""
    cost: float = 0.0
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    quality: float = 0.0
    # How it was run (for the response and the span; synthesis ignores them).
    queue_wait_ms: float = 0.0
    attempts: int = 1
    batch_size: int = 1  # items in the backend request that carried it
    shared_by: int = 1  # callers that shared one identical in-flight call
    # When it stepped in for another: "skill/implementation" it replaced and
    # why (a RejectReason value: shed, or "call failed").
    stepped_in_for: str = ""
    step_in_reason: str = ""
    # Answered from the response cache: ``cost`` is 0, ``cache_saved`` is
    # what the cached call cost when it was made, ``cache_age_ms`` its age.
    cached: bool = False
    cache_age_ms: float = 0.0
    cache_saved: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(frozen=True, slots=True)
class CostLedger:
    actual: float
    baseline: float
    baseline_skills: int
    cache_saved: float = 0.0  # what the answers taken from the cache would have cost

    @property
    def saved(self) -> float:
        return self.baseline - self.actual

    @property
    def saved_fraction(self) -> float:
        return self.saved / self.baseline if self.baseline > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Synthesis:
    text: str
    weights: tuple[float, ...]  # per outcome, in the outcomes' order
    quality: float
    ledger: CostLedger

    @property
    def any_ok(self) -> bool:
        return bool(self.text)


def weights_of(scores: Sequence[float]) -> tuple[float, ...]:
    total = sum(scores)
    if total <= 0:
        return tuple(1.0 / len(scores) for _ in scores) if scores else ()
    return tuple(s / total for s in scores)


def baseline_cost(activated: Iterable[SkillSpec]) -> tuple[float, int]:
    """What firing every activated skill with its default implementation costs."""
    skills = list(activated)
    return sum(s.default_implementation.cost_per_query for s in skills), len(skills)


def synthesize(outcomes: Sequence[SkillOutcome], baseline: float, baseline_skills: int) -> Synthesis:
    weights = weights_of([o.score for o in outcomes])
    ok = sorted(((w, i, o) for i, (w, o) in enumerate(zip(weights, outcomes)) if o.ok), key=lambda t: (-t[0], t[1]))
    parts = [f"### {o.skill} (weight: {w:.2f})\n{o.output}" for w, _, o in ok]
    ok_weight = sum(w for w, _, _ in ok)
    if ok_weight > 0:
        quality = sum(w * o.quality for w, _, o in ok) / ok_weight
        # A weighted mean lies between its extremes; float underflow of tiny
        # weights must not push it outside.
        quality = min(max(quality, min(o.quality for _, _, o in ok)), max(o.quality for _, _, o in ok))
    elif ok:
        # Only zero-weight skills answered (forced, not activated: score 0);
        # they did answer, so their plain mean, not 0.
        quality = sum(o.quality for _, _, o in ok) / len(ok)
    else:
        quality = 0.0
    actual = sum(o.cost for o in outcomes)
    cache_saved = sum(o.cache_saved for o in outcomes if o.cached)
    return Synthesis("\n\n".join(parts), weights, quality, CostLedger(actual, baseline, baseline_skills, cache_saved))


@dataclass(frozen=True, slots=True)
class Accounting:
    """What one query adds to the ledger."""

    cost: float  # spent
    baseline: float  # the all-skills baseline, counted only when answered
    saved: float  # baseline − cost when answered, else 0
    quality: float | None  # None when not answered


def account(outcome: QueryOutcome, synthesis: Synthesis | None, baseline: float) -> Accounting:
    spent = synthesis.ledger.actual if synthesis is not None else 0.0
    if outcome.answered and synthesis is not None:
        return Accounting(spent, baseline, baseline - spent, synthesis.quality)
    return Accounting(spent, 0.0, 0.0, None)
