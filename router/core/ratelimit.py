"""Provider rate limits (requests and tokens per minute) as a sliding
window log: exact, so a limit is never exceeded in any window, whatever
the arrival pattern. Pure: time is passed in.

The same algorithm runs in Redis (``router.state``'s Lua script) when the
limit is shared across replicas; this one serves a single process.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["RateLimit", "SlidingWindow", "split_share"]

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rpm``: requests per minute; ``tpm``: tokens per minute (a call
    counts its expected tokens when it starts). None: no such limit."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be at least 0, got {v}")

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def share(self, index: int, workers: int) -> RateLimit:
        """This worker's exact share when ``workers`` processes split it."""
        return RateLimit(None if self.rpm is None else split_share(self.rpm, index, workers),
                         None if self.tpm is None else split_share(self.tpm, index, workers))


def split_share(total: int, index: int, workers: int) -> int:
    """Worker ``index``'s share of ``total`` split exactly among ``workers``:
    ``total // workers``, plus one for the first ``total % workers``. The
    shares add up to ``total``; a total smaller than ``workers`` leaves the
    last workers a share of 0."""
    if workers < 1 or not 0 <= index < workers:
        raise ValueError(f"worker index {index} out of range for {workers} workers")
    return total // workers + (1 if index < total % workers else 0)


class SlidingWindow:
    """Requests and tokens admitted in the last minute, per key."""

    __slots__ = ("_log", "_tokens", "window_s")

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._log: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        edge = now - self.window_s
        log = self._log
        while log and log[0][0] <= edge:
            self._tokens -= log.popleft()[1]

    def try_take(self, limit: RateLimit, now: float, tokens: int = 0) -> float:
        """Take one request of ``tokens`` if both limits allow it now:
        0.0. Otherwise take nothing and return the seconds until they would
        (when the oldest entries leave the window)."""
        self._expire(now)
        log = self._log
        wait = 0.0
        if limit.rpm is not None and len(log) >= limit.rpm:
            if limit.rpm == 0:
                return self.window_s
            wait = log[len(log) - limit.rpm][0] + self.window_s - now
        if limit.tpm is not None and self._tokens + tokens > limit.tpm:
            if tokens > limit.tpm:
                return self.window_s
            need, freed = self._tokens + tokens - limit.tpm, 0
            for at, t in log:
                freed += t
                if freed >= need:
                    wait = max(wait, at + self.window_s - now)
                    break
        if wait > 0.0:
            return wait
        log.append((now, tokens))
        self._tokens += tokens
        return 0.0

    @property
    def requests(self) -> int:
        return len(self._log)

    @property
    def tokens(self) -> int:
        return self._tokens
