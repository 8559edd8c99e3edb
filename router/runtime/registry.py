"""The live registry: what later queries need to know about earlier ones.

Calls report outcomes here (success, latency), breakers their transitions,
and every Execute its one ``QueryRecord``; the next query reads the
success rates and the set of impaired skills. The totals are built from the
very records the metrics store keeps, so live totals and a Stats window
agree for the same queries. Everything is mutated synchronously from the
event loop's thread, so no locks are needed.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from router.core.breaker import BreakerState, Transition
from router.core.synthesis import QueryOutcome

from .observer import QueryRecord

log = logging.getLogger("router.breaker")


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


class SkillLive:
    __slots__ = ("_latencies", "_outcomes", "_successes", "calls", "failures", "name")

    def __init__(self, name: str, success_window: int, latency_window: int) -> None:
        self.name = name
        self.calls = 0
        self.failures = 0
        self._outcomes: deque[bool] = deque(maxlen=success_window)
        self._successes = 0
        self._latencies: deque[float] = deque(maxlen=latency_window)

    def record(self, ok: bool, latency_ms: float) -> float:
        """Count one call; returns the new success rate."""
        self.calls += 1
        if not ok:
            self.failures += 1
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self._successes -= 1
        self._outcomes.append(ok)
        self._successes += ok
        self._latencies.append(latency_ms)
        return self._successes / len(self._outcomes)

    def success_rate(self, default: float) -> float:
        return self._successes / len(self._outcomes) if self._outcomes else default

    def window(self) -> tuple[int, int]:
        """(successes, calls) in the success window."""
        return self._successes, len(self._outcomes)

    def latency_quantiles(self, *qs: float) -> tuple[float, ...]:
        values = sorted(self._latencies)
        return tuple(quantile(values, q) for q in qs)


@dataclass(slots=True)
class Totals:
    """Executes since start, from their records (one per Execute received)."""

    queries: int = 0
    routes: int = 0
    answered: int = 0  # outcome ok or partial
    skills_selected: int = 0
    cost: float = 0.0  # spent, answered or not
    baseline_cost: float = 0.0  # over answered queries
    cost_saved: float = 0.0  # over answered queries: baseline − spent
    quality_sum: float = 0.0  # over answered queries
    outcomes: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0  # skill answers taken from the response cache
    cache_misses: int = 0
    cache_saved: float = 0.0  # what those answers would have cost

    @property
    def failed_queries(self) -> int:
        return self.queries - self.answered

    @property
    def avg_skills_per_query(self) -> float:
        return self.skills_selected / self.queries if self.queries else 0.0

    @property
    def avg_quality(self) -> float:
        return self.quality_sum / self.answered if self.answered else 0.0

    @property
    def avg_cost_per_query(self) -> float:
        return self.cost / self.queries if self.queries else 0.0


class LiveRegistry:
    def __init__(self, skill_names: Iterable[str], *, success_window: int = 50,
                 latency_window: int = 1000, default_success_rate: float = 1.0) -> None:
        self._success_window, self._latency_window = success_window, latency_window
        self.skills = {n: SkillLive(n, success_window, latency_window) for n in skill_names}
        self.totals = Totals()
        self.default_success_rate = default_success_rate
        # Success rates of the skills that have had calls (the rest score
        # with the default): kept as calls report, read as is by scoring.
        self.rates: dict[str, float] = {}
        # Other processes' success windows (skill → (successes, calls)), when
        # the shared state exchanges them: scoring reads the merged rate.
        self.peers: dict[str, tuple[int, int]] = {}
        # skill → implementations whose breaker is not closed: the only ones
        # a query must look at to know what is unavailable.
        self._impaired: dict[str, set[str]] = {}
        # skill → measured answer quality relative to declared (min(1,
        # measured/declared), from Feedback): scoring's success rate is the
        # transport success rate times it (1 without feedback).
        self.answer_quality: dict[str, float] = {}

    def set_answer_quality(self, skill: str, factor: float) -> None:
        self.answer_quality[skill] = factor
        self.rates[skill] = self.skills[skill].success_rate(self.default_success_rate) * factor

    def set_skills(self, skill_names: Iterable[str], *, fresh: Iterable[str] = ()) -> None:
        """A config reload: the skills are now ``skill_names`` (in this
        order). Kept skills keep their record (calls, success rate,
        latencies); removed ones are forgotten; ``fresh`` skills have new
        breakers (all closed), so none of them is impaired any more. The
        totals carry over."""
        old = self.skills
        self.skills = {n: old.get(n) or SkillLive(n, self._success_window, self._latency_window)
                       for n in skill_names}
        for name in [*(n for n in old if n not in self.skills), *fresh]:
            self._impaired.pop(name, None)
            if name not in self.skills:
                self.rates.pop(name, None)

    def record_call(self, skill: str, ok: bool, latency_ms: float) -> None:
        live = self.skills.get(skill)
        if live is None:  # a call of a query in flight on a retired config, for a removed skill
            return
        rate = live.record(ok, latency_ms)
        merged = self._merged(skill) if self.peers else None
        self.rates[skill] = (rate if merged is None else merged) * self.answer_quality.get(skill, 1.0)

    def _merged(self, skill: str) -> float | None:
        s, n = self.skills[skill].window()
        ps, pn = self.peers.get(skill, (0, 0))
        return (s + ps) / (n + pn) if n + pn else None

    def windows(self) -> dict[str, tuple[int, int]]:
        """This process's success windows, for the other processes."""
        return {name: w for name, live in self.skills.items() if (w := live.window())[1]}

    def set_peers(self, peers: dict[str, tuple[int, int]]) -> None:
        """The other processes' success windows: the rates scoring reads
        become the merged ones (successes over calls, every process's)."""
        self.peers = {k: v for k, v in peers.items() if k in self.skills}
        for skill in set(self.rates) | set(self.peers):
            rate = self._merged(skill)
            if rate is None:
                self.rates.pop(skill, None)
            else:
                self.rates[skill] = rate * self.answer_quality.get(skill, 1.0)

    def breaker_moved(self, skill: str, implementation: str, transition: Transition) -> None:
        log.info("breaker %s: %s → %s (%s)", transition.breaker, transition.from_state, transition.to_state,
                 transition.reason)
        impaired = self._impaired.setdefault(skill, set())
        if transition.to_state is BreakerState.CLOSED:
            impaired.discard(implementation)
            if not impaired:
                del self._impaired[skill]
        else:
            impaired.add(implementation)

    @property
    def impaired(self) -> Iterable[str]:
        """Skills with an implementation whose breaker is open or half-open."""
        return self._impaired.keys()

    def record_query(self, record: QueryRecord) -> None:
        t = self.totals
        t.queries += 1
        t.outcomes[record.status] += 1
        t.skills_selected += record.skills_selected
        t.cost += record.total_cost
        t.cache_hits += len(record.skills_cached)
        t.cache_misses += len(record.skills_cache_missed)
        t.cache_saved += record.cache_saved
        if QueryOutcome(record.status).answered:
            t.answered += 1
            t.baseline_cost += record.baseline_cost
            t.cost_saved += record.cost_saved
            t.quality_sum += record.quality_score or 0.0

    def record_route(self) -> None:
        self.totals.routes += 1

    def __repr__(self) -> str:
        t = self.totals
        return (f"<LiveRegistry {len(self.skills)} skills [queries {t.queries}, answered {t.answered}"
                f" | impaired {sorted(self._impaired)}]>")
