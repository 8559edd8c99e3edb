"""PostgreSQL, when a DSN is configured: psycopg 3 (async) through a small
psycopg_pool pool. The table is the seed's ``brain_moe_metrics``
(``timestamp TIMESTAMPTZ``), with the skill lists as ``TEXT[]``; it is
created at start under an advisory lock, so replicas starting together do
not race.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

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
)

_TYPES = {
    "query_id": "TEXT NOT NULL", "timestamp": "TIMESTAMPTZ NOT NULL DEFAULT NOW()", "rpc": "TEXT NOT NULL",
    "status": "TEXT NOT NULL", "query_hash": "TEXT", "domain": "TEXT", "complexity": "DOUBLE PRECISION",
    "skills_considered": "INT", "skills_selected": "INT", "top_skill": "TEXT", "top_skill_score": "DOUBLE PRECISION",
    "selection_time_ms": "DOUBLE PRECISION", "execution_time_ms": "DOUBLE PRECISION", "total_time_ms": "DOUBLE PRECISION",
    "total_cost": "DOUBLE PRECISION", "cost_saved": "DOUBLE PRECISION", "baseline_cost": "DOUBLE PRECISION",
    "quality_score": "DOUBLE PRECISION",
    "max_utilization": "DOUBLE PRECISION", "avg_queue_depth": "DOUBLE PRECISION",
    "skills": "TEXT[] NOT NULL DEFAULT '{}'", "skills_ok": "TEXT[] NOT NULL DEFAULT '{}'", "trace_id": "TEXT",
    "domain_source": "TEXT", "complexity_source": "TEXT", "signal_method": "TEXT",
    "skills_cached": "TEXT[] NOT NULL DEFAULT '{}'", "skills_cache_missed": "TEXT[] NOT NULL DEFAULT '{}'",
    "cache_saved": "DOUBLE PRECISION NOT NULL DEFAULT 0",
    "implementations": "TEXT[] NOT NULL DEFAULT '{}'", "quality_source": "TEXT NOT NULL DEFAULT 'declared'",
    "arm": "TEXT NOT NULL DEFAULT ''", "shadow": "BOOLEAN NOT NULL DEFAULT FALSE",
    "declared_quality": "DOUBLE PRECISION",
}
assert set(_TYPES) == set(COLUMNS)

_LOCK_KEY = 0x6D6F655F6D657472  # "moe_metr": serializes schema creation across replicas

SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (\n  id BIGSERIAL PRIMARY KEY,\n"
    + ",\n".join(f"  {c} {_TYPES[c]}" for c in COLUMNS) + "\n)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_timestamp_idx ON {TABLE} (timestamp)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_query_id_idx ON {TABLE} (query_id)",
    f"CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (\n  id BIGSERIAL PRIMARY KEY,\n"
    "  query_id TEXT NOT NULL, timestamp TIMESTAMPTZ NOT NULL, skill TEXT NOT NULL, implementation TEXT NOT NULL,\n"
    "  score DOUBLE PRECISION NOT NULL, domain TEXT, complexity DOUBLE PRECISION, band TEXT,"
    " arm TEXT NOT NULL DEFAULT '')",
    f"CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_timestamp_idx ON {FEEDBACK_TABLE} (timestamp)",
)
INSERT_FEEDBACK = (f"INSERT INTO {FEEDBACK_TABLE} ({', '.join(FEEDBACK_COLUMNS)}) VALUES ("
                   + ", ".join("to_timestamp(%s)" if c == "timestamp" else "%s" for c in FEEDBACK_COLUMNS) + ")")
UPDATE_QUALITY = f"UPDATE {TABLE} SET quality_score = %s, quality_source = 'feedback' WHERE query_id = %s"
_SELECT_FEEDBACK = ", ".join("extract(epoch FROM timestamp)::float8" if c == "timestamp" else c
                             for c in FEEDBACK_COLUMNS)
INSERT = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('%s' for _ in COLUMNS)})"
_SELECT_RECORD = ", ".join("extract(epoch FROM timestamp)::float8" if c == "timestamp" else c for c in COLUMNS)


def describe(dsn: str) -> str:
    """``host:port/dbname`` for messages: never the password."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', d.get('user', ''))}"


def _row(r: QueryRecord) -> tuple[object, ...]:
    out: list[Any] = []
    for c in COLUMNS:
        v = getattr(r, c)
        if c == "timestamp":
            v = dt.datetime.fromtimestamp(v, dt.UTC)
        elif isinstance(v, tuple):
            v = list(v)
        out.append(v)
    return tuple(out)


def _record(row: tuple[object, ...]) -> QueryRecord:
    values = dict(zip(COLUMNS, row))
    values["skills"] = tuple(values["skills"] or ())
    for c in ("skills_ok", "skills_cached", "skills_cache_missed", "implementations"):
        values[c] = tuple(values[c] or ())
    return QueryRecord(**values)


class PostgresBackend:
    def __init__(self, dsn: str, pool_size: int = 2, connect_timeout_s: float = 10.0) -> None:
        self._dsn = dsn
        self.where = describe(dsn)
        self.name = "postgres"
        self._timeout = connect_timeout_s
        self._pool = AsyncConnectionPool(dsn, min_size=1, max_size=pool_size, open=False,
                                         kwargs={"autocommit": True}, name="metrics-store",
                                         timeout=connect_timeout_s)

    def __repr__(self) -> str:
        return f"<PostgresBackend {self.where}>"

    async def open(self) -> None:
        # One direct connection first: an unreachable server is one clear
        # error at once, not the pool's retries (and their log lines) until
        # its timeout.
        try:
            probe = await psycopg.AsyncConnection.connect(self._dsn, connect_timeout=max(1, round(self._timeout)))
            await probe.close()
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreError(f"cannot connect to the PostgreSQL metrics store at {self.where}: {reason}") from None
        try:
            await self._pool.open(wait=True, timeout=self._timeout)
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                for stmt in SCHEMA:
                    await conn.execute(stmt)
                # A table made by an older version: add the columns it lacks.
                cur = await conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                                         (TABLE,))
                have = {r[0] for r in await cur.fetchall()}
                for column, sql_type in missing_columns(have, _TYPES):
                    await conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {column} {sql_type}")
        except Exception as exc:
            await self._pool.close()
            raise StoreError(f"cannot open the PostgreSQL metrics store at {self.where}: {exc}") from exc

    async def write(self, rows: list[QueryRecord]) -> None:
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(INSERT, [_row(r) for r in rows])

    async def write_feedback(self, rows: list[FeedbackRecord], updates: list[tuple[float, str]]) -> None:
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(INSERT_FEEDBACK, [tuple(getattr(r, c) for c in FEEDBACK_COLUMNS) for r in rows])
            await cur.executemany(UPDATE_QUALITY, updates)

    async def feedback(self, limit: int) -> list[FeedbackRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_SELECT_FEEDBACK} FROM {FEEDBACK_TABLE}"
                                     " ORDER BY timestamp DESC, id DESC LIMIT %s", (limit,))
            return [FeedbackRecord(*r) for r in await cur.fetchall()]

    async def aggregate(self, since: float, until: float, rpc: str | None) -> WindowAggregate:
        # Shadow runs (experiments) are never answers: not in the window.
        where = ("timestamp > to_timestamp(%s) AND timestamp <= to_timestamp(%s) AND NOT shadow"
                 + (" AND rpc = %s" if rpc else ""))
        args: tuple[object, ...] = (since, until) + ((rpc,) if rpc else ())
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE status NOT IN {ANSWERED_SQL}), avg(skills_selected)::float8,"
                " avg(total_cost), sum(total_cost), sum(cost_saved), avg(cost_saved), avg(selection_time_ms),"
                " avg(total_time_ms),"
                " percentile_disc(0.5) WITHIN GROUP (ORDER BY total_time_ms),"
                " percentile_disc(0.99) WITHIN GROUP (ORDER BY total_time_ms),"
                f" avg(quality_score) FROM {TABLE} WHERE {where}", args)
            row = await cur.fetchone()
            assert row is not None
            (n, errors, skills, avg_cost, total_cost, saved, avg_saved, sel_ms, avg_ms, p50, p99, quality) = row
            if not n:
                return WindowAggregate(until - since, since, until)
            cur = await conn.execute(f"SELECT status, count(*) FROM {TABLE} WHERE {where} GROUP BY status", args)
            outcomes = await cur.fetchall()
            cur = await conn.execute(f"SELECT {QUALITY_SQL} FROM {TABLE} WHERE {where}", args)
            qrow = await cur.fetchone()
            assert qrow is not None
            rated, measured, declared = qrow
            cur = await conn.execute(
                f"SELECT s, count(*) AS n FROM {TABLE}, unnest(skills) AS s WHERE {where}"
                " GROUP BY s ORDER BY n DESC, s COLLATE \"C\"", args)
            dist = await cur.fetchall()
            cur = await conn.execute(
                "SELECT floor(extract(epoch FROM timestamp) / 3600)::bigint * 3600 AS hour, count(*),"
                f" avg(total_cost), avg(total_time_ms), avg(quality_score) FROM {TABLE} WHERE {where}"
                " GROUP BY hour ORDER BY hour", args)
            hourly = await cur.fetchall()
            cache: list[dict[str, int]] = []
            for column in ("skills_cached", "skills_cache_missed"):
                cur = await conn.execute(f"SELECT s, count(*) FROM {TABLE}, unnest({column}) AS s WHERE {where}"
                                         " GROUP BY s", args)
                cache.append({str(s): int(c) for s, c in await cur.fetchall()})
            cur = await conn.execute(f"SELECT sum(cache_saved) FROM {TABLE} WHERE {where}", args)
            saved_row = await cur.fetchone()
        return WindowAggregate(
            window_s=until - since, since=since, until=until, queries=int(n), errors=int(errors),
            avg_skills_selected=f0(skills), avg_cost_per_query=f0(avg_cost), total_cost=f0(total_cost),
            cost_saved_total=f0(saved), avg_cost_saved=f0(avg_saved), avg_selection_time_ms=f0(sel_ms),
            avg_response_time_ms=f0(avg_ms), p50_response_time_ms=f0(p50), p99_response_time_ms=f0(p99),
            avg_quality=f0(quality), outcomes={str(o): int(c) for o, c in outcomes}, rated=int(rated or 0),
            avg_measured_quality=f0(measured), avg_declared_quality=f0(declared),
            skill_distribution={str(s): int(c) for s, c in dist},
            hourly=tuple(HourlyTrend(float(h), int(c), f0(a), f0(t), f0(q)) for h, c, a, t, q in hourly),
            cache_hits=cache[0], cache_misses=cache[1], cache_saved_total=f0(saved_row[0] if saved_row else None),
        )

    async def purge(self, before: float) -> int:
        async with self._pool.connection() as conn:
            await conn.execute(f"DELETE FROM {FEEDBACK_TABLE} WHERE timestamp < to_timestamp(%s)", (before,))
            cur = await conn.execute(f"DELETE FROM {TABLE} WHERE timestamp < to_timestamp(%s)", (before,))
            return cur.rowcount

    async def recent(self, limit: int) -> list[QueryRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_SELECT_RECORD} FROM {TABLE} ORDER BY timestamp DESC, id DESC LIMIT %s", (limit,))
            return [_record(r) for r in await cur.fetchall()]

    async def close(self) -> None:
        await self._pool.close()
