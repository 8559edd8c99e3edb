"""The metrics store's settings and results: plain frozen values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from router.core.errors import RouterError
from router.runtime.observer import QueryRecord

TABLE = "brain_moe_metrics"
# Every Feedback rating, one row per (query, skill) rated; the query's row in
# TABLE gets quality_score = the rating and quality_source = 'feedback'.
FEEDBACK_TABLE = "brain_moe_feedback"
FEEDBACK_COLUMNS = ("query_id", "timestamp", "skill", "implementation", "score", "domain", "complexity", "band",
                    "arm")

# Outcomes (``status``) of answered queries; every other one is an error.
ANSWERED = ("ok", "partial")
ANSWERED_SQL = "('ok', 'partial')"
# Rated queries, their mean measured quality, and the mean declared quality of
# answered queries (declared_quality, or quality_score for rows written
# before the column existed).
QUALITY_SQL = ("count(CASE WHEN quality_source = 'feedback' THEN 1 END),"
               " avg(CASE WHEN quality_source = 'feedback' THEN quality_score END),"
               f" avg(CASE WHEN status IN {ANSWERED_SQL} THEN coalesce(declared_quality, quality_score) END)")

# The seed's columns, plus the ids and lists this router adds. Order matters:
# rows are written as tuples in this order.
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(QueryRecord))


def missing_columns(existing: set[str], types: Mapping[str, str]) -> list[tuple[str, str]]:
    """Columns of this version that an older table lacks, with the type to
    add them with (NOT NULL dropped unless a default makes it safe)."""
    out = []
    for c in COLUMNS:
        if c not in existing:
            t = types[c]
            out.append((c, t if "DEFAULT" in t else t.replace(" NOT NULL", "")))
    return out


class StoreError(RouterError):
    """The metrics store cannot be opened or used."""


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where and how the per-query rows are kept.

    PostgreSQL when ``postgres_dsn`` is set, else SQLite at ``sqlite_path``,
    else SQLite in memory (the rows live as long as the process).
    ``retention_days`` None keeps rows forever.
    """

    sqlite_path: str | None = None
    postgres_dsn: str | None = None
    retention_days: float | None = 30.0
    batch_size: int = 200
    flush_interval_s: float = 1.0
    buffer_size: int = 10_000
    retention_interval_s: float = 3600.0
    pool_size: int = 2
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        def bad(name: str, problem: str) -> None:
            raise ValueError(f"{name}: {problem}, got {getattr(self, name)!r}")
        if self.batch_size < 1:
            bad("batch_size", "must be at least 1")
        if self.buffer_size < 1:
            bad("buffer_size", "must be at least 1")
        if not self.flush_interval_s > 0:
            bad("flush_interval_s", "must be positive")
        if self.retention_days is not None and not self.retention_days > 0:
            bad("retention_days", "must be positive (or None to keep rows forever)")
        if not self.retention_interval_s > 0:
            bad("retention_interval_s", "must be positive")
        if self.pool_size < 1:
            bad("pool_size", "must be at least 1")

    @property
    def backend(self) -> str:
        return "postgres" if self.postgres_dsn else "sqlite"


@dataclass(frozen=True, slots=True)
class StoreStats:
    written: int = 0  # rows committed
    dropped: int = 0  # rows refused because the buffer was full (or the store closed)
    failed: int = 0  # rows lost to write errors
    errors: int = 0  # failed write or retention attempts
    buffered: int = 0  # rows waiting to be written
    purged: int = 0  # rows deleted by retention


@dataclass(frozen=True, slots=True)
class HourlyTrend:
    hour: float  # unix seconds at the start of the UTC hour
    queries: int
    avg_cost: float
    avg_total_time_ms: float
    avg_quality: float


@dataclass(frozen=True, slots=True)
class WindowAggregate:
    """The seed's dashboard over ``(until - window_s, until]``."""

    window_s: float
    since: float
    until: float
    queries: int = 0  # Executes received
    errors: int = 0  # not answered (outcome other than ok and partial)
    avg_skills_selected: float = 0.0
    avg_cost_per_query: float = 0.0
    total_cost: float = 0.0
    cost_saved_total: float = 0.0
    avg_cost_saved: float = 0.0
    avg_selection_time_ms: float = 0.0
    avg_response_time_ms: float = 0.0
    p50_response_time_ms: float = 0.0  # nearest rank
    p99_response_time_ms: float = 0.0  # nearest rank
    avg_quality: float = 0.0  # over answered queries
    # outcome → queries
    outcomes: Mapping[str, int] = field(default_factory=dict)
    # skill → queries that selected it, most selected first
    skill_distribution: Mapping[str, int] = field(default_factory=dict)
    hourly: tuple[HourlyTrend, ...] = ()
    # The response cache: skill → answers taken from it / lookups that missed.
    cache_hits: Mapping[str, int] = field(default_factory=dict)
    cache_misses: Mapping[str, int] = field(default_factory=dict)
    cache_saved_total: float = 0.0
    rated: int = 0  # queries with a Feedback rating
    avg_measured_quality: float = 0.0  # their mean rating
    avg_declared_quality: float = 0.0  # the mean declared quality of answered queries

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s, "since": self.since, "until": self.until,
            "queries": self.queries, "errors": self.errors,
            "avg_skills_selected": self.avg_skills_selected,
            "avg_cost_per_query": self.avg_cost_per_query, "total_cost": self.total_cost,
            "cost_saved_total": self.cost_saved_total, "avg_cost_saved": self.avg_cost_saved,
            "avg_selection_time_ms": self.avg_selection_time_ms,
            "avg_response_time_ms": self.avg_response_time_ms,
            "p50_response_time_ms": self.p50_response_time_ms,
            "p99_response_time_ms": self.p99_response_time_ms,
            "avg_quality": self.avg_quality,
            "rated": self.rated, "avg_measured_quality": self.avg_measured_quality,
            "avg_declared_quality": self.avg_declared_quality,
            "outcomes": dict(self.outcomes),
            "skill_distribution": dict(self.skill_distribution),
            "cache_hits": dict(self.cache_hits), "cache_misses": dict(self.cache_misses),
            "cache_saved_total": self.cache_saved_total,
            "hourly": [
                {"hour": h.hour, "queries": h.queries, "avg_cost": h.avg_cost,
                 "avg_total_time_ms": h.avg_total_time_ms, "avg_quality": h.avg_quality}
                for h in self.hourly
            ],
        }


def f0(value: Any) -> float:
    """SQL's NULL (an empty window) as 0.0; Decimal as float."""
    return 0.0 if value is None else float(value)


def nearest_rank(p: float, n: int) -> int:
    """1-based rank of the p-quantile, as PostgreSQL's percentile_disc computes it."""
    import math
    return max(1, math.ceil(p * n))


def skills_json(skills: tuple[str, ...]) -> str:
    return json.dumps(list(skills), separators=(",", ":"))
