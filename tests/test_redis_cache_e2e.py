"""The response cache in Redis (state.redis_url): two sidecars, one Redis,
one emulated backend; an answer paid for by one replica is reused by the
other, and a Redis that is gone is a miss, never a failed query."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from skill_router_client import AsyncRouterClient
from test_stream_e2e import MODELS, _config, repeat

from router.app import build_app
from router.config import parse_config
from router.emulator import Emulator, EmulatorConfig

REDIS_URL = os.environ.get("SKILL_ROUTER_TEST_REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS_URL, reason="SKILL_ROUTER_TEST_REDIS_URL not set (run scripts/services.sh)")


def _with_state(config: Any, url: str, prefix: str) -> Any:
    data = config
    data["state"] = {"redis_url": url, "key_prefix": prefix, "timeout_ms": 200}
    return parse_config(data, "<redis cache tests>", {})


async def test_an_answer_paid_for_by_one_replica_is_reused_by_the_other(tmp_path) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        apps = [build_app(_with_state(_config(emu.url, str(tmp_path / f"m{i}.db"), raw=True), REDIS_URL, prefix),
                          "127.0.0.1:0") for i in range(2)]
        for a in apps:
            await a.start()
        try:
            async with AsyncRouterClient(apps[0].address, timeout=10) as one, \
                    AsyncRouterClient(apps[1].address, timeout=10) as two:
                first = await one.execute("what does the shared cache do?", context=repeat("pro"))
                second = await two.execute("what does the shared cache do?", context=repeat("pro"))
        finally:
            for a in apps:
                await a.stop(1)
    a, b = ({r.skill: r for r in x.results} for x in (first, second))
    assert not a["cachey"].cached and b["cachey"].cached and b["cachey"].output == a["cachey"].output
    assert b["cachey"].cost_usd == 0 and b["cachey"].cache_saved_usd == pytest.approx(0.04)
    assert emu.stats()["cachey"].requests == 1  # paid for once, across both replicas
    assert not b["fresh"].cached and emu.stats()["fresh"].requests == 2  # the skill that opted out


async def test_a_redis_that_is_gone_is_a_miss_not_a_failure(tmp_path) -> None:
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        app = build_app(_with_state(_config(emu.url, str(tmp_path / "m.db"), raw=True), dead, "gone"), "127.0.0.1:0")
        await app.start()
        try:
            async with AsyncRouterClient(app.address, timeout=10) as c:
                resps = [await c.execute("asked twice", context=repeat("pro")) for _ in range(2)]
        finally:
            await app.stop(1)
    assert all({r.skill: r for r in x.results}["cachey"].status == 1 for x in resps)  # SKILL_STATUS_OK
    assert not any(r.cached for x in resps for r in x.results)
    assert emu.stats()["cachey"].requests == 2
