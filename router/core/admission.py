"""Per-skill admission: who gets a slot, who waits, who is turned away.

``AdmissionState`` is the whole decision, as plain synchronous methods over
plain state; ``router.runtime.gate.Gate`` is the thin asyncio wrapper that
parks callers on futures and wakes the tickets these methods hand back.
Every method that can move a ticket returns the tickets whose waiting
callers must be woken (granted a slot, displaced or timed out), so the
decision is testable without an event loop.

Rules:

* at most ``limit`` tickets hold a slot; behind them a queue of at most
  ``queue_depth`` tickets;
* the highest priority is served first, FIFO within a priority;
* a full queue turns the newest lowest-priority ticket out for a
  higher-priority arrival, and turns an arrival away when nobody is lower;
* a queued ticket waits at most ``min(queue_timeout_s, caller's timeout)``;
* a slot is released exactly once, whatever happens: a ticket's state only
  moves forward (QUEUED → GRANTED → RELEASED, or to a terminal rejection),
  so a second release, a late timeout or a late cancel is a no-op;
* a ticket granted a slot while its caller was being cancelled passes the
  slot straight on (``abandon``).

The gate also keeps what the pipeline needs to shed a skill before it
queues: an EWMA of how long a slot is held (so how fast the queue drains),
the expected wait for a new arrival, and an estimate of when a slot frees
(``retry_after_s``, for google.rpc.RetryInfo).

Time is passed in (``now``); nothing here reads a clock.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import Overloaded
from .types import Priority

if TYPE_CHECKING:
    from .breaker import CircuitBreaker
    from .limits import LimitAlgorithm

__all__ = [
    "AdmissionState",
    "GateRejected",
    "GateStats",
    "Outcome",
    "RejectReason",
    "Ticket",
    "TicketState",
    "load_penalty",
]

DEFAULT_EWMA_ALPHA = 0.2
DEFAULT_RETRY_AFTER_S = 1.0  # before any slot was ever released
MIN_RETRY_AFTER_S = 0.05
MAX_RETRY_AFTER_S = 60.0


class RejectReason(enum.StrEnum):
    """Why a query is not admitted to a skill (a shed or a rejection)."""

    QUEUE_FULL = "queue full"
    BREAKER_OPEN = "breaker open"
    EXPECTED_WAIT = "expected wait exceeds the remaining deadline"
    QUEUE_TIMEOUT = "queue timeout"
    DEADLINE = "deadline passed while queued"
    DISPLACED = "displaced by a higher-priority query"
    # Not an admission refusal: the skill's call failed while time remained,
    # so its next implementation or the next-best skill stepped in.
    CALL_FAILED = "call failed"
    # The shared state (every replica and worker together) refused: the
    # skill's concurrency limit is taken elsewhere, or the implementation's
    # provider rate limit (rpm/tpm) is spent.
    SHARED_LIMIT = "shared concurrency limit reached"
    RATE_LIMITED = "provider rate limit reached"


class TicketState(enum.Enum):
    QUEUED = "queued"
    GRANTED = "granted"  # holds a slot
    RELEASED = "released"  # held a slot and gave it back
    REJECTED = "rejected"  # turned away on arrival (queue full, no time)
    DISPLACED = "displaced"
    TIMED_OUT = "timed_out"  # queue timeout or the caller's deadline
    CANCELLED = "cancelled"  # the caller went away (while queued, or racing its grant)


TERMINAL = frozenset({TicketState.RELEASED, TicketState.REJECTED, TicketState.DISPLACED,
                      TicketState.TIMED_OUT, TicketState.CANCELLED})


class Outcome(enum.StrEnum):
    """How a permit ended, for the adaptive limit (Netflix's Listener)."""

    SUCCESS = "success"
    DROPPED = "dropped"  # error or timeout: a congestion signal
    IGNORED = "ignored"  # says nothing about the backend (the caller cancelled)


class Ticket:
    """One request for a slot. ``handle`` belongs to the runtime (the future
    its caller waits on); the core never touches it."""

    __slots__ = ("arrived_at", "expiry_reason", "granted_at", "handle", "in_flight_at_grant",
                 "priority", "reason", "seq", "state", "wait_budget_s")

    def __init__(self, priority: Priority, seq: int, arrived_at: float, wait_budget_s: float,
                 expiry_reason: RejectReason) -> None:
        self.priority = priority
        self.seq = seq
        self.arrived_at = arrived_at
        self.wait_budget_s = wait_budget_s  # how long it may queue
        self.expiry_reason = expiry_reason  # what a timeout means for it
        self.state = TicketState.QUEUED
        self.reason: RejectReason | None = None  # set when rejected, displaced or timed out
        self.granted_at: float | None = None
        self.in_flight_at_grant = 0
        self.handle: Any = None

    @property
    def queue_wait_s(self) -> float:
        return 0.0 if self.granted_at is None else self.granted_at - self.arrived_at

    def __repr__(self) -> str:
        return f"<Ticket #{self.seq} {self.priority.name} {self.state.value}>"


@dataclass(frozen=True, slots=True)
class GateStats:
    """A snapshot of one gate, for the live registry, Stats and telemetry."""

    name: str
    limit: int
    in_flight: int
    utilization: float  # in_flight / limit (above 1 right after the limit shrank)
    queue_depth: int  # the configured bound
    queued: int
    queued_by_priority: Mapping[Priority, int]
    admitted: int  # slots granted (at once or from the queue)
    released: int  # slots given back; admitted − released == in_flight
    rejected: int  # turned away: queue full
    displaced: int  # turned out of a full queue by a higher priority
    timed_out: int  # queue timeout
    deadline_expired: int  # the caller's deadline passed while queued
    cancelled: int  # the caller went away while queued (or as it was granted)
    shed: int  # counted by the pipeline (``note_shed``)
    mean_queue_wait_s: float  # over every admitted ticket, zero waits included
    service_time_s: float | None  # EWMA of how long a slot is held; None before the first release
    expected_wait_s: float | None  # for a new NORMAL arrival


class GateRejected(Overloaded):
    """A skill's gate would not (or could not in time) give a slot.

    The pipeline sheds the skill (the next-best one steps in); when every
    candidate is saturated it raises ``Overloaded`` with the smallest
    ``retry_after_s``.
    """

    def __init__(self, reason: RejectReason, retry_after_s: float, *, gate: str = "", detail: str = "") -> None:
        where = f"skill {gate}: " if gate else ""
        more = f" ({detail})" if detail else ""
        super().__init__(f"{where}{reason}{more}; retry after {retry_after_s:.2f}s", retry_after_s)
        self.reason = reason
        self.gate = gate
        self.detail = detail


def load_penalty(utilization: float, bias: float) -> float:
    """A scoring factor in ``[1 − bias, 1]`` that makes a hot skill lose ties.

    ``utilization`` is clamped to [0, 1], ``bias`` to [0, 1]; a bias of 0
    (the default in the policy) changes nothing.
    """
    u = 0.0 if math.isnan(utilization) else min(1.0, max(0.0, utilization))
    b = 0.0 if math.isnan(bias) else min(1.0, max(0.0, bias))
    return 1.0 - b * u


class AdmissionState:
    """The gate's state and every decision over it. Not thread-safe: one
    event loop owns it."""

    def __init__(
        self,
        name: str,
        limit: int,
        queue_depth: int,
        queue_timeout_s: float,
        *,
        limit_algorithm: LimitAlgorithm | None = None,
        ewma_alpha: float = DEFAULT_EWMA_ALPHA,
        service_time_hint_s: float | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"gate {name}: limit must be ≥ 1, got {limit}")
        if queue_depth < 0:
            raise ValueError(f"gate {name}: queue_depth must be ≥ 0, got {queue_depth}")
        if not queue_timeout_s > 0:
            raise ValueError(f"gate {name}: queue_timeout_s must be > 0, got {queue_timeout_s}")
        if not 0.0 < ewma_alpha <= 1.0:
            raise ValueError(f"gate {name}: ewma_alpha must be in (0, 1], got {ewma_alpha}")
        self.name = name
        self.queue_depth = queue_depth
        self.queue_timeout_s = queue_timeout_s
        self.limit_algorithm = limit_algorithm
        self._limit = limit if limit_algorithm is None else max(1, limit_algorithm.limit)
        self._alpha = ewma_alpha
        self._service_s: float | None = service_time_hint_s
        self._sampled = False
        # One FIFO per priority, highest priority first.
        self._queues: dict[Priority, deque[Ticket]] = {p: deque() for p in sorted(Priority, reverse=True)}
        self._queued = 0
        self._in_flight = 0
        self._seq = 0
        self.admitted = 0
        self.released = 0
        self.rejected = 0
        self.displaced = 0
        self.timed_out = 0
        self.deadline_expired = 0
        self.cancelled = 0
        self.shed = 0
        self._queue_wait_total = 0.0

    # ---- reading -----------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def utilization(self) -> float:
        return self._in_flight / self._limit

    @property
    def service_time_s(self) -> float | None:
        return self._service_s

    def queued_ahead(self, priority: Priority) -> int:
        """Tickets a new arrival of ``priority`` would queue behind."""
        return sum(len(q) for p, q in self._queues.items() if p >= priority)

    def expected_wait_s(self, priority: Priority = Priority.NORMAL) -> float | None:
        """How long a new arrival of ``priority`` would wait for a slot; None
        when there is no estimate yet (no slot released, no hint).

        Slots free at about ``limit / service_time`` a second; the arrival
        needs every ticket ahead of it served, plus any slots held above the
        limit (after it shrank), plus one.
        """
        needed = self._in_flight + self.queued_ahead(priority) - self._limit + 1
        if needed <= 0:
            return 0.0
        if self._service_s is None:
            return None
        return needed * self._service_s / self._limit

    def retry_after_s(self) -> float:
        """When to try again after this gate said no: the expected wait of a
        lowest-priority arrival (it must queue behind everyone), within
        [MIN_RETRY_AFTER_S, MAX_RETRY_AFTER_S]."""
        wait = self.expected_wait_s(Priority.LOW)
        if wait is None:
            wait = DEFAULT_RETRY_AFTER_S
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, wait))

    def _queue_full_for(self, priority: Priority) -> bool:
        return self._queued >= self.queue_depth and self._lowest_below(priority) is None

    def can_admit(
        self,
        priority: Priority,
        now: float,
        remaining_s: float | None = None,
        *,
        breaker: CircuitBreaker | None = None,
    ) -> tuple[bool, str]:
        """Without changing anything: would a query of ``priority`` with
        ``remaining_s`` left get a slot in time? ``(True, "")`` or
        ``(False, RejectReason)``.

        A query whose expected wait exceeds the time it may spend queued
        (its remaining deadline, capped by the queue timeout) is better shed
        now, so the next-best skill can step in while there is time.
        """
        if breaker is not None:
            ok, _why = breaker.would_allow(now)
            if not ok:
                return False, RejectReason.BREAKER_OPEN
        if self._queued == 0 and self._in_flight < self._limit:
            return True, ""
        if self._queue_full_for(priority):
            return False, RejectReason.QUEUE_FULL
        budget = self.queue_timeout_s if remaining_s is None else min(remaining_s, self.queue_timeout_s)
        wait = self.expected_wait_s(priority)
        if budget <= 0 or (wait is not None and wait > budget):
            return False, RejectReason.EXPECTED_WAIT
        return True, ""

    def snapshot(self) -> GateStats:
        return GateStats(
            name=self.name,
            limit=self._limit,
            in_flight=self._in_flight,
            utilization=self.utilization,
            queue_depth=self.queue_depth,
            queued=self._queued,
            queued_by_priority=MappingProxyType({p: len(q) for p, q in sorted(self._queues.items())}),
            admitted=self.admitted,
            released=self.released,
            rejected=self.rejected,
            displaced=self.displaced,
            timed_out=self.timed_out,
            deadline_expired=self.deadline_expired,
            cancelled=self.cancelled,
            shed=self.shed,
            mean_queue_wait_s=self._queue_wait_total / self.admitted if self.admitted else 0.0,
            service_time_s=self._service_s,
            expected_wait_s=self.expected_wait_s(Priority.NORMAL),
        )

    # ---- deciding ----------------------------------------------------------

    def note_shed(self, refused: str | None = None) -> None:
        """The pipeline shed this skill for a query (counted for Stats).
        ``refused`` is the reason when the gate refused it before it queued
        (``can_admit``); a full queue then also counts as a rejection, as if
        the query had arrived and been turned away."""
        self.shed += 1
        if refused == RejectReason.QUEUE_FULL:
            self.rejected += 1

    def arrive(self, priority: Priority, now: float, timeout_s: float | None = None) -> tuple[Ticket, list[Ticket]]:
        """A caller asks for a slot. Returns its ticket (GRANTED, QUEUED or
        REJECTED) and the other tickets to wake (one displaced from a full
        queue). A QUEUED ticket may wait ``ticket.wait_budget_s``; the
        runtime calls ``expire`` then."""
        priority = Priority(priority)
        if timeout_s is None or timeout_s >= self.queue_timeout_s:
            budget, expiry = self.queue_timeout_s, RejectReason.QUEUE_TIMEOUT
        else:
            budget, expiry = timeout_s, RejectReason.DEADLINE
        self._seq += 1
        ticket = Ticket(priority, self._seq, now, budget, expiry)
        if self._queued == 0 and self._in_flight < self._limit:
            self._grant(ticket, now)
            return ticket, []
        if budget <= 0:
            ticket.state, ticket.reason = TicketState.REJECTED, RejectReason.DEADLINE
            self.deadline_expired += 1
            return ticket, []
        wake: list[Ticket] = []
        if self._queued >= self.queue_depth:
            victim = self._lowest_below(priority)
            if victim is None:
                ticket.state, ticket.reason = TicketState.REJECTED, RejectReason.QUEUE_FULL
                self.rejected += 1
                return ticket, []
            self._unqueue(victim)
            victim.state, victim.reason = TicketState.DISPLACED, RejectReason.DISPLACED
            self.displaced += 1
            wake.append(victim)
        self._queues[priority].append(ticket)
        self._queued += 1
        wake.extend(self._assign(now))  # only matters if the invariant was broken elsewhere
        return ticket, wake

    def expire(self, ticket: Ticket, now: float) -> list[Ticket]:
        """The ticket's wait budget ran out. A no-op unless it is still queued."""
        if ticket.state is not TicketState.QUEUED:
            return []
        self._unqueue(ticket)
        ticket.state, ticket.reason = TicketState.TIMED_OUT, ticket.expiry_reason
        if ticket.expiry_reason is RejectReason.DEADLINE:
            self.deadline_expired += 1
        else:
            self.timed_out += 1
        return [ticket]

    def abandon(self, ticket: Ticket, now: float) -> list[Ticket]:
        """The caller went away before using its slot (cancelled while
        waiting). A queued ticket frees its place; a ticket granted in the
        same instant passes its slot on. Returns the tickets to wake."""
        if ticket.state is TicketState.QUEUED:
            self._unqueue(ticket)
            ticket.state = TicketState.CANCELLED
            self.cancelled += 1
            return []
        if ticket.state is TicketState.GRANTED:
            self._in_flight -= 1
            self.released += 1
            ticket.state = TicketState.CANCELLED
            self.cancelled += 1
            return self._assign(now)
        return []

    def release(self, ticket: Ticket, now: float, outcome: Outcome = Outcome.SUCCESS) -> list[Ticket]:
        """The slot's holder is done. Exactly once: a no-op unless GRANTED.
        Feeds the service-time EWMA and, for SUCCESS or DROPPED, the
        adaptive limit; returns the tickets now granted."""
        if ticket.state is not TicketState.GRANTED:
            return []
        ticket.state = TicketState.RELEASED
        self._in_flight -= 1
        self.released += 1
        held = max(0.0, now - (ticket.granted_at if ticket.granted_at is not None else now))
        if self._sampled and self._service_s is not None:
            self._service_s += self._alpha * (held - self._service_s)
        else:
            self._service_s, self._sampled = held, True
        if self.limit_algorithm is not None and outcome is not Outcome.IGNORED:
            new = self.limit_algorithm.on_sample(now, held, ticket.in_flight_at_grant, outcome is Outcome.DROPPED)
            self._limit = max(1, int(new))
        return self._assign(now)

    def set_limit(self, limit: int, now: float) -> list[Ticket]:
        """Resize: a larger limit grants queued tickets at once; a smaller one
        takes effect as slots are released (nobody is evicted)."""
        if limit < 1:
            raise ValueError(f"gate {self.name}: limit must be ≥ 1, got {limit}")
        self._limit = int(limit)
        return self._assign(now)

    # ---- internals ---------------------------------------------------------

    def _grant(self, ticket: Ticket, now: float) -> None:
        ticket.state = TicketState.GRANTED
        ticket.granted_at = now
        self._in_flight += 1
        ticket.in_flight_at_grant = self._in_flight
        self.admitted += 1
        self._queue_wait_total += max(0.0, now - ticket.arrived_at)

    def _assign(self, now: float) -> list[Ticket]:
        """Hand free slots to queued tickets, best priority first, FIFO
        within one. Returns the tickets granted (to wake)."""
        granted: list[Ticket] = []
        if not self._queued:
            return granted
        for q in self._queues.values():
            while q and self._in_flight < self._limit:
                t = q.popleft()
                self._queued -= 1
                self._grant(t, now)
                granted.append(t)
            if self._in_flight >= self._limit:
                break
        return granted

    def _unqueue(self, ticket: Ticket) -> None:
        # O(queue depth); queues are short (tens), and a cancelled waiter
        # must free its place at once rather than linger until popped.
        self._queues[ticket.priority].remove(ticket)
        self._queued -= 1

    def _lowest_below(self, priority: Priority) -> Ticket | None:
        """The newest ticket of the lowest priority below ``priority``."""
        for p in sorted(self._queues):
            if p >= priority:
                return None
            if self._queues[p]:
                return self._queues[p][-1]
        return None

    def __repr__(self) -> str:
        return f"<AdmissionState {self.name} [in-flight {self._in_flight}/{self._limit} | queued {self._queued}]>"
