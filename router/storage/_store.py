"""The metrics store: a bounded buffer in front of a database, drained in
batches by a background task, so that recording a query never waits on I/O.

``submit`` only appends to a deque (or counts the row as dropped when the
buffer is full); the writer task wakes when a batch is ready or the flush
interval passes. Call ``submit`` from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol, Self

from router.runtime.feedback import FeedbackRecord
from router.runtime.observer import QueryRecord

from ._types import StoreSettings, StoreStats, WindowAggregate

log = logging.getLogger(__name__)


class StoreBackend(Protocol):
    name: str

    async def open(self) -> None:
        """Connect and create the schema if it is missing."""

    async def write(self, rows: list[QueryRecord]) -> None:
        """Insert the rows in one transaction."""

    async def write_feedback(self, rows: list[FeedbackRecord], updates: list[tuple[float, str]]) -> None:
        """Insert the ratings and set the rated queries' quality_score
        (``updates``: (quality, query_id)) in one transaction."""

    async def feedback(self, limit: int) -> list[FeedbackRecord]:
        """The newest ratings, newest first."""

    async def aggregate(self, since: float, until: float, rpc: str | None) -> WindowAggregate: ...

    async def purge(self, before: float) -> int:
        """Delete the rows older than ``before`` (unix seconds); how many."""

    async def recent(self, limit: int) -> list[QueryRecord]: ...

    async def close(self) -> None: ...


class MetricsStore:
    """Implements ``router.runtime.observer.RecordSink``."""

    def __init__(self, backend: StoreBackend, settings: StoreSettings, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        self._settings = settings
        self._clock = clock
        self._buffer: collections.deque[QueryRecord] = collections.deque()
        self._feedback: collections.deque[tuple[list[FeedbackRecord], float]] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._closed = False
        self._opened = False
        self._written = self._dropped = self._failed = self._errors = self._purged = 0

    def __repr__(self) -> str:
        s = self.stats
        state = "closed" if self._closed else ("running" if self._writer else "idle")
        return (f"<MetricsStore {self._backend.name} {state} | buffered {s.buffered}/{self._settings.buffer_size}"
                f" | written {s.written} | dropped {s.dropped} | failed {s.failed}>")

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def stats(self) -> StoreStats:
        return StoreStats(self._written, self._dropped, self._failed, self._errors, len(self._buffer), self._purged)

    # ---- the request path ----------------------------------------------------

    def submit(self, record: QueryRecord) -> None:
        """Take a record without blocking; drop (and count) it when full."""
        if self._closing or len(self._buffer) >= self._settings.buffer_size:
            self._dropped += 1
            return
        self._buffer.append(record)
        if len(self._buffer) >= self._settings.batch_size and not self._wake.is_set():
            self._wake.set()

    def submit_feedback(self, rows: list[FeedbackRecord], query_quality: float) -> None:
        """Keep one Feedback's ratings (written after the query rows buffered
        before them, so the query's row gets the measured quality)."""
        if self._closing or len(self._feedback) >= self._settings.buffer_size:
            self._dropped += len(rows)
            return
        self._feedback.append((rows, query_quality))
        if not self._wake.is_set():
            self._wake.set()

    # ---- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create (or complete) the table. Idempotent; raises
        ``StoreError`` when the database cannot be used."""
        if not self._opened:
            await self._backend.open()
            self._opened = True

    async def start(self) -> None:
        """Open, then start the background writer (and the retention sweep).
        Idempotent."""
        if self._writer is not None or self._closing:
            return
        await self.open()
        self._writer = asyncio.create_task(self._write_loop(), name=f"metrics-store-writer[{self._backend.name}]")
        if self._settings.retention_days is not None:
            self._retention = asyncio.create_task(self._retention_loop(), name="metrics-store-retention")

    async def flush(self) -> None:
        """Write everything buffered now."""
        await self._drain()

    async def aclose(self) -> None:
        """Stop the background tasks, write what is buffered, close. Idempotent."""
        if self._closed:
            return
        self._closing = True
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        if self._writer is not None:
            self._wake.set()
            await self._writer
        await self._drain()
        self._closed = True
        if self._opened:
            await self._backend.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- queries ---------------------------------------------------------------

    async def aggregate(self, window_s: float, now: float | None = None, *, rpc: str | None = None) -> WindowAggregate:
        """The dashboard over the ``window_s`` seconds up to ``now`` (unix
        seconds; the store's clock when None), optionally for one RPC only."""
        if not window_s > 0:
            raise ValueError(f"window_s: must be positive, got {window_s!r}")
        until = self._clock() if now is None else now
        return await self._backend.aggregate(until - window_s, until, rpc)

    async def recent(self, limit: int = 100) -> list[QueryRecord]:
        """The newest rows, newest first."""
        return await self._backend.recent(limit)

    async def feedback(self, limit: int = 100) -> list[FeedbackRecord]:
        """The newest feedback rows, newest first."""
        return await self._backend.feedback(limit)

    async def purge(self, now: float | None = None) -> int:
        """Apply the retention now; how many rows were deleted."""
        days = self._settings.retention_days
        if days is None:
            return 0
        until = self._clock() if now is None else now
        deleted = await self._backend.purge(until - days * 86400.0)
        self._purged += deleted
        return deleted

    # ---- background ------------------------------------------------------------

    async def _write_loop(self) -> None:
        interval = self._settings.flush_interval_s
        while not self._closing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        async with self._write_lock:
            while self._buffer:
                n = min(len(self._buffer), self._settings.batch_size)
                batch = [self._buffer.popleft() for _ in range(n)]
                try:
                    await self._backend.write(batch)
                except asyncio.CancelledError:
                    self._failed += len(batch)
                    raise
                except Exception as exc:
                    self._errors += 1
                    self._failed += len(batch)
                    log.warning("metrics store (%s): could not write %d rows: %s", self._backend.name, len(batch), exc)
                else:
                    self._written += len(batch)
            while self._feedback:
                items = [self._feedback.popleft() for _ in range(min(len(self._feedback), self._settings.batch_size))]
                rows = [r for rs, _ in items for r in rs]
                updates = [(q, rs[0].query_id) for rs, q in items if rs]
                try:
                    await self._backend.write_feedback(rows, updates)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._errors += 1
                    self._failed += len(rows)
                    log.warning("metrics store (%s): could not write %d feedback rows: %s", self._backend.name,
                                len(rows), exc)

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.purge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors += 1
                log.warning("metrics store (%s): retention failed: %s", self._backend.name, exc)
            await asyncio.sleep(self._settings.retention_interval_s)
