"""Adaptive concurrency limits: arithmetic only (off by default).

A limit algorithm turns samples (how long a slot was held, how many were in
flight when it was granted, whether the call was dropped) into a new limit;
the gate enforces whatever limit it is given (``AdmissionState.set_limit``).
Keeping the two apart is what lets either be tested alone (Netflix
concurrency-limits: ``limit/AIMDLimit.java``, ``limit/Gradient2Limit.java``
vs ``limiter/SimpleLimiter.java``).

* ``FixedLimit`` – never changes (the default behaviour, made explicit).
* ``AIMDLimit`` – additive increase while the limit is being used, times
  ``backoff_ratio`` on a drop or a sample slower than ``timeout_s``.
* ``Gradient2Limit`` – compares the latest RTT with a long-term EWMA of
  RTTs: ``gradient = clamp(long / short, 0.5, 1)``,
  ``new = limit·gradient + queue_size``, smoothed and clamped to
  ``[min_limit, max_limit]``; it does not grow while under half used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["AIMDLimit", "FixedLimit", "Gradient2Limit", "LimitAlgorithm"]


class LimitAlgorithm(Protocol):
    @property
    def limit(self) -> int: ...

    def on_sample(self, now: float, rtt_s: float, in_flight: int, dropped: bool) -> int:
        """Take one sample, return the new limit (≥ 1)."""


class FixedLimit:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be ≥ 1, got {limit}")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, now: float, rtt_s: float, in_flight: int, dropped: bool) -> int:
        return self._limit

    def __repr__(self) -> str:
        return f"FixedLimit(limit={self._limit})"


class AIMDLimit:
    """Additive increase, multiplicative decrease (Netflix ``AIMDLimit``).

    * dropped, or ``rtt_s > timeout_s``: ``max(min, min(limit − 1, ⌊limit·backoff_ratio⌋))``
    * else, when at least half the limit was in use: ``limit + 1``
    * else unchanged (an idle skill proves nothing about a higher limit)

    always within ``[min_limit, max_limit]``.
    """

    def __init__(
        self,
        initial_limit: int = 10,
        *,
        min_limit: int = 1,
        max_limit: int = 200,
        backoff_ratio: float = 0.9,
        timeout_s: float = 5.0,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 ≤ min_limit ≤ max_limit, got {min_limit}, {max_limit}")
        if not 0.0 < backoff_ratio < 1.0:
            raise ValueError(f"backoff_ratio must be in (0, 1), got {backoff_ratio}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._limit = max(min_limit, min(max_limit, initial_limit))  # the configured limit, clamped
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff_ratio = backoff_ratio
        self.timeout_s = timeout_s

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, now: float, rtt_s: float, in_flight: int, dropped: bool) -> int:
        cur = self._limit
        if dropped or rtt_s > self.timeout_s:
            new = min(cur - 1, int(cur * self.backoff_ratio))
        elif in_flight * 2 >= cur:
            new = cur + 1
        else:
            return cur
        self._limit = max(self.min_limit, min(self.max_limit, new))
        return self._limit

    def __repr__(self) -> str:
        return f"AIMDLimit(limit={self._limit}, min={self.min_limit}, max={self.max_limit})"


class Gradient2Limit:
    """RTT-gradient limit (Netflix ``Gradient2Limit``), in seconds.

    ``short_rtt`` is the latest sample; ``long_rtt`` is a plain average over
    the first ``warmup`` samples, then an EWMA with factor
    ``2 / (long_window + 1)``. When the long RTT is more than twice the
    short one (load just went away), it decays by 10% a sample so the limit
    recovers without waiting for the EWMA. As in the original, ``dropped``
    is not used: a drop shows up through its RTT.
    """

    def __init__(
        self,
        initial_limit: int = 10,
        *,
        min_limit: int = 1,
        max_limit: int = 200,
        smoothing: float = 0.2,
        queue_size: int | Callable[[int], float] = 4,
        long_window: int = 600,
        warmup: int = 10,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 ≤ min_limit ≤ max_limit, got {min_limit}, {max_limit}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if long_window < 1 or warmup < 0:
            raise ValueError("long_window must be ≥ 1 and warmup ≥ 0")
        self._estimate = float(max(min_limit, min(max_limit, initial_limit)))
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.smoothing = smoothing
        self._queue_size: Callable[[int], float] = (
            queue_size if callable(queue_size) else (lambda _limit, q=float(queue_size): q)
        )
        self._factor = 2.0 / (long_window + 1)
        self._warmup = warmup
        self._count = 0
        self._sum = 0.0
        self.long_rtt_s = 0.0
        self.short_rtt_s = 0.0

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def on_sample(self, now: float, rtt_s: float, in_flight: int, dropped: bool) -> int:
        if rtt_s <= 0:
            return self.limit  # no information (and no division by zero)
        queue_size = self._queue_size(int(self._estimate))
        short = self.short_rtt_s = rtt_s
        if self._count < self._warmup:
            self._count += 1
            self._sum += rtt_s
            self.long_rtt_s = self._sum / self._count
        else:
            self.long_rtt_s += self._factor * (rtt_s - self.long_rtt_s)
        long = self.long_rtt_s
        if long / short > 2:
            self.long_rtt_s *= 0.9
        if in_flight < self._estimate / 2:
            return self.limit  # app-limited: nothing learned about a higher limit
        gradient = max(0.5, min(1.0, long / short))
        new = self._estimate * gradient + queue_size
        new = self._estimate * (1 - self.smoothing) + new * self.smoothing
        self._estimate = max(float(self.min_limit), min(float(self.max_limit), new))
        return self.limit

    def __repr__(self) -> str:
        return (f"Gradient2Limit(limit={self.limit}, short_rtt={self.short_rtt_s:.4f}s, "
                f"long_rtt={self.long_rtt_s:.4f}s)")
