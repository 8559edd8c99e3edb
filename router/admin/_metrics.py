"""Prometheus exposition of the live snapshot (``GET /metrics``).

One custom collector reads ``App.snapshot()`` when Prometheus scrapes: the
pipeline's own counters are the only bookkeeping, nothing is counted twice
on the hot path. Names are ``skill_router_*``; counters end in ``_total``
(the client library appends it), money is in US dollars.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.core.breaker import BreakerState
from router.runtime.stats import Snapshot

PREFIX = "skill_router_"

# name (without prefix), help, SkillSnapshot attribute; gauges then counters.
_SKILL_GAUGES = (
    ("skill_in_flight", "Calls executing now, per skill.", "in_flight"),
    ("skill_concurrency_limit", "The skill's concurrency limit now (adaptive limits move it).", "concurrency_limit"),
    ("skill_utilization", "In-flight calls over the concurrency limit (0..1).", "utilization"),
    ("skill_queue_depth", "Queries waiting for the skill's gate.", "queued"),
    ("skill_queue_capacity", "How many queries the skill's queue holds.", "queue_capacity"),
    ("skill_success_rate", "Success rate over the skill's recent calls (0..1).", "success_rate"),
)
_SKILL_COUNTERS = (
    ("skill_calls", "Skill executions finished (success or failure).", "calls"),
    ("skill_failures", "Skill executions that failed.", "failures"),
    ("skill_shed", "Times the skill was shed before queueing (a standby stepped in).", "shed"),
    ("skill_rejected", "Calls the skill's gate refused after queueing (timeout, displaced).", "rejected"),
    ("skill_timed_out", "Calls that waited past their queue timeout or deadline.", "timed_out"),
    ("skill_batches", "Batched backend requests sent.", "batches"),
    ("skill_coalesced_calls", "Calls answered by an identical call already in flight.", "coalesced_calls"),
    ("skill_cache_hits", "Answers taken from the response cache (no backend request).", "cache_hits"),
    ("skill_cache_misses", "Response-cache look-ups that found nothing (the call was made or joined).",
     "cache_misses"),
    ("skill_cache_saved_usd", "What the response cache's hits would have cost (USD).", "cache_saved"),
)


class SnapshotCollector(Collector):
    """Reads the snapshot at scrape time and yields every family."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def __repr__(self) -> str:
        return f"<SnapshotCollector {PREFIX}*>"

    def describe(self) -> list[Metric]:
        return []  # names are fixed but the registry need not scrape to learn them

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        for name, doc, attr in _SKILL_GAUGES:
            g = GaugeMetricFamily(PREFIX + name, doc, labels=["skill"])
            for s in snap.skills:
                g.add_metric([s.skill], float(getattr(s, attr)))
            yield g
        for name, doc, attr in _SKILL_COUNTERS:
            c = CounterMetricFamily(PREFIX + name, doc, labels=["skill"])
            for s in snap.skills:
                c.add_metric([s.skill], float(getattr(s, attr)))
            yield c
        lat = GaugeMetricFamily(PREFIX + "skill_latency_seconds",
                                "Skill call latency quantiles over the recent calls.", labels=["skill", "quantile"])
        for s in snap.skills:
            lat.add_metric([s.skill, "0.5"], s.latency_p50_ms / 1000.0)
            lat.add_metric([s.skill, "0.99"], s.latency_p99_ms / 1000.0)
        yield lat
        yield from _breakers(snap)
        yield from _quality(snap)
        yield from _totals(snap)


def _breakers(snap: Snapshot) -> Iterator[Metric]:
    state = GaugeMetricFamily(PREFIX + "breaker_state",
                              "1 for the breaker's current state, 0 for the others, per implementation.",
                              labels=["skill", "implementation", "state"])
    failures = GaugeMetricFamily(PREFIX + "breaker_consecutive_failures",
                                 "Failures in a row, per implementation.", labels=["skill", "implementation"])
    opened = CounterMetricFamily(PREFIX + "breaker_opened", "Times the breaker opened, per implementation.",
                                 labels=["skill", "implementation"])
    for s in snap.skills:
        for i in s.implementations:
            for st in BreakerState:
                state.add_metric([s.skill, i.name, str(st)], 1.0 if i.breaker_state is st else 0.0)
            failures.add_metric([s.skill, i.name], float(i.consecutive_failures))
            opened.add_metric([s.skill, i.name], float(i.times_opened))
    yield from (state, failures, opened)


def _quality(snap: Snapshot) -> Iterator[Metric]:
    q = GaugeMetricFamily(PREFIX + "implementation_quality",
                          "Quality of an implementation: declared (config) and measured (Feedback posterior mean).",
                          labels=["skill", "implementation", "kind"])
    ratings = CounterMetricFamily(PREFIX + "implementation_ratings", "Feedback ratings, per implementation.",
                                  labels=["skill", "implementation"])
    for s in snap.skills:
        for i in s.implementations:
            q.add_metric([s.skill, i.name, "declared"], i.declared_quality)
            q.add_metric([s.skill, i.name, "measured"], i.measured_quality)
            ratings.add_metric([s.skill, i.name], float(i.ratings))
    yield from (q, ratings)
    yield CounterMetricFamily(PREFIX + "feedback", "Feedback calls accepted.", value=snap.feedback_received)


def _totals(snap: Snapshot) -> Iterator[Metric]:
    t = snap.totals
    yield CounterMetricFamily(PREFIX + "queries", "Executes received, whatever their outcome.", value=t.queries)
    yield CounterMetricFamily(PREFIX + "failed_queries", "Executes not answered (outcome other than ok/partial).",
                              value=t.failed_queries)
    outcomes = CounterMetricFamily(PREFIX + "query_outcomes", "Executes by outcome.", labels=["outcome"])
    for outcome, n in sorted(t.outcomes.items()):
        outcomes.add_metric([outcome], float(n))
    yield outcomes
    yield CounterMetricFamily(PREFIX + "routes", "Route calls answered.", value=t.routes)
    yield CounterMetricFamily(PREFIX + "skills_selected", "Skills selected, summed over queries.",
                              value=t.skills_selected)
    yield CounterMetricFamily(PREFIX + "cost_usd", "Cost of the skill executions (USD).", value=t.cost)
    yield CounterMetricFamily(PREFIX + "baseline_cost_usd",
                              "What firing every activated skill with its default implementation would have cost "
                              "(USD).", value=t.baseline_cost)
    # Saving can go down (a pricier implementation than the baseline's), so a gauge.
    yield GaugeMetricFamily(PREFIX + "cost_saved_usd", "Baseline cost minus actual cost over answered queries (USD).",
                            value=t.cost_saved)
    yield GaugeMetricFamily(PREFIX + "uptime_seconds", "Seconds since the sidecar started.", value=snap.uptime_s)
    yield GaugeMetricFamily(PREFIX + "moe_enabled", "1 when top-k routing is on, 0 when every skill fires.",
                            value=1.0 if snap.moe_enabled else 0.0)
    gen = GaugeMetricFamily(PREFIX + "config_generation",
                            "The config generation serving (1 at start, one more per reload that took effect).",
                            labels=["source"])
    gen.add_metric([snap.config_source], float(snap.config_generation))
    yield gen
