"""The pure admission core: the gate's state, the breaker, the limits, the
retry policy. Time is a number passed in; no event loop, no sleeps."""

from __future__ import annotations

import ast
import pathlib
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.admission import (
    AdmissionState,
    GateRejected,
    Outcome,
    RejectReason,
    Ticket,
    TicketState,
    load_penalty,
)
from router.core.breaker import BreakerConfig, BreakerState, CircuitBreaker, is_breaker_failure
from router.core.errors import (
    BackendConnectionError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeout,
    Overloaded,
)
from router.core.limits import AIMDLimit, FixedLimit, Gradient2Limit
from router.core.retry import RetryBudget, RetryPolicy
from router.core.types import Priority

LOW, NORMAL, HIGH = Priority.LOW, Priority.NORMAL, Priority.HIGH


def state(limit: int = 1, depth: int = 10, timeout: float = 2.0, **kw) -> AdmissionState:
    return AdmissionState("s", limit, depth, timeout, **kw)


# ---- layering ------------------------------------------------------------------

@pytest.mark.parametrize("module", ["admission", "breaker", "limits", "retry"])
def test_core_module_imports_only_the_standard_library(module: str) -> None:
    path = pathlib.Path(__file__).resolve().parents[1] / "router" / "core" / f"{module}.py"
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside router.core
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names and top != "asyncio", f"{module}.py imports {name}"


# ---- load bias -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("utilization", "bias", "expected"),
    [
        (0.0, 0.2, 1.0),
        (1.0, 0.2, 0.8),
        (0.5, 0.2, 0.9),
        (2.0, 0.2, 0.8),  # over the limit after a shrink: clamped
        (-1.0, 0.2, 1.0),
        (0.7, 0.0, 1.0),  # bias 0: no effect
        (1.0, 1.0, 0.0),
        (1.0, 3.0, 0.0),  # bias clamped
        (float("nan"), 0.5, 1.0),
    ],
)
def test_load_penalty(utilization: float, bias: float, expected: float) -> None:
    assert load_penalty(utilization, bias) == pytest.approx(expected)


@given(st.floats(allow_nan=False), st.floats(min_value=0.0, max_value=1.0))
def test_load_penalty_stays_in_range(utilization: float, bias: float) -> None:
    assert 1.0 - bias - 1e-12 <= load_penalty(utilization, bias) <= 1.0


# ---- the gate's state --------------------------------------------------------------

def test_grants_at_once_while_below_the_limit() -> None:
    s = state(limit=2)
    a, wa = s.arrive(NORMAL, 0.0)
    b, wb = s.arrive(NORMAL, 0.0)
    c, _ = s.arrive(NORMAL, 0.0)
    assert (a.state, b.state, c.state) == (TicketState.GRANTED, TicketState.GRANTED, TicketState.QUEUED)
    assert wa == wb == []
    assert (s.in_flight, s.queued, s.admitted) == (2, 1, 2)
    assert a.queue_wait_s == 0.0


def test_higher_priority_first_fifo_within_a_priority() -> None:
    s = state(limit=1)
    holder, _ = s.arrive(NORMAL, 0.0)
    order = [(LOW, "l1"), (NORMAL, "n1"), (HIGH, "h1"), (LOW, "l2"), (NORMAL, "n2"), (HIGH, "h2")]
    tickets = {}
    for p, label in order:
        t, _ = s.arrive(p, 1.0)
        tickets[t.seq] = label
    served = []
    current = holder
    for i in range(len(order)):
        woken = s.release(current, 2.0 + i)
        assert len(woken) == 1
        current = woken[0]
        served.append(tickets[current.seq])
    assert served == ["h1", "h2", "n1", "n2", "l1", "l2"]


def test_full_queue_rejects_an_arrival_nobody_ranks_below() -> None:
    s = state(limit=1, depth=2)
    s.arrive(NORMAL, 0.0)
    s.arrive(NORMAL, 0.0)
    s.arrive(HIGH, 0.0)
    t, wake = s.arrive(NORMAL, 0.0)
    assert t.state is TicketState.REJECTED and t.reason is RejectReason.QUEUE_FULL
    assert wake == [] and s.rejected == 1 and s.queued == 2


def test_full_queue_displaces_the_newest_lowest_priority_ticket() -> None:
    s = state(limit=1, depth=3)
    s.arrive(NORMAL, 0.0)
    old_low, _ = s.arrive(LOW, 0.0)
    new_low, _ = s.arrive(LOW, 0.0)
    s.arrive(NORMAL, 0.0)
    t, wake = s.arrive(HIGH, 0.0)
    assert t.state is TicketState.QUEUED
    assert wake == [new_low]
    assert new_low.state is TicketState.DISPLACED and new_low.reason is RejectReason.DISPLACED
    assert old_low.state is TicketState.QUEUED
    assert (s.queued, s.displaced) == (3, 1)


def test_zero_queue_depth_only_grants_free_slots() -> None:
    s = state(limit=1, depth=0)
    a, _ = s.arrive(HIGH, 0.0)
    b, _ = s.arrive(HIGH, 0.0)
    assert a.state is TicketState.GRANTED and b.reason is RejectReason.QUEUE_FULL


@pytest.mark.parametrize(
    ("timeout_s", "budget", "reason"),
    [
        (None, 2.0, RejectReason.QUEUE_TIMEOUT),
        (5.0, 2.0, RejectReason.QUEUE_TIMEOUT),
        (2.0, 2.0, RejectReason.QUEUE_TIMEOUT),
        (0.5, 0.5, RejectReason.DEADLINE),  # the caller's deadline is shorter
    ],
)
def test_wait_budget_is_the_shorter_of_queue_timeout_and_deadline(timeout_s, budget, reason) -> None:
    s = state(limit=1, timeout=2.0)
    s.arrive(NORMAL, 0.0)
    t, _ = s.arrive(NORMAL, 0.0, timeout_s)
    assert (t.wait_budget_s, t.expiry_reason) == (budget, reason)
    assert s.expire(t, budget) == [t]
    assert t.state is TicketState.TIMED_OUT and t.reason is reason
    assert s.queued == 0
    assert (s.timed_out, s.deadline_expired) == ((1, 0) if reason is RejectReason.QUEUE_TIMEOUT else (0, 1))


def test_no_time_left_and_no_free_slot_is_rejected_without_queueing() -> None:
    s = state(limit=1)
    s.arrive(NORMAL, 0.0)
    t, _ = s.arrive(NORMAL, 0.0, 0.0)
    assert t.state is TicketState.REJECTED and t.reason is RejectReason.DEADLINE
    assert s.queued == 0 and s.deadline_expired == 1


def test_no_time_left_but_a_free_slot_is_granted() -> None:
    t, _ = state(limit=1).arrive(NORMAL, 0.0, 0.0)
    assert t.state is TicketState.GRANTED


def test_late_timeout_after_a_grant_is_a_no_op() -> None:
    s = state(limit=1)
    a, _ = s.arrive(NORMAL, 0.0)
    b, _ = s.arrive(NORMAL, 0.0)
    assert s.release(a, 1.0) == [b]
    assert s.expire(b, 2.0) == []
    assert b.state is TicketState.GRANTED and s.in_flight == 1


def test_abandoning_a_queued_ticket_frees_its_place_at_once() -> None:
    s = state(limit=1, depth=1)
    s.arrive(NORMAL, 0.0)
    b, _ = s.arrive(NORMAL, 0.0)
    assert s.abandon(b, 0.5) == []
    assert b.state is TicketState.CANCELLED and s.queued == 0 and s.cancelled == 1
    c, _ = s.arrive(NORMAL, 0.6)
    assert c.state is TicketState.QUEUED


def test_abandoning_a_just_granted_ticket_passes_the_slot_on() -> None:
    s = state(limit=1)
    a, _ = s.arrive(NORMAL, 0.0)
    b, _ = s.arrive(NORMAL, 0.0)
    c, _ = s.arrive(NORMAL, 0.0)
    assert s.release(a, 1.0) == [b]
    assert s.abandon(b, 1.0) == [c]  # b's caller was cancelled as it was granted
    assert (b.state, c.state) == (TicketState.CANCELLED, TicketState.GRANTED)
    assert (s.in_flight, s.admitted, s.released) == (1, 3, 2)


def test_a_slot_is_released_exactly_once() -> None:
    s = state(limit=1)
    a, _ = s.arrive(NORMAL, 0.0)
    b, _ = s.arrive(NORMAL, 0.0)
    assert s.release(a, 1.0) == [b]
    for again in (lambda: s.release(a, 2.0), lambda: s.abandon(a, 2.0), lambda: s.expire(a, 2.0)):
        assert again() == []
    assert (s.in_flight, s.released) == (1, 1)


def test_set_limit_grows_at_once_and_shrinks_as_slots_free() -> None:
    s = state(limit=1)
    a, _ = s.arrive(NORMAL, 0.0)
    b, _ = s.arrive(NORMAL, 0.0)
    c, _ = s.arrive(NORMAL, 0.0)
    d, _ = s.arrive(NORMAL, 0.0)
    assert s.set_limit(3, 1.0) == [b, c]
    assert s.in_flight == 3 and s.queued == 1
    assert s.set_limit(1, 1.0) == []
    assert s.release(a, 2.0) == []  # 2 still in flight over a limit of 1
    assert s.release(b, 2.0) == []
    assert s.release(c, 2.0) == [d]
    with pytest.raises(ValueError):
        s.set_limit(0, 3.0)


@pytest.mark.parametrize(
    ("limit", "in_flight", "queued", "service", "priority", "expected"),
    [
        (2, 1, 0, 1.0, NORMAL, 0.0),  # a free slot
        (2, 2, 0, 1.0, NORMAL, 0.5),  # next of 2 slots frees in S/limit
        (2, 2, 3, 1.0, NORMAL, 2.0),  # 3 ahead + itself
        (2, 2, 3, 1.0, HIGH, 0.5),  # nobody ahead of HIGH (the queued are NORMAL)
        (1, 1, 0, None, NORMAL, None),  # no estimate yet
    ],
)
def test_expected_wait(limit, in_flight, queued, service, priority, expected) -> None:
    s = state(limit=limit, service_time_hint_s=service)
    for _ in range(in_flight + queued):
        s.arrive(NORMAL, 0.0)
    assert s.expected_wait_s(priority) == (None if expected is None else pytest.approx(expected))


def test_service_time_is_an_ewma_of_slot_hold_times() -> None:
    s = state(limit=1, ewma_alpha=0.5, service_time_hint_s=10.0)
    for start, end in [(0.0, 2.0), (2.0, 6.0)]:
        t, _ = s.arrive(NORMAL, start)
        s.release(t, end)
    assert s.service_time_s == pytest.approx(3.0)  # first sample replaces the hint, then 2 + 0.5·(4 − 2)


def test_can_admit_reasons() -> None:
    breaker = CircuitBreaker("impl", BreakerConfig(consecutive_failures=1, cooldown_s=10.0))
    s = state(limit=1, depth=2, timeout=5.0, service_time_hint_s=1.0)
    assert s.can_admit(NORMAL, 0.0, 0.1) == (True, "")
    s.arrive(NORMAL, 0.0)
    assert s.can_admit(NORMAL, 0.0, 10.0) == (True, "")  # expects 1 s
    assert s.can_admit(NORMAL, 0.0, 0.5) == (False, RejectReason.EXPECTED_WAIT)
    assert s.can_admit(NORMAL, 0.0, None) == (True, "")
    s.arrive(NORMAL, 0.0)
    s.arrive(NORMAL, 0.0)
    assert s.can_admit(NORMAL, 0.0, 10.0) == (False, RejectReason.QUEUE_FULL)
    assert s.can_admit(HIGH, 0.0, 10.0) == (True, "")  # would displace a NORMAL
    breaker.on_failure(0.0)
    assert s.can_admit(HIGH, 1.0, 10.0, breaker=breaker) == (False, RejectReason.BREAKER_OPEN)
    assert breaker.state(1.0) is BreakerState.OPEN
    assert (s.in_flight, s.queued) == (1, 2)  # nothing changed


def test_expected_wait_is_also_capped_by_the_queue_timeout() -> None:
    s = state(limit=1, timeout=0.5, service_time_hint_s=1.0)
    s.arrive(NORMAL, 0.0)
    assert s.can_admit(NORMAL, 0.0, 30.0) == (False, RejectReason.EXPECTED_WAIT)


def test_retry_after_follows_the_queue_and_is_clamped() -> None:
    s = state(limit=2, depth=100, service_time_hint_s=1.0)
    assert s.retry_after_s() == pytest.approx(0.05)  # free now: the floor
    for _ in range(2 + 4):
        s.arrive(NORMAL, 0.0)
    assert s.retry_after_s() == pytest.approx(2.5)  # (4 + 1) · 1 s / 2
    assert state(limit=1).retry_after_s() == pytest.approx(0.05)
    cold = state(limit=1)
    cold.arrive(NORMAL, 0.0)
    assert cold.retry_after_s() == pytest.approx(1.0)  # no estimate: the default
    huge = state(limit=1, depth=1000, service_time_hint_s=100.0)
    for _ in range(10):
        huge.arrive(NORMAL, 0.0)
    assert huge.retry_after_s() == pytest.approx(60.0)


def test_snapshot_counts() -> None:
    s = state(limit=1, depth=2)
    a, _ = s.arrive(NORMAL, 0.0)
    _b, _ = s.arrive(HIGH, 0.0)
    c, _ = s.arrive(LOW, 0.0)
    s.arrive(LOW, 0.0)  # queue full
    s.note_shed()
    s.abandon(c, 0.5)
    s.release(a, 1.0)  # b granted after 1 s
    snap = s.snapshot()
    assert (snap.limit, snap.in_flight, snap.queued, snap.utilization) == (1, 1, 0, 1.0)
    assert dict(snap.queued_by_priority) == {LOW: 0, NORMAL: 0, HIGH: 0}
    assert (snap.admitted, snap.released, snap.rejected, snap.cancelled, snap.shed) == (2, 1, 1, 1, 1)
    assert snap.mean_queue_wait_s == pytest.approx(0.5)
    assert snap.service_time_s == pytest.approx(1.0)
    assert repr(s) == "<AdmissionState s [in-flight 1/1 | queued 0]>"


def test_adaptive_limit_is_fed_on_release() -> None:
    s = state(limit=4, limit_algorithm=AIMDLimit(4, min_limit=1, max_limit=10))
    assert s.limit == 4
    tickets = [s.arrive(NORMAL, 0.0)[0] for _ in range(4)]
    s.release(tickets[0], 0.1, Outcome.SUCCESS)
    assert s.limit == 4  # it started alone: 1 in flight < limit/2 says nothing
    s.release(tickets[3], 0.1, Outcome.SUCCESS)
    assert s.limit == 5  # it started with 4 in flight ≥ limit/2
    s.release(tickets[2], 0.1, Outcome.DROPPED)
    assert s.limit == 4
    s.release(tickets[1], 0.1, Outcome.IGNORED)
    assert s.limit == 4


def test_config_is_checked() -> None:
    for bad in [{"limit": 0}, {"depth": -1}, {"timeout": 0.0}]:
        with pytest.raises(ValueError):
            state(**bad)


def test_gate_rejected_is_overloaded() -> None:
    err = GateRejected(RejectReason.QUEUE_FULL, 0.25, gate="kimiK2", detail="5/5 queued")
    assert isinstance(err, Overloaded)
    assert err.retry_after_s == 0.25 and err.reason is RejectReason.QUEUE_FULL
    assert str(err) == "skill kimiK2: queue full (5/5 queued); retry after 0.25s"


# ---- property: a random history never breaks the gate's laws ------------------------

ARRIVE = st.tuples(st.just("arrive"), st.sampled_from(list(Priority)), st.sampled_from([None, 0.0, 0.5, 5.0]))
OPS = st.lists(
    st.one_of(
        ARRIVE,
        ARRIVE,
        st.tuples(st.just("release"), st.integers(0, 50), st.sampled_from(list(Outcome))),
        st.tuples(st.just("abandon"), st.integers(0, 50)),
        st.tuples(st.just("expire"), st.integers(0, 50)),
        st.tuples(st.just("set_limit"), st.integers(1, 5)),
        st.tuples(st.just("tick"), st.floats(0.0, 1.0)),
    ),
    min_size=5,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 4), depth=st.integers(0, 4), ops=OPS, adaptive=st.booleans())
def test_random_histories_keep_the_laws(limit: int, depth: int, ops: list, adaptive: bool) -> None:
    algo = AIMDLimit(limit, min_limit=1, max_limit=6) if adaptive else None
    s = AdmissionState("p", limit, depth, 1.0, limit_algorithm=algo)
    tickets: list[Ticket] = []
    now = 0.0

    def pick(i: int) -> Ticket | None:
        return tickets[i % len(tickets)] if tickets else None

    for op in ops:
        before = {id(t): t.state for t in tickets}
        in_flight_before = s.in_flight
        new: Ticket | None = None
        kind = op[0]
        if kind == "arrive":
            new, wake = s.arrive(op[1], now, op[2])
            tickets.append(new)
        elif kind == "release":
            t = pick(op[1])
            wake = s.release(t, now, op[2]) if t else []
        elif kind == "abandon":
            t = pick(op[1])
            wake = s.abandon(t, now) if t else []
        elif kind == "expire":
            t = pick(op[1])
            wake = s.expire(t, now) if t else []
        elif kind == "set_limit":
            wake = s.set_limit(op[1], now)
        else:
            now += op[1]
            wake = []

        granted = [t for t in tickets if t.state is TicketState.GRANTED]
        queued = [t for t in tickets if t.state is TicketState.QUEUED]
        # Counters agree with the tickets.
        assert s.in_flight == len(granted)
        assert s.queued == len(queued) <= depth
        assert s.admitted - s.released == s.in_flight
        # The limit is never exceeded by a grant: above the limit (after a
        # shrink) nothing may have been granted in this step.
        assert s.in_flight <= s.limit or s.in_flight <= in_flight_before
        # No one waits while a slot is free.
        assert not (queued and s.in_flight < s.limit)
        # States only move forward; terminal states are final.
        for t in tickets:
            old = before.get(id(t))
            if old is not None and old is not t.state:
                assert old in (TicketState.QUEUED, TicketState.GRANTED), (old, t.state)
                assert not (old is TicketState.GRANTED and t.state is TicketState.QUEUED)
        # Every queued ticket that moved on was handed back to be woken
        # (its caller is parked); nobody else was.
        # (A queued ticket its own caller abandoned needs no waking.)
        moved = [t for t in tickets if before.get(id(t)) is TicketState.QUEUED and t.state is not TicketState.QUEUED]
        assert sorted(t.seq for t in wake) == sorted(t.seq for t in moved if t.state is not TicketState.CANCELLED)
        # Grants respect priority, then FIFO.
        for g in (t for t in moved if t.state in (TicketState.GRANTED, TicketState.RELEASED)):
            assert not any(q.priority > g.priority or (q.priority == g.priority and q.seq < g.seq) for q in queued)

    # Everyone goes away: nothing is left held or queued.
    for t in tickets:
        s.abandon(t, now)
        s.release(t, now)
    assert s.in_flight == 0 and s.queued == 0
    assert s.admitted == s.released
    assert all(t.state in (TicketState.RELEASED, TicketState.REJECTED, TicketState.DISPLACED,
                           TicketState.TIMED_OUT, TicketState.CANCELLED) for t in tickets)


# ---- circuit breaker ---------------------------------------------------------------

def cfg(**kw) -> BreakerConfig:
    base = {"consecutive_failures": 3, "window": 10, "min_calls": 4, "failure_rate": 0.5, "cooldown_s": 10.0}
    base.update(kw)
    return BreakerConfig(**base)


@pytest.mark.parametrize(
    ("outcomes", "config", "state_after"),
    [
        ("FFF", cfg(), BreakerState.OPEN),  # consecutive
        ("FFSFF", cfg(), BreakerState.OPEN),  # rate 4/5 over min_calls 4
        ("FSF", cfg(), BreakerState.CLOSED),  # under min_calls
        ("SSFSFS", cfg(), BreakerState.CLOSED),  # rate 2/6
        ("SSFSFSF", cfg(), BreakerState.CLOSED),  # rate 3/7, never 3 in a row
        ("FSFSFSFS", cfg(), BreakerState.OPEN),  # 3/5 at the 5th call (a success never trips)
        ("FFFFF", cfg(consecutive_failures=0, min_calls=10, window=10), BreakerState.CLOSED),
        ("SSSSSSSSSSFFFFF", cfg(consecutive_failures=0, window=10, min_calls=10), BreakerState.OPEN),  # 5/10
        ("SSSSSSSSSSSFFFF", cfg(consecutive_failures=0, window=10, min_calls=10), BreakerState.CLOSED),  # 4/10
    ],
)
def test_breaker_trips(outcomes: str, config: BreakerConfig, state_after: BreakerState) -> None:
    b = CircuitBreaker("impl", config)
    for i, o in enumerate(outcomes):
        b.on_success(float(i)) if o == "S" else b.on_failure(float(i))
    assert b.state(float(len(outcomes))) is state_after


def test_breaker_cycle_with_transitions_pushed_as_they_happen() -> None:
    pushed: list = []
    b = CircuitBreaker("impl", cfg(half_open_probes=1), on_transition=pushed.append)
    assert b.on_failure(0.0) is None
    b.on_failure(1.0)
    t = b.on_failure(2.0, "HTTP 503")
    assert t is not None and (t.from_state, t.to_state, t.at) == (BreakerState.CLOSED, BreakerState.OPEN, 2.0)
    assert "3 consecutive failures" in t.reason and "HTTP 503" in t.reason
    assert b.half_open_at == 12.0
    ok, why = b.allow(11.9)
    assert not ok and "open" in why and "half-open in 0.10s" in why
    assert b.state(12.0) is BreakerState.HALF_OPEN
    assert b.half_open_at is None
    assert b.allow(12.0) == (True, "half-open probe")
    assert b.allow(12.1)[0] is False  # one probe at a time
    t = b.on_failure(13.0)
    assert t is not None and t.to_state is BreakerState.OPEN and b.half_open_at == 23.0
    assert b.allow(23.0)[0]
    t = b.on_success(24.0)
    assert t is not None and (t.from_state, t.to_state) == (BreakerState.HALF_OPEN, BreakerState.CLOSED)
    assert b.consecutive_failures == 0 and b.failure_rate == 0.0
    assert [(x.from_state, x.to_state) for x in pushed] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert b.times_opened == 2


def test_breaker_bounded_probes_and_successes_to_close() -> None:
    b = CircuitBreaker("impl", cfg(consecutive_failures=1, half_open_probes=2, successes_to_close=2))
    b.on_failure(0.0)
    assert [b.allow(10.0)[0] for _ in range(3)] == [True, True, False]
    assert b.would_allow(10.0)[0] is False
    assert b.on_success(11.0) is None  # one of two
    assert b.allow(11.0)[0] is True  # the place it freed
    t = b.on_success(12.0)
    assert t is not None and t.to_state is BreakerState.CLOSED


def test_breaker_lost_probe_gives_its_place_back() -> None:
    b = CircuitBreaker("impl", cfg(consecutive_failures=1, probe_timeout_s=5.0))
    b.on_failure(0.0)
    assert b.allow(10.0)[0]
    assert not b.allow(14.9)[0]
    assert b.allow(15.0)[0]  # the first probe never reported
    b.on_ignore(15.5)  # the second one was cancelled
    assert b.allow(15.5)[0]


def test_would_allow_takes_no_probe_place() -> None:
    b = CircuitBreaker("impl", cfg(consecutive_failures=1))
    b.on_failure(0.0)
    for _ in range(3):
        assert b.would_allow(10.0) == (True, "half-open probe")
    assert b.allow(10.0)[0] and not b.would_allow(10.0)[0]


def test_late_results_while_open_change_nothing() -> None:
    b = CircuitBreaker("impl", cfg(consecutive_failures=1))
    b.on_failure(0.0)
    assert b.on_success(1.0) is None and b.on_failure(2.0) is None
    assert b.state(3.0) is BreakerState.OPEN and b.half_open_at == 10.0


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (BackendTimeout("t"), True),
        (BackendConnectionError("c"), True),
        (BackendProtocolError("p"), True),
        (BackendStatusError(500, "x"), True),
        (BackendStatusError(503, "x"), True),
        (BackendStatusError(429, "x", 1.0), True),
        (BackendStatusError(408, "x"), True),
        (BackendStatusError(400, "x"), False),
        (BackendStatusError(404, "x"), False),
        (ValueError("not a backend error"), False),
    ],
)
def test_is_breaker_failure(error: BaseException, counts: bool) -> None:
    assert is_breaker_failure(error) is counts


def test_breaker_config_is_checked() -> None:
    for bad in [{"min_calls": 11, "window": 10}, {"half_open_probes": 0}, {"failure_rate": 0.0}, {"window": 0}]:
        with pytest.raises(ValueError):
            cfg(**bad)


# ---- adaptive limits -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("limit", "rtt", "in_flight", "dropped", "expected"),
    [
        (10, 0.1, 5, False, 11),  # at least half used: +1
        (10, 0.1, 4, False, 10),  # app-limited: unchanged
        (10, 0.1, 10, True, 9),  # drop: ×0.9
        (10, 6.0, 10, False, 9),  # slower than the timeout: a drop
        (100, 0.1, 100, True, 90),
        (2, 0.1, 2, True, 1),  # at least −1
        (1, 0.1, 1, True, 1),  # floor
        (20, 0.1, 20, False, 20),  # ceiling
    ],
)
def test_aimd(limit: int, rtt: float, in_flight: int, dropped: bool, expected: int) -> None:
    a = AIMDLimit(limit, min_limit=1, max_limit=max(20, limit), timeout_s=5.0)
    assert a.on_sample(0.0, rtt, in_flight, dropped) == expected == a.limit


def test_gradient2_backs_off_as_latency_grows_and_recovers() -> None:
    g = Gradient2Limit(20, min_limit=2, max_limit=50, long_window=100, warmup=5)
    for _ in range(20):  # steady: grows by smoothing·queue_size a sample
        g.on_sample(0.0, 0.1, 20, False)
    steady = g.limit
    assert steady > 20
    for _ in range(10):  # latency doubles while the long average lags
        g.on_sample(0.0, 0.2, steady, False)
    loaded = g.limit
    assert loaded < steady
    for _ in range(40):  # latency back to normal
        g.on_sample(0.0, 0.1, loaded, False)
    assert g.limit > loaded


def test_gradient2_formula_one_step() -> None:
    g = Gradient2Limit(10, min_limit=1, max_limit=100, smoothing=0.5, queue_size=2, warmup=1)
    g.on_sample(0.0, 1.0, 10, False)  # long = short = 1: gradient 1 → 10·1 + 2 = 12, smoothed 11
    assert g.limit == 11
    g.on_sample(0.0, 4.0, 11, False)  # long = 1 + (2/601)·3; gradient clamps at 0.5
    long = 1.0 + 2.0 / 601 * 3.0
    assert g.long_rtt_s == pytest.approx(long)
    assert g.limit == int(11 * 0.5 + (11 * 0.5 + 2) * 0.5)


def test_gradient2_app_limited_and_bounds() -> None:
    g = Gradient2Limit(10, min_limit=5, max_limit=12)
    assert g.on_sample(0.0, 0.1, 2, False) == 10  # under half used: unchanged
    for _ in range(50):
        g.on_sample(0.0, 0.1, 12, False)
    assert g.limit == 12
    for _ in range(50):
        g.on_sample(0.0, 10.0, 12, True)
    assert g.limit >= 5
    assert g.on_sample(0.0, 0.0, 12, False) == g.limit  # no information


def test_fixed_limit_and_checks() -> None:
    assert FixedLimit(3).on_sample(0.0, 9.0, 3, True) == 3
    for make in (lambda: FixedLimit(0), lambda: AIMDLimit(5, min_limit=6, max_limit=4),
                 lambda: AIMDLimit(5, backoff_ratio=1.0), lambda: Gradient2Limit(5, smoothing=0.0)):
        with pytest.raises(ValueError):
            make()
    # The configured limit may lie outside the adaptive range: it is clamped.
    assert AIMDLimit(150, min_limit=1, max_limit=100).limit == 100
    assert Gradient2Limit(1, min_limit=4, max_limit=100).limit == 4


# ---- retry -------------------------------------------------------------------------

class ZeroRng(random.Random):
    def random(self) -> float:
        return 0.0


class HalfRng(random.Random):
    def random(self) -> float:
        return 0.5


POLICY = RetryPolicy(max_attempts=3, base_delay_s=0.1, multiplier=2.0, max_delay_s=0.3, jitter=1.0,
                     min_attempt_s=0.1, max_retry_after_s=5.0)


@pytest.mark.parametrize(
    ("attempt", "error", "remaining", "rng", "delay", "why"),
    [
        (1, BackendConnectionError("refused"), 10.0, ZeroRng(), 0.1, "backoff"),
        (2, BackendConnectionError("refused"), 10.0, ZeroRng(), 0.2, "backoff"),
        (2, BackendStatusError(502, "bad gateway"), 10.0, HalfRng(), 0.1, "backoff"),
        (1, BackendStatusError(429, "slow down", retry_after_s=1.5), 10.0, ZeroRng(), 1.5, "retry-after"),
        (1, BackendStatusError(429, "slow down", retry_after_s=6.0), 10.0, ZeroRng(), None, "exceeds"),
        (1, BackendStatusError(429, "slow down", retry_after_s=1.5), 1.55, ZeroRng(), None, "deadline"),
        (1, BackendStatusError(429, "slow down"), 10.0, ZeroRng(), 0.1, "backoff"),
        (3, BackendConnectionError("refused"), 10.0, ZeroRng(), None, "3 of 3"),
        (1, BackendTimeout("slow"), 10.0, ZeroRng(), None, "not retryable"),
        (1, BackendStatusError(400, "bad"), 10.0, ZeroRng(), None, "not retryable"),
        (1, BackendProtocolError("junk"), 10.0, ZeroRng(), None, "not retryable"),
        (1, ValueError("bug"), 10.0, ZeroRng(), None, "not retryable"),
        (1, BackendConnectionError("refused"), 0.15, ZeroRng(), None, "deadline"),
        (1, BackendConnectionError("refused"), None, ZeroRng(), 0.1, "backoff"),
    ],
)
def test_retry_decisions(attempt, error, remaining, rng, delay, why) -> None:
    d = POLICY.decide(attempt, error, remaining, rng)
    assert d.delay_s == (None if delay is None else pytest.approx(delay))
    assert why in d.reason
    assert POLICY.next_delay(attempt, error, remaining, rng) == d.delay_s


@given(attempt=st.integers(1, 30), seed=st.integers(0, 2**32))
def test_backoff_stays_under_its_cap(attempt: int, seed: int) -> None:
    delay = POLICY.backoff_s(attempt, random.Random(seed))
    cap = min(POLICY.max_delay_s, POLICY.base_delay_s * 2 ** (attempt - 1))
    assert 0.0 <= delay <= cap


def test_retry_budget_caps_retries_at_a_ratio_of_recent_requests() -> None:
    b = RetryBudget(0.2, ttl_s=10.0, min_retries_per_s=0.0)
    assert not b.try_spend(0.0)
    for _ in range(10):
        b.record_request(0.0)
    assert [b.try_spend(1.0) for _ in range(3)] == [True, True, False]
    assert b.available(1.0) == pytest.approx(0.0)
    assert not b.try_spend(10.0)  # the deposits of second 0 expired, the spends of second 1 not yet
    assert b.available(11.0) == pytest.approx(0.0)
    for _ in range(5):
        b.record_request(11.0)
    assert b.available(11.0) == pytest.approx(1.0)


def test_retry_budget_reserve_lets_a_quiet_skill_retry() -> None:
    b = RetryBudget(0.1, ttl_s=2.0, min_retries_per_s=1.0)
    assert [b.try_spend(0.0) for _ in range(3)] == [True, True, False]
    assert b.try_spend(2.0)  # the spends of second 0 expired


def test_policy_consults_the_budget_last() -> None:
    b = RetryBudget(0.0, ttl_s=1.0, min_retries_per_s=0.0)
    d = POLICY.decide(1, BackendConnectionError("x"), 10.0, ZeroRng(), budget=b, now=0.0)
    assert d.delay_s is None and "budget" in d.reason
    b2 = RetryBudget(0.0, ttl_s=1.0, min_retries_per_s=1.0)
    # Not retryable: no token is spent.
    POLICY.decide(1, BackendTimeout("t"), 10.0, ZeroRng(), budget=b2, now=0.0)
    assert b2.available(0.0) == pytest.approx(1.0)
    assert POLICY.decide(1, BackendConnectionError("x"), 10.0, ZeroRng(), budget=b2, now=0.0).retry
    assert b2.available(0.0) == pytest.approx(0.0)


def test_retry_policy_config_is_checked() -> None:
    for bad in [{"max_attempts": 0}, {"jitter": 1.5}, {"multiplier": 0.5}]:
        with pytest.raises(ValueError):
            RetryPolicy(**bad)
