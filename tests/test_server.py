"""End-to-end: the real sidecar on an ephemeral loopback port, real emulated
backends on loopback, through the Python client and the generated stubs."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sys
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skill_router_client import AsyncRouterClient, RouterClient, build_context, error_details
from support.configs import MODELS, make_config

from router.app import build_app
from router.emulator import Emulator, EmulatorConfig
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc


async def test_health_is_serving_once_warm(app) -> None:
    async with grpc.aio.insecure_channel(app.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "router.v1.RouterService"):
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_not_serving_until_warm(config) -> None:
    a = build_app(config, "127.0.0.1:0")
    await a.server.start()  # listening, pools not warmed yet
    try:
        async with grpc.aio.insecure_channel(a.address) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await a.stop(0)


@pytest.mark.parametrize("complexity,max_skills", [(2, 3), (8, 5)])
async def test_route_applies_dynamic_k_and_calls_no_backend(client, emulator, complexity, max_skills) -> None:
    resp = await client.route("a research question", domain="research", complexity=complexity)
    assert resp.k == max_skills
    assert 1 <= len(resp.selections) <= max_skills
    assert resp.query_id and resp.moe_enabled
    ranks = [s.parts.rank_score for s in resp.selections]
    assert ranks == sorted(ranks, reverse=True)
    for s in resp.selections:
        impl = s.implementation.implementation
        assert impl.name and impl.model and impl.quality > 0 and s.implementation.reason
        assert s.parts.activated and s.score > 0
    chosen = {s.skill for s in resp.selections}
    rejected = {r.skill: r for r in resp.rejections}
    assert chosen | set(rejected) == {"kimiK2", "trm", "gepa", "ace", "legal", "flaky", "slow"}
    assert rejected["legal"].reason == pb.REJECTION_REASON_NOT_ACTIVATED and "domain" in rejected["legal"].detail
    assert sum(st.requests for st in emulator.stats().values()) == 0


async def test_route_picks_implementation_by_quality_floor(client) -> None:
    for floor, expected in [(0.85, "gemini-flash"), (0.9, "nvidia-nemotron"), (0.95, "tongyi-deepresearch")]:
        resp = await client.route("q", domain="research", complexity=6, required_quality=floor, force_skills=["kimiK2"])
        sel = next(s for s in resp.selections if s.skill == "kimiK2")
        assert sel.implementation.implementation.name == expected
        assert sel.implementation.meets_quality_floor
    resp = await client.route("q", domain="research", required_quality=0.99, force_skills=["kimiK2"])
    sel = next(s for s in resp.selections if s.skill == "kimiK2")
    assert sel.implementation.implementation.name == "tongyi-deepresearch"
    assert not sel.implementation.meets_quality_floor and "quality floor" in sel.implementation.reason


async def test_execute_synthesizes_and_keeps_the_ledger(client, emulator) -> None:
    resp = await client.execute("explain vector search", domain="research", complexity=6)
    assert len(resp.results) == len(resp.selections) >= 2
    assert all(r.status == pb.SKILL_STATUS_OK for r in resp.results)
    assert [r.skill for r in resp.results] == [s.skill for s in resp.selections]
    assert math.isclose(sum(r.weight for r in resp.results), 1.0)
    for r in resp.results:
        assert f"### {r.skill} (weight: {r.weight:.2f})" in resp.text
        assert r.output and r.cost_usd > 0 and r.latency_ms > 0
    assert "vector search" in resp.text  # the emulator echoes the query
    c = resp.cost
    assert math.isclose(c.actual_usd, sum(r.cost_usd for r in resp.results))
    assert c.baseline_usd >= c.actual_usd and math.isclose(c.saved_usd, c.baseline_usd - c.actual_usd)
    assert c.baseline_skills >= len(resp.results)
    t = resp.timing
    assert t.total_us >= t.execution_us > 0 and t.selection_us >= 0
    assert 0.8 < resp.quality <= 1.0
    assert sum(st.requests for st in emulator.stats().values()) == len(resp.results)


async def test_generated_stubs_work_directly(app) -> None:
    async with grpc.aio.insecure_channel(app.address) as ch:
        stub = pb_grpc.RouterServiceStub(ch)
        req = pb.ExecuteRequest(query="hello", context=pb.QueryContext(domain="code", complexity=3.0, top_k=2))
        resp = await stub.Execute(req, timeout=10)
        assert len(resp.selections) == 2 and resp.text
        stats = await stub.Stats(pb.StatsRequest(), timeout=10)
        assert stats.totals.queries == 1


async def test_sync_client_in_thread(app) -> None:
    def call() -> pb.RouteResponse:
        with RouterClient(app.address, timeout=10) as c:
            return c.route("hi", complexity=1)

    resp = await asyncio.to_thread(call)
    assert resp.k == 3


async def test_stats_counts_calls_and_totals(client) -> None:
    for _ in range(3):
        await client.execute("write a parser", domain="code", complexity=4)
    await client.route("only routing", domain="code")
    s = await client.stats()
    assert s.totals.queries == 3 and s.totals.routes == 1
    by = {x.skill: x for x in s.skills}
    assert list(by) == ["kimiK2", "trm", "gepa", "ace", "legal", "flaky", "slow"]
    assert by["kimiK2"].concurrency_limit == 5 and by["gepa"].concurrency_limit == 3
    called = [x for x in s.skills if x.calls]
    assert called and all(x.success_rate == 1.0 and x.latency_p99_ms >= x.latency_p50_ms > 0 for x in called)
    assert s.totals.avg_skills_per_query >= 1 and s.totals.cost_saved_usd >= 0


BAD_INPUTS = [
    ("empty query", dict(query=""), "query", grpc.StatusCode.INVALID_ARGUMENT),
    ("blank query", dict(query="   "), "query", grpc.StatusCode.INVALID_ARGUMENT),
    ("huge query", dict(query="x" * 100_001), "query", grpc.StatusCode.INVALID_ARGUMENT),
    ("complexity < 0", dict(complexity=-0.5), "context.complexity", grpc.StatusCode.INVALID_ARGUMENT),
    ("complexity > 10", dict(complexity=10.5), "context.complexity", grpc.StatusCode.INVALID_ARGUMENT),
    ("complexity NaN", dict(complexity=float("nan")), "context.complexity", grpc.StatusCode.INVALID_ARGUMENT),
    ("quality > 1", dict(required_quality=1.5), "context.required_quality", grpc.StatusCode.INVALID_ARGUMENT),
    ("quality < 0", dict(required_quality=-0.1), "context.required_quality", grpc.StatusCode.INVALID_ARGUMENT),
    ("top_k 0", dict(top_k=0), "context.top_k", grpc.StatusCode.INVALID_ARGUMENT),
    ("top_k 33", dict(top_k=33), "context.top_k", grpc.StatusCode.INVALID_ARGUMENT),
    ("top_k negative", dict(top_k=-1), "context.top_k", grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown forced skill", dict(force_skills=["trm", "nope"]), "context.force_skills[1]", grpc.StatusCode.NOT_FOUND),
    ("unknown excluded skill", dict(exclude_skills=["nope"]), "context.exclude_skills[0]", grpc.StatusCode.NOT_FOUND),
    ("forced and excluded", dict(force_skills=["trm"], exclude_skills=["trm"]), "context.exclude_skills",
     grpc.StatusCode.INVALID_ARGUMENT),
    ("too much metadata", dict(metadata={f"k{i}": "v" for i in range(65)}), "context.metadata",
     grpc.StatusCode.INVALID_ARGUMENT),
    ("unknown priority", dict(priority=99), "context.priority", grpc.StatusCode.INVALID_ARGUMENT),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_sidecar():  # type: ignore[no-untyped-def]
    """One emulator and one sidecar for every bad-input case: none of them
    reaches a backend or changes the sidecar's state."""
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        a = build_app(make_config(emu.url), "127.0.0.1:0")
        await a.start()
        try:
            async with AsyncRouterClient(a.address, timeout=10) as c:
                yield emu, c
        finally:
            await a.stop(1)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("rpc", ["route", "execute"])
@pytest.mark.parametrize("case,kw,field,code", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_names_the_field(shared_sidecar, rpc, case, kw, field, code) -> None:
    emulator, client = shared_sidecar
    kw = dict(kw)
    query = kw.pop("query", "a fine query")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(client, rpc)(query, context=build_context(**kw))
    d = error_details(info.value)
    assert d.code == code, d
    assert d.field == field and field in d.message
    assert sum(st.requests for st in emulator.stats().values()) == 0  # nothing was called


async def test_a_failing_skill_is_replaced_by_the_next_best_and_the_query_answers(client) -> None:
    resp = await client.execute("flaky question", domain="general", complexity=5, force_skills=["flaky"])
    assert resp.outcome == pb.QUERY_OUTCOME_OK
    assert "flaky" not in {r.skill for r in resp.results}
    (shed,) = [s for s in resp.shed if s.skill == "flaky"]
    assert shed.reason == pb.SHED_REASON_CALL_FAILED and shed.implementation == "broken" and "500" in shed.detail
    (stand_in,) = [r for r in resp.results if r.stepped_in_for == "flaky/broken"]
    assert stand_in.skill == shed.replaced_by and stand_in.implementation == shed.replaced_by_implementation
    assert stand_in.step_in_reason == pb.SHED_REASON_CALL_FAILED and stand_in.status == pb.SKILL_STATUS_OK
    assert [s.skill for s in resp.selections] == [r.skill for r in resp.results]
    ok = [r for r in resp.results if r.status == pb.SKILL_STATUS_OK]
    assert ok == list(resp.results) and "### flaky" not in resp.text
    assert math.isclose(resp.cost.actual_usd, sum(r.cost_usd for r in ok))
    s = await client.stats()
    assert next(x for x in s.skills if x.skill == "flaky").failures == 1


ALL_BUT_FLAKY = ["kimiK2", "trm", "gepa", "ace", "legal", "slow"]


async def test_a_failing_skill_with_nobody_to_step_in_leaves_a_partial_answer(client) -> None:
    resp = await client.execute("flaky question", complexity=5, force_skills=["flaky", "trm"],
                                exclude_skills=["kimiK2", "gepa", "ace", "legal", "slow"])
    by = {r.skill: r for r in resp.results}
    assert resp.outcome == pb.QUERY_OUTCOME_PARTIAL
    assert by["flaky"].status == pb.SKILL_STATUS_FAILED and "500" in by["flaky"].error
    assert by["flaky"].cost_usd == 0 and not by["flaky"].output
    assert by["trm"].status == pb.SKILL_STATUS_OK and "### flaky" not in resp.text


async def test_every_skill_failing_is_unavailable_with_each_error(client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.execute("flaky", force_skills=["flaky"], top_k=1, exclude_skills=ALL_BUT_FLAKY)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "flaky" in info.value.details() and "500" in info.value.details()
    s = await client.stats()
    assert s.totals.failed_queries == 1


async def test_a_slow_skill_cut_by_the_callers_deadline_while_the_others_answer(client) -> None:
    resp = await client.execute("slow question", complexity=5, force_skills=["slow"], timeout=1.0)
    by = {r.skill: r for r in resp.results}
    assert by["slow"].status == pb.SKILL_STATUS_DEADLINE_EXCEEDED
    assert resp.outcome == pb.QUERY_OUTCOME_PARTIAL
    assert any(r.status == pb.SKILL_STATUS_OK for r in resp.results)


async def test_exceeded_deadline(client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.execute("slow", force_skills=["slow"], top_k=1, timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_moe_disabled_runs_every_activated_skill_with_defaults(emulator) -> None:
    cfg = make_config(emulator.url, env={"BRAIN_MOE_ENABLED": "false"})
    a = build_app(cfg, "127.0.0.1:0")
    await a.start()
    try:
        async with AsyncRouterClient(a.address, timeout=10) as c:
            resp = await c.execute("a research question", domain="research", complexity=8)
    finally:
        await a.stop(0)
    assert not resp.moe_enabled
    assert {r.skill for r in resp.results} == {"kimiK2", "trm", "gepa", "ace"}
    kimi = next(r for r in resp.results if r.skill == "kimiK2")
    assert kimi.implementation == "tongyi-deepresearch"
    assert math.isclose(resp.cost.baseline_usd, resp.cost.actual_usd)


async def test_graceful_shutdown_finishes_in_flight_calls(emulator, config) -> None:
    a = build_app(config, "127.0.0.1:0")
    await a.start()
    emulator.pause()  # every model holds its requests until resumed
    async with AsyncRouterClient(a.address, timeout=20) as c:
        call = asyncio.create_task(c.execute("in flight", domain="code", complexity=2))
        while not any(st.concurrent for st in emulator.stats().values()):
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(a.address) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(a.stop(10))
            second = await watch.read()  # health goes NOT_SERVING first
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.execute("new call", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        emulator.resume()
        resp = await call
        await stopping
    assert resp.text and all(r.status == pb.SKILL_STATUS_OK for r in resp.results)


async def _run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_grpcurl_lists_and_calls_through_reflection(app) -> None:
    grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    rc, out, err = await _run(grpcurl, "-plaintext", app.address, "list")
    assert rc == 0, err
    assert "router.v1.RouterService" in out and "grpc.health.v1.Health" in out
    req = json.dumps({"query": "hello", "context": {"domain": "code", "complexity": 3}})
    rc, out, err = await _run(grpcurl, "-plaintext", "-d", req, app.address, "router.v1.RouterService/Route")
    assert rc == 0, err
    body = json.loads(out)
    assert body["selections"] and body["k"] == 3
