"""Feedback, measured quality, expected_quality and experiments end to end:
one real sidecar (ephemeral loopback port) for the module, real emulated
backends on loopback, through the Python client."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2
from skill_router_client import AsyncRouterClient, build_context
from support.configs import MODELS, config_data

from router.app import App, build_app
from router.config import parse_config
from router.core.experiments import assign_arm
from router.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALL = ["kimiK2", "trm", "gepa", "ace", "legal", "flaky", "slow"]


def only(skill: str, **kw: Any) -> dict[str, Any]:
    return dict(force_skills=[skill], top_k=1, exclude_skills=[s for s in ALL if s != skill], **kw)


EXPERIMENTS = {"ab": {"key": "user_id", "share": 1.0, "control": "all",
                      "arms": {"all": {"all_skills": True}, "top1": {"top_k": 1}},
                      "shadow": {"share": 1.0, "max_concurrent": 2}}}


@dataclass
class Sidecar:
    app: App
    client: AsyncRouterClient


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sidecar]:
    db = Path(tmp_path_factory.mktemp("feedback")) / "metrics.sqlite3"
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        data = config_data(emu.url, routing={"implementation_policy": "expected_quality", "cost_weight": 0.5,
                                             "exploration": 0.1},
                           storage={"sqlite_path": str(db), "flush_interval_s": 0.05})
        data["feedback"] = {"prior_strength": 5, "seed": 3, "memory_ttl_s": 600}
        data["experiments"] = EXPERIMENTS
        app = build_app(parse_config(data, "<feedback tests>", {}), "127.0.0.1:0")
        await app.start()
        try:
            async with AsyncRouterClient(app.address, timeout=30) as client:
                yield Sidecar(app, client)
        finally:
            await app.stop(1)


async def eventually(cond: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def impl_stats(client: AsyncRouterClient, skill: str, name: str):  # type: ignore[no-untyped-def]
    s = await client.stats()
    sk = next(x for x in s.skills if x.skill == skill)
    return next(i for i in sk.implementations if i.name == name)


def bad_request_field(err: grpc.aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(value)
            for d in st.details:
                br = error_details_pb2.BadRequest()
                if d.Unpack(br):
                    return br.field_violations[0].field
    return ""


# ---- measured quality ------------------------------------------------------------------

async def test_feedback_moves_measured_quality_the_right_way(sidecar: Sidecar) -> None:
    c = sidecar.client
    before = await impl_stats(c, "legal", "legal-llm")
    assert before.ratings == 0 and before.measured_quality == pytest.approx(before.declared_quality) == 0.9
    ups = []
    for _ in range(3):
        r = await c.execute("a contract question", **only("legal", domain="legal"))
        ups.append(await c.feedback(r.query_id, 1.0))
    up = await impl_stats(c, "legal", "legal-llm")
    assert up.ratings == 3 and up.measured_quality > 0.9
    assert ups[-1].rated[0].implementation == "legal-llm" and ups[-1].rated[0].ratings == 3
    for _ in range(6):
        r = await c.execute("a contract question", **only("legal", domain="legal"))
        await c.feedback(r.query_id, skill_scores={"legal": 0.0})
    down = await impl_stats(c, "legal", "legal-llm")
    assert down.ratings == 9 and down.measured_quality < 0.9 < up.measured_quality
    assert down.measured_quality_low < down.measured_quality < down.measured_quality_high
    totals = (await c.stats()).totals
    assert totals.feedback_received >= 9 and 0 < totals.avg_feedback_score < 1
    # Skill scoring's success factor reads the measured answer quality: the
    # backend never failed, but its answers are rated below what was declared.
    route = await c.route("a contract question", domain="legal")
    legal = next(x for x in route.selections if x.skill == "legal")
    assert legal.parts.success_rate < 1.0
    assert legal.parts.success_rate == pytest.approx(down.measured_quality / 0.9, rel=1e-3)
    assert legal.parts.success_factor == pytest.approx(0.7 + 0.3 * legal.parts.success_rate)


async def test_the_store_keeps_every_rating_and_says_the_quality_is_measured(sidecar: Sidecar) -> None:
    c, store = sidecar.client, sidecar.app.store
    assert store is not None
    r = await c.execute("a contract question", **only("legal", domain="legal"))
    await c.feedback(r.query_id, 0.25)
    await store.flush()
    rows = [f for f in await store.feedback(50) if f.query_id == r.query_id]
    assert [(f.skill, f.implementation, f.score, f.domain) for f in rows] == [("legal", "legal-llm", 0.25, "legal")]
    mine = [q for q in await store.recent(200) if q.query_id == r.query_id]
    assert len(mine) == 1 and mine[0].quality_score == 0.25 and mine[0].quality_source == "feedback"
    assert mine[0].implementations == ("legal-llm",)
    other = await c.execute("a contract question", **only("legal", domain="legal"))
    await store.flush()
    unrated = [q for q in await store.recent(200) if q.query_id == other.query_id]
    assert unrated[0].quality_source == "declared" and unrated[0].quality_score == pytest.approx(0.9)


# ---- choosing by expected quality ----------------------------------------------------------

async def test_an_implementation_rated_0_stops_being_chosen_and_one_rated_1_is_chosen_more(sidecar: Sidecar) -> None:
    c = sidecar.client
    picks: list[str] = []
    for _ in range(60):
        r = await c.execute("research this", **only("kimiK2", required_quality=0.0))
        name = r.results[0].implementation
        picks.append(name)
        await c.feedback(r.query_id, 1.0 if name == "tongyi-deepresearch" else 0.0)
    first, last = Counter(picks[:10]), Counter(picks[-20:])
    assert picks[0] == "gemini-flash"  # the cheapest at cost_weight 0.5 before any rating
    assert last["gemini-flash"] <= 2, picks
    assert last["tongyi-deepresearch"] >= 15 and last["tongyi-deepresearch"] / 20 > first["tongyi-deepresearch"] / 10, picks
    gemini = await impl_stats(c, "kimiK2", "gemini-flash")
    assert gemini.ratings >= 1 and gemini.measured_quality < gemini.declared_quality


async def test_the_cost_knob_is_per_request(sidecar: Sidecar) -> None:
    c = sidecar.client
    r = await c.execute("answer", **only("ace", cost_weight=3.0))
    assert "cost_weight 3" in r.selections[0].implementation.reason
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await c.execute("answer", **only("ace", cost_weight=101.0))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "context.cost_weight" in e.value.details()


# ---- bad feedback -----------------------------------------------------------------------------

async def test_bad_feedback_gets_clear_errors_naming_the_field(sidecar: Sidecar) -> None:
    c = sidecar.client
    r = await c.execute("quick one", **only("trm"))

    async def refused(code: grpc.StatusCode, field: str, *args: Any, **kw: Any) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.feedback(*args, **kw)
        assert e.value.code() == code, e.value.details()
        assert bad_request_field(e.value) == field and e.value.details().startswith(field)
        return e.value.details()

    assert "unknown or expired" in await refused(grpc.StatusCode.NOT_FOUND, "query_id", "no-such-query", 1.0)
    await refused(grpc.StatusCode.INVALID_ARGUMENT, "query_id", "", 1.0)
    assert "between 0 and 1" in await refused(grpc.StatusCode.INVALID_ARGUMENT, "score", r.query_id, 1.5)
    await refused(grpc.StatusCode.INVALID_ARGUMENT, "score", r.query_id, -0.1)
    await refused(grpc.StatusCode.INVALID_ARGUMENT, "score", r.query_id)  # neither score nor skill_scores
    await refused(grpc.StatusCode.INVALID_ARGUMENT, "skill_scores['trm']", r.query_id, skill_scores={"trm": 2.0})
    assert "did not answer" in await refused(grpc.StatusCode.INVALID_ARGUMENT, "skill_scores['legal']",
                                             r.query_id, skill_scores={"legal": 1.0})
    before = await impl_stats(c, "trm", "trm-http")
    assert before.ratings == 0  # nothing above changed anything
    ok = await c.feedback(r.query_id, 1.0)
    assert ok.query_score == 1.0 and [x.skill for x in ok.rated] == ["trm"]
    assert "first rating stands" in await refused(grpc.StatusCode.ALREADY_EXISTS, "query_id", r.query_id, 0.0)
    after = await impl_stats(c, "trm", "trm-http")
    assert after.ratings == 1 and after.measured_quality > after.declared_quality


# ---- experiments ------------------------------------------------------------------------------

def user_in(arm_index: int, start: int = 0) -> str:
    i = start
    while assign_arm("ab", f"user-{i}", 1.0, 2) != arm_index:
        i += 1
    return f"user-{i}"


async def test_assignment_is_sticky_per_user_and_shows_in_stats(sidecar: Sidecar) -> None:
    c = sidecar.client
    users = [f"user-{i}" for i in range(40)]
    seen: dict[str, set[str]] = {}
    for u in users:
        for _ in range(2):
            r = await c.execute("hello there", context=build_context(metadata={"user_id": u}))
            seen.setdefault(u, set()).add(r.experiment_arm)
    assert all(len(arms) == 1 for arms in seen.values())  # sticky
    arms = Counter(next(iter(a)) for a in seen.values())
    assert set(arms) == {"ab/all", "ab/top1"}
    assert arms["ab/all"] == sum(assign_arm("ab", u, 1.0, 2) == 0 for u in users)
    none = await c.execute("hello there")
    assert none.experiment_arm == ""  # no user key: no experiment
    u = user_in(1)
    top1 = await c.execute("hello there", context=build_context(metadata={"user_id": u}))
    assert len(top1.results) == 1
    all_ = await c.execute("hello there", context=build_context(metadata={"user_id": user_in(0)}))
    assert len(all_.results) > 1
    await c.feedback(top1.query_id, 1.0)
    stats = await c.stats()
    by = {(a.arm, a.shadow): a for a in stats.experiments}
    assert by[("top1", False)].queries >= 3 and by[("top1", False)].ratings == 1
    assert by[("top1", False)].measured_quality == 1.0
    assert by[("all", False)].cost_usd > 0
    await eventually(lambda: _shadow_queries(c, lambda n: n > 0), "a shadow run to be counted")


async def _shadow_queries(c: AsyncRouterClient, cond: Callable[[int], bool]) -> bool:
    stats = await c.stats()
    return any(a.shadow and cond(a.queries) for a in stats.experiments)


async def test_a_shadow_run_never_delays_the_answer(sidecar: Sidecar) -> None:
    # The control arm (all skills) of a "slow" query runs the glacial skill
    # (60 s): the treatment arm's answer comes back while its shadow is
    # still running, and the shadow is never counted in the totals.
    c, runner = sidecar.client, sidecar.app.learning.runner  # type: ignore[union-attr]
    await eventually(lambda: _idle(runner), "earlier shadows to finish")
    before = await c.stats()
    shadow_before = next(a for a in before.experiments if a.shadow)
    r = await c.execute("slow question", context=build_context(metadata={"user_id": user_in(1, 1000)}))
    assert r.experiment_arm == "ab/top1" and [x.skill for x in r.results] != ["slow"]
    assert runner.shadows_in_flight == 1  # answered while its shadow waits on the glacial skill
    after = await c.stats()
    assert after.totals.queries == before.totals.queries + 1  # the shadow is not a query of the totals
    shadow_now = next(a for a in after.experiments if a.shadow)
    assert shadow_now.queries == shadow_before.queries  # not finished


async def _idle(runner: Any) -> bool:
    return runner.shadows_in_flight == 0
