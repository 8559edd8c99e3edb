"""A short history of the live counters, sampled off the hot path, so the
dashboard can draw rates (calls/s) and the cost saved over time.

The pipeline keeps cumulative counters only; a rate needs two readings. The
admin server samples the snapshot every few seconds into a bounded ring; the
rates are computed from consecutive samples when the page asks. Time is
passed in (unix seconds), so this module is plain data and arithmetic.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.runtime.stats import Snapshot


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # unix seconds
    queries: int
    failed_queries: int
    cost: float
    baseline: float
    calls: Mapping[str, int]  # skill → cumulative calls
    failures: Mapping[str, int]  # skill → cumulative failures

    @classmethod
    def of(cls, snapshot: Snapshot, t: float) -> Sample:
        tot = snapshot.totals
        return cls(t, tot.queries, tot.failed_queries, tot.cost, tot.baseline_cost,
                   {s.skill: s.calls for s in snapshot.skills}, {s.skill: s.failures for s in snapshot.skills})


def _rate(new: float, old: float, dt: float) -> float:
    # A counter never goes back; if it did (a restart behind the same page), the
    # interval reads as zero rather than a negative rate.
    return max(0.0, (new - old) / dt)


class History:
    """The last ``capacity`` samples, oldest first."""

    def __init__(self, capacity: int = 300) -> None:
        if capacity < 2:
            raise ValueError(f"capacity: must be at least 2, got {capacity!r}")
        self._samples: collections.deque[Sample] = collections.deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._samples)

    def __repr__(self) -> str:
        return f"<History {len(self._samples)}/{self._samples.maxlen} samples>"

    def add(self, sample: Sample) -> None:
        if self._samples and sample.t <= self._samples[-1].t:
            return  # two readings at the same instant carry no rate
        self._samples.append(sample)

    def points(self) -> list[dict[str, Any]]:
        """One point per interval between consecutive samples: the rates over
        that interval and the cumulative cost saved at its end."""
        out = []
        for old, new in itertools.pairwise(self._samples):
            dt = new.t - old.t
            out.append({
                "t": new.t,
                "queries_per_s": _rate(new.queries, old.queries, dt),
                "failed_queries_per_s": _rate(new.failed_queries, old.failed_queries, dt),
                "calls_per_s": {k: _rate(v, old.calls.get(k, 0), dt) for k, v in new.calls.items()},
                "failures_per_s": {k: _rate(v, old.failures.get(k, 0), dt) for k, v in new.failures.items()},
                "cost_usd": new.cost,
                "cost_saved_usd": new.baseline - new.cost,
            })
        return out
