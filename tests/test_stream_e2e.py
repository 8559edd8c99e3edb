"""ExecuteStream and the response cache end to end: the real sidecar on a
loopback port, a real emulated backend that streams server-sent events, and
the Python client. One emulator and one sidecar for the module."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import grpc
import pytest
import pytest_asyncio
from skill_router_client import AsyncRouterClient, RouterClient, pb

from router.app import build_app
from router.config import parse_config
from router.emulator import Emulator, EmulatorConfig, ModelProfile

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODELS = {
    # Streams its answer a word every 5 ms after 5 ms.
    "quick": ModelProfile(latency_ms=5, token_ms=5),
    # An http skill: answers whole.
    "whole": ModelProfile(latency_ms=5),
    # The slowest skill: the tests hold it with ``emulator.pause``.
    "slowpoke": ModelProfile(latency_ms=5),
    # Breaks its stream off after two words.
    "breaky": ModelProfile(latency_ms=5, token_ms=1, stream_break_after=2),
    "cachey": ModelProfile(latency_ms=5),
    "fresh": ModelProfile(latency_ms=5),
    "failing": ModelProfile(latency_ms=1, error_rate=1.0),
}


def _impl(name: str, backend: str, url: str, model: str, cost: float) -> dict[str, Any]:
    return {"name": name, "backend": backend, "url": url if backend == "openai" else f"{url}/models/{model}",
            "model": model, "quality": 0.9, "cost_per_query": cost, "expected_latency_ms": 100}


def _config(url: str, sqlite_path: str, *, raw: bool = False):  # type: ignore[no-untyped-def]
    def sk(model: str, backend: str, cost: float, keyword: str, **extra: Any) -> dict[str, Any]:
        return {"activation": {"keywords": [keyword]}, "implementations": [_impl(f"{model}-impl", backend, url, model,
                                                                                  cost)], **extra}

    off = {"cache": {"enabled": False}}  # the streaming tests compare calls, not cache hits
    skills = {
        "quick": sk("quick", "openai", 0.01, "stream", **off),
        "whole": sk("whole", "http", 0.02, "stream", **off),
        "slowpoke": sk("slowpoke", "openai", 0.03, "stream", **off),
        "breaky": sk("breaky", "openai", 0.01, "breaks", **off),
        "cachey": sk("cachey", "http", 0.04, "repeat"),  # cache.enabled: the global default
        "fresh": sk("fresh", "http", 0.02, "repeat", **off),  # its answers depend on time: opts out
        "failing": sk("failing", "http", 0.01, "failing"),
    }
    data = {"skills": skills, "storage": {"sqlite_path": sqlite_path},
            "server": {"grace_period_s": 2, "admin_listen": None},
            "cache": {"enabled": True, "ttl_s": 600, "max_entries": 100},
            "admission": {"retry": {"max_attempts": 1}}}
    return data if raw else parse_config(data, "<stream tests>", {})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar(tmp_path_factory):  # type: ignore[no-untyped-def]
    path = str(tmp_path_factory.mktemp("stream") / "metrics.db")
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        a = build_app(_config(emu.url, path), "127.0.0.1:0")
        await a.start()
        try:
            async with AsyncRouterClient(a.address, timeout=10) as c:
                yield emu, a, c
        finally:
            await a.stop(1)


THREE = dict(domain="general", complexity=5, force_skills=["quick", "whole", "slowpoke"])


async def test_the_first_delta_reaches_the_client_before_the_slowest_skill_has_answered(sidecar) -> None:
    emu, _, client = sidecar
    emu.pause("slowpoke")  # the slowest skill answers only when the test lets it
    events: list[Any] = []
    held_when_first_delta_arrived = None
    try:
        async for ev in client.execute_stream("stream me an answer", **THREE):
            events.append(ev)
            if ev.WhichOneof("event") == "delta" and held_when_first_delta_arrived is None:
                held_when_first_delta_arrived = emu.stats()["slowpoke"].concurrent == 1 and not _results(events)
                emu.resume("slowpoke")
    finally:
        emu.resume("slowpoke")
    kinds = [e.WhichOneof("event") for e in events]
    assert held_when_first_delta_arrived is True  # slowpoke was still in flight, nothing had answered
    first_delta = kinds.index("delta")
    slow_result = next(i for i, e in enumerate(events)
                       if e.WhichOneof("event") == "skill_result" and e.skill_result.skill == "slowpoke")
    assert kinds[0] == "routed" and first_delta < slow_result and kinds[-1] == "done"
    assert kinds.count("done") == 1 and kinds.count("routed") == 1
    routed, done = events[0].routed, events[-1].done
    assert {s.skill for s in routed.selections} == {"quick", "whole", "slowpoke"}
    # The deltas of the streaming skill add up to its answer; the http skill answers whole.
    quick_text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta" and e.delta.skill == "quick")
    by_skill = {r.skill: r for r in done.results}
    assert quick_text == by_skill["quick"].output and quick_text.startswith("quick answers: stream me")
    assert {e.delta.skill for e in events if e.WhichOneof("event") == "delta"} == {"quick", "slowpoke"}
    assert {e.skill_result.skill for e in events if e.WhichOneof("event") == "skill_result"} == set(by_skill)
    assert done.query_id == routed.query_id and done.outcome == pb.QUERY_OUTCOME_OK
    assert math.isclose(done.cost.actual_usd, 0.06)
    elapsed = [e.elapsed_ms for e in events]
    assert elapsed == sorted(elapsed)


def _results(events: list[Any]) -> set[str]:
    return {e.skill_result.skill for e in events if e.WhichOneof("event") == "skill_result"}


async def test_the_streams_last_event_is_what_execute_returns(sidecar) -> None:
    _, _, client = sidecar
    unary = await client.execute("the same question", **THREE)
    events = [ev async for ev in client.execute_stream("the same question", **THREE)]
    done = events[-1].done
    assert events[-1].WhichOneof("event") == "done"

    def shape(r: pb.ExecuteResponse) -> Any:
        return (r.text, [(x.skill, x.implementation, x.status, x.output, x.cost_usd, x.weight) for x in r.results],
                [s.skill for s in r.selections], r.cost.actual_usd, r.cost.baseline_usd, r.quality, r.k, r.outcome)

    assert shape(done) == shape(unary) and done.query_id != unary.query_id


async def test_a_stream_that_breaks_midway_fails_that_skill_only(sidecar) -> None:
    _, _, client = sidecar
    events = [ev async for ev in client.execute_stream("it breaks", domain="general", complexity=5,
                                                          force_skills=["breaky", "whole"])]
    deltas = [e.delta.text for e in events if e.WhichOneof("event") == "delta" and e.delta.skill == "breaky"]
    assert deltas == ["breaky", " answers:"]  # what came before the break reached the client
    (broke,) = [e.skill_result for e in events if e.WhichOneof("event") == "skill_result"
                and e.skill_result.skill == "breaky"]
    assert broke.status == pb.SKILL_STATUS_FAILED and "stream" in broke.error
    done = events[-1].done
    assert any(r.skill == "whole" and r.status == pb.SKILL_STATUS_OK for r in done.results)
    assert done.outcome in (pb.QUERY_OUTCOME_OK, pb.QUERY_OUTCOME_PARTIAL)


async def test_cancelling_the_stream_cancels_the_open_backend_requests_and_records_cancelled(sidecar) -> None:
    emu, app, client = sidecar
    before = app.registry.totals.outcomes["cancelled"]
    emu.pause("slowpoke")
    try:
        stream = client.execute_stream("stream then hang up", **THREE)
        async for ev in stream:
            if ev.WhichOneof("event") == "skill_result" and ev.skill_result.skill == "quick":
                break  # the user closed the page
        await stream.aclose()
        for _ in range(500):  # the sidecar notices the cancellation
            if app.registry.totals.outcomes["cancelled"] > before and emu.stats()["slowpoke"].concurrent == 0:
                break
            await asyncio.sleep(0.01)
        assert app.registry.totals.outcomes["cancelled"] == before + 1
        assert emu.stats()["slowpoke"].concurrent == 0  # the backend request was cancelled, not left open
        assert app.pipeline.in_flight == 0
    finally:
        emu.resume("slowpoke")


async def test_errors_come_as_the_streams_status(sidecar) -> None:
    _, _, client = sidecar
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in client.execute_stream("x", domain="general", complexity=5, force_skills=["nope"]):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in client.execute_stream("failing", domain="general", complexity=5, force_skills=["failing"],
                                             top_k=1):
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_sync_client_streams_too(sidecar) -> None:
    _, app, _ = sidecar

    def run() -> list[str]:
        with RouterClient(app.address, timeout=10) as c:
            return [ev.WhichOneof("event") for ev in c.execute_stream("stream sync", **THREE)]

    kinds = await asyncio.to_thread(run)
    assert kinds[0] == "routed" and kinds[-1] == "done" and "delta" in kinds


def repeat(tier: str) -> pb.QueryContext:
    return pb.QueryContext(domain="general", complexity=5, force_skills=["cachey", "fresh"], metadata={"tier": tier})


async def test_a_repeated_question_is_answered_from_the_cache_and_counted(sidecar) -> None:
    emu, app, client = sidecar
    first = await client.execute("what does the cache do?", context=repeat("pro"))
    second = await client.execute("what  does the cache do?", context=repeat("pro"))
    other = await client.execute("what does the cache do?", context=repeat("free"))
    a, b, c = ({r.skill: r for r in x.results} for x in (first, second, other))
    assert not a["cachey"].cached and b["cachey"].cached and not c["cachey"].cached
    assert b["cachey"].cost_usd == 0 and math.isclose(b["cachey"].cache_saved_usd, 0.04)
    assert b["cachey"].output == a["cachey"].output and b["cachey"].implementation == "cachey-impl"
    assert b["cachey"].cache_age_ms >= 0 and b["cachey"].attempts == 0
    assert not b["fresh"].cached and math.isclose(b["fresh"].cost_usd, 0.02)  # opted out
    assert math.isclose(second.cost.actual_usd, 0.02) and math.isclose(second.cost.cache_saved_usd, 0.04)
    assert emu.stats()["cachey"].requests == 2 and emu.stats()["fresh"].requests == 3
    # A hit streams as one whole result.
    events = [ev async for ev in client.execute_stream("what does the cache do?", context=repeat("pro"))]
    (hit,) = [e.skill_result for e in events if e.WhichOneof("event") == "skill_result"
              and e.skill_result.skill == "cachey"]
    assert hit.cached and emu.stats()["cachey"].requests == 2

    stats = await client.stats()
    cachey = next(s for s in stats.skills if s.skill == "cachey")
    assert (cachey.cache_hits, cachey.cache_misses) == (2, 2) and math.isclose(cachey.cache_saved_usd, 0.08)
    fresh = next(s for s in stats.skills if s.skill == "fresh")
    assert (fresh.cache_hits, fresh.cache_misses) == (0, 0)
    assert stats.totals.cache_hits == 2 and math.isclose(stats.totals.cache_saved_usd, 0.08)
    for _ in range(300):  # the metrics store writes in the background
        stats = await client.stats()
        if stats.window.cache_hits.get("cachey") == 2:
            break
        await asyncio.sleep(0.02)
    assert dict(stats.window.cache_hits) == {"cachey": 2} and stats.window.cache_misses["cachey"] == 2
    assert "fresh" not in stats.window.cache_misses  # opted out: never looked up
    assert math.isclose(stats.window.cache_saved_usd, 0.08)


async def test_at_the_deadline_the_stream_ends_with_what_answered_and_the_slow_request_is_cancelled(sidecar) -> None:
    emu, _, client = sidecar
    emu.pause("slowpoke")
    try:
        events: list[Any] = []
        try:
            async for ev in client.execute_stream("stream against the clock", timeout=1.0, **THREE):
                events.append(ev)
        except grpc.aio.AioRpcError as exc:
            # The sidecar answers a little before the deadline; on a busy
            # machine the answer may still arrive after it.
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            done = events[-1].done
            by_skill = {r.skill: r for r in done.results}
            assert by_skill["slowpoke"].status == pb.SKILL_STATUS_DEADLINE_EXCEEDED
            assert by_skill["quick"].status == pb.SKILL_STATUS_OK and done.outcome == pb.QUERY_OUTCOME_PARTIAL
        assert any(e.WhichOneof("event") == "skill_result" and e.skill_result.skill == "quick" for e in events)
        for _ in range(500):
            if emu.stats()["slowpoke"].concurrent == 0:
                break
            await asyncio.sleep(0.01)
        assert emu.stats()["slowpoke"].concurrent == 0
    finally:
        emu.resume("slowpoke")
