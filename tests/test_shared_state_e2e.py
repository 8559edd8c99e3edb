"""Limits that hold across replicas and workers (issue 12): two real
sidecars with two workers each against one Redis and one counting emulated
backend, driven over several connections each (SO_REUSEPORT spreads
connections, not calls, among a sidecar's workers)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from support.sidecars import RedisServer, Sidecar, redis_server_bin

from router.emulator import Emulator, EmulatorConfig, ModelProfile
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMIT = 4  # the "shared" skill's concurrency limit, summed over every process
RPM = 20  # the "rated" implementation's provider limit
LEASE_S = 3.0
CHANNELS = 4  # connections per sidecar


def sidecar_config(url: str, redis_url: str, prefix: str, *, workers: int = 2) -> dict[str, Any]:
    def impl(name: str, model: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "backend": "openai", "url": url, "model": model, "quality": 0.9,
                "cost_per_query": 0.01, "expected_latency_ms": 100, "timeout_s": 2, **extra}
    return {
        "routing": {"top_k": 1},
        "server": {"workers": workers, "admin_listen": None, "grace_period_s": 2},
        "storage": {"sqlite_path": None},
        "admission": {"retry": {"max_attempts": 1}, "queue_timeout_s": 1},
        "state": {"redis_url": redis_url, "key_prefix": prefix, "lease_s": LEASE_S, "timeout_ms": 1000},
        "skills": {
            "shared": {"concurrency_limit": LIMIT, "queue_depth": 20, "activation": {"keywords": ["alpha"]},
                       "implementations": [impl("sh", "sh")]},
            "rated": {"concurrency_limit": 8, "activation": {"keywords": ["beta"]},
                      "implementations": [impl("rt", "rt", rate_limit={"rpm": RPM})]},
            "flaky": {"activation": {"keywords": ["gamma"]}, "implementations": [impl("fl", "broken")]},
        },
    }


class Load:
    """CHANNELS separate connections per sidecar, calls spread round robin."""

    def __init__(self, addresses: Sequence[str]) -> None:
        opts = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(a, options=opts) for a in addresses for _ in range(CHANNELS)]
        self.stubs = [pb_grpc.RouterServiceStub(c) for c in self.channels]

    async def run(self, query: str, calls: int, concurrency: int, timeout_s: float = 10.0) -> Counter[str]:
        """Outcome per call: "OK" or the status code's name (plus the shed reasons seen)."""
        out: Counter[str] = Counter()
        next_call = iter(range(calls))

        async def one_worker(w: int) -> None:
            for i in next_call:
                stub = self.stubs[(w + i) % len(self.stubs)]
                try:
                    resp = await stub.Execute(pb.ExecuteRequest(query=query), timeout=timeout_s)
                    out["OK"] += 1
                    for s in resp.shed:
                        out["shed:" + pb.ShedReason.Name(s.reason)] += 1
                except grpc.aio.AioRpcError as e:
                    out[e.code().name] += 1
                    if e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        out["why:" + ("shared" if "shared" in (e.details() or "") else "other")] += 1

        await asyncio.gather(*(one_worker(w) for w in range(concurrency)))
        return out

    async def stats(self) -> list[pb.StatsResponse]:
        return [await s.Stats(pb.StatsRequest(), timeout=5) for s in self.stubs]

    async def health(self, service: str) -> set[int]:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        got = set()
        for c in self.channels:
            r = await health_pb2_grpc.HealthStub(c).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            got.add(r.status)
        return got

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def emulator() -> AsyncIterator[Emulator]:
    models = {"sh": ModelProfile(latency_ms=250), "rt": ModelProfile(latency_ms=5),
              "broken": ModelProfile(latency_ms=1, error_rate=1.0)}
    async with Emulator(EmulatorConfig(models=models, seed=1)) as emu:
        yield emu


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def redis_server() -> AsyncIterator[RedisServer]:
    """A Redis of the module's own (the last test stops it under load)."""
    if redis_server_bin() is None:
        pytest.skip("redis-server not installed (scripts/services.sh installs it)")
    server = RedisServer()
    yield server
    server.kill()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(emulator: Emulator, prefix: str, redis_server: RedisServer,
               tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d: Path = tmp_path_factory.mktemp("pair")
    cars = [Sidecar(sidecar_config(emulator.url, redis_server.url, prefix), workers=2, directory=d) for _ in range(2)]
    try:
        for c in cars:
            await asyncio.to_thread(c.wait_ready)
        yield cars
    finally:
        for c in cars:
            c.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield r
    await r.aclose()


async def test_the_backend_never_sees_more_than_the_limit_across_replicas_and_workers(pair, emulator):
    load = Load([c.address for c in pair])
    try:
        emulator.reset_stats()
        got = await load.run("alpha question", calls=120, concurrency=32)
        stats = await load.stats()
    finally:
        await load.close()
    sh = emulator.stats()["sh"]
    # Four processes with a local limit of 4 each would let 16 through at once.
    assert 1 <= sh.peak_concurrent <= LIMIT, (sh, got)
    assert got["OK"] >= LIMIT, got
    # Every call is answered or refused cleanly; the refusals are the shared limit's.
    assert set(got) <= {"OK", "RESOURCE_EXHAUSTED", "why:shared", "why:other"}, got
    assert got["RESOURCE_EXHAUSTED"] > 0 and got["why:shared"] == got["RESOURCE_EXHAUSTED"], got
    assert got["OK"] + got["RESOURCE_EXHAUSTED"] == 120
    # Each worker reports the shared store and which worker it is.
    seen = {(s.shared_state.backend, s.shared_state.connected, s.shared_state.workers) for s in stats}
    assert seen == {("redis", True, 2)}, seen
    assert {s.shared_state.worker for s in stats} <= {0, 1}


async def test_a_providers_rpm_is_never_exceeded_across_replicas(pair, emulator):
    load = Load([c.address for c in pair])
    try:
        emulator.reset_stats()
        got = await load.run("beta question", calls=3 * RPM, concurrency=8)
    finally:
        await load.close()
    rt = emulator.stats()["rt"]
    # Within one minute: at most RPM reach the provider, the rest are refused.
    assert rt.requests <= RPM, (rt, got)
    assert got["OK"] == rt.requests >= 1, (rt, got)
    assert got["RESOURCE_EXHAUSTED"] == 3 * RPM - got["OK"], got


async def test_a_breaker_opened_by_one_sidecar_opens_in_every_worker_of_the_other(pair, emulator):
    one, other = pair
    load = Load([one.address])
    watch = Load([other.address])
    try:
        got = await load.run("gamma question", calls=24, concurrency=4)
        assert got["OK"] == 0, got  # the backend always fails
        emulator.reset_stats()
        states: set[int] = set()
        for _ in range(60):  # bounded: the sync runs every second
            states = {i.breaker_state for s in await watch.stats() for k in s.skills if k.skill == "flaky"
                      for i in k.implementations}
            if states == {pb.BREAKER_STATE_OPEN}:
                break
            await asyncio.sleep(0.1)
        reasons = await watch.run("gamma question", calls=4, concurrency=2)
    finally:
        await load.close()
        await watch.close()
    assert states == {pb.BREAKER_STATE_OPEN}
    # The other sidecar never called the failing backend: it learned it.
    assert emulator.stats()["broken"].requests == 0
    assert reasons["OK"] == 0 and reasons["UNAVAILABLE"] + reasons["RESOURCE_EXHAUSTED"] == 4, reasons


async def test_a_dead_worker_is_restarted(pair):
    car = pair[1]
    first = car.worker_pids()
    assert len(first) == 2
    os.kill(first[0], 9)
    pids: list[int] = []
    for _ in range(300):  # bounded: until the replacement serves
        pids = car.worker_pids()
        if any("serving again" in line for line in car.lines):
            break
        await asyncio.sleep(0.1)
    assert len(pids) == 2 and first[0] not in pids and first[1] in pids, car.lines[-10:]
    assert not _alive(first[0])
    assert any("died; restarting" in line for line in car.lines)
    assert any("serving again" in line for line in car.lines)


async def test_a_killed_sidecars_slots_return_within_the_lease(pair, emulator, prefix, redis_client):
    victim, survivor = pair
    key = f"{{{prefix}:shared}}:slots"
    victim_pids = {str(p) for p in victim.worker_pids()}
    assert len(victim_pids) == 2
    load = Load([victim.address])
    flood = asyncio.create_task(load.run("alpha question", calls=200, concurrency=16, timeout_s=5))
    # Bounded: wait until the victim holds leases, then kill it (supervisor and workers) at once.
    held: list[tuple[str, float]] = []
    for _ in range(200):
        held = [(m, s) for m, s in await redis_client.zrange(key, 0, -1, withscores=True)
                if m.split(":")[1] in victim_pids]
        if held:
            break
        await asyncio.sleep(0.02)
    assert held, "the victim never took a slot"
    victim.kill()
    killed_at = float((await redis_client.time())[0])
    await asyncio.gather(flood, return_exceptions=True)
    await load.close()
    leases = [(m, s) for m, s in await redis_client.zrange(key, 0, -1, withscores=True)
              if m.split(":")[1] in victim_pids]
    # Orphaned leases expire at most LEASE_S after they were taken (Redis time, not ours).
    assert all(s <= killed_at + LEASE_S + 1 for _, s in leases), (leases, killed_at)
    # The survivor gets every slot back: a burst reaches the whole limit at the backend.
    survivor_load = Load([survivor.address])
    peak = 0
    try:
        for _ in range(int(LEASE_S / 0.5) + 6):  # bounded: past the lease, with slack
            emulator.reset_stats()
            await survivor_load.run("alpha question", calls=2 * LIMIT, concurrency=2 * LIMIT)
            peak = emulator.stats()["sh"].peak_concurrent
            if peak == LIMIT:
                break
            await asyncio.sleep(0.5)
    finally:
        await survivor_load.close()
    assert peak == LIMIT
    remaining = [m for m in await redis_client.zrange(key, 0, -1) if m.split(":")[1] in victim_pids]
    assert remaining == []


async def test_stopping_redis_under_load_every_query_is_answered_or_refused(pair, redis_server):
    car = pair[1]  # the survivor of the test before
    load = Load([car.address])
    try:
        flood = asyncio.create_task(load.run("alpha question", calls=120, concurrency=16, timeout_s=8))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.kill)
        got = await flood
        after = await load.run("alpha question", calls=16, concurrency=8, timeout_s=8)
        stats = await load.stats()
        health = await load.health("router.v1.RouterService/shared-state")
    finally:
        await load.close()
    assert set(got) <= {"OK", "RESOURCE_EXHAUSTED", "why:shared", "why:other"}, got
    assert got["OK"] + got["RESOURCE_EXHAUSTED"] == 120
    assert after["OK"] >= 1 and set(after) <= {"OK", "RESOURCE_EXHAUSTED", "why:shared", "why:other"}, after
    down = [s.shared_state for s in stats if not s.shared_state.connected]
    assert down and all(d.backend == "redis" and d.detail and d.fallbacks > 0 for d in down), stats
    from grpc_health.v1 import health_pb2
    assert health_pb2.HealthCheckResponse.NOT_SERVING in health
    assert any("unreachable" in line and "local limits" in line for line in car.lines)
    assert car.stop() == 0, car.lines[-20:]


def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_without_redis_the_limit_is_split_among_workers_and_they_outlive_no_supervisor(emulator, tmp_path):
    cfg = sidecar_config(emulator.url, "redis://unused", "split")
    del cfg["state"]
    car = Sidecar(cfg, workers=2, directory=tmp_path)
    try:
        await asyncio.to_thread(car.wait_ready)
        load = Load([car.address])
        try:
            emulator.reset_stats()
            got = await load.run("alpha question", calls=60, concurrency=16)
            stats = await load.stats()
        finally:
            await load.close()
        sh = emulator.stats()["sh"]
        assert 1 <= sh.peak_concurrent <= LIMIT, (sh, got)  # 2 + 2, not 4 + 4
        assert {(s.shared_state.backend, s.shared_state.workers) for s in stats} == {("in_process", 2)}
        assert {k.concurrency_limit for s in stats for k in s.skills if k.skill == "shared"} == {LIMIT // 2}
        workers = car.worker_pids()
        os.kill(car.proc.pid, 9)  # the supervisor alone
        for _ in range(100):  # bounded
            if not any(_alive(p) for p in workers):
                break
            await asyncio.sleep(0.1)
        assert not any(_alive(p) for p in workers)
    finally:
        car.kill()
