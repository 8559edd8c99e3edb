"""Micro-batches and single flight for skill calls.

``Batcher``: one per (skill, implementation, batch key). Callers ``submit``
one item each; the batcher collects them and calls the user-supplied
``send(batch)`` once per batch (one backend request, so one permit of the
skill's gate, acquired inside ``send``), then hands each caller its own
item's result. When to send is decided by ``router.core.batching.FlushPolicy``;
this module only keeps the pending items, a timer and the batch tasks.

``SingleFlight``: for backends that cannot batch, identical in-flight calls
share one call.

Cancellation: a caller cancelling never cancels a batch or a shared call
for the others. A cancelled caller's item that is still pending is taken
out (it is not sent); once its batch is sent, the batch runs to the end and
that item's result is dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from router.core.batching import FlushNow, FlushPolicy, FlushReason, send_by
from router.core.errors import BackendProtocolError, DeadlineExceeded, ShuttingDown

__all__ = [
    "Batch",
    "BatchItemResult",
    "Batcher",
    "BatcherGroup",
    "BatcherStats",
    "FlightResult",
    "SingleFlight",
    "SingleFlightStats",
]

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    """What ``send`` receives: the items in submit order, each item's tag
    (opaque, e.g. its span context, for the batch span's links), and how
    long each waited."""

    batch_id: str
    items: tuple[T, ...]
    tags: tuple[object, ...]
    waits_s: tuple[float, ...]  # per item: from submit to flush
    reason: FlushReason
    flushed_at: float  # on the batcher's clock
    # The earliest item deadline (batcher's clock), None if no item has one:
    # the send's timeout is ``deadline_at - clock()`` once the permit is held.
    deadline_at: float | None

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def first_wait_s(self) -> float:
        return self.waits_s[0]


@dataclass(frozen=True, slots=True)
class BatchItemResult(Generic[R]):
    """One caller's answer: its own item's result, plus how it was batched."""

    value: R
    batch_size: int
    wait_s: float  # from submit to flush
    batch_id: str


@dataclass(frozen=True, slots=True)
class BatcherStats:
    name: str
    batches: int
    items: int
    first_wait_sum_s: float
    batch_failures: int  # sends that raised (every item failed)
    item_failures: int  # items answered with an error
    withdrawn: int  # cancelled callers' items taken out before sending
    flush_reasons: dict[str, int]
    pending: int
    in_flight: int

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    @property
    def mean_first_wait_s(self) -> float:
        return self.first_wait_sum_s / self.batches if self.batches else 0.0

    def __add__(self, other: BatcherStats) -> BatcherStats:
        reasons = dict(self.flush_reasons)
        for reason, n in other.flush_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
        return BatcherStats(
            name=self.name,
            batches=self.batches + other.batches,
            items=self.items + other.items,
            first_wait_sum_s=self.first_wait_sum_s + other.first_wait_sum_s,
            batch_failures=self.batch_failures + other.batch_failures,
            item_failures=self.item_failures + other.item_failures,
            withdrawn=self.withdrawn + other.withdrawn,
            flush_reasons=reasons,
            pending=self.pending + other.pending,
            in_flight=self.in_flight + other.in_flight,
        )


@dataclass(slots=True, eq=False)  # identity: deque.remove must find this very entry
class _Pending(Generic[T]):
    item: T
    tag: Any
    enqueued_at: float
    send_by: float | None
    deadline_at: float | None
    future: asyncio.Future


SendFn = Callable[[Batch[T]], Awaitable[Sequence[Any]]]


class Batcher(Generic[T, R]):
    """Collects items and sends them in batches.

    ``send(batch)`` returns one entry per item, in order: the item's result,
    or an exception instance, which is raised in that item's caller only. If
    ``send`` raises, every item of the batch gets that exception.

    ``is_idle()`` says whether nothing else of the skill is in flight or
    queued (the skill's gate); when it is, and this batcher has no batch in
    flight, an item is sent at once. None: only this batcher's own batches
    count. ``expected_latency_s`` is the implementation's expected latency:
    an item is sent no later than its deadline minus that.

    ``on_empty(batcher)``, when set, is called each time the batcher holds
    nothing any more (no pending item, no batch in flight); ``BatcherGroup``
    uses it to drop idle batchers.
    """

    def __init__(
        self,
        send: SendFn,
        *,
        window_s: float,
        max_batch_size: int,
        clock: Callable[[], float] = time.monotonic,
        is_idle: Callable[[], bool] | None = None,
        expected_latency_s: float = 0.0,
        name: str = "",
    ) -> None:
        self._send = send
        self._policy = FlushPolicy(window_s=window_s, max_batch_size=max_batch_size)
        self._clock = clock
        self._is_idle = is_idle
        self._expected_latency_s = expected_latency_s
        self.name = name
        self._pending: deque[_Pending[T]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._tasks: set[asyncio.Task] = set()
        self._seq = itertools.count(1)
        self._closed = False
        self.on_empty: Callable[[Batcher[T, R]], None] | None = None
        # stats
        self._batches = 0
        self._items = 0
        self._first_wait_sum = 0.0
        self._batch_failures = 0
        self._item_failures = 0
        self._withdrawn = 0
        self._reasons: dict[str, int] = {}

    @property
    def policy(self) -> FlushPolicy:
        return self._policy

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def empty(self) -> bool:
        """Nothing pending and no batch in flight."""
        return not self._pending and not self._tasks

    async def submit(self, item: T, *, tag: Any = None, deadline_s: float | None = None) -> BatchItemResult[R]:
        """Send ``item`` in a batch and return its own result.

        ``deadline_s``: seconds left until the caller's deadline (e.g. gRPC's
        ``time_remaining()``), None for none. Raises the item's error, the
        whole batch's error, ``DeadlineExceeded`` when the deadline has
        already passed, ``ShuttingDown`` once ``aclose`` has begun.
        """
        if self._closed:
            raise ShuttingDown()
        if deadline_s is not None and deadline_s <= 0:
            raise DeadlineExceeded("the deadline passed before the call could be batched")
        now = self._clock()
        entry = _Pending(
            item=item,
            tag=tag,
            enqueued_at=now,
            send_by=send_by(now, deadline_s, self._expected_latency_s),
            deadline_at=None if deadline_s is None else now + deadline_s,
            future=asyncio.get_running_loop().create_future(),
        )
        self._pending.append(entry)
        self._reconsider()
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._withdraw(entry)
            raise

    def _withdraw(self, entry: _Pending[T]) -> None:
        # Still pending: take it out so it is not sent. Already sent: the
        # batch goes on; its result for this item is dropped.
        try:
            self._pending.remove(entry)
        except ValueError:
            return
        self._withdrawn += 1
        self._reconsider()
        self._notify_if_empty()

    def _notify_if_empty(self) -> None:
        if self.on_empty is not None and self.empty:
            self.on_empty(self)

    def _idle(self) -> bool:
        if self._tasks:
            return False
        if self._is_idle is None:
            return True
        try:
            return bool(self._is_idle())
        except Exception:
            return False  # unknown load: let the window decide

    def _reconsider(self) -> None:
        """Follow the policy: flush what it says to flush, then arm the timer
        for the next decision (or disarm it when nothing is pending)."""
        while self._pending:
            if self._closed:
                self._flush(FlushReason.CLOSING)
                continue
            now = self._clock()
            deadlines = [p.send_by for p in self._pending if p.send_by is not None]
            decision = self._policy.decide(
                now,
                len(self._pending),
                self._pending[0].enqueued_at,
                min(deadlines) if deadlines else None,
                self._idle(),
            )
            if isinstance(decision, FlushNow):
                self._flush(decision.reason)
                continue
            self._arm(decision.t, now)
            return
        self._disarm()

    def _arm(self, t: float, now: float) -> None:
        if self._timer is not None:
            if self._timer_at == t:
                return
            self._timer.cancel()
        self._timer_at = t
        self._timer = asyncio.get_running_loop().call_later(max(0.0, t - now), self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._reconsider()

    def _flush(self, reason: FlushReason) -> None:
        take = min(len(self._pending), self._policy.max_batch_size)
        entries = [self._pending.popleft() for _ in range(take)]
        now = self._clock()
        deadlines = [e.deadline_at for e in entries if e.deadline_at is not None]
        seq = next(self._seq)
        batch: Batch[T] = Batch(
            batch_id=f"{self.name}#{seq}" if self.name else str(seq),
            items=tuple(e.item for e in entries),
            tags=tuple(e.tag for e in entries),
            waits_s=tuple(max(0.0, now - e.enqueued_at) for e in entries),
            reason=reason,
            flushed_at=now,
            deadline_at=min(deadlines) if deadlines else None,
        )
        self._batches += 1
        self._items += batch.size
        self._first_wait_sum += batch.first_wait_s
        self._reasons[reason.value] = self._reasons.get(reason.value, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(batch, entries), name=f"batch {batch.batch_id}")
        self._tasks.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        # A batch finishing may make the skill idle: the next batch need not
        # wait out its window.
        if self._pending:
            self._reconsider()
        self._notify_if_empty()

    async def _run(self, batch: Batch[T], entries: list[_Pending[T]]) -> None:
        try:
            results = await self._send(batch)
        except asyncio.CancelledError:
            # Only aclose() or the loop's end cancels a batch task.
            self._fail_all(entries, ShuttingDown())
            raise
        except Exception as exc:
            self._batch_failures += 1
            self._fail_all(entries, exc)
            return
        except BaseException:
            self._fail_all(entries, ShuttingDown())
            raise
        try:
            results = list(results)
        except Exception as exc:
            self._batch_failures += 1
            self._fail_all(entries, exc)
            return
        if len(results) != len(entries):
            self._batch_failures += 1
            self._fail_all(
                entries,
                BackendProtocolError(
                    f"batch {batch.batch_id}: send returned {len(results)} results for {len(entries)} items"
                ),
            )
            return
        for entry, wait_s, result in zip(entries, batch.waits_s, results):
            if entry.future.done():  # its caller was cancelled
                continue
            if isinstance(result, BaseException):
                self._item_failures += 1
                entry.future.set_exception(result)
            else:
                entry.future.set_result(
                    BatchItemResult(value=result, batch_size=batch.size, wait_s=wait_s, batch_id=batch.batch_id)
                )

    def _fail_all(self, entries: list[_Pending[T]], exc: BaseException) -> None:
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(exc)

    async def aclose(self, *, flush: bool = True) -> None:
        """Stop taking items; send what is pending (``flush``) or fail it
        with ``ShuttingDown``; wait for every batch in flight. If this wait is
        cancelled, the batches in flight are cancelled (their callers get
        ``ShuttingDown``) and awaited, so no task outlives the batcher."""
        self._closed = True
        self._disarm()
        if flush:
            self._reconsider()
        else:
            while self._pending:
                entry = self._pending.popleft()
                if not entry.future.done():
                    entry.future.set_exception(ShuttingDown())
        tasks = set(self._tasks)
        if not tasks:
            return
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise
        finally:
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved; already given to the callers

    def stats(self) -> BatcherStats:
        return BatcherStats(
            name=self.name,
            batches=self._batches,
            items=self._items,
            first_wait_sum_s=self._first_wait_sum,
            batch_failures=self._batch_failures,
            item_failures=self._item_failures,
            withdrawn=self._withdrawn,
            flush_reasons=dict(self._reasons),
            pending=len(self._pending),
            in_flight=len(self._tasks),
        )

    def __repr__(self) -> str:
        mean = self._items / self._batches if self._batches else 0.0
        state = " closed" if self._closed else ""
        return (
            f"<Batcher {self.name or '?'}{state} [pending {len(self._pending)}/{self._policy.max_batch_size}"
            f" | in-flight {len(self._tasks)} | batches {self._batches}, mean size {mean:.2f}"
            f" | window {self._policy.window_s * 1000:g}ms]>"
        )


class BatcherGroup(Generic[T, R]):
    """One batcher per key, made on first use by ``make(key)`` and dropped
    once it holds nothing, so keys with free-form parts (the seed key's
    domain) do not pile up. ``stats()`` keeps the counts of dropped
    batchers, summed by batcher name."""

    def __init__(self, make: Callable[[Hashable], Batcher[T, R]], *, name: str = "") -> None:
        self._make = make
        self.name = name
        self._batchers: dict[Hashable, Batcher[T, R]] = {}
        self._retired: dict[str, BatcherStats] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._batchers)

    def get(self, key: Hashable) -> Batcher[T, R]:
        if self._closed:
            raise ShuttingDown()
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._make(key)
            batcher.on_empty = lambda b, key=key: self._drop(key, b)
            self._batchers[key] = batcher
        return batcher

    async def submit(
        self, key: Hashable, item: T, *, tag: Any = None, deadline_s: float | None = None
    ) -> BatchItemResult[R]:
        # get() and the batcher's enqueue run without a suspension point in
        # between, so a batcher is never dropped under a caller's feet.
        batcher = self.get(key)
        try:
            return await batcher.submit(item, tag=tag, deadline_s=deadline_s)
        finally:
            if batcher.empty:  # e.g. refused before it was enqueued
                self._drop(key, batcher)

    def _drop(self, key: Hashable, batcher: Batcher[T, R]) -> None:
        if self._batchers.get(key) is not batcher:
            return
        del self._batchers[key]
        stats = batcher.stats()
        before = self._retired.get(stats.name)
        self._retired[stats.name] = stats if before is None else before + stats

    def stats(self) -> dict[str, BatcherStats]:
        """Per batcher name: live and dropped batchers summed."""
        out = dict(self._retired)
        for batcher in self._batchers.values():
            stats = batcher.stats()
            before = out.get(stats.name)
            out[stats.name] = stats if before is None else before + stats
        return out

    async def aclose(self, *, flush: bool = True) -> None:
        """Close every batcher (see ``Batcher.aclose``)."""
        self._closed = True
        batchers = list(self._batchers.values())
        if batchers:
            await asyncio.gather(*(b.aclose(flush=flush) for b in batchers))

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        pending = sum(b.pending for b in self._batchers.values())
        in_flight = sum(b.in_flight for b in self._batchers.values())
        return (
            f"<BatcherGroup {self.name or '?'}{state} [batchers {len(self._batchers)}"
            f" | pending {pending} | in-flight {in_flight}]>"
        )


@dataclass(frozen=True, slots=True)
class FlightResult(Generic[R]):
    """A shared call's value, whether this caller started it, and how many
    callers shared it (when it finished; ``split_cost(cost, sharers)``)."""

    value: R
    leader: bool
    sharers: int


@dataclass(frozen=True, slots=True)
class SingleFlightStats:
    name: str
    calls: int  # calls actually made
    coalesced: int  # callers that joined a call already in flight
    in_flight: int


class _Flight:
    __slots__ = ("sharers", "task", "waiters")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.waiters = 0  # callers still awaiting it
        self.sharers = 1  # callers that ever joined it


class SingleFlight(Generic[K, R]):
    """Identical in-flight calls share one call.

    The first caller of a key starts ``coro_factory()`` as its own task;
    callers of the same key while it runs await that same task. A caller
    cancelling leaves the call running for the others; when the last caller
    has gone, the call is cancelled (nobody wants its answer, and it holds a
    gate permit). Its error is raised in every caller. The key is forgotten
    when the call finishes, so later calls start afresh: this shares work,
    it does not cache.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._flights: dict[K, _Flight] = {}
        self._closed = False
        self._calls = 0
        self._coalesced = 0

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def run(self, key: K, coro_factory: Callable[[], Awaitable[R]]) -> R:
        return (await self.run_detailed(key, coro_factory)).value

    async def run_detailed(self, key: K, coro_factory: Callable[[], Awaitable[R]]) -> FlightResult[R]:
        if self._closed:
            raise ShuttingDown()
        flight = self._flights.get(key)
        leader = flight is None or flight.task.done()
        if leader:
            task = asyncio.ensure_future(coro_factory())
            flight = _Flight(task)
            self._flights[key] = flight
            self._calls += 1
            task.add_done_callback(lambda t, key=key, flight=flight: self._done(key, flight, t))
        else:
            assert flight is not None
            flight.sharers += 1
            self._coalesced += 1
        flight.waiters += 1
        try:
            value = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if flight.task.cancelled() and not (current is not None and current.cancelling()):
                # The shared call was cancelled (aclose), not this caller.
                raise ShuttingDown() from None
            raise
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()
                self._forget(key, flight)
        return FlightResult(value=value, leader=leader, sharers=flight.sharers)

    def _forget(self, key: K, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _done(self, key: K, flight: _Flight, task: asyncio.Task) -> None:
        self._forget(key, flight)
        if not task.cancelled():
            task.exception()  # retrieved: the callers got it (or nobody wanted it)

    async def aclose(self) -> None:
        """Refuse new calls and wait for the calls in flight; if this wait is
        cancelled, cancel them (their callers get ``ShuttingDown``)."""
        self._closed = True
        tasks = {f.task for f in self._flights.values()}
        if not tasks:
            return
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise

    def stats(self) -> SingleFlightStats:
        return SingleFlightStats(
            name=self.name, calls=self._calls, coalesced=self._coalesced, in_flight=len(self._flights)
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<SingleFlight {self.name or '?'}{state} [in-flight {len(self._flights)}"
            f" | calls {self._calls}, coalesced {self._coalesced}]>"
        )
