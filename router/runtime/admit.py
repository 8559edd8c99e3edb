"""One door per call: the gate slot, the breaker permission and the retry
budget, taken together and settled exactly once (Netflix concurrency-limits'
``Limiter.acquire() -> Listener``).

::

    got = await door.enter(priority, deadline_at)
    if isinstance(got, Refusal):            # a value, never an exception
        ...                                 # got.reason is a RejectReason
    with got:                               # leaving unsettled (an error, a cancel) = IGNORED
        ...                                 # the backend call, retries spending door.budget
        transition = got.settle(Settle.SUCCESS)

``settle`` makes every state change in one synchronous step (the permit
goes back to the gate, the breaker hears the outcome, the adaptive limit
gets its sample) and returns the breaker transition it caused, so the call
that caused it records it on its own span.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from router.core.admission import GateRejected, Outcome, RejectReason
from router.core.breaker import CircuitBreaker, Transition
from router.core.retry import RetryBudget
from router.core.types import Priority

from .gate import Gate, Permit
from .shared import Ask, Denied, Grant, SharedState

__all__ = ["Door", "Pass", "Refusal", "Settle"]


class Settle(enum.Enum):
    SUCCESS = "success"  # the backend answered
    FAILURE = "failure"  # counts against the implementation (breaker) and as a drop (limit)
    IGNORED = "ignored"  # says nothing about the backend: the caller's deadline, a cancel, a 4xx


@dataclass(frozen=True, slots=True)
class Refusal:
    """The door said no. ``counted``: the gate already counted it (it queued
    and was turned away), so a shed must not count it as a rejection again."""

    reason: RejectReason
    detail: str
    retry_after_s: float
    counted: bool = False

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else str(self.reason)


class Pass:
    """A call let through the door. Settled exactly once; a ``with`` block
    settles it IGNORED if the block leaves without settling."""

    __slots__ = ("_door", "_grant", "_permit", "_settled", "queue_wait_s")

    def __init__(self, door: Door, permit: Permit, grant: Grant | None = None) -> None:
        self._door = door
        self._permit = permit
        self._grant = grant
        self._settled = False
        self.queue_wait_s = permit.queue_wait_s

    @property
    def settled(self) -> bool:
        return self._settled

    def settle(self, how: Settle, error: str = "") -> Transition | None:
        if self._settled:
            return None
        self._settled = True
        door = self._door
        now = door.clock()
        if how is Settle.SUCCESS:
            transition = door.breaker.on_success(now)
            self._permit.settle(Outcome.SUCCESS)
        elif how is Settle.FAILURE:
            transition = door.breaker.on_failure(now, error)
            self._permit.settle(Outcome.DROPPED)
        else:
            door.breaker.on_ignore(now)
            transition = None
            self._permit.settle(Outcome.IGNORED)
        grant = self._grant
        if grant is not None and grant.lease and door.shared is not None and door.ask is not None:
            door.shared.release(door.ask, grant)  # scheduled: settle stays one synchronous step
        return transition

    def __enter__(self) -> Pass:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.settle(Settle.IGNORED)

    def __repr__(self) -> str:
        return f"<Pass {self._door.name}{' settled' if self._settled else ''}>"


class Door:
    """The way in for one implementation of one skill: the skill's gate (its
    concurrency limit and queue), the implementation's breaker, the skill's
    retry budget; and, when limits are shared (across workers or replicas)
    or the implementation has a provider rate limit, the shared state's
    slot and rate, asked once the local gate and the breaker said yes (the
    local gate still queues and orders by priority; the shared lease bounds
    the sum over every process)."""

    __slots__ = ("ask", "breaker", "budget", "clock", "gate", "name", "shared")

    def __init__(self, name: str, gate: Gate, breaker: CircuitBreaker, budget: RetryBudget,
                 clock: Callable[[], float] = time.monotonic, *,
                 shared: SharedState | None = None, ask: Ask | None = None) -> None:
        self.name = name
        self.gate = gate
        self.breaker = breaker
        self.budget = budget
        self.clock = clock
        needed = shared is not None and ask is not None and ask.needed
        self.shared = shared if needed else None
        self.ask = ask if needed else None

    def check(self, priority: Priority, deadline_at: float, *, queues: bool = True) -> Refusal | None:
        """Would a call be refused now? Changes nothing. ``queues`` False:
        only the breaker matters (a batch item takes no slot of its own)."""
        now = self.clock()
        if not queues:
            ok, why = self.breaker.would_allow(now)
            return None if ok else Refusal(RejectReason.BREAKER_OPEN, why, self.gate.retry_after_s())
        # Queue only while the call itself would still fit before the deadline.
        ok, why = self.gate.can_admit(priority, deadline_at - now - (self.gate.service_time_s or 0.0),
                                      breaker=self.breaker)
        if ok:
            return None
        reason = RejectReason(why)
        detail = self.breaker.would_allow(now)[1] if reason is RejectReason.BREAKER_OPEN else ""
        return Refusal(reason, detail, self.gate.retry_after_s())

    async def enter(self, priority: Priority, deadline_at: float) -> Pass | Refusal:
        """Wait for a slot (no longer than the deadline allows for the call
        itself), then take the breaker's permission. A refusal is returned,
        never raised. The call's attempts record and spend ``budget``."""
        refusal = self.check(priority, deadline_at)
        if refusal is not None:
            return refusal
        wait_s = max(0.0, deadline_at - self.clock() - (self.gate.service_time_s or 0.0))
        try:
            permit = await self.gate.admit(priority, timeout_s=wait_s)
        except GateRejected as exc:
            return Refusal(exc.reason, exc.detail, exc.retry_after_s, counted=True)
        now = self.clock()
        ok, why = self.breaker.allow(now)  # half-open: takes a probe place
        if not ok:
            permit.settle(Outcome.IGNORED)
            return Refusal(RejectReason.BREAKER_OPEN, why, self.gate.retry_after_s())
        shared = self.shared
        if shared is None:
            return Pass(self, permit)
        try:
            got = await shared.admit(self.ask)  # type: ignore[arg-type]
        except BaseException:  # cancelled while asking: a lease taken meanwhile expires
            self.breaker.on_ignore(self.clock())
            permit.settle(Outcome.IGNORED)
            raise
        if isinstance(got, Denied):
            self.breaker.on_ignore(self.clock())
            permit.settle(Outcome.IGNORED)
            return Refusal(got.reason, got.detail, got.retry_after_s)
        return Pass(self, permit, got)

    def __repr__(self) -> str:
        g = self.gate
        return (f"<Door {self.name} [in-flight {g.in_flight}/{g.limit} | queued {g.queued}"
                f" | breaker {self.breaker.state(self.clock()).value}]>")
