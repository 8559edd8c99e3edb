"""Run one backend call with retries, as ``router.core.retry`` decides.

The loop is the only async part: each attempt is awaited, a failed one is
handed to ``RetryPolicy.decide`` with the time left, and the loop sleeps the
delay it returns. Only ``BackendError``s are considered; anything else
(cancellation included) propagates at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from router.core.errors import BackendError
from router.core.retry import RetryBudget, RetryDecision, RetryPolicy

__all__ = ["RetryResult", "call_with_retries"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryResult(Generic[T]):
    value: T | None  # set when an attempt succeeded
    error: BackendError | None  # the last error when every attempt failed
    attempts: int
    reason: str  # why it stopped retrying; "" on success

    @property
    def ok(self) -> bool:
        return self.error is None


async def call_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    *,
    policy: RetryPolicy,
    rng: random.Random,
    clock: Callable[[], float] = time.monotonic,
    deadline_at: float | None = None,
    budget: RetryBudget | None = None,
    on_retry: Callable[[int, BackendError, RetryDecision], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> RetryResult[T]:
    """``attempt(n)`` makes the n-th attempt (1-based) and raises a
    ``BackendError`` on failure. ``deadline_at`` is on ``clock``'s scale.
    ``on_retry(n, error, decision)`` is called before each retry's sleep
    (a span event, a breaker report)."""
    if budget is not None:
        budget.record_request(clock())
    n = 0
    while True:
        n += 1
        try:
            value = await attempt(n)
        except BackendError as err:
            now = clock()
            remaining = None if deadline_at is None else deadline_at - now
            decision = policy.decide(n, err, remaining, rng, budget=budget, now=now)
            if decision.delay_s is None:
                return RetryResult(None, err, n, decision.reason)
            if on_retry is not None:
                on_retry(n, err, decision)
            if decision.delay_s > 0:
                await sleep(decision.delay_s)
            continue
        return RetryResult(value, None, n, "")
