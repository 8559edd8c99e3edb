"""A circuit breaker per implementation: a pure state machine, time passed in.

::

    CLOSED ──(N consecutive failures, or failure rate ≥ r over the last W
    │          calls once at least min_calls were seen)──▶ OPEN
    OPEN ──(cooldown_s elapsed)──▶ HALF_OPEN
    HALF_OPEN: at most ``half_open_probes`` calls at once go through;
        successes_to_close probe successes ──▶ CLOSED (history cleared)
        any failure ──▶ OPEN (the cooldown starts again)

A probe that never reports (its caller was cancelled and nobody called
``on_ignore``) gives its place back after ``probe_timeout_s``, so a lost
probe cannot wedge the breaker half-open.

Every state change is a ``Transition``, pushed to ``on_transition`` (the
runtime's listener: it keeps the set of unavailable implementations and
tells the observer) the moment it happens; ``on_success``/``on_failure``
also return the one they caused, so the call that caused it (a query's
skill span, a batch's span) records it on its own span.

The implementation chooser reads ``state(now)`` (an OPEN implementation is
unavailable); the pipeline calls ``allow(now)`` right before the call and
reports the outcome with exactly one of ``on_success``, ``on_failure`` or
``on_ignore``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import BackendError, BackendStatusError, CallerDeadline

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker", "Transition", "is_breaker_failure"]

class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    consecutive_failures: int = 5  # trip after this many failures in a row (0: off)
    window: int = 20  # the failure rate looks at the last ``window`` calls
    min_calls: int = 10  # ... once at least this many were seen
    failure_rate: float = 0.5  # trip when failures / calls ≥ this (> 1: off)
    cooldown_s: float = 30.0
    half_open_probes: int = 1  # probes in flight at once while half-open
    successes_to_close: int = 1
    probe_timeout_s: float | None = None  # None: cooldown_s

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0:
            raise ValueError("consecutive_failures must be ≥ 0")
        if self.window < 1 or not 1 <= self.min_calls:
            raise ValueError("window and min_calls must be ≥ 1")
        if self.min_calls > self.window:
            raise ValueError(f"min_calls ({self.min_calls}) cannot exceed window ({self.window})")
        if not self.failure_rate > 0:
            raise ValueError("failure_rate must be > 0")
        if not self.cooldown_s >= 0:
            raise ValueError("cooldown_s must be ≥ 0")
        if self.half_open_probes < 1 or self.successes_to_close < 1:
            raise ValueError("half_open_probes and successes_to_close must be ≥ 1")


@dataclass(frozen=True, slots=True)
class Transition:
    breaker: str
    from_state: BreakerState
    to_state: BreakerState
    at: float
    reason: str


def is_breaker_failure(error: BaseException) -> bool:
    """Whether an error counts against the backend's health: its own
    timeout, connection errors, bad answers, 408/429 and 5xx do; other 4xx
    say the request was wrong, and a call cut short by the caller's deadline
    says nothing about the backend."""
    if isinstance(error, CallerDeadline):
        return False
    if isinstance(error, BackendStatusError):
        return error.status_code >= 500 or error.status_code in (408, 429)
    return isinstance(error, BackendError)


class CircuitBreaker:
    """One implementation's breaker. Not thread-safe: one event loop owns it."""

    def __init__(self, name: str, config: BreakerConfig = BreakerConfig(), *,
                 on_transition: Callable[[Transition], None] | None = None) -> None:
        self.name = name
        self.config = config
        self._listener = on_transition
        self._state = BreakerState.CLOSED
        self._opened_at: float | None = None
        self._consecutive = 0
        self._window: deque[bool] = deque(maxlen=config.window)  # True: failure
        self._window_failures = 0
        self._probes: deque[float] = deque()  # start times of probes in flight
        self._probe_successes = 0
        self.times_opened = 0

    # ---- reading -----------------------------------------------------------

    def state(self, now: float) -> BreakerState:
        self._advance(now)
        return self._state

    @property
    def half_open_at(self) -> float | None:
        """When an OPEN breaker lets probes through; None unless OPEN."""
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return None
        return self._opened_at + self.config.cooldown_s

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def failure_rate(self) -> float:
        """Over the calls in the window (0 when empty)."""
        return self._window_failures / len(self._window) if self._window else 0.0

    def would_allow(self, now: float) -> tuple[bool, str]:
        """``allow`` without taking a probe place."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return True, ""
        if self._state is BreakerState.OPEN:
            return False, self._open_reason(now)
        self._expire_probes(now)
        if len(self._probes) < self.config.half_open_probes:
            return True, "half-open probe"
        return False, f"breaker {self.name} half-open: {len(self._probes)} probe(s) in flight"

    # ---- deciding ----------------------------------------------------------

    def allow(self, now: float) -> tuple[bool, str]:
        """May a call go through now? Half-open, a ``True`` takes a probe
        place, which the call's ``on_*`` report gives back."""
        ok, why = self.would_allow(now)
        if ok and self._state is BreakerState.HALF_OPEN:
            self._probes.append(now)
        return ok, why

    def on_success(self, now: float) -> Transition | None:
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            self._consecutive = 0
            self._record(False)
            return None
        if self._state is BreakerState.HALF_OPEN:
            if self._probes:
                self._probes.popleft()
            self._probe_successes += 1
            if self._probe_successes >= self.config.successes_to_close:
                return self._to(BreakerState.CLOSED, now, f"{self._probe_successes} probe(s) succeeded")
        return None  # OPEN: a call let through before the trip; it says nothing now

    def on_failure(self, now: float, error: str = "") -> Transition | None:
        self._advance(now)
        cfg = self.config
        detail = f": {error}" if error else ""
        if self._state is BreakerState.CLOSED:
            self._consecutive += 1
            self._record(True)
            if cfg.consecutive_failures and self._consecutive >= cfg.consecutive_failures:
                return self._to(BreakerState.OPEN, now, f"{self._consecutive} consecutive failures{detail}")
            n = len(self._window)
            if n >= cfg.min_calls and self._window_failures / n >= cfg.failure_rate:
                return self._to(BreakerState.OPEN, now,
                                f"failure rate {self._window_failures}/{n} over the last {n} calls{detail}")
            return None
        if self._state is BreakerState.HALF_OPEN:
            if self._probes:
                self._probes.popleft()
            return self._to(BreakerState.OPEN, now, f"probe failed{detail}")
        return None

    def on_ignore(self, now: float) -> None:
        """An allowed call ended without an outcome (cancelled): give its
        probe place back, count nothing."""
        self._advance(now)
        if self._state is BreakerState.HALF_OPEN and self._probes:
            self._probes.popleft()

    def trip(self, now: float, open_for_s: float, reason: str) -> Transition | None:
        """Another process sharing this implementation opened its breaker:
        open this one too, half-opening when that one does (in
        ``open_for_s``). Only a CLOSED breaker trips; one already open or
        probing keeps its own course."""
        self._advance(now)
        if self._state is not BreakerState.CLOSED or open_for_s <= 0:
            return None
        t = self._to(BreakerState.OPEN, now, reason)
        self._opened_at = now - max(0.0, self.config.cooldown_s - open_for_s)
        return t

    # ---- internals ---------------------------------------------------------

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN:
            at = self.half_open_at
            if at is not None and now >= at:
                self._to(BreakerState.HALF_OPEN, now, f"cooldown {self.config.cooldown_s:g}s elapsed")

    def _expire_probes(self, now: float) -> None:
        timeout = self.config.probe_timeout_s if self.config.probe_timeout_s is not None else self.config.cooldown_s
        while self._probes and now - self._probes[0] >= timeout:
            self._probes.popleft()

    def _record(self, failure: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._window_failures -= 1
        self._window.append(failure)
        self._window_failures += failure

    def _open_reason(self, now: float) -> str:
        at = self.half_open_at
        left = f"; half-open in {max(0.0, at - now):.2f}s" if at is not None else ""
        return f"breaker {self.name} open{left}"

    def _to(self, state: BreakerState, now: float, reason: str) -> Transition:
        t = Transition(self.name, self._state, state, now, reason)
        self._state = state
        self._probes.clear()
        self._probe_successes = 0
        if state is BreakerState.OPEN:
            self._opened_at = now
            self.times_opened += 1
        elif state is BreakerState.CLOSED:
            self._opened_at = None
            self._consecutive = 0
            self._window.clear()
            self._window_failures = 0
        if self._listener is not None:
            self._listener(t)
        return t

    def __repr__(self) -> str:
        return (f"<CircuitBreaker {self.name} [{self._state.value} | "
                f"{self._consecutive} in a row | {self._window_failures}/{len(self._window)} failed]>")
