"""router.runtime.batcher: micro-batches and single flight on a real event
loop. No wall-clock durations are asserted: counts, ordering, which caller
got which result; waits are measured on an injected clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

# The repository root, so ``router`` imports without an installed package.
from router.core.batching import FlushReason
from router.core.errors import (
    BackendConnectionError,
    BackendProtocolError,
    BackendStatusError,
    DeadlineExceeded,
    ShuttingDown,
)
from router.runtime.batcher import Batch, Batcher, BatcherGroup, BatchItemResult, SingleFlight

NEVER = 3600.0  # a window that never closes within a test
GUARD_S = 10.0  # a hung test fails instead of hanging


class ManualClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Backend:
    """A recording ``send``: answers item*10 unless told otherwise; can be
    held until released."""

    def __init__(self, *, hold: bool = False, fail_items: set[Any] = frozenset(), raise_exc: Exception | None = None):
        self.batches: list[Batch[Any]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.entered = asyncio.Event()
        self.fail_items = fail_items
        self.raise_exc = raise_exc
        self.cancelled = 0
        self.finished = 0

    async def __call__(self, batch: Batch[Any]) -> list[Any]:
        self.batches.append(batch)
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.raise_exc is not None:
            raise self.raise_exc
        return [BackendStatusError(500, f"item {i}") if i in self.fail_items else i * 10 for i in batch.items]

    @property
    def sizes(self) -> list[int]:
        return [b.size for b in self.batches]

    @property
    def reasons(self) -> list[FlushReason]:
        return [b.reason for b in self.batches]


def busy() -> bool:
    return False


def assert_no_other_tasks() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_submits_become_fewer_sends_each_caller_gets_its_own_answer():
    backend = Backend()
    batcher = Batcher(backend, window_s=0.005, max_batch_size=4, is_idle=busy, name="kimiK2/flash")
    async with asyncio.timeout(GUARD_S):
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert [r.value for r in results] == [i * 10 for i in range(10)]
    assert backend.sizes == [4, 4, 2]
    assert backend.reasons == [FlushReason.FULL, FlushReason.FULL, FlushReason.WINDOW]
    assert [r.batch_size for r in results] == [4] * 8 + [2] * 2
    assert [r.batch_id for r in results] == ["kimiK2/flash#1"] * 4 + ["kimiK2/flash#2"] * 4 + ["kimiK2/flash#3"] * 2
    stats = batcher.stats()
    assert (stats.batches, stats.items, stats.mean_batch_size) == (3, 10, pytest.approx(10 / 3))
    assert stats.flush_reasons == {"full": 2, "window": 1}
    await batcher.aclose()
    assert_no_other_tasks()


async def test_max_size_flushes_before_the_window():
    backend = Backend()
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=3, is_idle=busy)
    async with asyncio.timeout(GUARD_S):
        results = await asyncio.gather(*(batcher.submit(i, tag=f"span-{i}") for i in range(3)))
    assert backend.sizes == [3]
    assert backend.reasons == [FlushReason.FULL]
    assert backend.batches[0].items == (0, 1, 2)
    assert backend.batches[0].tags == ("span-0", "span-1", "span-2")
    assert {r.batch_size for r in results} == {3}
    await batcher.aclose()
    assert_no_other_tasks()


async def test_window_flush_and_waits_measured_on_the_injected_clock():
    clock = ManualClock(1000.0)
    backend = Backend()
    batcher = Batcher(backend, window_s=0.01, max_batch_size=100, clock=clock, is_idle=busy)
    first = asyncio.create_task(batcher.submit("a"))
    await settle()
    clock.t = 1000.004
    second = asyncio.create_task(batcher.submit("b"))
    await settle()
    assert backend.batches == []  # the window is still open
    assert batcher.pending == 2
    clock.t = 1000.02  # the window opened by "a" has closed; the timer fires on its own
    async with asyncio.timeout(GUARD_S):
        ra, rb = await asyncio.gather(first, second)
    assert backend.sizes == [2]
    assert backend.reasons == [FlushReason.WINDOW]
    assert ra.wait_s == pytest.approx(0.02)
    assert rb.wait_s == pytest.approx(0.016)
    assert backend.batches[0].waits_s == (ra.wait_s, rb.wait_s)
    assert backend.batches[0].first_wait_s == ra.wait_s
    assert batcher.stats().mean_first_wait_s == pytest.approx(0.02)
    await batcher.aclose()
    assert_no_other_tasks()


async def test_idle_skill_sends_at_once_as_a_batch_of_one():
    clock = ManualClock()
    backend = Backend()
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=8, clock=clock, is_idle=lambda: True)
    async with asyncio.timeout(GUARD_S):
        result = await batcher.submit("q")
    assert result == BatchItemResult(value="q" * 10, batch_size=1, wait_s=0.0, batch_id="1")
    assert backend.reasons == [FlushReason.IDLE]
    await batcher.aclose()
    assert_no_other_tasks()


async def test_items_arriving_while_a_batch_is_in_flight_go_out_when_it_finishes():
    """Without an is_idle hook only the batcher's own batches count as load:
    the first item goes at once, the next ones gather while it runs and are
    sent the moment it finishes, not when the (long) window closes."""
    backend = Backend(hold=True)
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=8)
    async with asyncio.timeout(GUARD_S):
        first = asyncio.create_task(batcher.submit(1))
        await backend.entered.wait()
        later = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
        await settle()
        assert backend.sizes == [1]
        assert batcher.pending == 2
        backend.release.set()
        results = await asyncio.gather(first, *later)
    assert [r.value for r in results] == [10, 20, 30]
    assert backend.sizes == [1, 2]
    assert backend.reasons == [FlushReason.IDLE, FlushReason.IDLE]
    await batcher.aclose()
    assert_no_other_tasks()


async def test_deadline_budget_shortens_the_wait():
    backend = Backend()
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=8, is_idle=busy, expected_latency_s=0.5)
    async with asyncio.timeout(GUARD_S):
        no_deadline = asyncio.create_task(batcher.submit(1))
        await settle()
        # 0.52 s left, 0.5 s expected latency: it must be sent within 0.02 s,
        # and takes the earlier item with it.
        tight = asyncio.create_task(batcher.submit(2, deadline_s=0.52))
        results = await asyncio.gather(no_deadline, tight)
    assert [r.value for r in results] == [10, 20]
    assert backend.sizes == [2]
    assert backend.reasons == [FlushReason.DEADLINE]
    batch = backend.batches[0]
    assert batch.deadline_at is not None
    assert batch.deadline_at - batch.flushed_at <= 0.52
    await batcher.aclose()
    assert_no_other_tasks()


async def test_a_deadline_already_passed_is_refused():
    batcher = Batcher(Backend(), window_s=NEVER, max_batch_size=8)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(1, deadline_s=0.0)
    assert batcher.pending == 0
    await batcher.aclose()


async def test_a_failing_item_fails_only_its_caller():
    backend = Backend(fail_items={2})
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=3, is_idle=busy)
    async with asyncio.timeout(GUARD_S):
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert backend.sizes == [3]
    assert results[0].value == 10
    assert isinstance(results[1], BackendStatusError) and "item 2" in str(results[1])
    assert results[2].value == 30
    stats = batcher.stats()
    assert (stats.item_failures, stats.batch_failures) == (1, 0)
    await batcher.aclose()
    assert_no_other_tasks()


async def test_a_failing_send_fails_every_item_of_the_batch():
    error = BackendConnectionError("refused")
    backend = Backend(raise_exc=error)
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=3, is_idle=busy)
    async with asyncio.timeout(GUARD_S):
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert results == [error, error, error]
    assert batcher.stats().batch_failures == 1
    # The batcher goes on after a failed batch.
    backend.raise_exc = None
    async with asyncio.timeout(GUARD_S):
        again = await asyncio.gather(*(batcher.submit(i) for i in (4, 5, 6)))
    assert [r.value for r in again] == [40, 50, 60]
    await batcher.aclose()
    assert_no_other_tasks()


async def test_a_send_answering_the_wrong_number_of_results_fails_the_batch():
    async def short(batch: Batch[int]) -> list[int]:
        return [1]

    batcher = Batcher(short, window_s=NEVER, max_batch_size=2, is_idle=busy)
    async with asyncio.timeout(GUARD_S):
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, BackendProtocolError) for r in results)
    await batcher.aclose()
    assert_no_other_tasks()


async def test_a_cancelled_caller_does_not_cancel_the_batch_for_the_others():
    backend = Backend(hold=True)
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=3, is_idle=busy)
    async with asyncio.timeout(GUARD_S):
        callers = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
        await backend.entered.wait()
        callers[1].cancel()
        await settle()
        assert callers[1].cancelled()
        backend.release.set()
        r1, r3 = await asyncio.gather(callers[0], callers[2])
    assert (r1.value, r3.value) == (10, 30)
    assert backend.sizes == [3]  # the cancelled caller's item was already sent
    assert (backend.cancelled, backend.finished) == (0, 1)
    await batcher.aclose()
    assert_no_other_tasks()


async def test_a_cancelled_caller_still_pending_is_taken_out_of_the_batch():
    backend = Backend()
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=3, is_idle=busy)
    async with asyncio.timeout(GUARD_S):
        a = asyncio.create_task(batcher.submit(1))
        b = asyncio.create_task(batcher.submit(2))
        await settle()
        b.cancel()
        await settle()
        assert batcher.pending == 1
        c = asyncio.create_task(batcher.submit(3))
        d = asyncio.create_task(batcher.submit(4))
        results = await asyncio.gather(a, c, d)
    assert [r.value for r in results] == [10, 30, 40]
    assert [b.items for b in backend.batches] == [(1, 3, 4)]
    assert batcher.stats().withdrawn == 1
    await batcher.aclose()
    assert_no_other_tasks()


async def test_the_last_pending_caller_cancelling_disarms_the_timer():
    backend = Backend()
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=3, is_idle=busy)
    task = asyncio.create_task(batcher.submit(1))
    await settle()
    task.cancel()
    await settle()
    assert batcher.pending == 0
    assert batcher._timer is None
    await batcher.aclose()
    assert backend.batches == []
    assert_no_other_tasks()


async def test_a_raising_is_idle_counts_as_busy():
    def broken() -> bool:
        raise RuntimeError("gate gone")

    backend = Backend()
    batcher = Batcher(backend, window_s=0.001, max_batch_size=8, is_idle=broken)
    async with asyncio.timeout(GUARD_S):
        result = await batcher.submit(7)
    assert result.value == 70
    assert backend.reasons == [FlushReason.WINDOW]
    await batcher.aclose()


async def test_aclose_flushes_what_is_pending_and_leaves_no_task():
    backend = Backend()
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=2, is_idle=busy)
    callers = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
    await settle()
    assert backend.sizes == [2] and batcher.pending == 1
    async with asyncio.timeout(GUARD_S):
        await batcher.aclose()
        results = await asyncio.gather(*callers)
    assert [r.value for r in results] == [10, 20, 30]
    assert backend.reasons == [FlushReason.FULL, FlushReason.CLOSING]
    with pytest.raises(ShuttingDown):
        await batcher.submit(4)
    assert "closed" in repr(batcher)
    assert_no_other_tasks()


async def test_aclose_without_flush_fails_what_is_pending():
    backend = Backend()
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=8, is_idle=busy)
    callers = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await settle()
    async with asyncio.timeout(GUARD_S):
        await batcher.aclose(flush=False)
        results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ShuttingDown) for r in results)
    assert backend.batches == []
    assert_no_other_tasks()


async def test_a_cancelled_aclose_cancels_the_batches_in_flight():
    backend = Backend(hold=True)
    batcher = Batcher(backend, window_s=NEVER, max_batch_size=2, is_idle=busy)
    callers = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    async with asyncio.timeout(GUARD_S):
        await backend.entered.wait()
        closing = asyncio.create_task(batcher.aclose())
        await settle()
        assert not closing.done()  # waits for the batch in flight
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ShuttingDown) for r in results)
    assert backend.cancelled == 1
    assert_no_other_tasks()


async def test_repr_shows_live_state():
    backend = Backend(hold=True)
    batcher = Batcher(backend, window_s=0.05, max_batch_size=4, name="kimiK2/flash")
    first = asyncio.create_task(batcher.submit(1))
    await backend.entered.wait()
    second = asyncio.create_task(batcher.submit(2))
    await settle()
    assert repr(batcher) == (
        "<Batcher kimiK2/flash [pending 1/4 | in-flight 1 | batches 1, mean size 1.00 | window 50ms]>"
    )
    stats = batcher.stats()
    assert (stats.pending, stats.in_flight) == (1, 1)
    backend.release.set()
    async with asyncio.timeout(GUARD_S):
        await asyncio.gather(first, second)
        await batcher.aclose()
    assert_no_other_tasks()


async def test_batcher_group_makes_one_batcher_per_key_and_drops_empty_ones():
    backend = Backend(hold=True)
    made: list[tuple] = []

    def make(key: tuple) -> Batcher[int, int]:
        made.append(key)
        return Batcher(backend, window_s=NEVER, max_batch_size=2, is_idle=busy, name=f"{key[0]}/{key[1]}")

    group: BatcherGroup[int, int] = BatcherGroup(make, name="pipeline")
    legal = ("kimiK2", "flash", "legal")
    math_ = ("kimiK2", "flash", "math")
    async with asyncio.timeout(GUARD_S):
        callers = [
            asyncio.create_task(group.submit(legal, 1)),
            asyncio.create_task(group.submit(math_, 2)),
            asyncio.create_task(group.submit(legal, 3)),
            asyncio.create_task(group.submit(math_, 4)),
        ]
        await backend.entered.wait()
        await settle()
        assert made == [legal, math_]
        assert len(group) == 2
        assert repr(group) == "<BatcherGroup pipeline [batchers 2 | pending 0 | in-flight 2]>"
        backend.release.set()
        results = await asyncio.gather(*callers)
        await settle()
    assert [r.value for r in results] == [10, 20, 30, 40]
    assert sorted(b.items for b in backend.batches) == [(1, 3), (2, 4)]
    assert len(group) == 0  # both batchers held nothing any more and were dropped
    stats = group.stats()["kimiK2/flash"]
    assert (stats.batches, stats.items, stats.mean_batch_size, stats.in_flight) == (2, 4, 2.0, 0)
    # A new item for a dropped key gets a fresh batcher.
    backend.release.set()
    async with asyncio.timeout(GUARD_S):
        await asyncio.gather(group.submit(legal, 5), group.submit(legal, 6))
        await settle()
    assert made == [legal, math_, legal]
    assert group.stats()["kimiK2/flash"].batches == 3
    with pytest.raises(DeadlineExceeded):
        await group.submit(math_, 8, deadline_s=0.0)
    assert len(group) == 0  # refused at once: no batcher left behind
    await group.aclose()
    with pytest.raises(ShuttingDown):
        await group.submit(legal, 7)
    assert_no_other_tasks()


async def test_batcher_group_aclose_flushes_every_batcher():
    backend = Backend()
    group: BatcherGroup[int, int] = BatcherGroup(
        lambda key: Batcher(backend, window_s=NEVER, max_batch_size=8, is_idle=busy, name=str(key))
    )
    callers = [asyncio.create_task(group.submit(k, k)) for k in ("a", "b")]
    await settle()
    assert backend.batches == []
    async with asyncio.timeout(GUARD_S):
        await group.aclose()
        results = await asyncio.gather(*callers)
    assert [r.value for r in results] == ["a" * 10, "b" * 10]
    assert backend.reasons == [FlushReason.CLOSING, FlushReason.CLOSING]
    assert_no_other_tasks()


# --- single flight ---------------------------------------------------------------


class Call:
    """A held backend call that counts how often it really ran."""

    def __init__(self, value: Any = "answer", error: Exception | None = None) -> None:
        self.value = value
        self.error = error
        self.started = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def run(self) -> Any:
        self.started += 1
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return self.value


async def test_single_flight_coalesces_identical_calls():
    flights: SingleFlight[tuple, str] = SingleFlight("flash")
    call = Call()
    other = Call("other answer")
    key = ("flash", "what is 2+2", "math")
    async with asyncio.timeout(GUARD_S):
        joiners = [asyncio.create_task(flights.run_detailed(key, call.run)) for _ in range(5)]
        different = asyncio.create_task(flights.run(("flash", "another query", "math"), other.run))
        await call.entered.wait()
        await settle()
        assert flights.in_flight == 2
        call.release.set()
        other.release.set()
        results = await asyncio.gather(*joiners)
        assert await different == "other answer"
    assert call.started == 1 and other.started == 1
    assert [r.value for r in results] == ["answer"] * 5
    assert [r.leader for r in results] == [True, False, False, False, False]
    assert {r.sharers for r in results} == {5}
    stats = flights.stats()
    assert (stats.calls, stats.coalesced, stats.in_flight) == (2, 4, 0)
    assert repr(flights) == "<SingleFlight flash [in-flight 0 | calls 2, coalesced 4]>"
    # The key is forgotten once the call finished: the next call runs again.
    again = Call("fresh")
    again.release.set()
    assert await flights.run(key, again.run) == "fresh"
    assert again.started == 1
    assert_no_other_tasks()


async def test_single_flight_a_cancelled_caller_does_not_cancel_the_call_for_the_others():
    flights: SingleFlight[str, str] = SingleFlight()
    call = Call()
    async with asyncio.timeout(GUARD_S):
        leader = asyncio.create_task(flights.run("k", call.run))
        await call.entered.wait()
        joiner = asyncio.create_task(flights.run("k", call.run))
        await settle()
        leader.cancel()
        await settle()
        assert leader.cancelled()
        assert call.cancelled == 0
        call.release.set()
        assert await joiner == "answer"
    assert call.started == 1
    assert_no_other_tasks()


async def test_single_flight_cancels_the_call_when_every_caller_has_gone():
    flights: SingleFlight[str, str] = SingleFlight()
    call = Call()
    async with asyncio.timeout(GUARD_S):
        callers = [asyncio.create_task(flights.run("k", call.run)) for _ in range(2)]
        await call.entered.wait()
        for task in callers:
            task.cancel()
        await settle()
    assert all(t.cancelled() for t in callers)
    assert call.cancelled == 1
    assert flights.in_flight == 0
    assert_no_other_tasks()


async def test_single_flight_errors_reach_every_joiner():
    flights: SingleFlight[str, str] = SingleFlight()
    error = BackendStatusError(503, "overloaded")
    call = Call(error=error)
    async with asyncio.timeout(GUARD_S):
        callers = [asyncio.create_task(flights.run("k", call.run)) for _ in range(3)]
        await call.entered.wait()
        call.release.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
    assert results == [error, error, error]
    assert call.started == 1
    assert flights.in_flight == 0
    assert_no_other_tasks()


async def test_single_flight_aclose_waits_then_refuses():
    flights: SingleFlight[str, str] = SingleFlight()
    call = Call()
    async with asyncio.timeout(GUARD_S):
        caller = asyncio.create_task(flights.run("k", call.run))
        await call.entered.wait()
        closing = asyncio.create_task(flights.aclose())
        await settle()
        assert not closing.done()
        call.release.set()
        await closing
        assert await caller == "answer"
    with pytest.raises(ShuttingDown):
        await flights.run("k", call.run)
    assert "closed" in repr(flights)
    assert_no_other_tasks()


async def test_single_flight_a_cancelled_aclose_fails_the_callers_with_shutting_down():
    flights: SingleFlight[str, str] = SingleFlight()
    call = Call()
    async with asyncio.timeout(GUARD_S):
        callers = [asyncio.create_task(flights.run("k", call.run)) for _ in range(2)]
        await call.entered.wait()
        closing = asyncio.create_task(flights.aclose())
        await settle()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ShuttingDown) for r in results)
    assert call.cancelled == 1
    assert_no_other_tasks()
