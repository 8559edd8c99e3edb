"""The pure batching decisions: flush policy (table-driven, the clock passed
in), batch keys, the priority bypass, cost split."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

# The repository root, so ``router`` imports without an installed package.
from router.core.batching import (
    BatchKeyMode,
    FlushNow,
    FlushPolicy,
    FlushReason,
    WaitUntil,
    batch_key,
    send_by,
    should_batch,
    split_cost,
)
from router.core.types import Priority

POLICY = FlushPolicy(window_s=0.1, max_batch_size=4)

# (case, now, pending, first_enqueued_at, send_by, idle, expected)
FLUSH_TABLE = [
    ("nothing pending", 5.0, 0, 0.0, None, True, WaitUntil(math.inf, FlushReason.EMPTY)),
    ("first item, skill idle: send at once", 1.0, 1, 1.0, None, True, FlushNow(FlushReason.IDLE)),
    ("first item, skill busy: wait for the window", 1.0, 1, 1.0, None, False, WaitUntil(1.1, FlushReason.WINDOW)),
    ("window still open", 1.05, 3, 1.0, None, False, WaitUntil(1.1, FlushReason.WINDOW)),
    ("window closed exactly", 1.1, 3, 1.0, None, False, FlushNow(FlushReason.WINDOW)),
    ("window closed long ago", 9.0, 2, 1.0, None, False, FlushNow(FlushReason.WINDOW)),
    ("full batch while busy", 1.0, 4, 1.0, None, False, FlushNow(FlushReason.FULL)),
    ("more than full", 1.0, 7, 1.0, None, False, FlushNow(FlushReason.FULL)),
    ("full beats idle", 1.0, 4, 1.0, None, True, FlushNow(FlushReason.FULL)),
    ("deadline budget shortens the wait", 1.0, 2, 1.0, 1.03, False, WaitUntil(1.03, FlushReason.DEADLINE)),
    ("deadline budget later than the window", 1.0, 2, 1.0, 1.5, False, WaitUntil(1.1, FlushReason.WINDOW)),
    ("deadline budget spent", 1.03, 2, 1.0, 1.03, False, FlushNow(FlushReason.DEADLINE)),
    ("deadline budget already negative at submit", 1.0, 1, 1.0, 0.7, False, FlushNow(FlushReason.DEADLINE)),
    ("idle with a deadline: at once", 1.0, 1, 1.0, 1.03, True, FlushNow(FlushReason.IDLE)),
    ("skill becomes idle mid-window", 1.05, 3, 1.0, None, True, FlushNow(FlushReason.IDLE)),
]


@pytest.mark.parametrize(
    "now,pending,first,budget,idle,expected",
    [row[1:] for row in FLUSH_TABLE],
    ids=[row[0] for row in FLUSH_TABLE],
)
def test_flush_policy_table(now, pending, first, budget, idle, expected):
    assert POLICY.decide(now, pending, first, budget, idle) == expected


class ManualClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def test_following_the_policy_with_an_injected_clock():
    """Drive the state machine the way the batcher does: items arrive, the
    clock moves, the batcher flushes when told and waits when told."""
    clock = ManualClock(100.0)
    policy = FlushPolicy(window_s=0.05, max_batch_size=3)
    pending: list[float] = []  # enqueue times
    sent: list[tuple[int, FlushReason]] = []

    def step(idle: bool = False) -> FlushNow | WaitUntil:
        d = policy.decide(clock(), len(pending), pending[0] if pending else 0.0, None, idle)
        if isinstance(d, FlushNow):
            sent.append((len(pending[: policy.max_batch_size]), d.reason))
            del pending[: policy.max_batch_size]
        return d

    pending.append(clock())
    assert step() == WaitUntil(100.05, FlushReason.WINDOW)
    clock.advance(0.02)
    pending.append(clock())
    # The window does not restart with the second item.
    assert step() == WaitUntil(100.05, FlushReason.WINDOW)
    clock.advance(0.03)
    assert step() == FlushNow(FlushReason.WINDOW)
    assert sent == [(2, FlushReason.WINDOW)]

    for _ in range(3):
        pending.append(clock())
    assert step() == FlushNow(FlushReason.FULL)
    pending.append(clock())
    assert step(idle=True) == FlushNow(FlushReason.IDLE)
    assert sent == [(2, FlushReason.WINDOW), (3, FlushReason.FULL), (1, FlushReason.IDLE)]


def test_window_zero_sends_every_item_at_once():
    policy = FlushPolicy(window_s=0.0, max_batch_size=8)
    assert policy.decide(3.0, 1, 3.0, None, False) == FlushNow(FlushReason.WINDOW)


@pytest.mark.parametrize("window,size", [(-0.1, 4), (math.nan, 4), (math.inf, 4), (0.1, 0)])
def test_flush_policy_rejects_bad_settings(window, size):
    with pytest.raises(ValueError):
        FlushPolicy(window_s=window, max_batch_size=size)


@given(
    window=st.floats(0, 10),
    size=st.integers(1, 64),
    first=st.floats(0, 1e6),
    elapsed=st.floats(0, 20),
    pending=st.integers(1, 100),
    budget_offset=st.none() | st.floats(-20, 20),
    idle=st.booleans(),
)
def test_no_item_waits_past_the_window_or_its_budget(window, size, first, elapsed, pending, budget_offset, idle):
    policy = FlushPolicy(window_s=window, max_batch_size=size)
    now = first + elapsed
    budget = None if budget_offset is None else now + budget_offset
    d = policy.decide(now, pending, first, budget, idle)
    if pending >= size or idle:
        assert isinstance(d, FlushNow)
    if isinstance(d, WaitUntil):
        assert now < d.t <= first + window
        if budget is not None:
            assert d.t <= budget


def test_send_by_is_the_deadline_minus_the_expected_latency():
    assert send_by(10.0, None, 0.5) is None
    assert send_by(10.0, 2.0, 0.5) == pytest.approx(11.5)
    assert send_by(10.0, 2.0, -1.0) == pytest.approx(12.0)  # a negative latency counts as none


def test_batch_key_default_is_skill_and_implementation():
    key = batch_key(BatchKeyMode.IMPLEMENTATION, "kimiK2", "gemini-flash", "legal", ["trm", "kimiK2"], 7.9)
    assert key == ("kimiK2", "gemini-flash")


def test_batch_key_seed_mode_is_the_seeds_key():
    a = batch_key(BatchKeyMode.SEED, "kimiK2", "gemini-flash", "legal", ["trm", "kimiK2", "ace"], 7.9)
    b = batch_key(BatchKeyMode.SEED, "kimiK2", "gemini-flash", "legal", ("ace", "kimiK2", "trm"), 7.1)
    assert a == b == ("kimiK2", "gemini-flash", "legal", ("ace", "kimiK2", "trm"), 7)
    assert batch_key(BatchKeyMode.SEED, "kimiK2", "gemini-flash", "legal", ["ace"], 8.0) != a
    assert batch_key(BatchKeyMode.SEED, "kimiK2", "gemini-flash", "math", ["trm", "kimiK2", "ace"], 7.9) != a
    assert batch_key(BatchKeyMode.SEED, "kimiK2", "nemotron", "legal", ["trm", "kimiK2", "ace"], 7.9) != a
    assert batch_key(BatchKeyMode.SEED, "s", "i", "d", [], math.nan)[-1] == -1
    hash(a)


def test_batch_key_mode_parse():
    assert BatchKeyMode.parse(" Seed ") is BatchKeyMode.SEED
    assert BatchKeyMode.parse("implementation") is BatchKeyMode.IMPLEMENTATION
    with pytest.raises(ValueError, match="known: implementation, seed"):
        BatchKeyMode.parse("domain")


@pytest.mark.parametrize(
    "priority,enabled,supports,expected",
    [
        (Priority.NORMAL, True, True, True),
        (Priority.LOW, True, True, True),
        (Priority.HIGH, True, True, False),
        (Priority.NORMAL, False, True, False),
        (Priority.NORMAL, True, False, False),
    ],
)
def test_should_batch(priority, enabled, supports, expected):
    ok, reason = should_batch(priority, enabled=enabled, supports_batch=supports)
    assert ok is expected
    assert (reason == "") is expected


def test_should_batch_bypass_threshold_is_configurable():
    assert should_batch(Priority.HIGH, bypass_priority=Priority.HIGH + 1)[0] is True
    assert should_batch(Priority.HIGH, priority_bypass=False)[0] is True
    assert should_batch(Priority.NORMAL, bypass_priority=Priority.NORMAL)[0] is False


def test_split_cost():
    assert split_cost(0.09, 3) == pytest.approx(0.03)
    assert split_cost(0.05, 1) == 0.05
    assert split_cost(0.0, 4) == 0.0
    with pytest.raises(ValueError):
        split_cost(1.0, 0)


@given(total=st.floats(0, 1e6), n=st.integers(1, 1000))
def test_split_cost_shares_sum_to_the_total(total, n):
    assert math.fsum([split_cost(total, n)] * n) == pytest.approx(total, rel=1e-9, abs=1e-12)
