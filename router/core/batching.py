"""Micro-batching decisions: when a batch is sent, which batch a call joins,
whether a query batches at all, and how a batch's cost is shared.

The seed's Pattern 2 (query batching) with its Risk 2 mitigations: the
window is small, an idle skill sends at once (batching only costs latency
when there is load to amortise), no item waits past its deadline budget,
and high-priority queries bypass batching.

Everything here is pure: time is passed in, nothing awaits.
``router.runtime.batcher`` follows these decisions with a timer.

The flush policy is a small state machine over the pending items::

    pending == 0                      → WaitUntil(inf)         (nothing to send)
    pending >= max_batch_size         → FlushNow(FULL)
    idle                              → FlushNow(IDLE)         (an idle sidecar adds no latency)
    now >= send_by                    → FlushNow(DEADLINE)
    now >= first_enqueued_at + window → FlushNow(WINDOW)
    otherwise                         → WaitUntil(min(window close, send_by))

The window starts at the first pending item (as in Ray Serve's
``@serve.batch``), so no item waits longer than the window.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from .types import Priority

__all__ = [
    "BatchKeyMode",
    "FlushNow",
    "FlushPolicy",
    "FlushReason",
    "WaitUntil",
    "batch_key",
    "send_by",
    "should_batch",
    "split_cost",
]


class FlushReason(enum.Enum):
    FULL = "full"  # max_batch_size reached
    IDLE = "idle"  # nothing else of the skill in flight or queued
    DEADLINE = "deadline"  # an item's deadline budget is spent
    WINDOW = "window"  # the window opened by the first item closed
    CLOSING = "closing"  # the batcher is closing and sends what it holds
    EMPTY = "empty"  # nothing pending (only in WaitUntil)


@dataclass(frozen=True, slots=True)
class FlushNow:
    reason: FlushReason


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Decide again at clock time ``t`` (or sooner, when an item arrives or
    a batch finishes). ``reason`` says what ``t`` is: the window's close or
    an item's send-by time."""

    t: float
    reason: FlushReason


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """When to send the pending items of one batcher.

    ``window_s`` 0 sends every item at once (batching only what arrives in
    the same instant); ``max_batch_size`` 1 never batches.
    """

    window_s: float
    max_batch_size: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s >= 0):
            raise ValueError(f"window_s must be a finite number >= 0, got {self.window_s!r}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size!r}")

    def decide(
        self,
        now: float,
        pending_count: int,
        first_enqueued_at: float,
        earliest_deadline_budget: float | None,
        idle: bool,
    ) -> FlushNow | WaitUntil:
        """``first_enqueued_at`` is the oldest pending item's enqueue time;
        ``earliest_deadline_budget`` is the earliest clock time by which a
        pending item must be sent to still meet its deadline (its deadline
        minus the implementation's expected latency, see ``send_by``), None
        when no pending item has a deadline; ``idle`` is true when nothing
        else of the skill is in flight or queued. All times on one clock."""
        if pending_count <= 0:
            return WaitUntil(math.inf, FlushReason.EMPTY)
        if pending_count >= self.max_batch_size:
            return FlushNow(FlushReason.FULL)
        if idle:
            return FlushNow(FlushReason.IDLE)
        if earliest_deadline_budget is not None and now >= earliest_deadline_budget:
            return FlushNow(FlushReason.DEADLINE)
        closes_at = first_enqueued_at + self.window_s
        if now >= closes_at:
            return FlushNow(FlushReason.WINDOW)
        if earliest_deadline_budget is not None and earliest_deadline_budget < closes_at:
            return WaitUntil(earliest_deadline_budget, FlushReason.DEADLINE)
        return WaitUntil(closes_at, FlushReason.WINDOW)


def send_by(now: float, remaining_s: float | None, expected_latency_s: float) -> float | None:
    """The clock time by which an item must be sent: its deadline (``now`` +
    the caller's remaining seconds) minus the implementation's expected
    latency. None when the caller has no deadline."""
    if remaining_s is None:
        return None
    return now + remaining_s - max(0.0, expected_latency_s)


class BatchKeyMode(enum.Enum):
    """What besides (skill, implementation) separates batches.

    ``IMPLEMENTATION`` (default): every call to one implementation of one
    skill may share a batch. ``SEED``: the seed's key as well, so a batch
    holds queries of one domain, routed to the same skill set, of the same
    whole complexity (similar queries, similar prompts). The values are the
    config's ``batching.key``.
    """

    IMPLEMENTATION = "implementation"
    SEED = "seed"

    @classmethod
    def parse(cls, value: str) -> BatchKeyMode:
        try:
            return cls(value.strip().lower())
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown batch key mode {value!r} (known: {known})") from None


def batch_key(
    mode: BatchKeyMode,
    skill: str,
    implementation: str,
    domain: str,
    skill_set: Iterable[str],
    complexity: float,
) -> tuple:
    """The key of the batcher a call joins. It always starts with (skill,
    implementation): a batch is one request to one backend."""
    if mode is BatchKeyMode.IMPLEMENTATION:
        return (skill, implementation)
    # A non-finite complexity is rejected at the service edge; here it only
    # needs a stable bucket.
    bucket = math.floor(complexity) if math.isfinite(complexity) else -1
    return (skill, implementation, domain, tuple(sorted(set(skill_set))), bucket)


def should_batch(
    priority: int,
    *,
    enabled: bool = True,
    supports_batch: bool = True,
    priority_bypass: bool = True,
    bypass_priority: int = Priority.HIGH,
) -> tuple[bool, str]:
    """Whether a call goes through a batcher, and if not, why not (for the
    span). ``enabled``: batching is on for this skill (config ``enabled``,
    a window > 0 and a max batch size > 1). With ``priority_bypass``, a query
    of ``bypass_priority`` or above never waits for a batch. A call that does
    not batch may still share an identical in-flight call (single flight)."""
    if not enabled:
        return False, "batching disabled"
    if not supports_batch:
        return False, "backend cannot batch"
    if priority_bypass and priority >= bypass_priority:
        return False, f"priority {int(priority)} >= bypass priority {int(bypass_priority)}"
    return True, ""


def split_cost(total: float, n: int) -> float:
    """Each item's share of a cost paid once for ``n`` items (a batch
    priced per request, or one call shared by ``n`` single-flight callers)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    return total / n
