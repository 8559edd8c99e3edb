"""The answer memory, the feedback desk, k schedules and the shadow bound,
in process (router.testing's pipeline, no socket)."""

from __future__ import annotations

import asyncio
import random

import pytest

from router.core.errors import AlreadyRated, UnknownQuery
from router.core.types import ActivationRule, ImplementationSpec, Query, RoutingPolicy, SkillSpec
from router.runtime.experiments import ArmSpec, ExperimentRunner, Experiments, ExperimentSpec, KSchedule
from router.runtime.feedback import Answered, AnswerMemory, FeedbackDesk, QualityRegistry
from router.testing import FakeBackend, hang, make_pipeline, reply


def impl(name: str, quality: float = 0.9, cost: float = 0.01) -> ImplementationSpec:
    return ImplementationSpec(name, "openai", "http://x", name, quality, cost, 100.0, 5.0)


def skill(name: str, priority: int = 1) -> SkillSpec:
    return SkillSpec(name, priority, ActivationRule(), frozenset(), 5.0, 10, 10, (impl(f"{name}-impl"),))


class Wall:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def desk_with(memory: AnswerMemory) -> FeedbackDesk:
    return FeedbackDesk(memory, QualityRegistry([skill("a")]), clock=memory._clock)


def test_an_expired_query_cannot_be_rated() -> None:
    wall = Wall()
    memory = AnswerMemory(ttl_s=60, max_entries=10, clock=wall)
    memory.remember(Answered("q1", wall.now, "general", 5.0, (("a", "a-impl"),)))
    wall.now += 61
    with pytest.raises(UnknownQuery) as e:
        desk_with(memory).submit("q1", 1.0, {})
    assert e.value.field == "query_id" and "unknown or expired" in str(e.value)


def test_the_memory_is_bounded_oldest_first() -> None:
    wall = Wall()
    memory = AnswerMemory(ttl_s=600, max_entries=2, clock=wall)
    for q in ("q1", "q2", "q3"):
        memory.remember(Answered(q, wall.now, "general", 5.0, (("a", "a-impl"),)))
    assert len(memory) == 2 and memory.get("q1") is None and memory.get("q3") is not None
    desk = desk_with(memory)
    assert desk.submit("q3", 0.0, {}).rated[0].measured_quality < 0.9
    with pytest.raises(AlreadyRated):
        desk.submit("q3", 1.0, {})
    assert desk.received == 1 and desk.quality.ratings_of("a", "a-impl") == 1


def schedule_experiments(lower_score: float) -> tuple[Experiments, int]:
    arm = ArmSpec("sched", k_schedule=KSchedule(start_k=3, end_k=2, margin=0.05, min_ratings=5, probe_share=0.5))
    exps = Experiments([ExperimentSpec("e", "fixed", (ArmSpec("fixed", top_k=3), arm), key="u")],
                       RoutingPolicy(), random.Random(5))
    user = next(f"u{i}" for i in range(100) if (a := exps.assign(Query("q", metadata={"u": f"u{i}"})))
                and a.arm == "sched")
    for _ in range(60):
        a = exps.assign(Query("q", metadata={"u": user}))
        assert a is not None and a.query.top_k in (2, 3)
        exps.rated(a.label, 1.0 if a.query.top_k == 3 else lower_score)
    return exps, exps.current_k("e", "sched") or 0


def test_a_k_schedule_steps_down_while_the_lower_k_holds_quality() -> None:
    assert schedule_experiments(1.0)[1] == 2
    exps, k = schedule_experiments(0.5)
    assert k == 3
    live = exps.live[("e", "sched", False)]
    assert live.ratings == 60 and live.current_k == 3


async def test_shadows_are_bounded_and_never_awaited_by_the_caller() -> None:
    fast, stuck = skill("fast", 1), skill("stuck", 2)
    backends = {("fast", "fast-impl"): FakeBackend(fast.implementations[0], reply("fast")),
                ("stuck", "stuck-impl"): FakeBackend(stuck.implementations[0], hang())}
    pipeline = make_pipeline([fast, stuck], backends, policy=RoutingPolicy(quality_threshold=0.0))
    spec = ExperimentSpec("e", "all", (ArmSpec("all", all_skills=True), ArmSpec("top1", top_k=1)), key="u",
                          shadow_share=1.0, shadow_max_concurrent=1)
    exps = Experiments([spec], pipeline.policy, random.Random(1))
    runner = ExperimentRunner(pipeline, exps)
    user = next(f"u{i}" for i in range(100) if exps.assign(Query("q", metadata={"u": f"u{i}"})).arm == "top1")  # type: ignore[union-attr]
    for _ in range(3):
        out, label = await asyncio.wait_for(runner.execute(Query("q", metadata={"u": user}), 30.0), 5.0)
        assert label == "e/top1" and [o.skill for o in out.outcomes] == ["fast"]
    assert runner.shadows_in_flight == 1  # the first shadow waits on the stuck skill
    shadow = exps.live[("e", "all", True)]
    assert shadow.skipped == 2 and shadow.queries == 0
    await runner.aclose(0.0)
    assert runner.shadows_in_flight == 0
    await pipeline.aclose()


@pytest.mark.parametrize(("experiments", "routing", "path"), [
    ({"ab": {"control": "nope", "arms": {"a": {}, "b": {}}}}, {}, "experiments.ab.control"),
    ({"ab": {"control": "a", "arms": {"a": {}}}}, {}, "experiments.ab.arms"),
    ({"ab": {"control": "a", "arms": {"a": {}, "b": {"top_k": 3, "all_skills": True}}}}, {},
     "experiments.ab.arms.b.all_skills"),
    ({"ab": {"control": "a", "arms": {"a": {}, "b": {"k_schedule": {"start_k": 3, "end_k": 5}}}}}, {},
     "experiments.ab.arms.b.k_schedule.end_k"),
    ({"ab": {"control": "a", "share": 1.5, "arms": {"a": {}, "b": {}}}}, {}, "experiments.ab.share"),
    ({}, {"implementation_policy": "best"}, "routing.implementation_policy"),
    ({}, {"cost_weight": -1}, "routing.cost_weight"),
])
def test_bad_feedback_and_experiment_config_names_the_key(experiments, routing, path) -> None:  # type: ignore[no-untyped-def]
    from support.configs import config_data

    from router.config import InvalidConfig, parse_config
    data = config_data("http://127.0.0.1:9", routing=routing)
    data["experiments"] = experiments
    with pytest.raises(InvalidConfig) as e:
        parse_config(data, "<t>", {})
    assert path in str(e.value), str(e.value)


def test_complexity_bands_must_ascend() -> None:
    from support.configs import config_data

    from router.config import InvalidConfig, parse_config
    data = config_data("http://127.0.0.1:9")
    data["feedback"] = {"complexity_bands": [7.0, 3.0]}
    with pytest.raises(InvalidConfig, match=r"feedback\.complexity_bands"):
        parse_config(data, "<t>", {})


def test_prometheus_shows_declared_and_measured_quality() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from router.admin import SnapshotCollector
    from router.core.breaker import BreakerState
    from router.runtime.registry import Totals
    from router.runtime.stats import ImplementationSnapshot, SkillSnapshot, Snapshot

    impl_snap = ImplementationSnapshot("a-impl", BreakerState.CLOSED, None, 0, 0.0, 0, 0.9, 0.7, 12, 0.5, 0.85)
    skill_snap = SkillSnapshot("a", 0, 10, 0, 12, 0, 1.0, 1.0, 2.0, implementations=(impl_snap,),
                               queue_by_priority={})
    reg = CollectorRegistry()
    reg.register(SnapshotCollector(lambda: Snapshot((skill_snap,), Totals(), 1.0, True, feedback_received=12)))
    text = generate_latest(reg).decode()
    assert 'skill_router_implementation_quality{implementation="a-impl",kind="declared",skill="a"} 0.9' in text
    assert 'skill_router_implementation_quality{implementation="a-impl",kind="measured",skill="a"} 0.7' in text
    assert 'skill_router_implementation_ratings_total{implementation="a-impl",skill="a"} 12.0' in text
    assert "skill_router_feedback_total 12.0" in text
