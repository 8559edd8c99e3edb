"""The metrics store: one row per query (the seed's ``brain_moe_metrics``),
written in the background in batches, and the Stats-over-time queries.

    store = await open_store(StoreSettings(sqlite_path="var/metrics.sqlite3"))
    await store.start()
    store.submit(record)                      # never blocks; counts drops when full
    agg = await store.aggregate(24 * 3600)    # the dashboard over the last day
    await store.aclose()                      # writes what is buffered

SQLite (a file, or memory) by default; PostgreSQL when ``postgres_dsn`` is
set. See docs/observability.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._hashkey import KEY_ENV as QUERY_HASH_KEY_ENV
from ._hashkey import query_hasher
from ._store import MetricsStore, StoreBackend
from ._types import TABLE, HourlyTrend, StoreError, StoreSettings, StoreStats, WindowAggregate

__all__ = [
    "QUERY_HASH_KEY_ENV",
    "TABLE",
    "HourlyTrend",
    "MetricsStore",
    "StoreBackend",
    "StoreError",
    "StoreSettings",
    "StoreStats",
    "WindowAggregate",
    "make_store",
    "open_store",
    "query_hasher",
]


def make_store(settings: StoreSettings, *, clock: Callable[[], float] = time.time) -> MetricsStore:
    """The store, not yet connected: ``start()`` (or ``open()``) connects."""
    backend: StoreBackend
    if settings.postgres_dsn:
        from ._postgres import PostgresBackend
        backend = PostgresBackend(settings.postgres_dsn, settings.pool_size, settings.connect_timeout_s)
    else:
        from ._sqlite import SqliteBackend
        backend = SqliteBackend(settings.sqlite_path)
    return MetricsStore(backend, settings, clock)


async def open_store(settings: StoreSettings, *, clock: Callable[[], float] = time.time) -> MetricsStore:
    """Connect and create the table if missing; the writer starts with
    ``start()``. Raises ``StoreError`` when the database cannot be used."""
    store = make_store(settings, clock=clock)
    await store.open()
    return store
