"""SQLite: the embedded default. One connection, owned by one worker
thread, in WAL mode; every statement runs on that thread.

Timestamps are unix seconds (REAL); the skill lists are JSON arrays (TEXT),
read back with ``json_each``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from router.runtime.feedback import FeedbackRecord
from router.runtime.observer import QueryRecord

from ._types import (
    ANSWERED_SQL,
    COLUMNS,
    FEEDBACK_COLUMNS,
    FEEDBACK_TABLE,
    QUALITY_SQL,
    TABLE,
    HourlyTrend,
    StoreError,
    WindowAggregate,
    f0,
    missing_columns,
    nearest_rank,
    skills_json,
)

T = TypeVar("T")

_TYPES = {
    "query_id": "TEXT NOT NULL", "timestamp": "REAL NOT NULL", "rpc": "TEXT NOT NULL", "status": "TEXT NOT NULL",
    "query_hash": "TEXT", "domain": "TEXT", "complexity": "REAL",
    "skills_considered": "INTEGER", "skills_selected": "INTEGER", "top_skill": "TEXT", "top_skill_score": "REAL",
    "selection_time_ms": "REAL", "execution_time_ms": "REAL", "total_time_ms": "REAL",
    "total_cost": "REAL", "cost_saved": "REAL", "baseline_cost": "REAL",
    "quality_score": "REAL", "max_utilization": "REAL", "avg_queue_depth": "REAL",
    "skills": "TEXT NOT NULL DEFAULT '[]'", "skills_ok": "TEXT NOT NULL DEFAULT '[]'", "trace_id": "TEXT",
    "domain_source": "TEXT", "complexity_source": "TEXT", "signal_method": "TEXT",
    "skills_cached": "TEXT NOT NULL DEFAULT '[]'", "skills_cache_missed": "TEXT NOT NULL DEFAULT '[]'",
    "cache_saved": "REAL NOT NULL DEFAULT 0",
    "implementations": "TEXT NOT NULL DEFAULT '[]'", "quality_source": "TEXT NOT NULL DEFAULT 'declared'",
    "arm": "TEXT NOT NULL DEFAULT ''", "shadow": "INTEGER NOT NULL DEFAULT 0", "declared_quality": "REAL",
}
assert set(_TYPES) == set(COLUMNS)

SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (\n  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    + ",\n".join(f"  {c} {_TYPES[c]}" for c in COLUMNS) + "\n)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_timestamp_idx ON {TABLE} (timestamp)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_query_id_idx ON {TABLE} (query_id)",
    f"CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (\n  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "  query_id TEXT NOT NULL, timestamp REAL NOT NULL, skill TEXT NOT NULL, implementation TEXT NOT NULL,\n"
    "  score REAL NOT NULL, domain TEXT, complexity REAL, band TEXT, arm TEXT NOT NULL DEFAULT '')",
    f"CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_timestamp_idx ON {FEEDBACK_TABLE} (timestamp)",
)
INSERT_FEEDBACK = (f"INSERT INTO {FEEDBACK_TABLE} ({', '.join(FEEDBACK_COLUMNS)}) "
                   f"VALUES ({', '.join('?' for _ in FEEDBACK_COLUMNS)})")
UPDATE_QUALITY = f"UPDATE {TABLE} SET quality_score = ?, quality_source = 'feedback' WHERE query_id = ?"
INSERT = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


def _row(r: QueryRecord) -> tuple[object, ...]:
    return tuple(skills_json(v) if isinstance(v, tuple) else v for v in (getattr(r, c) for c in COLUMNS))


def _record(row: tuple[object, ...]) -> QueryRecord:
    values = dict(zip(COLUMNS, row))
    values["skills"] = tuple(json.loads(values["skills"] or "[]"))
    for c in ("skills_ok", "skills_cached", "skills_cache_missed", "implementations"):
        values[c] = tuple(json.loads(values[c] or "[]"))
    values["shadow"] = bool(values["shadow"])
    return QueryRecord(**values)


class SqliteBackend:
    def __init__(self, path: str | None) -> None:
        self.path = path or ":memory:"
        self.name = "sqlite" if path else "sqlite(memory)"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-sqlite")
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"<SqliteBackend {self.path}>"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # Everything below named _sync_* runs on the worker thread.

    def _sync_open(self) -> None:
        try:
            if self.path != ":memory:":
                parent = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(parent, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            for stmt in SCHEMA:
                conn.execute(stmt)
            # A table made by an older version: add the columns it lacks.
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
            for column, sql_type in missing_columns(have, _TYPES):
                conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} {sql_type}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the SQLite metrics store {self.path!r}: {exc}") from exc
        self._conn = conn

    def _sync_write_records(self, records: list[QueryRecord]) -> None:
        self._sync_write([_row(r) for r in records])

    def _sync_write(self, rows: list[tuple[object, ...]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            conn.executemany(INSERT, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _sync_write_feedback(self, rows: list[tuple[object, ...]], updates: list[tuple[float, str]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            conn.executemany(INSERT_FEEDBACK, rows)
            conn.executemany(UPDATE_QUALITY, updates)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _sync_feedback(self, limit: int) -> list[FeedbackRecord]:
        assert self._conn is not None
        rows = self._conn.execute(f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM {FEEDBACK_TABLE}"
                                  " ORDER BY timestamp DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [FeedbackRecord(*r) for r in rows]

    def _sync_aggregate(self, since: float, until: float, rpc: str | None) -> WindowAggregate:
        conn = self._conn
        assert conn is not None
        # Shadow runs (experiments) are never answers: not in the window.
        where = "timestamp > ? AND timestamp <= ? AND shadow = 0" + (" AND rpc = ?" if rpc is not None else "")
        args: tuple[object, ...] = (since, until) + ((rpc,) if rpc is not None else ())
        (n, errors, skills, avg_cost, total_cost, saved, avg_saved, sel_ms, avg_ms, quality) = conn.execute(
            f"SELECT count(*), coalesce(sum(status NOT IN {ANSWERED_SQL}), 0), avg(skills_selected), avg(total_cost),"
            f" sum(total_cost), sum(cost_saved), avg(cost_saved), avg(selection_time_ms), avg(total_time_ms),"
            f" avg(quality_score) FROM {TABLE} WHERE {where}", args).fetchone()
        if not n:
            return WindowAggregate(until - since, since, until)

        def quantile(p: float) -> float:
            (v,) = conn.execute(
                f"SELECT total_time_ms FROM {TABLE} WHERE {where} ORDER BY total_time_ms LIMIT 1 OFFSET ?",
                args + (nearest_rank(p, n) - 1,)).fetchone()
            return f0(v)

        outcomes = conn.execute(f"SELECT status, count(*) FROM {TABLE} WHERE {where} GROUP BY status", args).fetchall()
        rated, measured, declared = conn.execute(f"SELECT {QUALITY_SQL} FROM {TABLE} WHERE {where}", args).fetchone()
        dist = conn.execute(
            f"SELECT j.value, count(*) AS n FROM {TABLE} m, json_each(m.skills) j"
            f" WHERE {where}"  # json_each has no timestamp or rpc column: these are m's
            f" GROUP BY j.value ORDER BY n DESC, j.value", args).fetchall()
        def per_skill(column: str) -> dict[str, int]:
            rows = conn.execute(f"SELECT j.value, count(*) FROM {TABLE} m, json_each(m.{column}) j WHERE {where}"
                                " GROUP BY j.value", args).fetchall()
            return {str(s): int(c) for s, c in rows}

        (cache_saved,) = conn.execute(f"SELECT sum(cache_saved) FROM {TABLE} WHERE {where}", args).fetchone()
        hourly = conn.execute(
            f"SELECT CAST(timestamp / 3600 AS INTEGER) * 3600 AS hour, count(*), avg(total_cost),"
            f" avg(total_time_ms), avg(quality_score) FROM {TABLE} WHERE {where} GROUP BY hour ORDER BY hour",
            args).fetchall()
        return WindowAggregate(
            window_s=until - since, since=since, until=until, queries=n, errors=int(errors),
            avg_skills_selected=f0(skills), avg_cost_per_query=f0(avg_cost), total_cost=f0(total_cost),
            cost_saved_total=f0(saved), avg_cost_saved=f0(avg_saved), avg_selection_time_ms=f0(sel_ms),
            avg_response_time_ms=f0(avg_ms), p50_response_time_ms=quantile(0.5),
            p99_response_time_ms=quantile(0.99), avg_quality=f0(quality), rated=int(rated or 0),
            avg_measured_quality=f0(measured), avg_declared_quality=f0(declared),
            outcomes={str(o): int(c) for o, c in outcomes},
            skill_distribution={str(s): int(c) for s, c in dist},
            hourly=tuple(HourlyTrend(float(h), int(c), f0(a), f0(t), f0(q)) for h, c, a, t, q in hourly),
            cache_hits=per_skill("skills_cached"), cache_misses=per_skill("skills_cache_missed"),
            cache_saved_total=f0(cache_saved),
        )

    def _sync_purge(self, before: float) -> int:
        assert self._conn is not None
        self._conn.execute(f"DELETE FROM {FEEDBACK_TABLE} WHERE timestamp < ?", (before,))
        return self._conn.execute(f"DELETE FROM {TABLE} WHERE timestamp < ?", (before,)).rowcount

    def _sync_recent(self, limit: int) -> list[QueryRecord]:
        assert self._conn is not None
        rows = self._conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM {TABLE} ORDER BY timestamp DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    def _sync_close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- the Backend protocol ----------------------------------------------------

    async def open(self) -> None:
        await self._run(self._sync_open)

    async def write(self, rows: list[QueryRecord]) -> None:
        # The records become rows on the worker thread too: the event loop
        # only hands the batch over.
        await self._run(self._sync_write_records, rows)

    async def write_feedback(self, rows: list[FeedbackRecord], updates: list[tuple[float, str]]) -> None:
        await self._run(self._sync_write_feedback, [tuple(getattr(r, c) for c in FEEDBACK_COLUMNS) for r in rows],
                        updates)

    async def feedback(self, limit: int) -> list[FeedbackRecord]:
        return await self._run(self._sync_feedback, limit)

    async def aggregate(self, since: float, until: float, rpc: str | None) -> WindowAggregate:
        return await self._run(self._sync_aggregate, since, until, rpc)

    async def purge(self, before: float) -> int:
        return await self._run(self._sync_purge, before)

    async def recent(self, limit: int) -> list[QueryRecord]:
        return await self._run(self._sync_recent, limit)

    async def close(self) -> None:
        try:
            await self._run(self._sync_close)
        finally:
            self._executor.shutdown(wait=False)
