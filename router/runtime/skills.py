"""The live resources of one skill: its gate, a circuit breaker per
implementation, its batchers and single-flight table, and how it retries.

Built once by the composition root from the config; the pipeline reads and
drives them. Nothing here decides: the decisions are ``router.core``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router.core.batching import BatchKeyMode
from router.core.breaker import BreakerConfig, BreakerState, CircuitBreaker
from router.core.retry import RetryBudget, RetryPolicy
from router.core.types import SkillSpec

from .batcher import BatcherGroup, BatcherStats, SingleFlight
from .gate import Gate


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    enabled: bool = False
    window_s: float = 0.1
    max_batch_size: int = 16
    key: BatchKeyMode = BatchKeyMode.IMPLEMENTATION
    priority_bypass: bool = True


@dataclass(frozen=True, slots=True)
class AdmissionOptions:
    load_bias: float = 0.0
    retry: RetryPolicy = RetryPolicy()


@dataclass
class SkillRuntime:
    spec: SkillSpec
    gate: Gate
    breakers: dict[str, CircuitBreaker]
    batching: BatchingOptions
    can_batch: dict[str, bool]  # per implementation: its backend takes batches
    budget: RetryBudget
    batchers: BatcherGroup | None = None  # set by the pipeline (it owns ``send``)
    flights: SingleFlight = field(default_factory=SingleFlight)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def service_time_s(self) -> float:
        """How long a call holds a slot of the skill's gate (its estimate):
        the part of a deadline a query must keep for the call itself."""
        return self.gate.service_time_s or 0.0

    def unavailable(self, now: float) -> dict[str, str]:
        """Implementations whose breaker lets no call through now: open, or
        half-open with every probe place taken (selection skips them, so the
        next implementation of the skill steps in)."""
        out = {}
        for impl, b in self.breakers.items():
            ok, why = b.would_allow(now)
            if ok:
                continue
            if b.state(now) is BreakerState.OPEN:
                at = b.half_open_at
                out[impl] = "circuit breaker open" + (f" (half-opens in {max(0.0, at - now):.1f}s)" if at else "")
            else:
                out[impl] = f"circuit breaker half-open, probe places taken ({why})"
        return out

    def available_in_s(self, now: float) -> float | None:
        """When an implementation that ``unavailable`` skips may take calls
        again (an open breaker half-opens; a probe place frees, guessed as
        the gate's retry-after); None when none is skipped."""
        waits = [max(0.0, b.half_open_at - now) if b.state(now) is BreakerState.OPEN and b.half_open_at is not None
                 else self.gate.retry_after_s()
                 for b in self.breakers.values() if not b.would_allow(now)[0]]
        return min(waits) if waits else None

    def batch_stats(self) -> BatcherStats | None:
        if self.batchers is None:
            return None
        stats = list(self.batchers.stats().values())
        if not stats:
            return None
        total = stats[0]
        for s in stats[1:]:
            total = total + s
        return total


def build_skill_runtimes(
    skills: tuple[SkillSpec, ...],
    *,
    limits: Callable[[SkillSpec], tuple[int, int, float]],
    breaker: BreakerConfig,
    batching: Callable[[SkillSpec], BatchingOptions],
    can_batch: Callable[[SkillSpec, str], bool],
    budget_ratio: float,
    limit_algorithm: Callable[[SkillSpec, int], object | None] = lambda s, n: None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, SkillRuntime]:
    """``limits(skill) -> (concurrency limit, queue depth, queue timeout s)``."""
    out = {}
    for s in skills:
        limit, depth, queue_timeout = limits(s)
        hint = min(i.expected_latency_ms for i in s.implementations) / 1000.0
        gate = Gate(s.name, limit, depth, queue_timeout, clock, limit_algorithm=limit_algorithm(s, limit),  # type: ignore[arg-type]
                    service_time_hint_s=hint)
        out[s.name] = SkillRuntime(
            spec=s, gate=gate,
            breakers={i.name: CircuitBreaker(f"{s.name}/{i.name}", breaker) for i in s.implementations},
            batching=batching(s), can_batch={i.name: can_batch(s, i.name) for i in s.implementations},
            budget=RetryBudget(budget_ratio), flights=SingleFlight(s.name))
    return out

