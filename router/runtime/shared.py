"""Shared state: the port through which limits hold across processes.

The door (``runtime.admit``) asks the shared state once per call, right
after the local gate granted a slot and the breaker its permission: one
``Ask`` (the skill's slot under the limit summed over every replica and
worker, with a lease that expires, and the implementation's provider rate
limit), one answer (``Grant`` or ``Denied``), one round trip. The lease is
given back when the call settles (``release``, scheduled, never awaited by
the call); if the process dies first, the lease expires.

Two implementations: ``LocalState`` here (in-process; the default, and
the fallback while a remote store is unreachable), and ``RedisState`` in
the ``router.state`` edge. The runtime never knows which.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from router.core.admission import RejectReason
from router.core.breaker import BreakerState, CircuitBreaker, Transition
from router.core.ratelimit import RateLimit, SlidingWindow

from .registry import LiveRegistry

__all__ = ["SHARED_TRIP", "Ask", "Denied", "Grant", "LocalState", "SharedState", "StateStatus", "StateSync"]

log = logging.getLogger("router.state")

# The reason of a breaker opened because another process's did (never published again).
SHARED_TRIP = "opened by another process"


@dataclass(frozen=True, slots=True)
class Ask:
    """What one door asks of the shared state for one call.

    ``limit``: the skill's concurrency limit summed over every process
    sharing the state (None: the local gate is the only bound).
    ``local_limit``: this process's share, used while the shared store is
    unreachable. ``lease_s``: how long a slot is held if never released.
    """

    skill: str
    implementation: str
    limit: int | None = None
    local_limit: int | None = None
    lease_s: float = 60.0
    rate: RateLimit = RateLimit()
    local_rate: RateLimit = RateLimit()
    tokens: int = 0  # the call's expected tokens, counted against tpm

    @property
    def needed(self) -> bool:
        return self.limit is not None or self.local_limit is not None or self.rate.limited


@dataclass(frozen=True, slots=True)
class Grant:
    """A slot (``lease``, "" when no slot was asked) and the rate taken."""

    lease: str = ""


@dataclass(frozen=True, slots=True)
class Denied:
    reason: RejectReason  # SHARED_LIMIT or RATE_LIMITED
    detail: str
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class StateStatus:
    """For Stats, health and the log."""

    backend: str  # "in_process" | "redis"
    connected: bool  # False: serving on local limits (the fallback)
    detail: str = ""  # the last error while disconnected
    fallbacks: int = 0  # admission decisions made locally because the store was unreachable
    reconnects: int = 0
    worker: int = 0
    workers: int = 1


class SharedState(Protocol):
    async def admit(self, ask: Ask) -> Grant | Denied:
        """Take a slot under ``ask.limit`` and a request (and its tokens)
        under ``ask.rate``, atomically, or neither. Never raises and never
        blocks longer than the store's timeout."""

    def release(self, ask: Ask, grant: Grant) -> None:
        """Give the slot back (scheduled; a lost release expires)."""

    def status(self) -> StateStatus: ...

    def breaker_opened(self, skill: str, implementation: str, open_for_s: float, reason: str) -> None:
        """Tell the other processes (scheduled): this implementation's
        breaker opened and half-opens in ``open_for_s``."""

    def breaker_closed(self, skill: str, implementation: str) -> None:
        """Tell the other processes (scheduled): it closed again."""

    async def open_breakers(self) -> Mapping[tuple[str, str], tuple[float, str]]:
        """Breakers another process opened: (skill, implementation) →
        (seconds until they half-open, reason). Empty when nothing is shared."""

    async def exchange_windows(self, mine: Mapping[str, tuple[int, int]],
                               ttl_s: float) -> Mapping[str, tuple[int, int]]:
        """Publish this process's success windows (skill → (successes,
        calls), kept ``ttl_s``) and return the sum of every other live
        process's. Empty when nothing is shared."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class LocalState:
    """In-process: slots counted per skill, a sliding window per
    implementation. Uses the ask's local limits (this process's share)."""

    def __init__(self, *, worker: int = 0, workers: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[str, int] = {}
        self._windows: dict[tuple[str, str], SlidingWindow] = {}
        self._ids = itertools.count(1)
        self.worker = worker
        self.workers = workers

    async def admit(self, ask: Ask) -> Grant | Denied:
        return self.admit_now(ask)

    def admit_now(self, ask: Ask) -> Grant | Denied:
        limit = ask.local_limit
        held = self._held.get(ask.skill, 0)
        if limit is not None and held >= limit:
            who = "this worker's share" if self.workers > 1 else "the limit"
            return Denied(RejectReason.SHARED_LIMIT, f"{ask.skill}: {held} of {limit} slots in use ({who})", 0.05)
        rate = ask.local_rate
        if rate.limited:
            key = (ask.skill, ask.implementation)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = SlidingWindow()
            wait = window.try_take(rate, self._clock(), ask.tokens)
            if wait > 0.0:
                return Denied(RejectReason.RATE_LIMITED,
                              f"{ask.skill}/{ask.implementation}: rpm {rate.rpm}, tpm {rate.tpm} spent", wait)
        if limit is None:
            return Grant()
        self._held[ask.skill] = held + 1
        return Grant(f"local:{next(self._ids)}")

    def release(self, ask: Ask, grant: Grant) -> None:
        if grant.lease:
            held = self._held.get(ask.skill, 0)
            if held > 0:
                self._held[ask.skill] = held - 1

    def held(self, skill: str) -> int:
        return self._held.get(skill, 0)

    def status(self) -> StateStatus:
        return StateStatus("in_process", True, worker=self.worker, workers=self.workers)

    def breaker_opened(self, skill: str, implementation: str, open_for_s: float, reason: str) -> None:
        return None  # one process: nobody to tell

    def breaker_closed(self, skill: str, implementation: str) -> None:
        return None

    async def open_breakers(self) -> Mapping[tuple[str, str], tuple[float, str]]:
        return {}

    async def exchange_windows(self, mine: Mapping[str, tuple[int, int]],
                               ttl_s: float) -> Mapping[str, tuple[int, int]]:
        return {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class StateSync:
    """Learned state across processes, every ``interval_s``:

    - circuit breakers: a breaker that opens here is published
      (``listener``); the breakers other processes opened are read and
      tripped here too (``CircuitBreaker.trip``: only a CLOSED one,
      half-opening when the other does). Probing stays per process: each
      half-opens and probes on its own; a close here clears the published
      state;
    - success rates: this process's success windows are published and the
      other processes' are merged into what scoring reads
      (``LiveRegistry.set_peers``)."""

    def __init__(self, shared: SharedState, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, registry: LiveRegistry | None = None) -> None:
        self.shared = shared
        self.registry = registry
        self.interval_s = interval_s
        self.clock = clock
        self.breakers: Mapping[tuple[str, str], CircuitBreaker] = {}
        self.tripped = 0
        self._task: asyncio.Task[None] | None = None

    def listener(self, skill: str, implementation: str, t: Transition) -> None:
        if t.to_state is BreakerState.OPEN and not t.reason.startswith(SHARED_TRIP):
            b = self.breakers.get((skill, implementation))
            cooldown = b.config.cooldown_s if b is not None else 0.0
            if cooldown > 0:
                self.shared.breaker_opened(skill, implementation, cooldown, t.reason)
        elif t.to_state is BreakerState.CLOSED:
            self.shared.breaker_closed(skill, implementation)

    async def sync_once(self) -> int:
        """Trip the breakers other processes opened; how many tripped."""
        opened = await self.shared.open_breakers()
        n = 0
        now = self.clock()
        for key, (left_s, reason) in opened.items():
            b = self.breakers.get(key)
            if b is not None and b.trip(now, left_s, f"{SHARED_TRIP}: {reason}") is not None:
                n += 1
        self.tripped += n
        if self.registry is not None:
            peers = await self.shared.exchange_windows(self.registry.windows(), 3 * self.interval_s)
            self.registry.set_peers(dict(peers))
        return n

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sync_once()
            except Exception:  # never takes the sidecar down; the next turn tries again
                log.exception("shared state sync failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
