"""The per-skill gate: a resizable semaphore with a bounded priority queue.

Every decision (who gets a slot, who is turned away, who timed out) is made
synchronously by ``router.core.admission.AdmissionState``, which returns the
tickets whose callers must wake; this module only parks callers on futures,
wakes them, and arms one timer per queued caller. No background task.

::

    gate = Gate("kimiK2", limit=5, queue_depth=50, queue_timeout_s=2.0)
    ok, why = gate.can_admit(Priority.NORMAL, remaining_s)  # shed before queueing
    async with gate.acquire(Priority.NORMAL, timeout_s=remaining_s) as permit:
        ...  # permit.queue_wait_s; permit.dropped() on a failed call

``acquire`` raises ``GateRejected`` (an ``Overloaded``) when the queue is
full, when the caller was displaced by a higher priority, or when the wait
ran past the queue timeout or the caller's ``timeout_s``. The permit is
released exactly once when the block exits, however it exits; a caller
cancelled while queued frees its place at once, and one cancelled as it was
granted passes the slot on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from router.core.admission import (
    AdmissionState,
    GateRejected,
    GateStats,
    Outcome,
    RejectReason,
    Ticket,
    TicketState,
)
from router.core.breaker import CircuitBreaker
from router.core.limits import LimitAlgorithm
from router.core.types import Priority

__all__ = ["Gate", "GateRejected", "GateStats", "Outcome", "Permit", "RejectReason"]

# call_later(delay_s, callback, *args) -> a handle with .cancel(); the running
# loop's by default. Tests pass a manual scheduler to drive time.
CallLater = Callable[..., Any]


class Permit:
    """A held slot. Its outcome feeds the adaptive limit: success unless the
    block raised (dropped) or was cancelled (ignored), or unless marked."""

    __slots__ = ("_gate", "_outcome", "_ticket")

    def __init__(self, gate: Gate, ticket: Ticket) -> None:
        self._gate = gate
        self._ticket = ticket
        self._outcome: Outcome | None = None

    @property
    def priority(self) -> Priority:
        return self._ticket.priority

    @property
    def queue_wait_s(self) -> float:
        return self._ticket.queue_wait_s

    @property
    def released(self) -> bool:
        return self._ticket.state is not TicketState.GRANTED

    def dropped(self) -> None:
        """The call failed or timed out: a congestion signal for the limit."""
        self._outcome = Outcome.DROPPED

    def ignore(self) -> None:
        """The outcome says nothing about the backend's capacity."""
        self._outcome = Outcome.IGNORED

    def settle(self, outcome: Outcome) -> None:
        """Give the slot back now with ``outcome``. Exactly once: a second
        settle (or the block's exit after one) is a no-op."""
        self._gate._release(self._ticket, outcome)

    def _settle(self, exc: BaseException | None) -> None:
        outcome = self._outcome
        if outcome is None:
            if exc is None:
                outcome = Outcome.SUCCESS
            elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                outcome = Outcome.IGNORED
            else:
                outcome = Outcome.DROPPED
        self._gate._release(self._ticket, outcome)

    def __repr__(self) -> str:
        return f"<Permit {self._gate.name} {self._ticket.priority.name} waited {self.queue_wait_s:.3f}s>"


class _Acquire:
    """``async with gate.acquire(...) as permit``."""

    __slots__ = ("_gate", "_permit", "_priority", "_timeout_s")

    def __init__(self, gate: Gate, priority: Priority, timeout_s: float | None) -> None:
        self._gate = gate
        self._priority = priority
        self._timeout_s = timeout_s
        self._permit: Permit | None = None

    async def __aenter__(self) -> Permit:
        if self._permit is not None:
            raise RuntimeError("a gate acquisition cannot be entered twice")
        ticket = await self._gate._wait_for_slot(self._priority, self._timeout_s)
        self._permit = Permit(self._gate, ticket)
        return self._permit

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._permit is not None:
            self._permit._settle(exc)


class Gate:
    """One skill's admission gate. Owned by one event loop; not thread-safe."""

    def __init__(
        self,
        name: str,
        limit: int,
        queue_depth: int,
        queue_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        limit_algorithm: LimitAlgorithm | None = None,
        service_time_hint_s: float | None = None,
        call_later: CallLater | None = None,
    ) -> None:
        self._state = AdmissionState(name, limit, queue_depth, queue_timeout_s,
                                     limit_algorithm=limit_algorithm,
                                     service_time_hint_s=service_time_hint_s)
        self._clock = clock
        self._call_later = call_later

    # ---- reading -----------------------------------------------------------

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def limit(self) -> int:
        return self._state.limit

    @property
    def in_flight(self) -> int:
        return self._state.in_flight

    @property
    def queued(self) -> int:
        return self._state.queued

    @property
    def queue_depth(self) -> int:
        return self._state.queue_depth

    @property
    def queue_timeout_s(self) -> float:
        return self._state.queue_timeout_s

    @property
    def service_time_s(self) -> float | None:
        """EWMA of how long a slot is held (the hint before the first release)."""
        return self._state.service_time_s

    @property
    def utilization(self) -> float:
        return self._state.utilization

    def can_admit(self, priority: Priority = Priority.NORMAL, remaining_s: float | None = None, *,
                  breaker: CircuitBreaker | None = None) -> tuple[bool, str]:
        """Non-blocking: ``(True, "")``, or ``(False, reason)`` with reason a
        ``RejectReason`` (queue full, breaker open, expected wait exceeds
        the remaining deadline). Changes nothing; a probe place of a
        half-open breaker is not taken."""
        return self._state.can_admit(priority, self._clock(), remaining_s, breaker=breaker)

    def expected_wait_s(self, priority: Priority = Priority.NORMAL) -> float | None:
        return self._state.expected_wait_s(priority)

    def retry_after_s(self) -> float:
        """When a slot is expected to be free for a newcomer (for RetryInfo)."""
        return self._state.retry_after_s()

    def stats(self) -> GateStats:
        return self._state.snapshot()

    # ---- acting ------------------------------------------------------------

    async def admit(self, priority: Priority = Priority.NORMAL, timeout_s: float | None = None) -> Permit:
        """A slot without a block: the caller must ``settle`` the permit
        exactly once (``router.runtime.admit`` does). Raises ``GateRejected``."""
        return Permit(self, await self._wait_for_slot(priority, timeout_s))

    def acquire(self, priority: Priority = Priority.NORMAL, timeout_s: float | None = None) -> _Acquire:
        """``async with gate.acquire(priority, timeout_s=remaining) as permit``.
        ``timeout_s`` is the caller's remaining deadline; the wait is bounded
        by it and by the gate's queue timeout."""
        return _Acquire(self, priority, timeout_s)

    def set_limit(self, limit: int) -> None:
        """Resize. Growing wakes queued callers now; shrinking takes effect
        as slots are released."""
        self._wake(self._state.set_limit(limit, self._clock()))

    def note_shed(self, refused: str | None = None) -> None:
        """The pipeline shed this skill for one query (a Stats counter);
        ``refused``: the ``can_admit`` reason when it never queued."""
        self._state.note_shed(refused)

    # ---- internals ---------------------------------------------------------

    async def _wait_for_slot(self, priority: Priority, timeout_s: float | None) -> Ticket:
        st = self._state
        ticket, wake = st.arrive(priority, self._clock(), timeout_s)
        self._wake(wake)
        if ticket.state is TicketState.GRANTED:
            return ticket
        if ticket.state is not TicketState.QUEUED:
            raise self._rejection(ticket)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        ticket.handle = fut
        call_later = self._call_later or loop.call_later
        timer = call_later(ticket.wait_budget_s, self._expire, ticket)
        try:
            await fut
        except BaseException:
            # Cancelled while queued: free the place now. Cancelled in the
            # same instant the slot was granted: pass the slot on.
            self._wake(st.abandon(ticket, self._clock()))
            raise
        finally:
            timer.cancel()
            ticket.handle = None
        if ticket.state is TicketState.GRANTED:
            return ticket
        if ticket.state is TicketState.QUEUED:  # woken without a decision: never expected
            self._wake(st.abandon(ticket, self._clock()))
            raise RuntimeError(f"gate {self.name}: woken while still queued")
        raise self._rejection(ticket)

    def _expire(self, ticket: Ticket) -> None:
        self._wake(self._state.expire(ticket, self._clock()))

    def _release(self, ticket: Ticket, outcome: Outcome) -> None:
        self._wake(self._state.release(ticket, self._clock(), outcome))

    def _wake(self, tickets: Iterable[Ticket]) -> None:
        pending = deque(tickets)
        while pending:
            t = pending.popleft()
            fut = t.handle
            if fut is None:
                continue
            if fut.cancelled() and t.state is TicketState.GRANTED:
                # Its task is being cancelled: give the slot to the next in
                # line now rather than when the task gets to run.
                pending.extend(self._state.abandon(t, self._clock()))
            elif not fut.done():
                fut.set_result(None)

    def _rejection(self, ticket: Ticket) -> GateRejected:
        reason = ticket.reason or RejectReason.QUEUE_FULL
        st = self._state
        if reason is RejectReason.QUEUE_FULL:
            detail = f"{st.queued}/{st.queue_depth} queued, {st.in_flight}/{st.limit} in flight"
        elif reason in (RejectReason.QUEUE_TIMEOUT, RejectReason.DEADLINE):
            detail = f"waited {ticket.wait_budget_s:.3f}s"
        else:
            detail = ""
        return GateRejected(reason, st.retry_after_s(), gate=st.name, detail=detail)

    def __repr__(self) -> str:
        st = self._state
        return f"<Gate {st.name} [in-flight {st.in_flight}/{st.limit} | queued {st.queued}]>"
