"""The call corridor end to end: the real sidecar on an ephemeral loopback
port, real emulated backends, through the Python client. One test per
behaviour issue 8 changed (the fallback's is in test_server and
test_admission_e2e)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest
from skill_router_client import AsyncRouterClient
from support.configs import config_data

from router.app import build_app
from router.config import parse_config
from router.emulator import ModelProfile
from router.v1 import router_pb2 as pb

WAIT_S = 15.0
ONLY_KIMI = dict(force_skills=["kimiK2"], top_k=1, exclude_skills=["trm", "gepa", "ace", "legal", "flaky", "slow"])
ONLY_FLAKY = dict(force_skills=["flaky"], top_k=1, exclude_skills=["kimiK2", "trm", "gepa", "ace", "legal", "slow"])
ONLY_SLOW = dict(force_skills=["slow"], top_k=1, exclude_skills=["kimiK2", "trm", "gepa", "ace", "legal", "flaky"])
NOTHING = dict(exclude_skills=["kimiK2", "trm", "gepa", "ace", "legal", "flaky", "slow"])


@contextlib.asynccontextmanager
async def sidecar(data: dict[str, Any]):  # type: ignore[no-untyped-def]
    app = build_app(parse_config(data, "<corridor tests>", {}), "127.0.0.1:0")
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=30) as client:
            yield app, client
    finally:
        await app.stop(2)


async def kimi_impl(client: AsyncRouterClient, name: str) -> pb.ImplementationStats:
    s = await client.stats()
    kimi = next(x for x in s.skills if x.skill == "kimiK2")
    return next(i for i in kimi.implementations if i.name == name)


async def test_the_callers_deadline_never_opens_a_breaker(emulator) -> None:
    # A healthy backend slower than the callers' deadlines: five callers give
    # up; the breaker (2 failures in a row would open it) stays closed and a
    # patient caller is served.
    data = config_data(emulator.url, admission={"breaker": {"failure_threshold": 2, "window": 4, "min_calls": 4},
                                                "retry": {"max_attempts": 1}})
    ctx = dict(required_quality=0.95, **ONLY_KIMI)  # tongyi: the only one meeting the floor
    async with sidecar(data) as (app, client):
        emulator.set_profile("tongyi", ModelProfile(latency_ms=700))
        impatient = [client.execute("slow answer", timeout=0.25, **ctx) for _ in range(5)]
        errors = await asyncio.wait_for(asyncio.gather(*impatient, return_exceptions=True), WAIT_S)
        assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                   for e in errors), errors
        tongyi = await kimi_impl(client, "tongyi-deepresearch")
        assert tongyi.breaker_state == pb.BREAKER_STATE_CLOSED and tongyi.consecutive_failures == 0
        resp = await asyncio.wait_for(client.execute("patient", timeout=10, **ctx), WAIT_S)
        assert resp.results[0].status == pb.SKILL_STATUS_OK
        assert resp.results[0].implementation == "tongyi-deepresearch"
        s = await client.stats()
        assert s.totals.outcomes["deadline"] == 5 and s.totals.outcomes["ok"] == 1


async def test_every_execute_is_counted_once_with_its_outcome_and_totals_agree_with_the_window(emulator) -> None:
    data = config_data(emulator.url, storage={"sqlite_path": ":memory:", "flush_interval_s": 0.05})
    async with sidecar(data) as (app, client):
        ok = await client.execute("fine", domain="research", complexity=6)
        partial = await client.execute("flaky question", force_skills=["flaky", "trm"],
                                       exclude_skills=["kimiK2", "gepa", "ace", "legal", "slow"])
        assert (ok.outcome, partial.outcome) == (pb.QUERY_OUTCOME_OK, pb.QUERY_OUTCOME_PARTIAL)
        codes = []
        for kw in (ONLY_FLAKY, NOTHING, dict(ONLY_SLOW, timeout=0.3)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.execute("flaky slow question", **kw)
            codes.append(info.value.code())
        assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                         grpc.StatusCode.DEADLINE_EXCEEDED]
        # A caller that goes away: cancelled, and still counted.
        emulator.pause("trm")
        call = asyncio.ensure_future(client.execute("going away", force_skills=["trm"], top_k=1,
                                                    exclude_skills=["kimiK2", "gepa", "ace", "legal", "flaky"]))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        async def counted() -> bool:
            return (await client.stats()).totals.queries == 6
        while not await counted():
            await asyncio.sleep(0.01)
        emulator.resume("trm")
        assert app.store is not None
        await app.store.flush()
        s = await client.stats()
        t, w = s.totals, s.window
        want = {"ok": 1, "partial": 1, "failed": 1, "unrouted": 1, "deadline": 1, "cancelled": 1}
        assert dict(t.outcomes) == want and dict(w.outcomes) == want
        assert (t.queries, t.answered, t.failed_queries) == (6, 2, 4)
        assert (w.queries, w.answered, w.errors) == (6, 2, 4)
        # Savings only for the answered ones, and the same in both views.
        assert t.cost_saved_usd == pytest.approx(ok.cost.saved_usd + partial.cost.saved_usd)
        assert w.cost_saved_usd == pytest.approx(t.cost_saved_usd)
        assert t.avg_quality == pytest.approx((ok.quality + partial.quality) / 2)
        assert w.avg_quality == pytest.approx(t.avg_quality)
        assert w.avg_cost_per_query_usd == pytest.approx(t.avg_cost_per_query_usd)


async def test_route_lists_a_bounded_number_of_rejections_unless_asked(emulator) -> None:
    # 60 more skills in ten domains: a query scores only its domain's.
    data = config_data(emulator.url)
    for i in range(60):
        data["skills"][f"extra{i:02d}"] = {
            "priority": 2, "activation": {"domains": [f"area{i % 10}"]},
            "implementations": [{"name": "e", "backend": "openai", "url": emulator.url, "model": "gemini",
                                 "quality": 0.9, "cost_per_query": 0.01, "expected_latency_ms": 100}]}
    async with sidecar(data) as (app, client):
        resp = await client.route("q", domain="area3", complexity=5)
        total = len(data["skills"])
        assert len(resp.rejections) == 20
        assert len(resp.selections) + len(resp.rejections) + resp.rejections_omitted == total
        full = await client.route("q", domain="area3", complexity=5, explain_all=True)
        assert full.rejections_omitted == 0 and len(full.selections) + len(full.rejections) == total
        assert {s.skill for s in full.selections} == {s.skill for s in resp.selections}
        execute = await client.execute("q", domain="area3", complexity=5)
        assert len(execute.rejections) == 20 and execute.rejections_omitted == total - 20 - len(execute.selections)
