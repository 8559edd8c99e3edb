"""The dashboard's figures as one JSON-ready dict (``GET /api/dashboard``).

Shaped after the seed's two endpoints: ``load_balancing`` is its
``/api/brain/load-balancing`` (utilization and queue depth per skill) and
``moe_metrics`` its ``/api/brain/moe-metrics`` (averages over a window,
skill distribution, hourly trends, read from the metrics store); the live
per-skill detail, totals and a short history of rates come with them.
"""

from __future__ import annotations

from typing import Any, Protocol

from router.core.breaker import BreakerState
from router.runtime.stats import SkillSnapshot, Snapshot


class WindowAggregate(Protocol):
    """What the metrics store's aggregate offers (``router.storage.WindowAggregate``)."""

    def to_dict(self) -> dict[str, Any]: ...


# (aggregate or None when there is no store, store backend name, rows dropped)
WindowResult = tuple[WindowAggregate | None, str, int]

_WORST = (BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED)


def skill_breaker(s: SkillSnapshot) -> str:
    """The skill's breaker as one word: the worst of its implementations'."""
    states = {i.breaker_state for i in s.implementations}
    return next((str(w) for w in _WORST if w in states), str(BreakerState.CLOSED))


def _skill(s: SkillSnapshot) -> dict[str, Any]:
    return {
        "skill": s.skill, "in_flight": s.in_flight, "concurrency_limit": s.concurrency_limit,
        "utilization": s.utilization, "queue_depth": s.queued, "queue_capacity": s.queue_capacity,
        "queue_by_priority": dict(s.queue_by_priority or {}), "mean_queue_wait_ms": s.mean_queue_wait_ms,
        "calls": s.calls, "failures": s.failures, "success_rate": s.success_rate,
        "latency_p50_ms": s.latency_p50_ms, "latency_p99_ms": s.latency_p99_ms,
        "rejected": s.rejected, "shed": s.shed, "timed_out": s.timed_out,
        "batches": s.batches, "mean_batch_size": s.mean_batch_size, "coalesced_calls": s.coalesced_calls,
        "cache_hits": s.cache_hits, "cache_misses": s.cache_misses, "cache_saved_usd": s.cache_saved,
        "breaker": skill_breaker(s),
        "implementations": [
            {"name": i.name, "breaker_state": str(i.breaker_state), "half_open_in_s": i.half_open_in_s,
             "consecutive_failures": i.consecutive_failures, "failure_rate": i.failure_rate,
             "times_opened": i.times_opened}
            for i in s.implementations
        ],
    }


def _moe_metrics(window_s: float, window: WindowResult | None, error: str | None) -> dict[str, Any]:
    base: dict[str, Any] = {"window_s": window_s, "store": None, "dropped_rows": 0, "error": error}
    if window is None:
        return base
    agg, backend, dropped = window
    base.update(store=backend or None, dropped_rows=dropped)
    if agg is None:
        base["error"] = error or "no metrics store configured (storage.sqlite_path or storage.postgres_dsn)"
        return base
    d = agg.to_dict()
    base.update(d)
    # The seed's names for the same figures.
    base["avg_response_time_ms"] = d.get("avg_response_time_ms", 0.0)
    base["hourly_trends"] = d.get("hourly", [])
    return base


def dashboard(snapshot: Snapshot, *, now: float, window_s: float, window: WindowResult | None,
              window_error: str | None = None, history: list[dict[str, Any]] | None = None,
              sample_interval_s: float = 0.0) -> dict[str, Any]:
    t = snapshot.totals
    skills = [_skill(s) for s in snapshot.skills]
    return {
        "generated_at": now,
        "uptime_s": snapshot.uptime_s,
        "moe_enabled": snapshot.moe_enabled,
        "config": {"generation": snapshot.config_generation, "loaded_at": snapshot.config_loaded_at,
                   "source": snapshot.config_source},
        "totals": {
            "queries": t.queries, "routes": t.routes, "failed_queries": t.failed_queries,
            "skills_selected": t.skills_selected, "avg_skills_per_query": t.avg_skills_per_query,
            "cost_usd": t.cost, "baseline_cost_usd": t.baseline_cost, "cost_saved_usd": t.cost_saved,
            "cost_saved_ratio": (t.cost_saved / t.baseline_cost) if t.baseline_cost > 0 else 0.0,
        },
        "skills": skills,
        "load_balancing": {
            "utilization": {s["skill"]: s["utilization"] for s in skills},
            "queue_depth": {s["skill"]: s["queue_depth"] for s in skills},
        },
        "moe_metrics": _moe_metrics(window_s, window, window_error),
        "history": {"interval_s": sample_interval_s, "points": history or []},
    }
