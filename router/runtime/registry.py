"""The live registry: what later queries need to know about earlier ones.

Calls report outcomes here (success, latency); the next query reads a
snapshot (success rates for scoring). Everything is mutated synchronously
from the event loop's thread, so no locks are needed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


class SkillLive:
    __slots__ = ("_latencies", "_outcomes", "calls", "failures", "in_flight", "name")

    def __init__(self, name: str, success_window: int, latency_window: int) -> None:
        self.name = name
        self.calls = 0
        self.failures = 0
        self._outcomes: deque[bool] = deque(maxlen=success_window)
        self._latencies: deque[float] = deque(maxlen=latency_window)

    def record(self, ok: bool, latency_ms: float) -> None:
        self.calls += 1
        if not ok:
            self.failures += 1
        self._outcomes.append(ok)
        self._latencies.append(latency_ms)

    def success_rate(self, default: float) -> float:
        if not self._outcomes:
            return default
        return sum(self._outcomes) / len(self._outcomes)

    def latency_quantiles(self, *qs: float) -> tuple[float, ...]:
        values = sorted(self._latencies)
        return tuple(quantile(values, q) for q in qs)


@dataclass(slots=True)
class Totals:
    queries: int = 0
    routes: int = 0
    failed_queries: int = 0
    skills_selected: int = 0
    cost: float = 0.0
    baseline_cost: float = 0.0

    @property
    def cost_saved(self) -> float:
        return self.baseline_cost - self.cost

    @property
    def avg_skills_per_query(self) -> float:
        return self.skills_selected / self.queries if self.queries else 0.0


class LiveRegistry:
    def __init__(self, skill_names: Iterable[str], *, success_window: int = 50,
                 latency_window: int = 1000, default_success_rate: float = 1.0) -> None:
        self.skills = {n: SkillLive(n, success_window, latency_window) for n in skill_names}
        self.totals = Totals()
        self.default_success_rate = default_success_rate

    def success_rates(self) -> dict[str, float]:
        return {n: s.success_rate(self.default_success_rate) for n, s in self.skills.items()}

    def record_call(self, skill: str, ok: bool, latency_ms: float) -> None:
        self.skills[skill].record(ok, latency_ms)

    def record_query(self, *, skills_selected: int, cost: float, baseline: float, failed: bool) -> None:
        t = self.totals
        t.queries += 1
        t.skills_selected += skills_selected
        t.cost += cost
        t.baseline_cost += baseline
        if failed:
            t.failed_queries += 1

    def record_route(self) -> None:
        self.totals.routes += 1
