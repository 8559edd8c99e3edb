"""The shared-state port without sidecars: the sliding window and the
exact split (pure), the door with a shared state (in-process), the Redis
implementation against the test Redis (scripts/services.sh), and the
composition root's per-worker settings."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.configs import make_config

from router.app import Worker, skill_settings
from router.core.admission import RejectReason
from router.core.breaker import CircuitBreaker
from router.core.ratelimit import RateLimit, SlidingWindow, split_share
from router.core.retry import RetryBudget
from router.core.types import Priority
from router.runtime.admit import Door, Pass, Refusal, Settle
from router.runtime.gate import Gate
from router.runtime.shared import Ask, Denied, Grant, LocalState
from router.state import RedisState, RedisStateSettings

REDIS_URL = os.environ.get("SKILL_ROUTER_TEST_REDIS_URL")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="SKILL_ROUTER_TEST_REDIS_URL not set (run scripts/services.sh)")


# ---- pure ---------------------------------------------------------------------


@given(st.integers(0, 1000), st.integers(1, 64))
def test_split_shares_add_up_exactly_and_differ_by_at_most_one(total: int, workers: int) -> None:
    shares = [split_share(total, i, workers) for i in range(workers)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)


def test_split_share_rejects_an_index_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        split_share(4, 2, 2)


@given(st.lists(st.floats(0, 5), min_size=1, max_size=200), st.integers(1, 20))
def test_the_sliding_window_never_admits_more_than_rpm_in_any_minute(gaps: list[float], rpm: int) -> None:
    w, now, taken = SlidingWindow(), 0.0, []
    for g in gaps:
        now += g
        if w.try_take(RateLimit(rpm=rpm), now) == 0.0:
            taken.append(now)
    for i, t in enumerate(taken):
        assert sum(1 for u in taken[i:] if u < t + 60.0) <= rpm


def test_the_sliding_window_says_when_to_come_back_and_counts_tokens() -> None:
    w = SlidingWindow()
    limit = RateLimit(rpm=2, tpm=100)
    assert w.try_take(limit, 0.0, 40) == 0.0
    assert w.try_take(limit, 10.0, 40) == 0.0
    assert w.try_take(limit, 20.0, 10) == pytest.approx(40.0)  # rpm: the first leaves at 60
    assert w.try_take(RateLimit(tpm=100), 20.0, 30) == pytest.approx(40.0)  # tpm: 80 + 30 > 100
    assert w.try_take(RateLimit(tpm=100), 20.0, 20) == 0.0  # 100 fits
    assert w.try_take(limit, 60.0, 10) == pytest.approx(10.0)  # the first left; two remain (rpm 2)
    assert w.try_take(RateLimit(tpm=10), 0.0, 11) == 60.0  # more than the limit: never now
    assert (w.requests, w.tokens) == (2, 60)


# ---- the door with a shared state ---------------------------------------------


def _door(shared: LocalState, ask: Ask) -> Door:
    gate = Gate("s", 2, 10, 1.0)
    return Door("s/i", gate, CircuitBreaker("s/i"), RetryBudget(0.2), shared=shared, ask=ask)


async def test_a_shared_refusal_gives_the_gate_slot_back_and_a_settle_releases_the_lease() -> None:
    shared = LocalState()
    door = _door(shared, Ask("s", "i", local_limit=1))
    first = await door.enter(Priority.NORMAL, asyncio.get_running_loop().time() + 10)
    assert isinstance(first, Pass) and shared.held("s") == 1
    second = await door.enter(Priority.NORMAL, asyncio.get_running_loop().time() + 10)
    assert isinstance(second, Refusal) and second.reason is RejectReason.SHARED_LIMIT
    assert door.gate.in_flight == 1  # the refused call's gate slot went back
    first.settle(Settle.SUCCESS)
    assert shared.held("s") == 0 and door.gate.in_flight == 0
    third = await door.enter(Priority.NORMAL, asyncio.get_running_loop().time() + 10)
    assert isinstance(third, Pass)
    third.settle(Settle.IGNORED)


async def test_a_rate_limited_door_refuses_with_the_wait() -> None:
    door = _door(LocalState(), Ask("s", "i", rate=RateLimit(rpm=1), local_rate=RateLimit(rpm=1)))
    got = await door.enter(Priority.NORMAL, asyncio.get_running_loop().time() + 10)
    assert isinstance(got, Pass)
    got.settle(Settle.SUCCESS)
    again = await door.enter(Priority.NORMAL, asyncio.get_running_loop().time() + 10)
    assert isinstance(again, Refusal) and again.reason is RejectReason.RATE_LIMITED
    assert 0 < again.retry_after_s <= 60


def test_a_door_without_limits_to_share_never_asks() -> None:
    door = _door(LocalState(), Ask("s", "i"))
    assert door.shared is None


# ---- the composition root's per-worker settings ---------------------------------


def test_without_redis_each_worker_holds_its_exact_share() -> None:
    cfg = make_config("http://127.0.0.1:1")
    limits = {w: skill_settings(cfg, Worker(w, 3)) for w in range(3)}
    for name, s in skill_settings(cfg).items():
        shares = [limits[w][name].concurrency_limit for w in range(3)]
        assert sum(shares) == s.concurrency_limit >= 3, (name, shares)
    # gepa's limit of 3 over 4 workers: the last worker's share is 0, its door refuses.
    four = skill_settings(cfg, Worker(3, 4))["gepa"]
    assert four.concurrency_limit == 1 and four.asks["gepa-large"].local_limit == 0


def test_with_redis_each_worker_keeps_the_whole_limit_and_asks_for_a_lease() -> None:
    cfg = make_config("http://127.0.0.1:1", state={"redis_url": "redis://127.0.0.1:1/0", "lease_s": 90})
    s = skill_settings(cfg, Worker(1, 2))["kimiK2"]
    assert s.concurrency_limit == 5
    ask = s.asks["gemini-flash"]
    assert (ask.limit, ask.local_limit, ask.lease_s) == (5, 2, 90)


def test_config_rate_limit_and_lease_errors_name_the_key() -> None:
    from router.core.errors import ConfigError
    with pytest.raises(ConfigError, match=r"state\.lease_s: must be between 1 and 3600"):
        make_config("http://127.0.0.1:1", state={"redis_url": "redis://127.0.0.1:1/0", "lease_s": 0.5})
    with pytest.raises(ConfigError, match=r"state\.redis_url"):
        make_config("http://127.0.0.1:1", state={"redis_url": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match=r"server\.workers"):
        make_config("http://127.0.0.1:1", server={"workers": 0})
    from support.configs import config_data

    from router.config import parse_config
    data = config_data("http://127.0.0.1:1")
    data["skills"]["trm"]["implementations"][0]["rate_limit"] = {"tpm": 1000}
    with pytest.raises(ConfigError, match=r"skills\.trm\.implementations\[0\]\.rate_limit\.tpm: needs expected_"):
        parse_config(data, "<tests>", {})
    data["skills"]["trm"]["implementations"][0]["rate_limit"] = {}
    with pytest.raises(ConfigError, match=r"rate_limit\.rpm: set rpm, tpm or both"):
        parse_config(data, "<tests>", {})


# ---- Redis ---------------------------------------------------------------------


def _redis(**kw: object) -> RedisState:
    assert REDIS_URL
    # A generous timeout: these tests are about the decisions, on a shared, loaded machine.
    kw.setdefault("timeout_s", 2.0)
    return RedisState(RedisStateSettings(url=REDIS_URL, key_prefix=f"u-{uuid.uuid4().hex[:8]}", **kw))  # type: ignore[arg-type]


@needs_redis
async def test_redis_holds_the_limit_across_two_states_and_a_dead_ones_leases_expire() -> None:
    a = _redis()
    b = RedisState(a.settings)
    c = RedisState(a.settings)
    await a.start()
    await b.start()
    await c.start()
    ask = Ask("s", "i", limit=3, local_limit=1, lease_s=1.0)
    try:
        got = await asyncio.gather(*(s.admit(ask) for s in (a, b, a, b, a, b)))
        grants = [g for g in got if isinstance(g, Grant)]
        assert len(grants) == 3 and all(g.lease for g in grants)
        assert all(isinstance(d, Denied) and d.reason is RejectReason.SHARED_LIMIT for d in got if d not in grants)
        a.release(ask, grants[0])
        await asyncio.sleep(0.05)  # the release is pipelined on the next turn
        assert isinstance(await c.admit(ask), Grant)
        assert isinstance(await c.admit(ask), Denied)
        # a and b die holding their leases (no release, no renewal): they expire.
        await a.aclose()
        await b.aclose()
        for _ in range(40):  # bounded
            await asyncio.sleep(0.1)
            if isinstance(await c.admit(ask), Grant):
                break
        else:
            pytest.fail("a dead state's leases never expired")
        assert c.status().connected and c.status().fallbacks == 0
    finally:
        await c.aclose()


@needs_redis
async def test_a_live_process_renews_the_leases_it_holds() -> None:
    a = _redis()
    await a.start()
    ask = Ask("s", "i", limit=1, local_limit=1, lease_s=1.0)
    try:
        held = await a.admit(ask)
        assert isinstance(held, Grant)
        await asyncio.sleep(2.5)  # well past the lease: a long call
        assert isinstance(await a.admit(ask), Denied)  # still held
        assert a.renewed >= 2
        a.release(ask, held)
        await asyncio.sleep(0.05)
        assert isinstance(await a.admit(ask), Grant)
    finally:
        await a.aclose()


@needs_redis
async def test_redis_rate_limits_rpm_and_tpm() -> None:
    s = _redis()
    await s.start()
    try:
        rpm = Ask("s", "i", rate=RateLimit(rpm=5))
        got = [await s.admit(rpm) for _ in range(7)]
        assert [isinstance(g, Grant) for g in got] == [True] * 5 + [False] * 2
        d = got[-1]
        assert isinstance(d, Denied) and d.reason is RejectReason.RATE_LIMITED and 55 < d.retry_after_s <= 60
        tpm = Ask("s", "j", rate=RateLimit(tpm=100), tokens=40)
        got = [await s.admit(tpm) for _ in range(3)]
        assert [isinstance(g, Grant) for g in got] == [True, True, False]
        assert "tpm 100" in got[2].detail  # type: ignore[union-attr]
    finally:
        await s.aclose()


async def test_an_unreachable_redis_falls_back_to_local_limits_without_raising() -> None:
    from support.sidecars import free_port
    s = RedisState(RedisStateSettings(url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2,
                                      reconnect_min_s=0.05, worker=0, workers=2))
    seen = []
    s.on_change = seen.append
    await s.start()
    try:
        ask = Ask("s", "i", limit=4, local_limit=2, lease_s=5)
        got = [await s.admit(ask) for _ in range(3)]
        assert [isinstance(g, Grant) for g in got] == [True, True, False]
        st_ = s.status()
        assert not st_.connected and st_.detail and st_.fallbacks == 3 and (st_.worker, st_.workers) == (0, 2)
        assert seen and not seen[0].connected
        s.release(ask, got[0])  # a local lease goes back to the fallback
        assert isinstance(await s.admit(ask), Grant)
    finally:
        await s.aclose()


# ---- breakers across processes ---------------------------------------------------


def test_a_tripped_breaker_half_opens_when_the_other_does() -> None:
    from router.core.breaker import BreakerConfig, BreakerState
    b = CircuitBreaker("s/i", BreakerConfig(cooldown_s=30))
    t = b.trip(100.0, 12.0, "opened by another process: 5 consecutive failures")
    assert t is not None and b.state(100.0) is BreakerState.OPEN
    assert b.half_open_at == pytest.approx(112.0)
    assert b.state(112.0) is BreakerState.HALF_OPEN
    assert b.trip(112.0, 30.0, "again") is None  # only a closed breaker trips


@needs_redis
async def test_a_breaker_opened_in_one_process_opens_in_the_other() -> None:
    from router.core.breaker import BreakerConfig, BreakerState
    from router.runtime.shared import SHARED_TRIP, StateSync
    a = _redis()
    b = RedisState(a.settings)
    cfg = BreakerConfig(consecutive_failures=2, cooldown_s=20)
    sync_a, sync_b = StateSync(a), StateSync(b)
    br_a = CircuitBreaker("s/i", cfg, on_transition=lambda t: sync_a.listener("s", "i", t))
    br_b = CircuitBreaker("s/i", cfg, on_transition=lambda t: sync_b.listener("s", "i", t))
    other = CircuitBreaker("s/j", cfg)
    sync_a.breakers = {("s", "i"): br_a}
    sync_b.breakers = {("s", "i"): br_b, ("s", "j"): other}
    await a.start()
    await b.start()
    try:
        assert await sync_b.sync_once() == 0
        now = sync_a.clock()
        br_a.on_failure(now, "500")
        br_a.on_failure(now, "500")  # opens: published
        await asyncio.sleep(0.05)
        assert await sync_b.sync_once() == 1
        assert br_b.state(sync_b.clock()) is BreakerState.OPEN
        assert other.state(sync_b.clock()) is BreakerState.CLOSED  # only that implementation
        left = br_b.half_open_at - sync_b.clock()  # type: ignore[operator]
        assert 18 < left <= 20
        # A trip is not published again, so A's own course is not extended by B.
        assert await sync_a.sync_once() == 0
        opened = await b.open_breakers()
        assert "2 consecutive failures" in opened[("s", "i")][1] and SHARED_TRIP not in opened[("s", "i")][1]
        # A half-opens, its probe succeeds, it closes: the published state is cleared.
        t = br_a.half_open_at + 0.1  # type: ignore[operator]
        assert br_a.allow(t)[0]
        br_a.on_success(t)
        assert br_a.state(t) is BreakerState.CLOSED
        await asyncio.sleep(0.05)
        assert await b.open_breakers() == {}
    finally:
        await a.aclose()
        await b.aclose()


@needs_redis
async def test_success_rates_are_merged_across_processes() -> None:
    from router.runtime.registry import LiveRegistry
    from router.runtime.shared import StateSync
    a = _redis()
    b = RedisState(a.settings)
    reg_a, reg_b = LiveRegistry(["s", "t"]), LiveRegistry(["s", "t"])
    sync_a, sync_b = StateSync(a, registry=reg_a), StateSync(b, registry=reg_b)
    await a.start()
    await b.start()
    try:
        for _ in range(10):
            reg_a.record_call("s", False, 5.0)  # A sees s fail; B has not called it
        for _ in range(10):
            reg_b.record_call("t", True, 5.0)
        await sync_a.sync_once()
        await sync_b.sync_once()
        assert reg_b.rates["s"] == 0.0  # B's scoring now knows s fails
        assert reg_b.rates["t"] == 1.0
        for _ in range(10):
            reg_b.record_call("s", True, 5.0)
        assert reg_b.rates["s"] == pytest.approx(0.5)  # 10 of 20 over both processes
        await sync_a.sync_once()
        assert reg_a.rates["s"] == 0.0  # B has not published its new calls yet
        await sync_b.sync_once()
        await sync_a.sync_once()
        assert reg_a.rates["s"] == pytest.approx(0.5) and reg_a.rates["t"] == 1.0
        # Stats stay this process's own.
        assert reg_b.skills["s"].success_rate(1.0) == 1.0
    finally:
        await a.aclose()
        await b.aclose()


def test_without_peers_the_rates_are_this_processes() -> None:
    from router.runtime.registry import LiveRegistry
    reg = LiveRegistry(["s"])
    reg.record_call("s", False, 1.0)
    reg.record_call("s", True, 1.0)
    assert reg.rates == {"s": 0.5}
    reg.set_peers({"s": (0, 2), "unknown": (1, 1)})
    assert reg.rates == {"s": 0.25}
    reg.set_peers({})
    assert reg.rates == {"s": 0.5}


async def test_redis_back_after_an_outage_is_used_again() -> None:
    from support.sidecars import RedisServer, redis_server_bin
    if redis_server_bin() is None:
        pytest.skip("redis-server not installed (scripts/services.sh installs it)")
    server = RedisServer()
    s = RedisState(RedisStateSettings(url=server.url, timeout_s=1.0, reconnect_min_s=0.05, reconnect_max_s=0.2))
    seen: list[bool] = []
    s.on_change = lambda st_: seen.append(st_.connected)
    await s.start()
    ask = Ask("s", "i", limit=1, local_limit=1, lease_s=5)
    try:
        assert isinstance(await s.admit(ask), Grant) and s.status().connected
        await asyncio.to_thread(server.kill)
        assert isinstance(await s.admit(ask), Grant)  # the local share (1) decides now
        assert not s.status().connected and s.status().fallbacks == 1
        server = RedisServer(port=server.port)  # back, empty
        for _ in range(100):  # bounded
            if s.status().connected:
                break
            await asyncio.sleep(0.05)
        st_ = s.status()
        assert st_.connected and st_.reconnects == 1 and seen == [False, True]
        assert isinstance(await s.admit(ask), Grant) and s.status().fallbacks == 1  # decided in Redis again
    finally:
        await s.aclose()
        server.kill()
