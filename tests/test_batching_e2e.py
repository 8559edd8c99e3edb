"""Batching and single flight end to end: the real sidecar on a loopback
port, the real emulated backend on loopback, through the Python client.

Exact states are built with the emulator's pause/resume and the sidecar's
own counters (every wait is bounded); nothing here asserts a duration. The
pattern of most tests: pause the model, send a first query (the skill is
idle, so it goes out at once as a batch of one and is held by the emulator),
then send the others: the skill is busy, so they collect in the batcher
until the batch is full, its window closes or an item's deadline budget is
spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from skill_router_client import AsyncRouterClient, Priority

from router.app import App, build_app
from router.config import parse_config
from router.emulator import Emulator, EmulatorConfig, ModelProfile
from router.v1 import router_pb2 as pb

FAIL = "[emulator:fail]"  # the emulator's default fail marker
WAIT_S = 15.0  # bound of every wait on a state

PRICE_IN, PRICE_OUT = 1e-6, 2e-6


def _impl(name: str, backend: str, model: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "backend": backend, "url": url, "model": model, "quality": 0.9,
            "expected_latency_ms": 100, **kw}


def skills(url: str) -> dict[str, Any]:
    return {
        # http kind, /skill/batch
        "batchy": {"concurrency_limit": 4, "implementations": [
            _impl("batchy-http", "http", "batchy", url, cost_per_query=0.02, batch="http_batch")]},
        # openai kind, vLLM-style /v1/completions with a list of prompts, priced per token
        "vllm": {"concurrency_limit": 4, "implementations": [
            _impl("vllm-local", "openai", "vllm", url, cost_per_query=0.01, batch="openai_completions",
                  price_per_input_token=PRICE_IN, price_per_output_token=PRICE_OUT)]},
        # a backend that cannot batch: single flight only
        "plain": {"concurrency_limit": 4, "implementations": [
            _impl("plain-http", "http", "plain", url, cost_per_query=0.03)]},
        # a second skill for queries that must come back even when their batched skill fails
        "helper": {"concurrency_limit": 16, "implementations": [
            _impl("helper-http", "http", "helper", url, cost_per_query=0.01)]},
        # one permit and no queue: while its batch is in flight, the gate is full
        "narrow": {"concurrency_limit": 1, "queue_depth": 0, "implementations": [
            _impl("narrow-http", "http", "narrow", url, cost_per_query=0.02, batch="http_batch")]},
        # a batchable skill expected to take 1.5 s: its deadline budget leaves little room to wait
        "slowbatch": {"concurrency_limit": 4, "implementations": [
            _impl("slowbatch-http", "http", "slowbatch", url, cost_per_query=0.02, batch="http_batch",
                  expected_latency_ms=1500)]},
    }


MODELS = {name: ModelProfile(latency_ms=2, batch_overhead_ms=2, per_item_ms=0.5)
          for name in ("batchy", "vllm", "plain", "helper", "narrow", "slowbatch")}


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as e:
        yield e


@contextlib.asynccontextmanager
async def sidecar(emu: Emulator, *, window_ms: float = 10_000, max_batch_size: int = 8, enabled: bool = True,
                  env: dict[str, str] | None = None, skill_batching: dict[str, dict[str, Any]] | None = None,
                  **batching: Any) -> AsyncIterator[tuple[App, AsyncRouterClient]]:
    entries = skills(emu.url)
    for name, override in (skill_batching or {}).items():
        entries[name]["batching"] = override
    data = {
        "skills": entries,
        "storage": {"sqlite_path": None},
        "server": {"grace_period_s": 5},
        "batching": {"enabled": enabled, "window_ms": window_ms, "max_batch_size": max_batch_size, **batching},
    }
    app = build_app(parse_config(data, "<test_batching_e2e>", env or {}), "127.0.0.1:0")
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=30) as client:
            yield app, client
    finally:
        await app.stop(1)


async def until(cond: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def gathered(*aws: Any) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*aws), WAIT_S)


def ask(client: AsyncRouterClient, skill: str, text: str, **kw: Any) -> asyncio.Task:
    kw.setdefault("force_skills", [skill])
    kw.setdefault("top_k", len(kw["force_skills"]))
    kw.setdefault("domain", "general")
    kw.setdefault("complexity", 5)
    return asyncio.ensure_future(client.execute(text, **kw))


def concurrent(emu: Emulator, model: str) -> int:
    s = emu.stats().get(model)
    return s.concurrent if s else 0


def batch_stats(app: App, skill: str) -> Any:
    return app.runtimes[skill].batch_stats()


def pending(app: App, skill: str) -> int:
    s = batch_stats(app, skill)
    return s.pending if s else 0


def result(resp: pb.ExecuteResponse, skill: str) -> pb.SkillResult:
    return next(r for r in resp.results if r.skill == skill)


async def skill_stats(client: AsyncRouterClient, skill: str) -> pb.SkillStats:
    return next(s for s in (await client.stats()).skills if s.skill == skill)


async def busy(emu: Emulator, client: AsyncRouterClient, skill: str, model: str) -> asyncio.Task:
    """Pause ``model`` and send a first query to ``skill``: the skill is idle,
    so it goes out at once (a batch of one) and is held by the emulator; the
    skill is busy from then on, until ``emu.resume(model)``."""
    emu.pause(model)
    first = ask(client, skill, "question #0.")
    await until(lambda: concurrent(emu, model) == 1, f"the first {model} request is held by the emulator")
    return first


def question(i: int) -> str:
    return f"question #{i}."


def answers_only(output: str, i: int, n: int) -> bool:
    """The output echoes question i and no other of the n questions."""
    return question(i) in output and not any(question(j) in output for j in range(n) if j != i)


# -- 1, 2: several callers, one backend request, each gets its own answer ---------------------


@pytest.mark.parametrize("skill,model,path", [("batchy", "batchy", "/skill/batch"),
                                              ("vllm", "vllm", "/v1/completions")])
async def test_concurrent_queries_become_one_batch_and_each_caller_gets_its_own_answer(emu, skill, model, path):
    n = 8
    async with sidecar(emu, window_ms=10_000, max_batch_size=n) as (app, client):
        first = await busy(emu, client, skill, model)
        tasks = [ask(client, skill, question(i)) for i in range(1, n + 1)]
        # The skill is busy: the eight collect and go as one full batch.
        await until(lambda: concurrent(emu, model) == 2, "the full batch reaches the emulator")
        emu.resume(model)
        first_resp, *resps = await gathered(first, *tasks)
        st = await skill_stats(client, skill)

    s = emu.stats()[model]
    assert (s.requests, s.batches, s.items) == (2, 2, n + 1)  # 9 queries, 2 backend requests
    assert {r.path for r in emu.received if r.model == model} == {path}
    r0 = result(first_resp, skill)
    assert r0.status == pb.SKILL_STATUS_OK and r0.batch_size == 1 and answers_only(r0.output, 0, n + 1)
    for i, resp in enumerate(resps, start=1):
        r = result(resp, skill)
        assert r.status == pb.SKILL_STATUS_OK, r.error
        assert r.batch_size == n and r.shared_by == 1
        assert answers_only(r.output, i, n + 1), (i, r.output)
        assert question(i) in resp.text
    assert st.batches == 2 and math.isclose(st.mean_batch_size, (1 + n) / 2)
    assert st.mean_batch_wait_ms > 0 and st.calls == n + 1 and st.failures == 0
    bs = batch_stats(app, skill)
    assert bs.flush_reasons == {"idle": 1, "full": 1} and bs.pending == 0 and bs.in_flight == 0


async def test_a_batch_goes_when_its_window_closes_while_the_skill_is_still_busy(emu):
    # The file says 60 s; BRAIN_MOE_BATCHING_WINDOW_MS makes it 50 ms.
    env = {"BRAIN_MOE_BATCHING_WINDOW_MS": "50"}
    async with sidecar(emu, window_ms=60_000, max_batch_size=64, env=env) as (app, client):
        assert app.runtimes["batchy"].settings.batching.window_s == 0.05
        first = await busy(emu, client, "batchy", "batchy")
        tasks = [ask(client, "batchy", question(i)) for i in range(1, 4)]
        # The first request is still held, so nothing ever made the skill
        # idle: the three can only have gone out because their window closed.
        await until(lambda: emu.stats()["batchy"].items == 4, "the three items reach the emulator")
        assert concurrent(emu, "batchy") >= 2 and not first.done()
        emu.resume("batchy")
        resps = await gathered(first, *tasks)
    assert all(result(r, "batchy").status == pb.SKILL_STATUS_OK for r in resps)
    reasons = dict(batch_stats(app, "batchy").flush_reasons)
    assert reasons.pop("idle") == 1 and set(reasons) == {"window"}
    assert sum(result(r, "batchy").batch_size for r in resps[1:]) >= 3


# -- 3: one item failing fails only its caller ------------------------------------------------


async def test_a_failing_item_fails_only_its_callers_skill_result(emu):
    n = 4
    async with sidecar(emu, window_ms=10_000, max_batch_size=n) as (app, client):
        first = await busy(emu, client, "batchy", "batchy")
        texts = [question(i) for i in range(1, n + 1)]
        texts[1] = f"{question(2)} {FAIL}"
        tasks = [ask(client, "batchy", t) for t in texts]
        await until(lambda: concurrent(emu, "batchy") == 2, "the full batch reaches the emulator")
        emu.resume("batchy")
        _, *resps = await asyncio.wait_for(asyncio.gather(first, *tasks, return_exceptions=True), WAIT_S)
        st = await skill_stats(client, "batchy")

    s = emu.stats()["batchy"]
    assert (s.batches, s.items, s.errors) == (2, n + 1, 1)
    for i, resp in enumerate(resps, start=1):
        if i == 2:
            # Its skill failed; the next-best skill stepped in and failed the
            # same query too: the query fails, naming the error.
            assert isinstance(resp, grpc.aio.AioRpcError), resp
            assert resp.code() == grpc.StatusCode.UNAVAILABLE
            assert "500" in resp.details()
        else:
            r = result(resp, "batchy")
            assert r.status == pb.SKILL_STATUS_OK and r.batch_size == n and answers_only(r.output, i, n + 1)
    assert st.failures == 1 and st.calls == n + 1
    # One item's failure is not the backend's: the breaker stays closed.
    assert st.implementations[0].breaker_state == pb.BREAKER_STATE_CLOSED


# -- 4: a caller going away does not take the batch with it ------------------------------------


async def test_a_caller_cancelled_while_its_item_waits_is_not_sent_and_the_others_are(emu):
    async with sidecar(emu, window_ms=10_000, max_batch_size=3) as (app, client):
        first = await busy(emu, client, "batchy", "batchy")
        b = ask(client, "batchy", question(1))
        c = ask(client, "batchy", question(2))
        await until(lambda: pending(app, "batchy") == 2, "two items wait")
        c.cancel()
        await until(lambda: batch_stats(app, "batchy").withdrawn == 1, "the cancelled caller's item is withdrawn")
        assert pending(app, "batchy") == 1
        d = ask(client, "batchy", question(3))
        e = ask(client, "batchy", question(4))
        await until(lambda: concurrent(emu, "batchy") == 2, "the full batch reaches the emulator")
        emu.resume("batchy")
        resps = await gathered(first, b, d, e)
        with pytest.raises(asyncio.CancelledError):
            await c

    s = emu.stats()["batchy"]
    assert (s.batches, s.items) == (2, 4)  # the withdrawn item never reached the backend
    for resp, i in zip(resps[1:], (1, 3, 4)):
        r = result(resp, "batchy")
        assert r.status == pb.SKILL_STATUS_OK and r.batch_size == 3 and answers_only(r.output, i, 5)
    assert app.runtimes["batchy"].gate.in_flight == 0


@pytest.mark.parametrize("how", ["cancel", "client timeout"])
async def test_a_caller_going_away_while_its_batch_is_in_flight_does_not_cancel_it(emu, how):
    async with sidecar(emu, window_ms=10_000, max_batch_size=3) as (app, client):
        first = await busy(emu, client, "batchy", "batchy")
        b = ask(client, "batchy", question(1))
        # The leaver: its own (shorter) deadline must bound only its own wait.
        c = ask(client, "batchy", question(2), **({"timeout": 3.0} if how == "client timeout" else {}))
        d = ask(client, "batchy", question(3))
        await until(lambda: concurrent(emu, "batchy") == 2, "the batch of three reaches the emulator")
        in_flight = app.pipeline.in_flight
        if how == "cancel":
            c.cancel()
            with pytest.raises(asyncio.CancelledError):
                await c
        else:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(c, WAIT_S)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: app.pipeline.in_flight == in_flight - 1, "the sidecar has let the leaver go")
        assert not b.done() and not d.done() and concurrent(emu, "batchy") == 2
        emu.resume("batchy")
        resps = await gathered(first, b, d)

    for resp, i in zip(resps[1:], (1, 3)):
        r = result(resp, "batchy")
        assert r.status == pb.SKILL_STATUS_OK, r.error
        assert r.batch_size == 3 and answers_only(r.output, i, 4)
    s = emu.stats()["batchy"]
    assert (s.requests, s.batches, s.items) == (2, 2, 4)
    assert app.runtimes["batchy"].gate.in_flight == 0


async def test_items_collect_while_the_only_permit_is_held_by_a_batch(emu):
    # A full gate with no queue refuses a query at once; but an item joining
    # a batch needs no permit of its own: the batch takes one when it goes.
    async with sidecar(emu, window_ms=60_000, max_batch_size=8) as (app, client):
        first = await busy(emu, client, "narrow", "narrow")
        tasks = [ask(client, "narrow", question(i)) for i in range(1, 4)]
        await until(lambda: pending(app, "narrow") == 3, "three items wait for the permit")
        assert not any(t.done() for t in tasks)
        emu.resume("narrow")  # the first batch ends: the skill is idle, the three go as one batch
        _, *resps = await gathered(first, *tasks)
    for resp, i in zip(resps, (1, 2, 3)):
        r = result(resp, "narrow")
        assert r.status == pb.SKILL_STATUS_OK and r.batch_size == 3 and answers_only(r.output, i, 4)
    assert (emu.stats()["narrow"].batches, emu.stats()["narrow"].items) == (2, 4)
    assert batch_stats(app, "narrow").flush_reasons == {"idle": 2}


async def test_a_skills_own_batching_settings_win(emu):
    # Globally: batches of up to 8, a 60 s window. batchy: batches of 2;
    # vllm: batching off (each call its own request, not a batch).
    overrides = {"batchy": {"max_batch_size": 2}, "vllm": {"enabled": False}}
    async with sidecar(emu, window_ms=60_000, max_batch_size=8, skill_batching=overrides) as (app, client):
        first = await busy(emu, client, "batchy", "batchy")
        tasks = [ask(client, "batchy", question(i)) for i in (1, 2)]
        await until(lambda: concurrent(emu, "batchy") == 2, "a batch of two goes as soon as it is full")
        emu.resume("batchy")
        _, *resps = await gathered(first, *tasks)
        plain = await gathered(*(ask(client, "vllm", question(i)) for i in (1, 2)))
    assert [result(r, "batchy").batch_size for r in resps] == [2, 2]
    assert all(result(r, "vllm").batch_size == 1 for r in plain)
    assert (emu.stats()["vllm"].requests, emu.stats()["vllm"].batches) == (2, 0)


async def test_the_seed_batch_key_batches_only_similar_queries(emu):
    # key: seed: a batch holds queries of one domain (and skill set and
    # whole complexity); key: implementation would mix them.
    async with sidecar(emu, window_ms=60_000, max_batch_size=2, key="seed") as (app, client):
        first = await busy(emu, client, "batchy", "batchy")
        g1 = ask(client, "batchy", question(1), domain="general")
        c1 = ask(client, "batchy", question(2), domain="code")
        await until(lambda: pending(app, "batchy") == 2, "two items wait")
        assert app.runtimes["batchy"].batchers() == 2 and concurrent(emu, "batchy") == 1  # two keys, not full
        g2 = ask(client, "batchy", question(3), domain="general")
        c2 = ask(client, "batchy", question(4), domain="code")
        await until(lambda: concurrent(emu, "batchy") == 3, "two full batches reach the emulator")
        emu.resume("batchy")
        resps = await gathered(first, g1, c1, g2, c2)
    assert all(result(r, "batchy").batch_size == 2 for r in resps[1:])
    assert (emu.stats()["batchy"].batches, emu.stats()["batchy"].items) == (3, 5)
    assert batch_stats(app, "batchy").flush_reasons == {"idle": 1, "full": 2}


async def test_the_implementation_batch_key_mixes_domains(emu):
    async with sidecar(emu, window_ms=60_000, max_batch_size=2) as (app, client):
        first = await busy(emu, client, "batchy", "batchy")
        g1 = ask(client, "batchy", question(1), domain="general")
        c1 = ask(client, "batchy", question(2), domain="code")
        await until(lambda: concurrent(emu, "batchy") == 2, "one full batch of both domains")
        emu.resume("batchy")
        resps = await gathered(first, g1, c1)
    assert [result(r, "batchy").batch_size for r in resps] == [1, 2, 2]


# -- 5: high priority skips batching --------------------------------------------------------


async def test_a_high_priority_query_is_not_batched_while_others_are(emu):
    async with sidecar(emu, window_ms=10_000, max_batch_size=3) as (app, client):
        first = await busy(emu, client, "batchy", "batchy")
        normal = [ask(client, "batchy", question(i)) for i in (1, 2)]
        await until(lambda: pending(app, "batchy") == 2, "two normal items wait")
        high = ask(client, "batchy", question(3), priority=Priority.HIGH)
        # It went straight to the backend (under its own permit) although two
        # items wait for a batch.
        await until(lambda: concurrent(emu, "batchy") == 2, "the high-priority request reaches the emulator")
        assert pending(app, "batchy") == 2
        normal.append(ask(client, "batchy", question(4)))
        await until(lambda: concurrent(emu, "batchy") == 3, "the full batch reaches the emulator")
        emu.resume("batchy")
        _, high_resp, *resps = await gathered(first, high, *normal)

    h = result(high_resp, "batchy")
    assert h.status == pb.SKILL_STATUS_OK and h.batch_size == 1 and answers_only(h.output, 3, 5)
    for resp, i in zip(resps, (1, 2, 4)):
        r = result(resp, "batchy")
        assert r.status == pb.SKILL_STATUS_OK and r.batch_size == 3 and answers_only(r.output, i, 5)
    s = emu.stats()["batchy"]
    assert (s.requests, s.batches, s.items) == (3, 2, 4)  # one unbatched /skill request
    assert [r.path for r in emu.received if r.model == "batchy"].count("/skill") == 1


# -- 6: an idle sidecar adds no wait; a deadline bounds the wait -------------------------------


async def test_an_idle_skill_sends_at_once_whatever_the_window(emu):
    # A 5 s window and a 2 s deadline: the query answers because an idle
    # skill does not wait for a window.
    async with sidecar(emu, window_ms=5_000, max_batch_size=8) as (app, client):
        resp = await asyncio.wait_for(ask(client, "batchy", question(1), timeout=2.0), WAIT_S)
    r = result(resp, "batchy")
    assert r.status == pb.SKILL_STATUS_OK and r.batch_size == 1 and answers_only(r.output, 1, 2)
    assert batch_stats(app, "batchy").flush_reasons == {"idle": 1}
    assert emu.stats()["batchy"].batches == 1


async def test_a_busy_skill_sends_by_the_deadline_budget_not_the_window(emu):
    # window 60 s; deadline 4 s; the implementation is expected to take 1.5 s:
    # the item goes out by (deadline - 1.5 s), while the skill is still busy.
    async with sidecar(emu, window_ms=60_000, max_batch_size=8) as (app, client):
        first = await busy(emu, client, "slowbatch", "slowbatch")
        late = ask(client, "slowbatch", question(1), timeout=4.0)
        await until(lambda: concurrent(emu, "slowbatch") == 2, "the item is sent by its deadline budget")
        emu.resume("slowbatch")
        _, resp = await gathered(first, late)
    r = result(resp, "slowbatch")
    assert r.status == pb.SKILL_STATUS_OK and r.batch_size == 1
    assert batch_stats(app, "slowbatch").flush_reasons == {"idle": 1, "deadline": 1}


# -- 7: single flight for a backend that cannot batch ------------------------------------------


async def test_identical_calls_to_a_backend_that_cannot_batch_share_one_call(emu):
    n = 5
    async with sidecar(emu) as (app, client):
        emu.pause("plain")
        tasks = [ask(client, "plain", "the same question") for _ in range(n)]
        plain = app.runtimes["plain"]
        await until(lambda: plain.coalesced_calls() == n - 1, "every caller joined the call in flight")
        # The one shared request reaches the (paused) backend; no second one follows.
        await until(lambda: concurrent(emu, "plain") == 1, "the shared request held at the backend")
        assert emu.stats()["plain"].requests == 1
        emu.resume("plain")
        resps = await gathered(*tasks)
        st = await skill_stats(client, "plain")
        totals = (await client.stats()).totals

    assert emu.stats()["plain"].requests == 1
    for resp in resps:
        r = result(resp, "plain")
        assert r.status == pb.SKILL_STATUS_OK and "the same question" in r.output
        assert r.shared_by == n and r.batch_size == 1
        assert math.isclose(r.cost_usd, 0.03 / n)
        assert math.isclose(resp.cost.actual_usd, r.cost_usd)
    assert st.coalesced_calls == n - 1 and st.batches == 0
    assert math.isclose(totals.cost_usd, 0.03)  # the one call's cost, once


async def test_the_caller_that_started_a_shared_call_leaving_does_not_fail_the_others(emu):
    async with sidecar(emu) as (app, client):
        emu.pause("plain")
        plain = app.runtimes["plain"]
        leader = ask(client, "plain", "the same question", timeout=3.0)
        await until(lambda: concurrent(emu, "plain") == 1, "the call is in flight")
        joiner = ask(client, "plain", "the same question")
        await until(lambda: plain.coalesced_calls() == 1, "the second caller joined the call in flight")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(leader, WAIT_S)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: app.pipeline.in_flight == 1, "the sidecar has let the leader go")
        assert not joiner.done() and concurrent(emu, "plain") == 1
        emu.resume("plain")
        resp = await asyncio.wait_for(joiner, WAIT_S)
    r = result(resp, "plain")
    assert r.status == pb.SKILL_STATUS_OK and r.shared_by == 2 and "the same question" in r.output
    assert emu.stats()["plain"].requests == 1


async def test_different_calls_are_not_coalesced(emu):
    async with sidecar(emu) as (app, client):
        emu.pause("plain")
        tasks = [ask(client, "plain", question(i)) for i in range(3)]
        await until(lambda: concurrent(emu, "plain") == 3, "three calls in flight")
        emu.resume("plain")
        resps = await gathered(*tasks)
    assert emu.stats()["plain"].requests == 3
    assert all(result(r, "plain").shared_by == 1 for r in resps)
    assert app.runtimes["plain"].coalesced_calls() == 0


async def test_with_batching_off_nothing_batches_or_coalesces(emu):
    async with sidecar(emu, enabled=False) as (app, client):
        emu.pause("batchy")
        tasks = [ask(client, "batchy", "the same question") for _ in range(3)]
        await until(lambda: concurrent(emu, "batchy") == 3, "three calls in flight")
        emu.resume("batchy")
        resps = await gathered(*tasks)
    s = emu.stats()["batchy"]
    assert (s.requests, s.batches) == (3, 0)
    assert all(result(r, "batchy").batch_size == 1 and result(r, "batchy").shared_by == 1 for r in resps)


# -- 8: a batch's cost in the ledger ------------------------------------------------------------


async def test_each_batched_item_is_charged_its_declared_cost(emu):
    n = 4
    async with sidecar(emu, window_ms=10_000, max_batch_size=n) as (app, client):
        first = await busy(emu, client, "batchy", "batchy")
        tasks = [ask(client, "batchy", question(i)) for i in range(1, n + 1)]
        await until(lambda: concurrent(emu, "batchy") == 2, "the full batch reaches the emulator")
        emu.resume("batchy")
        resps = await gathered(first, *tasks)
        totals = (await client.stats()).totals
    for resp in resps:
        r = result(resp, "batchy")
        assert r.status == pb.SKILL_STATUS_OK and math.isclose(r.cost_usd, 0.02)
        assert math.isclose(resp.cost.actual_usd, r.cost_usd)
    assert math.isclose(totals.cost_usd, 0.02 * (n + 1))


async def test_a_batchs_token_usage_is_split_among_its_items_and_priced(emu):
    n = 4
    async with sidecar(emu, window_ms=10_000, max_batch_size=n) as (app, client):
        first = await busy(emu, client, "vllm", "vllm")
        tasks = [ask(client, "vllm", question(i) + " " + "detail " * i) for i in range(1, n + 1)]
        await until(lambda: concurrent(emu, "vllm") == 2, "the full batch reaches the emulator")
        emu.resume("vllm")
        resps = await gathered(first, *tasks)
        totals = (await client.stats()).totals
    s = emu.stats()["vllm"]
    assert (s.batches, s.items) == (2, n + 1)
    items = [result(resp, "vllm") for resp in resps]
    assert all(r.status == pb.SKILL_STATUS_OK for r in items)
    assert [r.batch_size for r in items] == [1] + [n] * n
    # The usage each batch reported is shared out exactly among its items...
    assert sum(r.input_tokens for r in items) == s.input_tokens
    assert sum(r.output_tokens for r in items) == s.output_tokens
    # ...in proportion to their prompts (longer prompt, larger share)...
    batched = items[1:]
    assert [r.input_tokens for r in batched] == sorted(r.input_tokens for r in batched)
    assert batched[0].input_tokens < batched[-1].input_tokens
    # ...and each item is priced from its share.
    for r in items:
        assert r.input_tokens > 0 and r.output_tokens > 0
        assert math.isclose(r.cost_usd, r.input_tokens * PRICE_IN + r.output_tokens * PRICE_OUT)
    emulator_cost = s.input_tokens * PRICE_IN + s.output_tokens * PRICE_OUT
    assert math.isclose(sum(r.cost_usd for r in items), emulator_cost)
    assert math.isclose(totals.cost_usd, emulator_cost)
