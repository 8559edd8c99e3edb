"""The asyncio gate. Time is a manual clock whose timers fire only when a
test advances it: nothing sleeps, nothing asserts a wall-clock duration."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.core.breaker import BreakerConfig, CircuitBreaker
from router.core.errors import BackendConnectionError, BackendStatusError, BackendTimeout, Overloaded
from router.core.limits import AIMDLimit
from router.core.retry import RetryBudget, RetryPolicy
from router.core.types import Priority
from router.runtime.gate import Gate, GateRejected, RejectReason
from router.runtime.retry import call_with_retries

LOW, NORMAL, HIGH = Priority.LOW, Priority.NORMAL, Priority.HIGH


class _Timer:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualTime:
    """A clock and a ``call_later`` that only move when told to."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _Timer:
        t = _Timer(self.now + delay, callback, args)
        heapq.heappush(self._heap, (t.when, next(self._seq), t))
        return t

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while self._heap and self._heap[0][0] <= end:
            when, _, t = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            if not t.cancelled:
                t.callback(*t.args)
        self.now = end

    @property
    def armed(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_gate(time: ManualTime, limit: int = 1, depth: int = 10, timeout: float = 2.0, **kw: Any) -> Gate:
    return Gate("kimiK2", limit, depth, timeout, clock=time.clock, call_later=time.call_later, **kw)


class Holder:
    """A task that takes a slot and keeps it until ``finish()``."""

    def __init__(self, gate: Gate, priority: Priority = NORMAL, timeout_s: float | None = None,
                 log: list | None = None, label: str = "") -> None:
        self.release = asyncio.Event()
        self.entered = False
        self.error: BaseException | None = None
        self.queue_wait_s: float | None = None
        self.fail_with: BaseException | None = None
        self._log = log
        self._label = label
        self.task = asyncio.create_task(self._run(gate, priority, timeout_s))

    async def _run(self, gate: Gate, priority: Priority, timeout_s: float | None) -> None:
        try:
            async with gate.acquire(priority, timeout_s=timeout_s) as permit:
                self.entered = True
                self.queue_wait_s = permit.queue_wait_s
                if self._log is not None:
                    self._log.append(self._label)
                await self.release.wait()
                if self.fail_with is not None:
                    raise self.fail_with
        except GateRejected as e:
            self.error = e

    def finish(self) -> None:
        self.release.set()


@pytest.fixture
def time() -> ManualTime:
    return ManualTime()


async def test_free_slot_is_granted_at_once_and_released_after(time: ManualTime) -> None:
    gate = make_gate(time, limit=2)
    async with gate.acquire(NORMAL, timeout_s=1.0) as permit:
        assert permit.queue_wait_s == 0.0
        assert gate.in_flight == 1
        assert repr(gate) == "<Gate kimiK2 [in-flight 1/2 | queued 0]>"
    assert gate.in_flight == 0 and permit.released
    s = gate.stats()
    assert (s.admitted, s.released) == (1, 1)


async def test_priority_order_and_fifo_within_a_priority(time: ManualTime) -> None:
    gate = make_gate(time, limit=1)
    log: list[str] = []
    first = Holder(gate, log=log, label="first")
    await settle()
    holders = []
    for p, label in [(LOW, "l1"), (NORMAL, "n1"), (HIGH, "h1"), (LOW, "l2"), (NORMAL, "n2"), (HIGH, "h2")]:
        holders.append(Holder(gate, p, log=log, label=label))
        await settle()
    assert gate.queued == 6
    assert repr(gate) == "<Gate kimiK2 [in-flight 1/1 | queued 6]>"
    assert dict(gate.stats().queued_by_priority) == {LOW: 2, NORMAL: 2, HIGH: 2}
    current = first
    for _ in holders:
        time.advance(0.1)
        current.finish()
        await settle()
        current = next(h for h in holders if h.entered and not h.release.is_set())
    current.finish()
    await asyncio.gather(first.task, *(h.task for h in holders))
    assert log == ["first", "h1", "h2", "n1", "n2", "l1", "l2"]
    assert gate.in_flight == 0 and gate.queued == 0
    assert gate.stats().mean_queue_wait_s > 0


async def test_queue_full_raises_gate_rejected(time: ManualTime) -> None:
    gate = make_gate(time, limit=1, depth=1)
    a, b = Holder(gate), Holder(gate)
    await settle()
    with pytest.raises(GateRejected) as info:
        async with gate.acquire(NORMAL):
            pytest.fail("must not be admitted")
    err = info.value
    assert isinstance(err, Overloaded)
    assert err.reason is RejectReason.QUEUE_FULL and err.gate == "kimiK2"
    assert err.retry_after_s > 0
    assert gate.stats().rejected == 1
    a.finish()
    await settle()
    b.finish()
    await asyncio.gather(a.task, b.task)
    assert gate.in_flight == 0


async def test_higher_priority_displaces_the_lowest_from_a_full_queue(time: ManualTime) -> None:
    gate = make_gate(time, limit=1, depth=1)
    holder, low = Holder(gate), Holder(gate, LOW)
    await settle()
    high = Holder(gate, HIGH)
    await settle()
    assert low.task.done() and low.error is not None and low.error.reason is RejectReason.DISPLACED
    assert gate.queued == 1 and time.armed == 1  # the displaced waiter's timer is gone
    holder.finish()
    await settle()
    assert high.entered
    high.finish()
    await asyncio.gather(holder.task, high.task)


async def test_queue_timeout(time: ManualTime) -> None:
    gate = make_gate(time, limit=1, timeout=2.0)
    holder, waiter = Holder(gate), Holder(gate, timeout_s=10.0)
    await settle()
    time.advance(1.9)
    await settle()
    assert not waiter.task.done()
    time.advance(0.1)
    await settle()
    assert waiter.error is not None and waiter.error.reason is RejectReason.QUEUE_TIMEOUT
    assert gate.queued == 0
    s = gate.stats()
    assert (s.timed_out, s.deadline_expired) == (1, 0)
    holder.finish()
    await holder.task
    assert gate.in_flight == 0


async def test_deadline_shorter_than_queue_timeout(time: ManualTime) -> None:
    gate = make_gate(time, limit=1, timeout=2.0)
    holder, waiter = Holder(gate), Holder(gate, timeout_s=0.5)
    await settle()
    time.advance(0.4)
    await settle()
    assert not waiter.task.done()
    time.advance(0.1)
    await settle()
    assert waiter.error is not None and waiter.error.reason is RejectReason.DEADLINE
    assert gate.stats().deadline_expired == 1
    holder.finish()
    await holder.task


async def test_no_time_left_is_rejected_at_once(time: ManualTime) -> None:
    gate = make_gate(time, limit=1)
    holder = Holder(gate)
    await settle()
    with pytest.raises(GateRejected) as info:
        async with gate.acquire(NORMAL, timeout_s=0.0):
            pass
    assert info.value.reason is RejectReason.DEADLINE and gate.queued == 0
    holder.finish()
    await holder.task


async def test_a_cancelled_waiter_frees_its_place_at_once(time: ManualTime) -> None:
    gate = make_gate(time, limit=1, depth=1)
    holder, waiter = Holder(gate), Holder(gate)
    await settle()
    assert gate.queued == 1
    waiter.task.cancel()
    await asyncio.sleep(0)  # the cancelled task runs once
    assert gate.queued == 0 and gate.stats().cancelled == 1
    assert time.armed == 0  # its timer was disarmed
    assert waiter.task.cancelled()
    newcomer = Holder(gate)  # the place is free again
    await settle()
    assert newcomer.error is None and gate.queued == 1
    holder.finish()
    await settle()
    newcomer.finish()
    await asyncio.gather(holder.task, newcomer.task)
    assert gate.in_flight == 0 and gate.queued == 0


async def test_cancelled_right_after_its_grant_passes_the_slot_on(time: ManualTime) -> None:
    gate = make_gate(time, limit=1)
    acquisition = gate.acquire(NORMAL)
    await acquisition.__aenter__()
    b, c = Holder(gate), Holder(gate)
    await settle()
    # Release and cancel in the same instant: b is granted, then cancelled
    # before it can run.
    await acquisition.__aexit__(None, None, None)
    b.task.cancel()
    await settle()
    assert b.task.cancelled() and not b.entered
    assert c.entered and gate.in_flight == 1
    s = gate.stats()
    assert (s.admitted, s.released, s.cancelled) == (3, 2, 1)
    c.finish()
    await c.task
    assert gate.in_flight == 0


async def test_cancelled_just_before_its_grant_passes_the_slot_on_synchronously(time: ManualTime) -> None:
    gate = make_gate(time, limit=1)
    acquisition = gate.acquire(NORMAL)
    await acquisition.__aenter__()
    b, c = Holder(gate), Holder(gate)
    await settle()
    b.task.cancel()  # b's wake-up future is cancelled, b has not run yet
    await acquisition.__aexit__(None, None, None)
    # No loop turn yet: the slot already went past b to c.
    assert gate.in_flight == 1 and gate.queued == 0
    await settle()
    assert b.task.cancelled() and c.entered
    c.finish()
    await c.task
    assert gate.in_flight == 0 and gate.stats().released == gate.stats().admitted


async def test_outer_timeout_while_queued_frees_the_place() -> None:
    # The real loop's timers: the caller's own asyncio.timeout cancels the wait.
    gate = Gate("kimiK2", 1, 5, 30.0)
    async with gate.acquire(NORMAL):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.001):
                async with gate.acquire(NORMAL):
                    pytest.fail("must not be admitted")
        assert gate.queued == 0 and gate.stats().cancelled == 1
    assert gate.in_flight == 0


async def test_real_loop_queue_timeout() -> None:
    gate = Gate("kimiK2", 1, 5, 0.001)
    async with gate.acquire(NORMAL):
        with pytest.raises(GateRejected) as info:
            async with gate.acquire(NORMAL):
                pass
    assert info.value.reason is RejectReason.QUEUE_TIMEOUT
    assert gate.in_flight == 0 and gate.queued == 0


async def test_set_limit_grow_and_shrink(time: ManualTime) -> None:
    gate = make_gate(time, limit=1)
    hs = [Holder(gate) for _ in range(4)]
    await settle()
    assert (gate.in_flight, gate.queued) == (1, 3)
    gate.set_limit(3)
    await settle()
    assert [h.entered for h in hs] == [True, True, True, False]
    gate.set_limit(1)
    hs[0].finish()
    await settle()
    assert gate.in_flight == 2 and not hs[3].entered  # still above the new limit
    hs[1].finish()
    await settle()
    assert gate.in_flight == 1 and not hs[3].entered
    hs[2].finish()
    await settle()
    assert hs[3].entered and gate.in_flight == 1
    hs[3].finish()
    await asyncio.gather(*(h.task for h in hs))
    assert gate.in_flight == 0
    with pytest.raises(ValueError):
        gate.set_limit(0)


async def test_can_admit_and_retry_after(time: ManualTime) -> None:
    gate = make_gate(time, limit=1, depth=1, timeout=5.0)
    assert gate.can_admit(NORMAL, 0.1) == (True, "")
    # Learn a service time: hold a slot for 1 s.
    async with gate.acquire(NORMAL):
        time.advance(1.0)
    assert gate.stats().service_time_s == pytest.approx(1.0)
    holder = Holder(gate)
    await settle()
    assert gate.can_admit(NORMAL, 0.5) == (False, RejectReason.EXPECTED_WAIT)
    assert gate.can_admit(NORMAL, 3.0) == (True, "")
    assert gate.expected_wait_s(NORMAL) == pytest.approx(1.0)
    assert gate.retry_after_s() == pytest.approx(1.0)
    waiter = Holder(gate)
    await settle()
    assert gate.can_admit(NORMAL, 3.0) == (False, RejectReason.QUEUE_FULL)
    assert gate.can_admit(HIGH, 3.0) == (True, "")  # it would displace the NORMAL waiter, and wait 1 s
    assert gate.can_admit(HIGH, 0.9) == (False, RejectReason.EXPECTED_WAIT)
    breaker = CircuitBreaker("kimi-k2-instruct", BreakerConfig(consecutive_failures=1, cooldown_s=30.0))
    breaker.on_failure(time.now)
    assert gate.can_admit(HIGH, 30.0, breaker=breaker) == (False, RejectReason.BREAKER_OPEN)
    assert gate.retry_after_s() == pytest.approx(2.0)  # a newcomer queues behind the waiter
    gate.note_shed()
    assert gate.stats().shed == 1
    holder.finish()
    await settle()
    waiter.finish()
    await asyncio.gather(holder.task, waiter.task)


async def test_block_errors_and_cancellation_settle_the_permit(time: ManualTime) -> None:
    gate = make_gate(time, limit=10, limit_algorithm=AIMDLimit(10, min_limit=1, max_limit=20))
    assert gate.limit == 10
    with pytest.raises(RuntimeError):
        async with gate.acquire(NORMAL):
            raise RuntimeError("backend blew up")
    assert gate.in_flight == 0 and gate.limit == 9  # dropped: ×0.9
    async with gate.acquire(NORMAL) as permit:
        permit.dropped()
    assert gate.limit == 8
    h = Holder(gate)
    await settle()
    h.task.cancel()
    await settle()
    assert h.task.cancelled() and gate.in_flight == 0 and gate.limit == 8  # ignored
    s = gate.stats()
    assert s.admitted == s.released == 3


# ---- property: random acquire / cancel / timeout / release histories --------------

ACQUIRE = st.tuples(st.just("acquire"), st.sampled_from(list(Priority)), st.sampled_from([None, 0.0, 0.3, 3.0]))
STEPS = st.lists(
    st.one_of(
        ACQUIRE,
        ACQUIRE,
        ACQUIRE,
        st.tuples(st.just("finish"), st.integers(0, 40), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 40)),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        st.tuples(st.just("set_limit"), st.integers(1, 4)),
        st.tuples(st.just("take"), st.just(0)),  # the test itself takes a free slot
        st.tuples(st.just("race"), st.integers(0, 40)),  # it releases one and cancels a waiter, no loop turn between
    ),
    min_size=10,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.integers(1, 2), depth=st.integers(0, 4), steps=STEPS)
def test_random_histories_never_exceed_the_limit_and_release_every_permit(limit: int, depth: int, steps: list) -> None:
    asyncio.run(_history(limit, depth, steps))


async def _history(limit: int, depth: int, steps: list) -> None:
    time = ManualTime()
    gate = make_gate(time, limit=limit, depth=depth, timeout=1.0)
    inside = 0
    exits = 0
    holders: list[Holder] = []
    mine: list = []  # slots the test holds itself

    class Counting(Holder):
        async def _run(self, gate: Gate, priority: Priority, timeout_s: float | None) -> None:
            nonlocal inside, exits
            try:
                async with gate.acquire(priority, timeout_s=timeout_s):
                    inside += 1
                    self.entered = True
                    try:
                        await self.release.wait()
                        if self.fail_with is not None:
                            raise self.fail_with
                    finally:
                        inside -= 1
                        exits += 1
            except (GateRejected, ValueError):
                pass

    def pick(i: int) -> Holder | None:
        live = [h for h in holders if not h.task.done()]
        return live[i % len(live)] if live else None

    for step in steps:
        in_flight_before = gate.in_flight
        kind = step[0]
        if kind == "acquire":
            holders.append(Counting(gate, step[1], step[2]))
        elif kind == "finish":
            h = pick(step[1])
            if h is not None:
                if step[2]:
                    h.fail_with = ValueError("backend failed")
                h.finish()
        elif kind == "cancel":
            h = pick(step[1])
            if h is not None:
                h.task.cancel()
        elif kind == "advance":
            time.advance(step[1])
        elif kind == "set_limit":
            gate.set_limit(step[1])
        elif kind == "take":
            if gate.in_flight < gate.limit and not gate.queued:  # never wait in the test itself
                acquisition = gate.acquire(HIGH)
                await acquisition.__aenter__()
                mine.append(acquisition)
        elif mine:  # race: a release and a cancellation in the same instant
            waiting = [h for h in holders if not h.task.done() and not h.entered]
            await mine.pop().__aexit__(None, None, None)  # does not yield to the loop
            if waiting:
                waiting[step[1] % len(waiting)].task.cancel()
        # A grant never takes the gate above its limit (it may stay above
        # a limit that just shrank).
        assert gate.in_flight <= max(in_flight_before, gate.limit)
        await settle()
        assert gate.in_flight <= max(in_flight_before, gate.limit)
        assert inside <= gate.in_flight
        assert not (gate.queued and gate.in_flight < gate.limit)  # nobody waits beside a free slot
        assert gate.queued <= depth

    for acquisition in mine:
        await acquisition.__aexit__(None, None, None)
    for h in holders:
        h.finish()
    time.advance(10.0)
    await asyncio.gather(*(h.task for h in holders), return_exceptions=True)
    s = gate.stats()
    assert gate.in_flight == 0 and gate.queued == 0 and inside == 0
    assert s.admitted == s.released  # every permit released, and only once
    assert exits == sum(1 for h in holders if h.entered)
    assert time.armed == 0  # no timer left behind


# ---- the retry loop ------------------------------------------------------------------

class _Flaky:
    """Fails with the given errors, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[int] = []

    async def __call__(self, n: int) -> str:
        self.calls.append(n)
        if self.errors:
            raise self.errors.pop(0)
        return f"answer after {n}"


class _FixedRng(random.Random):
    def random(self) -> float:
        return 0.0  # no jitter: the full capped delay


async def test_retries_retryable_errors_with_backoff(time: ManualTime) -> None:
    slept: list[float] = []
    retried: list[tuple[int, str]] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        time.advance(s)

    flaky = _Flaky(BackendConnectionError("refused"), BackendStatusError(503, "busy"))
    budget = RetryBudget(0.5, ttl_s=10.0, min_retries_per_s=1.0)
    result = await call_with_retries(
        flaky, policy=RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=1.0), rng=_FixedRng(),
        clock=time.clock, deadline_at=10.0, budget=budget, sleep=sleep,
        on_retry=lambda n, err, d: retried.append((n, d.reason)),
    )
    assert result.ok and result.value == "answer after 3" and result.attempts == 3 and result.reason == ""
    assert slept == [pytest.approx(0.1), pytest.approx(0.2)]
    assert retried == [(1, "backoff"), (2, "backoff")]
    assert budget.available(time.now) == pytest.approx(10.0 + 0.5 - 2)  # one request recorded, two retries spent


@pytest.mark.parametrize(
    ("errors", "deadline_at", "attempts", "why"),
    [
        ((BackendTimeout("slow"),), None, 1, "not retryable"),
        ((BackendStatusError(404, "gone"),), None, 1, "not retryable"),
        ((BackendConnectionError("a"),) * 5, None, 3, "3 of 3"),
        ((BackendStatusError(429, "later", retry_after_s=2.0),), 1.0, 1, "deadline"),
    ],
)
async def test_gives_up(time: ManualTime, errors, deadline_at, attempts, why) -> None:
    async def sleep(s: float) -> None:
        time.advance(s)

    result = await call_with_retries(_Flaky(*errors), policy=RetryPolicy(max_attempts=3), rng=_FixedRng(),
                                     clock=time.clock, deadline_at=deadline_at, sleep=sleep)
    assert not result.ok and result.value is None and result.attempts == attempts
    assert isinstance(result.error, type(errors[0])) and why in result.reason


async def test_cancellation_is_not_retried(time: ManualTime) -> None:
    flaky = _Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(flaky, policy=RetryPolicy(), rng=_FixedRng(), clock=time.clock)
    assert flaky.calls == [1]
