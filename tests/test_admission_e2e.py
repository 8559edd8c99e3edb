"""Admission end to end: the real sidecar on an ephemeral loopback port, the
real emulated backends on loopback, through the Python client.

Every state is built exactly: the emulator holds a model's requests in
flight (``pause``), the test waits (bounded) until the sidecar's Stats show
the wanted in-flight/queued counts, then releases them (``resume``).
``resume(m); pause(m)`` lets exactly the requests in flight now go, which
steps a limit-1 skill one grant at a time. Nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from skill_router_client import AsyncRouterClient, Priority, error_details
from support.configs import MODELS, config_data

from router.app import build_app
from router.config import parse_config
from router.emulator import Emulator, ModelProfile
from router.v1 import router_pb2 as pb

WAIT_S = 15.0  # bound of every wait for a state; far above what any step takes
FAST_MS = 10  # the declared latency of the tuned skills: the gate's service-time hint

# Which skills a query may reach. With domain "general" and complexity 6,
# kimiK2, trm, gepa and ace are activated; excluding the rest leaves the
# forced skill alone (no standby) or with ace as its only standby.
ONLY_GEPA = dict(force_skills=["gepa"], top_k=1, exclude_skills=["kimiK2", "trm", "ace"])
GEPA_THEN_ACE = dict(force_skills=["gepa"], top_k=1, exclude_skills=["kimiK2", "trm"])
ONLY_ACE = dict(force_skills=["ace"], top_k=1, exclude_skills=["kimiK2", "trm", "gepa"])
ONLY_TRM = dict(force_skills=["trm"], top_k=1, exclude_skills=["kimiK2", "gepa", "ace"])
ONLY_KIMI = dict(force_skills=["kimiK2"], top_k=1, exclude_skills=["trm", "gepa", "ace"])
Q = dict(domain="general", complexity=6.0)


# ---- set-up -------------------------------------------------------------------------


def admission_config(url: str, skills: Mapping[str, Mapping[str, Any]] | None = None, *, fast: bool = True,
                     **sections: Any) -> Any:
    """The integration tests' config, with per-skill admission overrides.
    With ``fast``, every implementation of a tuned skill declares a short
    expected latency, so the gate's expected wait (before its first
    release) is small."""
    data = config_data(url, **sections)
    for name, over in (skills or {}).items():
        over = dict(over)
        latency = over.pop("expected_latency_ms", FAST_MS if fast else None)
        entry = data["skills"][name]
        entry.update(over)
        for impl in entry["implementations"]:
            if latency is not None:
                impl["expected_latency_ms"] = latency
    return parse_config(data, "<admission tests>", {})


@contextlib.asynccontextmanager
async def sidecar(config: Any):  # type: ignore[no-untyped-def]
    app = build_app(config, "127.0.0.1:0")
    rec = RecordingObserver()
    app.pipeline.observer = rec
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=30) as client:
            yield app, client, rec
    finally:
        await app.stop(5)


async def until(pred: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    async def poll() -> None:
        while True:
            r = pred()
            if asyncio.iscoroutine(r):
                r = await r
            if r:
                return
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def skill_stats(client: AsyncRouterClient, skill: str) -> pb.SkillStats:
    s = await client.stats()
    return next(x for x in s.skills if x.skill == skill)


async def gate_state(client: AsyncRouterClient, skill: str, in_flight: int, queued: int,
                     by_priority: Mapping[str, int] | None = None) -> None:
    async def check() -> bool:
        st = await skill_stats(client, skill)
        ok = st.in_flight == in_flight and st.queue_depth == queued
        if by_priority is not None:
            ok = ok and all(st.queue_depth_by_priority.get(p, 0) == n for p, n in by_priority.items())
        return ok

    await until(check, f"{skill}: {in_flight} in flight, {queued} queued {dict(by_priority or {})}")


def spawn(client: AsyncRouterClient, text: str, **kw: Any) -> asyncio.Task[pb.ExecuteResponse]:
    return asyncio.create_task(client.execute(text, **{**Q, **kw}))


async def settle(tasks: list[asyncio.Task[Any]]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)


# ---- a recording observer (the pipeline's one reporting hook) ---------------------------


@dataclass
class SkillRec:
    skill: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    queue_wait_ms: float | None = None
    attempts: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self.events.append((name, dict(attributes or {})))

    def finish(self, outcome: Any, *, queue_wait_ms: float = 0.0, attempts: int = 1) -> None:
        self.queue_wait_ms, self.attempts = queue_wait_ms, attempts


@dataclass
class QueryRec:
    trace_id: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    skills: list[SkillRec] = field(default_factory=list)

    def selection(self, plan: Any, start_ns: int, end_ns: int) -> None:
        pass

    @contextlib.contextmanager
    def skill_call(self, planned: Any) -> Iterator[SkillRec]:
        rec = SkillRec(planned.name)
        self.skills.append(rec)
        yield rec

    def synthesis(self, synthesis: Any, start_ns: int, end_ns: int) -> None:
        pass

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self.events.append((name, dict(attributes or {})))

    def finish(self, record: Any, error: BaseException | None = None) -> None:
        pass


class RecordingObserver:
    def __init__(self) -> None:
        self.queries: list[QueryRec] = []

    def start_query(self, rpc: str, query_id: str) -> QueryRec:
        q = QueryRec()
        self.queries.append(q)
        return q

    def batch(self, *args: Any) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def skill_events(self, name: str) -> list[dict[str, Any]]:
        return [a for q in self.queries for s in q.skills for n, a in s.events if n == name]

    def query_events(self, name: str) -> list[dict[str, Any]]:
        return [a for q in self.queries for n, a in q.events if n == name]


# ---- 1. the limit holds under 20x the offered concurrency ------------------------------


async def test_limit_is_never_exceeded_under_20x_offered_concurrency(emulator) -> None:
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=3, queue_depth=100, queue_timeout_s=60)})
    async with sidecar(cfg) as (app, client, _):
        # Wave 1, built exactly: 3 held in flight, 57 queued behind them.
        emulator.pause("gepa")
        tasks = [spawn(client, f"wave one q{i}", **ONLY_GEPA) for i in range(60)]
        await gate_state(client, "gepa", in_flight=3, queued=57)
        assert emulator.stats()["gepa"].concurrent == 3
        st = await skill_stats(client, "gepa")
        assert st.utilization == 1.0 and st.concurrency_limit == 3 and st.queue_capacity == 100
        assert st.queue_depth_by_priority["normal"] == 57
        emulator.resume("gepa")
        wave1 = await settle(tasks)
        # Wave 2: free running, nothing held.
        wave2 = await settle([spawn(client, f"wave two q{i}", **ONLY_GEPA) for i in range(60)])

        for wave, responses in (("one", wave1), ("two", wave2)):
            for i, resp in enumerate(responses):
                assert isinstance(resp, pb.ExecuteResponse), resp
                assert not resp.shed
                [r] = resp.results
                assert r.skill == "gepa" and r.status == pb.SKILL_STATUS_OK and r.attempts == 1, r
                assert f"wave {wave} q{i}" in r.output  # its own answer, not another's
        gepa = emulator.stats()["gepa"]
        assert gepa.peak_concurrent == 3  # reached, never exceeded
        assert gepa.requests == 120 and gepa.concurrent == 0  # one backend request per call, none left
        st = await skill_stats(client, "gepa")
        assert st.in_flight == 0 and st.queue_depth == 0
        assert st.calls == 120 and st.rejected == 0 and st.shed == 0 and st.timed_out == 0
        assert st.mean_queue_wait_ms > 0  # 57 of them waited
        assert (await client.stats()).totals.queries == 120


# ---- 2. a full queue sheds the skill, the next-best answers -------------------------------


async def test_a_full_queue_sheds_the_skill_and_the_next_best_answers(emulator) -> None:
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=2, queue_depth=2, queue_timeout_s=60),
                                          "ace": dict(concurrency_limit=4, queue_depth=4)})
    async with sidecar(cfg) as (app, client, rec):
        emulator.pause("gepa")
        held = [spawn(client, f"held {i}", **ONLY_GEPA) for i in range(4)]
        await gate_state(client, "gepa", in_flight=2, queued=2)

        resp = await asyncio.wait_for(client.execute("overflow", **Q, **GEPA_THEN_ACE), WAIT_S)
        [shed] = resp.shed
        assert shed.skill == "gepa" and shed.reason == pb.SHED_REASON_QUEUE_FULL and shed.replaced_by == "ace"
        assert "queue full" in shed.detail
        [r] = resp.results
        assert r.skill == "ace" and r.status == pb.SKILL_STATUS_OK and "overflow" in r.output
        assert [s.skill for s in resp.selections] == ["ace"]  # the skills that ran
        assert "gepa" not in {m.model for m in emulator.received if m.status == 200}  # gepa still held
        assert rec.query_events("skill.shed")[-1] == {"router.skill": "gepa", "router.shed.reason": "queue full",
                                                     "router.shed.replaced_by": "ace"}

        st = await skill_stats(client, "gepa")
        assert st.shed == 1 and st.rejected == 1 and st.in_flight == 2 and st.queue_depth == 2
        emulator.resume("gepa")
        for resp in await settle(held):  # the held calls lost nothing
            assert isinstance(resp, pb.ExecuteResponse), resp
            assert [(r.skill, r.status) for r in resp.results] == [("gepa", pb.SKILL_STATUS_OK)]
        assert emulator.stats()["gepa"].requests == 4 and emulator.stats()["gepa"].peak_concurrent == 2


# ---- 3. every candidate saturated: RESOURCE_EXHAUSTED with RetryInfo ---------------------------


async def test_all_saturated_is_resource_exhausted_with_retry_info_and_loses_nothing(emulator) -> None:
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=1, queue_depth=1, queue_timeout_s=60),
                                          "ace": dict(concurrency_limit=1, queue_depth=1, queue_timeout_s=60)})
    async with sidecar(cfg) as (app, client, _):
        emulator.pause("gepa")
        emulator.pause("ace")
        held = [spawn(client, f"gepa {i}", **ONLY_GEPA) for i in range(2)]
        held += [spawn(client, f"ace {i}", **ONLY_ACE) for i in range(2)]
        await gate_state(client, "gepa", in_flight=1, queued=1)
        await gate_state(client, "ace", in_flight=1, queued=1)
        before = {m: s.requests for m, s in emulator.stats().items()}

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(client.execute("no room", **Q, **GEPA_THEN_ACE), WAIT_S)
        d = error_details(info.value)
        assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert d.retry_delay_s is not None and d.retry_delay_s > 0
        assert "gepa: queue full" in d.message and "ace: queue full" in d.message
        assert {m: s.requests for m, s in emulator.stats().items()} == before  # nothing sent for it

        s = await client.stats()
        by = {x.skill: x for x in s.skills}
        assert by["gepa"].shed == 1 and by["ace"].shed == 1
        assert s.totals.failed_queries == 1

        emulator.resume("gepa")
        emulator.resume("ace")
        for resp in await settle(held):  # nothing lost: every queued and held call answered
            assert isinstance(resp, pb.ExecuteResponse), resp
            assert all(r.status == pb.SKILL_STATUS_OK for r in resp.results)
        # and the retry, once room is back, is served
        resp = await asyncio.wait_for(client.execute("no room", **Q, **GEPA_THEN_ACE), WAIT_S)
        assert [(r.skill, r.status) for r in resp.results] == [("gepa", pb.SKILL_STATUS_OK)] and not resp.shed


# ---- 4. a failed call: the next implementation steps in at once; the breaker opens -------------------


async def test_failing_implementation_is_replaced_at_once_and_its_breaker_opens(emulator) -> None:
    cfg = admission_config(
        emulator.url,
        admission={"breaker": {"failure_threshold": 2, "window": 4, "min_calls": 4, "cooldown_s": 600},
                   "retry": {"max_attempts": 1}})
    ctx = dict(required_quality=0.9, **ONLY_KIMI)
    async with sidecar(cfg) as (app, client, rec):
        route = await client.route("q", **Q, **ctx)
        assert route.selections[0].implementation.implementation.name == "nvidia-nemotron"
        emulator.set_profile("nemotron", ModelProfile(latency_ms=1, error_rate=1.0))
        for _ in range(2):
            # The failing call does not fail the query: with time left and
            # the retry budget allowing, the next implementation that meets
            # the floor steps in within the same deadline.
            resp = await asyncio.wait_for(client.execute("break it", **Q, **ctx), WAIT_S)
            [r] = resp.results
            assert (r.skill, r.implementation, r.status) == ("kimiK2", "tongyi-deepresearch", pb.SKILL_STATUS_OK)
            assert r.stepped_in_for == "kimiK2/nvidia-nemotron" and r.step_in_reason == pb.SHED_REASON_CALL_FAILED
            [shed] = resp.shed
            assert (shed.skill, shed.implementation, shed.reason) == ("kimiK2", "nvidia-nemotron",
                                                                      pb.SHED_REASON_CALL_FAILED)
            assert (shed.replaced_by, shed.replaced_by_implementation) == ("kimiK2", "tongyi-deepresearch")
            assert "500" in shed.detail and resp.outcome == pb.QUERY_OUTCOME_OK

        kimi = await skill_stats(client, "kimiK2")
        impls = {i.name: i for i in kimi.implementations}
        nem = impls["nvidia-nemotron"]
        assert nem.breaker_state == pb.BREAKER_STATE_OPEN and nem.times_opened == 1
        assert nem.consecutive_failures == 2
        assert nem.HasField("half_open_at") and nem.half_open_at.ToNanoseconds() / 1e9 > time.time()
        assert impls["tongyi-deepresearch"].breaker_state == pb.BREAKER_STATE_CLOSED
        assert not impls["tongyi-deepresearch"].HasField("half_open_at")
        opened = [e for e in rec.skill_events("breaker.transition") if e["router.breaker.to"] == "open"]
        assert [e["router.breaker"] for e in opened] == ["kimiK2/nvidia-nemotron"]

        # The next query takes the next implementation that meets the floor.
        resp = await asyncio.wait_for(client.execute("after the trip", **Q, **ctx), WAIT_S)
        [r] = resp.results
        assert (r.skill, r.implementation, r.status) == ("kimiK2", "tongyi-deepresearch", pb.SKILL_STATUS_OK)
        choice = resp.selections[0].implementation
        assert any(j.name == "nvidia-nemotron" and "breaker" in j.reason for j in choice.rejections)
        assert emulator.stats()["nemotron"].requests == 2  # the open breaker sent nothing more


# ---- 5. a cancelled waiter frees its place at once -------------------------------------------------


async def test_a_cancelled_waiter_frees_its_queue_place(emulator) -> None:
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=1, queue_depth=1, queue_timeout_s=60)})
    async with sidecar(cfg) as (app, client, _):
        emulator.pause("gepa")
        first = spawn(client, "first", **ONLY_GEPA)
        await gate_state(client, "gepa", in_flight=1, queued=0)
        waiter = spawn(client, "cancelled while queued", **ONLY_GEPA)
        await gate_state(client, "gepa", in_flight=1, queued=1)

        waiter.cancel()  # the client goes away: the sidecar's handler is cancelled
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, WAIT_S)
        await gate_state(client, "gepa", in_flight=1, queued=0)

        # The freed place is taken by a later call (the queue holds one: were
        # the place still held, this call would be shed, and with no standby
        # refused).
        later = spawn(client, "later", **ONLY_GEPA)
        await gate_state(client, "gepa", in_flight=1, queued=1)
        emulator.resume("gepa")
        for resp in await settle([first, later]):
            assert isinstance(resp, pb.ExecuteResponse), resp
            assert [(r.skill, r.status) for r in resp.results] == [("gepa", pb.SKILL_STATUS_OK)]
        assert emulator.stats()["gepa"].requests == 2  # the cancelled one never reached the backend
        st = await skill_stats(client, "gepa")
        assert st.in_flight == 0 and st.queue_depth == 0 and st.shed == 0


async def test_a_waiter_whose_deadline_passes_frees_its_place_and_is_counted(emulator) -> None:
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=1, queue_depth=1, queue_timeout_s=60)})
    async with sidecar(cfg) as (app, client, _):
        emulator.pause("gepa")
        first = spawn(client, "first", **ONLY_GEPA)
        await gate_state(client, "gepa", in_flight=1, queued=0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(client.execute("short deadline", **Q, **ONLY_GEPA, timeout=0.5), WAIT_S)
        # The gate gives up just before the caller's deadline (the skill is
        # shed and nothing else can take it), or the caller's deadline wins.
        assert info.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)
        await gate_state(client, "gepa", in_flight=1, queued=0)
        st = await skill_stats(client, "gepa")
        assert st.timed_out == 1

        later = spawn(client, "later", **ONLY_GEPA)
        await gate_state(client, "gepa", in_flight=1, queued=1)
        emulator.resume("gepa")
        for resp in await settle([first, later]):
            assert isinstance(resp, pb.ExecuteResponse), resp
            assert resp.results[0].status == pb.SKILL_STATUS_OK
        assert emulator.stats()["gepa"].requests == 2


# ---- 6. retries ----------------------------------------------------------------------------


async def _heal_after_one_failure(emulator: Emulator, model: str, counter: str) -> None:
    await until(lambda: getattr(emulator.stats().get(model), counter, 0) >= 1, f"{model} failed once")
    emulator.set_profile(model, MODELS[model])


async def test_a_rate_limited_call_is_retried_after_retry_after(emulator) -> None:
    cfg = admission_config(emulator.url, admission={"retry": {"max_attempts": 10, "base_backoff_ms": 10}})
    async with sidecar(cfg) as (app, client, rec):
        emulator.set_profile("trm", ModelProfile(latency_ms=1, rate_limit_rate=1.0, retry_after_s=0.25))
        heal = asyncio.create_task(_heal_after_one_failure(emulator, "trm", "rate_limited"))
        resp = await asyncio.wait_for(client.execute("retry me", **Q, **ONLY_TRM), WAIT_S)
        await asyncio.wait_for(heal, WAIT_S)
        [r] = resp.results
        assert r.status == pb.SKILL_STATUS_OK and r.attempts > 1, r
        assert emulator.stats()["trm"].rate_limited == r.attempts - 1
        retries = rec.skill_events("retry")
        assert retries and all(e["router.retry.delay_ms"] == pytest.approx(250.0) for e in retries)  # Retry-After
        assert all("retry-after" in e["router.retry.reason"] for e in retries)


async def test_a_5xx_is_retried_with_backoff_until_it_recovers(emulator) -> None:
    cfg = admission_config(emulator.url, admission={"retry": {"max_attempts": 10, "base_backoff_ms": 20,
                                                              "max_backoff_ms": 50}})
    async with sidecar(cfg) as (app, client, rec):
        emulator.set_profile("ace", ModelProfile(latency_ms=1, error_rate=1.0))
        heal = asyncio.create_task(_heal_after_one_failure(emulator, "ace", "errors"))
        resp = await asyncio.wait_for(client.execute("retry me", **Q, **ONLY_ACE), WAIT_S)
        await asyncio.wait_for(heal, WAIT_S)
        [r] = resp.results
        assert r.status == pb.SKILL_STATUS_OK and r.attempts > 1, r
        assert emulator.stats()["ace"].errors == r.attempts - 1
        retries = rec.skill_events("retry")
        assert len(retries) == r.attempts - 1
        assert all(0 <= e["router.retry.delay_ms"] <= 50.0 and e["error.type"] == "BackendStatusError"
                   for e in retries)


async def test_a_retry_after_beyond_the_limit_is_not_retried(emulator) -> None:
    cfg = admission_config(emulator.url, admission={"retry": {"max_attempts": 5}})
    async with sidecar(cfg) as (app, client, _):
        emulator.set_profile("trm", ModelProfile(latency_ms=1, rate_limit_rate=1.0, retry_after_s=120))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(client.execute("too long", **Q, **ONLY_TRM), WAIT_S)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "429" in info.value.details()
        assert emulator.stats()["trm"].requests == 1


# ---- 7. priorities ----------------------------------------------------------------------------


async def test_higher_priority_is_served_first_fifo_within(emulator) -> None:
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=1, queue_depth=10, queue_timeout_s=60)})
    async with sidecar(cfg) as (app, client, _):
        emulator.pause("gepa")
        running = spawn(client, "running", **ONLY_GEPA)
        await gate_state(client, "gepa", 1, 0)
        arrivals = [("low", Priority.LOW), ("normal-1", Priority.NORMAL), ("normal-2", Priority.NORMAL),
                    ("high", Priority.HIGH)]
        tasks: dict[str, asyncio.Task[pb.ExecuteResponse]] = {}
        for n, (name, prio) in enumerate(arrivals, 1):  # one at a time, so the arrival order is exact
            tasks[name] = spawn(client, name, priority=prio, **ONLY_GEPA)
            await gate_state(client, "gepa", 1, n)
        await gate_state(client, "gepa", 1, 4, {"low": 1, "normal": 2, "high": 1})

        # Step: let exactly the call held at the backend finish (resume,
        # pause), and see which call completes; the freed slot goes to the
        # next in line, which is then held in turn.
        served: list[str] = []
        alive: dict[str, asyncio.Task[pb.ExecuteResponse]] = {"running": running, **tasks}
        while alive:
            await until(lambda: emulator.stats()["gepa"].concurrent == 1, "one call held at the backend")
            emulator.resume("gepa")
            emulator.pause("gepa")
            done, _ = await asyncio.wait_for(asyncio.wait(alive.values(), return_when=asyncio.FIRST_COMPLETED),
                                             WAIT_S)
            [task] = done  # only the held call could finish
            name = next(n for n, t in alive.items() if t is task)
            del alive[name]
            if name == "running":  # its slot went to the high query, queued last
                await gate_state(client, "gepa", 1, 3, {"low": 1, "normal": 2, "high": 0})
            else:
                served.append(name)
        emulator.resume("gepa")
        responses = await settle(list(tasks.values()))
        assert served == ["high", "normal-1", "normal-2", "low"]
        for resp in responses:
            assert isinstance(resp, pb.ExecuteResponse), resp
            assert resp.results[0].status == pb.SKILL_STATUS_OK and not resp.shed
        assert emulator.stats()["gepa"].peak_concurrent == 1


async def test_a_higher_priority_displaces_the_newest_lower_one_from_a_full_queue(emulator) -> None:
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=1, queue_depth=1, queue_timeout_s=60)})
    async with sidecar(cfg) as (app, client, _):
        emulator.pause("gepa")
        running = spawn(client, "running", **ONLY_GEPA)
        await gate_state(client, "gepa", 1, 0)
        normal = spawn(client, "normal", **GEPA_THEN_ACE)
        await gate_state(client, "gepa", 1, 1, {"normal": 1})
        high = spawn(client, "high", priority=Priority.HIGH, **GEPA_THEN_ACE)
        resp = await asyncio.wait_for(normal, WAIT_S)  # turned out of gepa's queue, ace answers
        [shed] = resp.shed
        assert shed.skill == "gepa" and shed.reason == pb.SHED_REASON_DISPLACED and shed.replaced_by == "ace"
        assert [(r.skill, r.status) for r in resp.results] == [("ace", pb.SKILL_STATUS_OK)]
        await gate_state(client, "gepa", 1, 1, {"normal": 0, "high": 1})
        st = await skill_stats(client, "gepa")
        assert st.rejected == 1 and st.shed == 1
        emulator.resume("gepa")
        for resp in await settle([running, high]):
            assert isinstance(resp, pb.ExecuteResponse), resp
            assert [(r.skill, r.status) for r in resp.results] == [("gepa", pb.SKILL_STATUS_OK)]


# ---- 8. Stats and spans --------------------------------------------------------------------------


async def test_stats_count_rejected_shed_timed_out_and_queue_wait(emulator) -> None:
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=1, queue_depth=2, queue_timeout_s=0.3)})
    async with sidecar(cfg) as (app, client, rec):
        st = await skill_stats(client, "gepa")
        assert (st.concurrency_limit, st.queue_capacity, st.in_flight, st.queue_depth) == (1, 2, 0, 0)
        assert dict(st.queue_depth_by_priority) == {"low": 0, "normal": 0, "high": 0}
        assert (st.rejected, st.shed, st.timed_out, st.mean_queue_wait_ms) == (0, 0, 0, 0.0)

        emulator.pause("gepa")
        running = spawn(client, "running", **ONLY_GEPA)
        await gate_state(client, "gepa", 1, 0)
        # Queued past gepa's queue timeout: shed, ace steps in.
        resp = await asyncio.wait_for(client.execute("times out", **Q, **GEPA_THEN_ACE), WAIT_S)
        [shed] = resp.shed
        assert shed.skill == "gepa" and shed.reason == pb.SHED_REASON_QUEUE_TIMEOUT and shed.replaced_by == "ace"
        assert resp.results[0].skill == "ace" and resp.results[0].status == pb.SKILL_STATUS_OK
        st = await skill_stats(client, "gepa")
        assert (st.timed_out, st.shed, st.rejected, st.queue_depth) == (1, 1, 0, 0)
        assert st.utilization == 1.0

        queued = spawn(client, "queued", **ONLY_GEPA)
        await gate_state(client, "gepa", 1, 1, {"normal": 1})
        emulator.resume("gepa")
        for resp in await settle([running, queued]):
            assert isinstance(resp, pb.ExecuteResponse), resp
            assert resp.results[0].status == pb.SKILL_STATUS_OK
        waited = resp.results[0].queue_wait_ms  # the queued call's
        assert waited > 0
        st = await skill_stats(client, "gepa")
        assert st.mean_queue_wait_ms > 0 and st.in_flight == 0 and st.queue_depth == 0
        assert st.calls == 2  # the shed query's call is not a call of gepa's
        # The skill spans record the queue wait; the shed is an event.
        gepa_spans = [s for q in rec.queries for s in q.skills if s.skill == "gepa" and s.queue_wait_ms]
        assert any(s.queue_wait_ms == pytest.approx(waited) for s in gepa_spans)
        assert {"router.skill": "gepa", "router.shed.reason": "queue timeout",
                "router.shed.replaced_by": "ace"} in rec.query_events("skill.shed")


async def test_an_expected_wait_beyond_the_deadline_sheds_before_queueing(emulator) -> None:
    # gepa declares 1500 ms: before any release, that is the gate's estimate
    # of how long a slot is held, so a query with 1 s left would wait too long.
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=1, queue_depth=5, queue_timeout_s=60)},
                           fast=False)
    async with sidecar(cfg) as (app, client, _):
        emulator.pause("gepa")
        running = spawn(client, "running", **ONLY_GEPA)
        await gate_state(client, "gepa", 1, 0)
        resp = await asyncio.wait_for(client.execute("in a hurry", **Q, **GEPA_THEN_ACE, timeout=1.0), WAIT_S)
        [shed] = resp.shed
        assert shed.skill == "gepa" and shed.reason == pb.SHED_REASON_EXPECTED_WAIT and shed.replaced_by == "ace"
        assert [(r.skill, r.status) for r in resp.results] == [("ace", pb.SKILL_STATUS_OK)]
        st = await skill_stats(client, "gepa")
        assert (st.shed, st.queue_depth, st.rejected, st.timed_out) == (1, 0, 0, 0)  # it never queued
        emulator.resume("gepa")
        assert (await asyncio.wait_for(running, WAIT_S)).results[0].status == pb.SKILL_STATUS_OK


async def test_a_half_open_breaker_probes_and_closes_while_the_others_take_the_next_implementation(emulator) -> None:
    cfg = admission_config(
        emulator.url,
        admission={"breaker": {"failure_threshold": 2, "window": 4, "min_calls": 4, "cooldown_s": 0.3},
                   "retry": {"max_attempts": 1}})
    ctx = dict(required_quality=0.9, **ONLY_KIMI)

    async def nemotron_state() -> int:
        kimi = await skill_stats(client, "kimiK2")
        return next(i for i in kimi.implementations if i.name == "nvidia-nemotron").breaker_state

    async with sidecar(cfg) as (app, client, rec):
        emulator.set_profile("nemotron", ModelProfile(latency_ms=1, error_rate=1.0))
        for _ in range(2):
            resp = await asyncio.wait_for(client.execute("break it", **Q, **ctx), WAIT_S)
            assert resp.results[0].stepped_in_for == "kimiK2/nvidia-nemotron"
        assert await nemotron_state() == pb.BREAKER_STATE_OPEN

        async def half_open() -> bool:
            return await nemotron_state() == pb.BREAKER_STATE_HALF_OPEN

        await until(half_open, "nemotron's breaker half-open")
        kimi = await skill_stats(client, "kimiK2")
        assert not next(i for i in kimi.implementations if i.name == "nvidia-nemotron").HasField("half_open_at")

        # Half-open: the next call is the probe; hold it at the backend.
        emulator.set_profile("nemotron", MODELS["nemotron"])
        emulator.pause("nemotron")
        probe = spawn(client, "probe", **ctx)
        await until(lambda: emulator.stats()["nemotron"].concurrent == 1, "the probe held at nemotron")
        # Its one probe place is taken: the next query takes the next
        # implementation of the same skill instead of waiting or being shed.
        resp = await asyncio.wait_for(client.execute("meanwhile", **Q, **ctx), WAIT_S)
        assert not resp.shed
        assert [(r.implementation, r.status) for r in resp.results] == [("tongyi-deepresearch", pb.SKILL_STATUS_OK)]

        emulator.resume("nemotron")
        resp = await asyncio.wait_for(probe, WAIT_S)
        assert [(r.implementation, r.status) for r in resp.results] == [("nvidia-nemotron", pb.SKILL_STATUS_OK)]
        assert await nemotron_state() == pb.BREAKER_STATE_CLOSED
        resp = await asyncio.wait_for(client.execute("closed again", **Q, **ctx), WAIT_S)
        assert resp.results[0].implementation == "nvidia-nemotron"
        moves = [(e["router.breaker.from"], e["router.breaker.to"]) for e in rec.skill_events("breaker.transition")
                 if e["router.breaker"] == "kimiK2/nvidia-nemotron"]
        # Each call's span carries the transition that call caused; the
        # cooldown's open → half-open is caused by no call (it shows in Stats
        # and the log, above).
        assert moves == [("closed", "open"), ("half_open", "closed")]


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-limit", "aimd"])
async def test_the_adaptive_limit_backs_off_on_429s_and_is_off_by_default(emulator, adaptive) -> None:
    adm: dict[str, Any] = {"retry": {"max_attempts": 1},
                           "breaker": {"failure_threshold": 100, "window": 20, "min_calls": 20, "failure_rate": 1.0}}
    if adaptive:
        adm["adaptive_limit"] = {"enabled": True, "algorithm": "aimd", "min_limit": 1, "max_limit": 50}
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=8, queue_depth=20, queue_timeout_s=60)},
                           admission=adm)
    async with sidecar(cfg) as (app, client, _):
        # The backend takes 2 at once and answers 429 above that.
        emulator.set_profile("gepa", ModelProfile(latency_ms=1, max_concurrency=2))
        emulator.pause("gepa")
        held = [spawn(client, f"held {i}", **ONLY_GEPA) for i in range(2)]
        await until(lambda: emulator.stats().get("gepa") is not None and emulator.stats()["gepa"].concurrent == 2,
                    "two calls held at gepa")
        for i in range(6):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(client.execute(f"too many {i}", **Q, **ONLY_GEPA), WAIT_S)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "429" in info.value.details()
        st = await skill_stats(client, "gepa")
        # AIMD: each drop takes the limit down by one (8 × 0.9 rounds down to 7, ...).
        assert st.concurrency_limit == (2 if adaptive else 8)
        assert st.in_flight == 2
        emulator.resume("gepa")
        for resp in await settle(held):
            assert isinstance(resp, pb.ExecuteResponse), resp
            assert resp.results[0].status == pb.SKILL_STATUS_OK


@pytest.mark.parametrize("bias", [0.0, 0.5], ids=["off-by-default", "on"])
async def test_the_load_bias_lowers_a_busy_skills_rank_and_is_off_by_default(emulator, bias) -> None:
    sections = {"admission": {"load_bias": bias}} if bias else {}
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=2, queue_depth=5)}, **sections)
    async with sidecar(cfg) as (app, client, _):
        emulator.pause("gepa")
        held = [spawn(client, f"held {i}", **ONLY_GEPA) for i in range(2)]
        await gate_state(client, "gepa", 2, 0)
        route = await client.route("which skills", **Q, all_skills=True)
        factors = {s.skill: s.parts.load_factor for s in route.selections}
        assert factors["gepa"] == pytest.approx(1.0 - bias)  # utilization 1.0
        assert all(f == 1.0 for skill, f in factors.items() if skill != "gepa")
        emulator.resume("gepa")
        await settle(held)


async def test_seed_limits_and_the_brain_env_defaults_show_in_stats(emulator) -> None:
    from support.configs import config_data

    from router.config import parse_config
    data = config_data(emulator.url)
    data["skills"]["gepa"]["pinned"] = ["concurrency_limit"]
    env = {"BRAIN_MOE_MAX_CONCURRENT_PER_SKILL": "7", "BRAIN_MAX_QUEUE_DEPTH": "4"}
    async with sidecar(parse_config(data, "<tests>", env)) as (app, client, _):
        s = await client.stats()
        limits = {x.skill: (x.concurrency_limit, x.queue_capacity) for x in s.skills}
    # The seed's variables hold for every skill; gepa pins its own limit.
    assert limits == {"kimiK2": (7, 4), "trm": (7, 4), "gepa": (3, 4), "ace": (7, 4), "legal": (7, 4),
                      "flaky": (7, 4), "slow": (7, 4)}


async def test_a_skill_whose_only_breaker_is_open_is_overloaded_not_unactivated(emulator) -> None:
    cfg = admission_config(
        emulator.url,
        admission={"breaker": {"failure_threshold": 1, "window": 4, "min_calls": 4, "cooldown_s": 60},
                   "retry": {"max_attempts": 1}})
    async with sidecar(cfg) as (app, client, _):
        emulator.set_profile("trm", ModelProfile(latency_ms=1, error_rate=1.0))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(client.execute("trip it", **Q, **ONLY_TRM), WAIT_S)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # trm is activated but its one implementation's breaker is open: the
        # query is refused for capacity, with when to come back.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(client.execute("alone", **Q, **ONLY_TRM), WAIT_S)
        d = error_details(info.value)
        assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED, d
        assert "trm" in d.message and "breaker open" in d.message
        assert d.retry_delay_s is not None and 0 < d.retry_delay_s <= 60
        # With another activated skill allowed, it steps in.
        resp = await asyncio.wait_for(client.execute("not alone", **Q, force_skills=["trm"], top_k=1), WAIT_S)
        assert resp.results[0].skill != "trm" and resp.results[0].status == pb.SKILL_STATUS_OK
        [rej] = [r for r in resp.rejections if r.skill == "trm"]
        assert rej.reason == pb.REJECTION_REASON_NO_IMPLEMENTATION
        assert emulator.stats()["trm"].requests == 1


async def test_a_queued_query_leaves_while_there_is_still_time_for_the_next_best(emulator) -> None:
    # gepa's calls are expected to hold a slot 400 ms: a query waits in its
    # queue only while 400 ms would still be left, then ace steps in.
    cfg = admission_config(emulator.url, {"gepa": dict(concurrency_limit=1, queue_depth=5, queue_timeout_s=60,
                                                       expected_latency_ms=400)})
    async with sidecar(cfg) as (app, client, _):
        emulator.pause("gepa")
        running = spawn(client, "running", **ONLY_GEPA)
        await gate_state(client, "gepa", 1, 0)
        resp = await asyncio.wait_for(client.execute("late", **Q, **GEPA_THEN_ACE, timeout=2.0), WAIT_S)
        [shed] = resp.shed
        assert shed.skill == "gepa" and shed.reason == pb.SHED_REASON_DEADLINE and shed.replaced_by == "ace"
        assert [(r.skill, r.status) for r in resp.results] == [("ace", pb.SKILL_STATUS_OK)]
        st = await skill_stats(client, "gepa")
        assert (st.timed_out, st.shed, st.queue_depth) == (1, 1, 0)
        emulator.resume("gepa")
        assert (await asyncio.wait_for(running, WAIT_S)).results[0].status == pb.SKILL_STATUS_OK
        assert emulator.stats()["gepa"].requests == 1  # the late query never reached gepa


async def test_admission_off_has_no_limits_queues_or_breakers(emulator) -> None:
    from support.configs import make_config
    cfg = make_config(emulator.url, env={"BRAIN_LOAD_BALANCING_ENABLED": "false"},
                      admission={"retry": {"max_attempts": 1}})
    async with sidecar(cfg) as (app, client, _):
        for i in range(7):  # more failures in a row than the breaker's default threshold (5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(client.execute(f"flaky {i}", **Q, force_skills=["flaky"], top_k=1,
                                                      exclude_skills=["kimiK2", "trm", "gepa", "ace"]), WAIT_S)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "500" in info.value.details()
        assert emulator.stats()["broken"].requests == 7  # every call reached the backend
        flaky = await skill_stats(client, "flaky")
        [impl] = flaky.implementations
        assert impl.breaker_state == pb.BREAKER_STATE_CLOSED and impl.times_opened == 0
        assert flaky.concurrency_limit >= 1_000_000 and flaky.queue_capacity == 0
