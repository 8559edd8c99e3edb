"""When to try a backend call again, and how long to wait first. Pure:
time (``now``) and randomness (a ``random.Random``) are passed in.

A failed attempt is retried only when all of these hold, checked in order:

1. the error is retryable (``BackendError.retryable``: connection errors,
   429 and 5xx; a timeout is not, its time is spent);
2. fewer than ``max_attempts`` attempts were made;
3. the delay still leaves ``min_attempt_s`` of the remaining deadline for
   the next attempt;
4. the retry budget has a token (checked last, so only a retry that
   happens spends one).

The delay is exponential backoff with jitter,
``cap = min(max_delay_s, base_delay_s · multiplier^(attempt−1))`` and
``delay = cap · (1 − jitter · u)`` with ``u`` uniform in [0, 1) (jitter 1:
"full jitter", 0.5: "equal jitter", 0: none); a 429 (or 503) that says
``Retry-After`` is honoured instead, when it is no longer than
``max_retry_after_s``, else the call is not retried.

The budget (Finagle's ``RetryBudget``, Envoy's retry budget) caps retries
at ``budget_ratio`` × the requests of the last ``ttl_s`` seconds, plus a
floor of ``min_retries_per_s`` so a quiet skill can still retry. It keeps
a failing backend from being hit by a retry storm.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from .errors import BackendError, BackendStatusError

__all__ = ["RetryBudget", "RetryDecision", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    delay_s: float | None  # None: do not retry
    reason: str  # why not, or what the delay came from

    @property
    def retry(self) -> bool:
        return self.delay_s is not None


class RetryBudget:
    """A token bucket over a sliding window of ``ttl_s`` seconds, in
    ``slot_s`` slots: every original request deposits ``budget_ratio`` of a
    token, every retry withdraws one; deposits expire with their slot."""

    def __init__(self, budget_ratio: float = 0.2, *, ttl_s: float = 10.0, min_retries_per_s: float = 1.0,
                 slot_s: float = 1.0) -> None:
        if budget_ratio < 0 or min_retries_per_s < 0:
            raise ValueError("budget_ratio and min_retries_per_s must be ≥ 0")
        if not (ttl_s > 0 and 0 < slot_s <= ttl_s):
            raise ValueError("need 0 < slot_s ≤ ttl_s")
        self.budget_ratio = budget_ratio
        self.ttl_s = ttl_s
        self.min_retries_per_s = min_retries_per_s
        self.slot_s = slot_s
        self._slots: deque[list[int]] = deque()  # [slot index, requests, retries]
        self._requests = 0
        self._retries = 0

    def record_request(self, now: float) -> None:
        """An original request (not a retry) was made."""
        self._slot(now)[1] += 1
        self._requests += 1

    def available(self, now: float) -> float:
        """Retry tokens left now."""
        self._prune(now)
        reserve = self.min_retries_per_s * self.ttl_s
        return reserve + self.budget_ratio * self._requests - self._retries

    def try_spend(self, now: float) -> bool:
        """Take a token for one retry, if there is one."""
        if self.available(now) < 1.0:
            return False
        self._slot(now)[2] += 1
        self._retries += 1
        return True

    def _slot(self, now: float) -> list[int]:
        self._prune(now)
        idx = int(now // self.slot_s)
        if not self._slots or self._slots[-1][0] < idx:
            self._slots.append([idx, 0, 0])
        return self._slots[-1]  # a clock that went back lands in the newest slot

    def _prune(self, now: float) -> None:
        oldest = int(now // self.slot_s) - int(self.ttl_s / self.slot_s) + 1
        while self._slots and self._slots[0][0] < oldest:
            _, req, ret = self._slots.popleft()
            self._requests -= req
            self._retries -= ret

    def __repr__(self) -> str:
        return f"<RetryBudget ratio {self.budget_ratio:g} [{self._retries} retries / {self._requests} requests in window]>"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3  # the first attempt included; 1 disables retries
    base_delay_s: float = 0.1
    multiplier: float = 2.0
    max_delay_s: float = 2.0
    jitter: float = 1.0  # fraction of the delay randomised away (1: full jitter)
    min_attempt_s: float = 0.1  # time the next attempt needs at least
    honour_retry_after: bool = True
    max_retry_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be ≥ 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.multiplier < 1:
            raise ValueError("delays must be ≥ 0 and multiplier ≥ 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be in [0, 1]")

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The jittered delay after the ``attempt``-th failed attempt (1-based)."""
        cap = min(self.max_delay_s, self.base_delay_s * self.multiplier ** max(0, attempt - 1))
        return cap * (1.0 - self.jitter * rng.random())

    def decide(
        self,
        attempt: int,
        error: BaseException,
        remaining_s: float | None,
        rng: random.Random,
        *,
        budget: RetryBudget | None = None,
        now: float = 0.0,
    ) -> RetryDecision:
        """After ``attempt`` attempts (the last one failed with ``error``),
        with ``remaining_s`` of the deadline left (None: no deadline)."""
        if not isinstance(error, BackendError) or not error.retryable:
            return RetryDecision(None, f"not retryable ({type(error).__name__})")
        if attempt >= self.max_attempts:
            return RetryDecision(None, f"{attempt} of {self.max_attempts} attempts made")
        retry_after = error.retry_after_s if isinstance(error, BackendStatusError) else None
        if retry_after is not None and self.honour_retry_after:
            if retry_after > self.max_retry_after_s:
                return RetryDecision(None, f"retry-after {retry_after:g}s exceeds {self.max_retry_after_s:g}s")
            delay, source = max(0.0, retry_after), "retry-after"
        else:
            delay, source = self.backoff_s(attempt, rng), "backoff"
        if remaining_s is not None and remaining_s - delay < self.min_attempt_s:
            return RetryDecision(None, f"deadline: {remaining_s:.3f}s left, {source} {delay:.3f}s "
                                       f"+ {self.min_attempt_s:g}s for the attempt")
        if budget is not None and not budget.try_spend(now):
            return RetryDecision(None, "retry budget exhausted")
        return RetryDecision(delay, source)

    def next_delay(
        self,
        attempt: int,
        error: BaseException,
        remaining_s: float | None,
        rng: random.Random,
        *,
        budget: RetryBudget | None = None,
        now: float = 0.0,
    ) -> float | None:
        """The delay before the next attempt, or None: give up."""
        return self.decide(attempt, error, remaining_s, rng, budget=budget, now=now).delay_s
