"""The live resources of one skill, built once from typed settings and never
re-wired: its gate, a circuit breaker and a door per implementation, its
retry budget, and one caller per implementation (direct, coalesced or
batched, chosen here from the settings, once).

Nothing here decides: the decisions are ``router.core``'s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from router.core.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition
from router.core.limits import LimitAlgorithm
from router.core.retry import RetryBudget, RetryPolicy
from router.core.types import SkillSpec

from .admit import Door, Refusal
from .batcher import BatcherStats
from .cache import CacheOptions, CacheStats, CacheStore, CachingCaller
from .calls import BatchedCaller, BatchingOptions, Caller, CoalescedCaller, DirectCaller, Sender
from .gate import Gate
from .observer import NullObserver, Observer
from .ports import Backend
from .shared import Ask, SharedState

__all__ = ["BackendLookup", "BatchingOptions", "CacheOptions", "SkillRuntime", "SkillSettings", "build_gate"]

# (skill, implementation, transition): told of every breaker state change.
TransitionListener = Callable[[str, str, Transition], None]


class BackendLookup(Protocol):
    """What the runtime needs of a backend pool."""

    def get(self, skill: str, implementation: str) -> Backend: ...


@dataclass(frozen=True, slots=True)
class SkillSettings:
    """Everything one skill's runtime is built from (the composition root
    resolves it from the config's global sections and per-skill overrides)."""

    spec: SkillSpec
    concurrency_limit: int
    queue_depth: int  # the bound of the queue
    queue_timeout_s: float
    breaker: BreakerConfig = BreakerConfig()
    retry: RetryPolicy = RetryPolicy()
    retry_budget_ratio: float = 0.2
    batching: BatchingOptions = BatchingOptions()
    batchable: frozenset[str] = frozenset()  # implementations whose backend takes batches
    limit_algorithm: Callable[[], LimitAlgorithm] | None = None  # an adaptive limit, made per gate
    # Per implementation: what its door asks of the shared state (the limit
    # over every process, this process's share, the provider rate limit).
    # Empty: nothing beyond the local gate.
    asks: Mapping[str, Ask] = field(default_factory=dict)
    cache: CacheOptions = CacheOptions()  # the response cache (used when a store is given)

    @property
    def name(self) -> str:
        return self.spec.name


def build_gate(settings: SkillSettings, clock: Callable[[], float] = time.monotonic) -> Gate:
    s = settings.spec
    hint = min(i.expected_latency_ms for i in s.implementations) / 1000.0
    return Gate(s.name, settings.concurrency_limit, settings.queue_depth, settings.queue_timeout_s, clock,
                limit_algorithm=settings.limit_algorithm() if settings.limit_algorithm else None,
                service_time_hint_s=hint)


class SkillRuntime:
    """One skill's gate, breakers, doors, budget and callers."""

    __slots__ = ("_clock", "breakers", "budget", "callers", "doors", "gate", "settings", "spec")

    def __init__(self, settings: SkillSettings, gate: Gate, backends: BackendLookup, *,
                 observer: Observer | None = None, on_transition: TransitionListener | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 shared: SharedState | None = None, cache: CacheStore | None = None) -> None:
        spec = settings.spec
        self.settings = settings
        self.spec = spec
        self.gate = gate
        self._clock = clock
        self.budget = RetryBudget(settings.retry_budget_ratio)
        observer = observer or NullObserver()
        rng = rng or random.Random()
        breakers: dict[str, CircuitBreaker] = {}
        doors: dict[str, Door] = {}
        callers: dict[str, Caller] = {}
        b = settings.batching
        for impl in spec.implementations:
            listener = None if on_transition is None else (
                lambda t, impl=impl.name: on_transition(spec.name, impl, t))
            breaker = CircuitBreaker(f"{spec.name}/{impl.name}", settings.breaker, on_transition=listener)
            door = Door(f"{spec.name}/{impl.name}", gate, breaker, self.budget, clock,
                        shared=shared, ask=settings.asks.get(impl.name))
            backend = backends.get(spec.name, impl.name)
            direct = DirectCaller(impl, door, backend, Sender(impl, door, settings.retry, rng, clock), clock)
            caller: Caller
            if b.enabled and impl.name in settings.batchable:
                caller = BatchedCaller(spec.name, direct, door, backend,
                                       Sender(impl, door, settings.retry, rng, clock), b, observer, clock)
            elif b.enabled:
                # A backend that cannot batch still gains: identical calls in
                # flight share one.
                caller = CoalescedCaller(direct, spec.name, clock)
            else:
                caller = direct
            if cache is not None and settings.cache.enabled:
                # Around whichever caller it is: a hit needs none of them.
                caller = CachingCaller(caller, cache, settings.cache, name=f"{spec.name}/{impl.name}", clock=clock)
            breakers[impl.name], doors[impl.name], callers[impl.name] = breaker, door, caller
        self.breakers: Mapping[str, CircuitBreaker] = breakers
        self.doors: Mapping[str, Door] = doors
        self.callers: Mapping[str, Caller] = callers

    @property
    def name(self) -> str:
        return self.spec.name

    def shed(self, refusal: Refusal) -> None:
        """The skill was shed for a query (Stats)."""
        self.gate.note_shed(None if refusal.counted else refusal.reason)

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

    def _unwrapped(self) -> list[Caller]:
        return [c.inner if isinstance(c, CachingCaller) else c for c in self.callers.values()]

    def cache_stats(self) -> CacheStats | None:
        """Hits and misses of the skill's response cache; None when it has none."""
        stats = [c.stats for c in self.callers.values() if isinstance(c, CachingCaller)]
        if not stats:
            return None
        total = CacheStats()
        for s in stats:
            total = total + s
        return total

    def batch_stats(self) -> BatcherStats | None:
        stats = [s for c in self._unwrapped() if isinstance(c, BatchedCaller) for s in c.stats().values()]
        if not stats:
            return None
        total = stats[0]
        for s in stats[1:]:
            total = total + s
        return total

    def batchers(self) -> int:
        """Batchers alive now (one per batch key with items pending or in flight)."""
        return sum(len(c.batchers) for c in self._unwrapped() if isinstance(c, BatchedCaller))

    def coalesced_calls(self) -> int:
        return sum(c.flights.stats().coalesced for c in self._unwrapped() if isinstance(c, CoalescedCaller))

    async def aclose(self) -> None:
        for c in self.callers.values():
            await c.aclose()

    def __repr__(self) -> str:
        now = self._clock()
        impls = ", ".join(f"{n} {b.state(now).value}" for n, b in self.breakers.items())
        g = self.gate
        return (f"<SkillRuntime {self.name} [in-flight {g.in_flight}/{g.limit} | queued {g.queued}/{g.queue_depth}"
                f" | {impls} | {type(next(iter(self.callers.values()))).__name__}]>")

