"""router.storage: the per-query metrics store, on SQLite (a file in
tmp_path) and on a real PostgreSQL (``SKILL_ROUTER_TEST_PG_DSN``, set by
``scripts/services.sh``; those cases skip only when it is unset).

Each PostgreSQL case runs in its own schema, dropped afterwards. Time is
injected: aggregates are computed at a fixed ``NOW``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest

from router.runtime.observer import QueryRecord
from router.storage import StoreError, StoreSettings, open_store

PG_DSN = os.environ.get("SKILL_ROUTER_TEST_PG_DSN", "")
NOW = 1_800_000_000.0  # on an hour boundary
HOUR = 3600.0


def rec(ts: float, *, skills: tuple[str, ...] = ("kimiK2", "trm"), total_ms: float = 100.0, cost: float = 0.05,
        saved: float = 0.05, quality: float = 0.9, status: str = "ok", rpc: str = "execute",
        qid: str | None = None) -> QueryRecord:
    return QueryRecord(
        query_id=qid or uuid.uuid4().hex, timestamp=ts, rpc=rpc, status=status, query_hash="h" + str(int(ts)),
        domain="legal", complexity=6.0, skills_considered=4, skills_selected=len(skills),
        top_skill=skills[0] if skills else "", top_skill_score=1.25, selection_time_ms=0.2,
        execution_time_ms=total_ms - 1, total_time_ms=total_ms, total_cost=cost, cost_saved=saved,
        baseline_cost=cost + saved, quality_score=quality, max_utilization=0.5,
        avg_queue_depth=0.25, skills=skills, skills_ok=skills[:1], trace_id="ab" * 16,
    )


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """A factory of StoreSettings pointing at a fresh database, plus a raw
    SQL executor on that database (to break it on purpose)."""
    if request.param == "sqlite":
        path = str(tmp_path / "metrics" / "router.sqlite3")

        def raw_sql(sql: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(sql)

        yield (lambda **kw: StoreSettings(sqlite_path=path, **kw)), raw_sql
        return

    if not PG_DSN:
        pytest.skip("SKILL_ROUTER_TEST_PG_DSN is not set; `eval \"$(scripts/services.sh)\"` starts PostgreSQL")
    import psycopg
    from psycopg.conninfo import make_conninfo

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    dsn = make_conninfo(PG_DSN, options=f"-c search_path={schema}")

    def raw_sql(sql: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)

    try:
        yield (lambda **kw: StoreSettings(postgres_dsn=dsn, **kw)), raw_sql
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# ---- writing in the background -------------------------------------------------

async def test_rows_are_written_in_the_background(backend):
    make, _ = backend
    store = await open_store(make(flush_interval_s=0.02, batch_size=1000))
    await store.start()
    for i in range(5):
        store.submit(rec(NOW - i))
    assert store.stats.buffered == 5  # submit only buffers
    await eventually(lambda: store.stats.written == 5, "the interval flush")
    agg = await store.aggregate(HOUR, NOW)
    assert agg.queries == 5
    await store.aclose()
    assert store.stats.dropped == store.stats.failed == store.stats.errors == 0


async def test_a_full_batch_is_written_without_waiting_for_the_interval(backend):
    make, _ = backend
    store = await open_store(make(flush_interval_s=3600, batch_size=3))
    await store.start()
    for i in range(6):
        store.submit(rec(NOW - i))
    await eventually(lambda: store.stats.written == 6, "two batches")
    await store.aclose()


async def test_full_buffer_drops_and_counts(backend):
    make, _ = backend
    store = await open_store(make(buffer_size=3, batch_size=2))
    for i in range(5):  # not started: nothing drains
        store.submit(rec(NOW - i))
    assert (store.stats.buffered, store.stats.dropped) == (3, 2)
    await store.flush()
    assert (store.stats.written, store.stats.buffered) == (3, 0)
    await store.aclose()
    store.submit(rec(NOW))  # closed: dropped, never raises
    assert store.stats.dropped == 3


async def test_close_flushes_and_rows_round_trip(backend):
    make, _ = backend
    rows = [rec(NOW - 30, qid="a", skills=("kimiK2", "gepa", "trm")), rec(NOW - 20, qid="b", skills=()),
            rec(NOW - 10, qid="c", status="UNAVAILABLE", quality=0.0)]
    store = await open_store(make(flush_interval_s=3600, batch_size=100))
    await store.start()
    for r in rows:
        store.submit(r)
    await store.aclose()
    assert store.stats.written == 3

    again = await open_store(make())  # the table exists: created only if missing
    got = await again.recent(10)
    await again.aclose()
    assert [g.query_id for g in got] == ["c", "b", "a"]
    for g, r in zip(got, reversed(rows)):
        assert g.timestamp == pytest.approx(r.timestamp, abs=1e-5)
        assert replace(g, timestamp=r.timestamp) == r


async def test_write_errors_are_counted_not_raised(backend):
    make, raw_sql = backend
    store = await open_store(make(batch_size=10))
    raw_sql("DROP TABLE brain_moe_metrics")
    store.submit(rec(NOW))
    store.submit(rec(NOW))
    await store.flush()
    assert (store.stats.errors, store.stats.failed, store.stats.written) == (1, 2, 0)
    await store.aclose()


# ---- Stats over time -------------------------------------------------------------

async def test_aggregate_over_a_window(backend):
    make, _ = backend
    inside = [
        rec(NOW - 10, skills=("kimiK2", "trm", "gepa"), total_ms=300, cost=0.08, saved=0.02, quality=0.9),
        rec(NOW - 100, skills=("kimiK2",), total_ms=100, cost=0.05, saved=0.05, quality=0.95),
        rec(NOW - HOUR - 50, skills=("trm", "ace"), total_ms=200, cost=0.03, saved=0.07, quality=0.8,
            status="UNAVAILABLE"),
        rec(NOW, skills=("ace",), total_ms=400, cost=0.01, saved=0.09, quality=0.7),  # the window's end is inclusive
    ]
    outside = [rec(NOW - 2 * HOUR), rec(NOW - 3 * HOUR), rec(NOW + 1)]  # the start is exclusive
    store = await open_store(make())
    for r in inside + outside:
        store.submit(r)
    await store.flush()

    agg = await store.aggregate(2 * HOUR, NOW)
    await store.aclose()
    assert (agg.since, agg.until, agg.window_s) == (NOW - 2 * HOUR, NOW, 2 * HOUR)
    assert agg.queries == 4 and agg.errors == 1
    assert agg.avg_skills_selected == pytest.approx((3 + 1 + 2 + 1) / 4)
    assert agg.avg_cost_per_query == pytest.approx((0.08 + 0.05 + 0.03 + 0.01) / 4)
    assert agg.total_cost == pytest.approx(0.17)
    assert agg.cost_saved_total == pytest.approx(0.23)
    assert agg.avg_cost_saved == pytest.approx(0.23 / 4)
    assert agg.avg_response_time_ms == pytest.approx(250.0)
    assert agg.avg_selection_time_ms == pytest.approx(0.2)
    assert agg.avg_quality == pytest.approx((0.9 + 0.95 + 0.8 + 0.7) / 4)
    assert agg.p50_response_time_ms == 200.0  # nearest rank: 2nd of 4
    assert agg.p99_response_time_ms == 400.0

    assert dict(agg.skill_distribution) == {"kimiK2": 2, "trm": 2, "ace": 2, "gepa": 1}
    assert list(agg.skill_distribution) == ["ace", "kimiK2", "trm", "gepa"]  # most selected first, then by name

    # Hourly trends: the hour before NOW holds 2 rows, the one before that 1, NOW's own hour 1.
    hours = {h.hour: h for h in agg.hourly}
    assert list(hours) == [NOW - 2 * HOUR, NOW - HOUR, NOW]
    assert [h.queries for h in agg.hourly] == [1, 2, 1]
    prev = hours[NOW - HOUR]
    assert prev.avg_cost == pytest.approx(0.065)
    assert prev.avg_total_time_ms == pytest.approx(200.0)
    assert prev.avg_quality == pytest.approx(0.925)
    assert agg.to_dict()["hourly"][1]["queries"] == 2


async def test_quantiles_and_rpc_filter(backend):
    make, _ = backend
    store = await open_store(make(batch_size=50))
    for i in range(1, 101):
        store.submit(rec(NOW - i, total_ms=float(i)))
    for i in range(3):
        store.submit(rec(NOW - i, rpc="route", total_ms=0.5, cost=0.0, saved=0.0, skills=("trm",)))
    await store.flush()
    agg = await store.aggregate(HOUR, NOW, rpc="execute")
    assert agg.queries == 100
    assert (agg.p50_response_time_ms, agg.p99_response_time_ms) == (50.0, 99.0)
    route = await store.aggregate(HOUR, NOW, rpc="route")
    assert route.queries == 3 and dict(route.skill_distribution) == {"trm": 3}
    assert (await store.aggregate(HOUR, NOW)).queries == 103
    await store.aclose()


async def test_empty_window(backend):
    make, _ = backend
    store = await open_store(make())
    agg = await store.aggregate(60, NOW)
    await store.aclose()
    assert agg.queries == 0 and agg.avg_cost_per_query == 0.0 and agg.hourly == () and dict(agg.skill_distribution) == {}
    with pytest.raises(ValueError, match="window_s"):
        await store.aggregate(0, NOW)


# ---- retention -------------------------------------------------------------------

async def test_retention_deletes_old_rows(backend):
    make, _ = backend
    store = await open_store(make(retention_days=1))
    for r in [rec(NOW - 3 * 86400), rec(NOW - 86400 - 1), rec(NOW - 86400 + 60), rec(NOW)]:
        store.submit(r)
    await store.flush()
    assert await store.purge(now=NOW) == 2
    assert (await store.aggregate(10 * 86400, NOW)).queries == 2
    assert await store.purge(now=NOW) == 0
    await store.aclose()


async def test_retention_runs_periodically(backend):
    make, _ = backend
    clock = [NOW]
    store = await open_store(make(retention_days=1, retention_interval_s=0.02, flush_interval_s=0.02),
                             clock=lambda: clock[0])
    store.submit(rec(NOW - 2 * 86400))
    store.submit(rec(NOW - 60))
    await store.flush()
    await store.start()
    await eventually(lambda: store.stats.purged == 1, "the first sweep")
    clock[0] = NOW + 86400  # a day later the second row is out too
    await eventually(lambda: store.stats.purged == 2, "a later sweep")
    assert (await store.aggregate(30 * 86400)).queries == 0
    await store.aclose()


async def test_no_retention_keeps_everything(backend):
    make, _ = backend
    store = await open_store(make(retention_days=None))
    store.submit(rec(NOW - 1000 * 86400))
    await store.flush()
    assert await store.purge(now=NOW) == 0
    await store.start()
    await store.aclose()
    assert store.stats.purged == 0


# ---- set-up ----------------------------------------------------------------------

async def test_sqlite_file_is_in_wal_mode(tmp_path):
    path = tmp_path / "m.sqlite3"
    store = await open_store(StoreSettings(sqlite_path=str(path)))
    assert store.backend == "sqlite"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await store.aclose()


async def test_in_memory_sqlite_by_default():
    store = await open_store(StoreSettings())
    assert store.backend == "sqlite(memory)"
    store.submit(rec(NOW))
    await store.flush()
    assert (await store.aggregate(60, NOW)).queries == 1
    await store.aclose()
    assert "sqlite(memory) closed" in repr(store)


async def test_unreachable_postgres_fails_at_open_without_leaking_the_password():
    settings = StoreSettings(postgres_dsn="postgresql://router:topsecret@127.0.0.1:1/metrics", connect_timeout_s=0.5)
    with pytest.raises(StoreError) as e:
        await open_store(settings)
    assert "127.0.0.1:1/metrics" in str(e.value)
    assert "topsecret" not in str(e.value)


async def test_unwritable_sqlite_path_fails_at_open(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open"):
        await open_store(StoreSettings(sqlite_path=str(blocker / "m.sqlite3")))


@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("buffer_size", 0), ("flush_interval_s", 0.0), ("retention_days", 0.0),
    ("retention_interval_s", -1.0), ("pool_size", 0),
])
def test_settings_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        StoreSettings(**{field: value})


async def test_cache_columns_round_trip_and_aggregate_per_skill(backend):
    make, _ = backend
    rows = [replace(rec(NOW - 30, skills=("kimiK2", "trm")), skills_cached=("kimiK2",), skills_cache_missed=("trm",),
                    cache_saved=0.05),
            replace(rec(NOW - 20, skills=("kimiK2", "trm")), skills_cached=("kimiK2", "trm"), cache_saved=0.07),
            replace(rec(NOW - 10, skills=("ace",)), skills_cache_missed=("ace",)),
            rec(NOW - 5)]
    store = await open_store(make())
    for r in rows:
        store.submit(r)
    await store.flush()
    agg = await store.aggregate(HOUR, NOW)
    got = await store.recent(10)
    await store.aclose()
    assert dict(agg.cache_hits) == {"kimiK2": 2, "trm": 1}
    assert dict(agg.cache_misses) == {"trm": 1, "ace": 1}
    assert agg.cache_saved_total == pytest.approx(0.12)
    assert agg.to_dict()["cache_hits"] == {"kimiK2": 2, "trm": 1}
    assert [(g.skills_cached, g.skills_cache_missed) for g in got] == [
        ((), ()), ((), ("ace",)), (("kimiK2", "trm"), ()), (("kimiK2",), ("trm",))]


async def test_an_older_table_gains_the_cache_columns(backend):
    make, raw_sql = backend
    store = await open_store(make())
    await store.aclose()
    for column in ("skills_cached", "skills_cache_missed", "cache_saved"):
        raw_sql(f"ALTER TABLE brain_moe_metrics DROP COLUMN {column}")
    again = await open_store(make())  # migrates the missing columns
    again.submit(replace(rec(NOW - 1), skills_cached=("trm",), cache_saved=0.01))
    await again.flush()
    agg = await again.aggregate(HOUR, NOW)
    await again.aclose()
    assert dict(agg.cache_hits) == {"trm": 1} and agg.cache_saved_total == pytest.approx(0.01)
