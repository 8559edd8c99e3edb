"""The orchestrator without a socket: router.testing's fake clock and fake
backends drive shedding, standby, fallback, deadlines and accounting."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from core_fixtures import impl, query, skill

from router.core.admission import RejectReason
from router.core.breaker import BreakerConfig, BreakerState
from router.core.errors import AllSkillsFailed, DeadlineExceeded, NoSkillActivated, Overloaded
from router.core.synthesis import QueryOutcome, Status
from router.core.types import RoutingPolicy
from router.testing import FakeBackend, FakeClock, ListSink, fail, hang, make_pipeline, reply

GUARD_S = 10.0


def two_impl_skill(name: str = "search", **kw):
    """A skill whose cheap implementation (chosen first) and strong one both
    meet the default floor."""
    return skill(name, implementations=(impl(f"{name}-cheap", quality=0.9, cost=0.01),
                                        impl(f"{name}-strong", quality=0.95, cost=0.05)), **kw)


def backends_for(*skills, scripts=None):
    scripts = scripts or {}
    return {(s.name, i.name): FakeBackend(i, scripts.get(i.name, ())) for s in skills for i in s.implementations}


def limited(s, limit=1, depth=0):
    return dataclasses.replace(s, concurrency_limit=limit, queue_depth=depth)


async def test_a_failed_call_is_answered_by_the_skills_next_implementation():
    s = two_impl_skill()
    backends = backends_for(s, scripts={"search-cheap": [fail(500)]})
    sink = ListSink()
    p = make_pipeline([s], backends, sink=sink)
    out = await asyncio.wait_for(p.execute(query(top_k=1), 1.0), GUARD_S)
    [o] = out.outcomes
    assert (o.skill, o.implementation, o.status) == ("search", "search-strong", Status.OK)
    assert o.stepped_in_for == "search/search-cheap" and o.step_in_reason == str(RejectReason.CALL_FAILED)
    [shed] = out.shed
    assert (shed.reason, shed.implementation, shed.replaced_by_implementation) == (
        RejectReason.CALL_FAILED, "search-cheap", "search-strong")
    assert out.outcome is QueryOutcome.OK and sink.records[-1].status == "ok"
    assert len(backends[("search", "search-cheap")].calls) == 1


async def test_a_failed_call_with_no_other_implementation_is_answered_by_the_next_best_skill():
    a, b = skill("a", optimal=5), skill("b", optimal=8)
    backends = backends_for(a, b, scripts={"a-impl": [fail(503)]})
    p = make_pipeline([a, b], backends)
    out = await asyncio.wait_for(p.execute(query(top_k=1), 1.0), GUARD_S)
    assert [(o.skill, o.status, o.stepped_in_for) for o in out.outcomes] == [("b", Status.OK, "a/a-impl")]
    assert [p.name for p in out.ran] == ["b"]


async def test_no_fallback_once_the_retry_budget_is_spent():
    s = two_impl_skill()
    backends = backends_for(s, scripts={"search-cheap": [fail(500)], "search-strong": [fail(500)]})
    p = make_pipeline([s], backends)
    budget = p.runtimes["search"].budget
    while budget.try_spend(1000.0):  # the fake clock's now
        pass
    with pytest.raises(AllSkillsFailed):
        await asyncio.wait_for(p.execute(query(top_k=1), 1.0), GUARD_S)
    assert backends[("search", "search-strong")].calls == []  # nobody stepped in


async def test_a_full_skill_is_shed_and_the_standby_steps_in():
    a, b = limited(skill("a", optimal=5)), skill("b", optimal=8)
    backends = backends_for(a, b, scripts={"a-impl": [hang()]})
    p = make_pipeline([a, b], backends)
    first = asyncio.create_task(p.execute(query("first", top_k=1), 5.0))
    while backends[("a", "a-impl")].in_flight == 0:
        await asyncio.sleep(0.001)
    out = await asyncio.wait_for(p.execute(query("second", top_k=1), 1.0), GUARD_S)
    [shed] = out.shed
    assert (shed.skill, shed.reason, shed.replaced_by) == ("a", RejectReason.QUEUE_FULL, "b")
    assert [o.skill for o in out.outcomes] == ["b"]
    assert p.runtimes["a"].gate.stats().shed == 1
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_every_candidate_saturated_is_refused_and_recorded():
    a = limited(skill("a"))
    backends = backends_for(a, scripts={"a-impl": [hang()]})
    sink = ListSink()
    p = make_pipeline([a], backends, sink=sink)
    first = asyncio.create_task(p.execute(query("first"), 5.0))
    while backends[("a", "a-impl")].in_flight == 0:
        await asyncio.sleep(0.001)
    with pytest.raises(Overloaded):
        await p.execute(query("second"), 1.0)
    assert sink.records[-1].status == "refused" and sink.records[-1].cost_saved == 0.0
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # The cancelled query has its row too.
    assert [r.status for r in sink.records] == ["refused", "cancelled"]
    assert p.registry.totals.queries == 2 and p.registry.totals.answered == 0


async def test_the_callers_deadline_is_not_a_backend_failure():
    s = skill("slow")
    backends = backends_for(s, scripts={"slow-impl": [hang()]})
    sink = ListSink()
    p = make_pipeline([s], backends, sink=sink, clock=time.monotonic,
                      breaker=BreakerConfig(consecutive_failures=2, window=4, min_calls=4))
    for _ in range(4):
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(p.execute(query(), 0.1), GUARD_S)
    breaker = p.runtimes["slow"].breakers["slow-impl"]
    assert breaker.state(time.monotonic()) is BreakerState.CLOSED and breaker.consecutive_failures == 0
    assert {r.status for r in sink.records} == {"deadline"}
    assert p.registry.skills["slow"].calls == 0  # nor does it count against the skill's success rate


async def test_the_implementations_own_timeout_is_a_failure_and_trips_the_breaker():
    s = skill("slow", implementations=(dataclasses.replace(impl("slow-impl"), timeout_s=0.05),))
    backends = backends_for(s, scripts={"slow-impl": [hang()]})
    p = make_pipeline([s], backends, clock=time.monotonic,
                      breaker=BreakerConfig(consecutive_failures=2, window=4, min_calls=4))
    for _ in range(2):
        with pytest.raises(AllSkillsFailed):
            await asyncio.wait_for(p.execute(query(), 2.0), GUARD_S)
    assert p.runtimes["slow"].breakers["slow-impl"].state(time.monotonic()) is BreakerState.OPEN
    assert list(p.registry.impaired) == ["slow"]
    # The open breaker leaves the skill with no implementation: refused, with a retry delay.
    with pytest.raises(Overloaded) as info:
        await p.execute(query(), 2.0)
    assert info.value.retry_after_s > 0


async def test_breaker_cooldown_on_the_fake_clock_half_opens_and_a_success_closes_it():
    clock = FakeClock()
    s = skill("s")
    backends = backends_for(s, scripts={"s-impl": [fail(500), fail(500), reply("back")]})
    p = make_pipeline([s], backends, clock=clock,
                      breaker=BreakerConfig(consecutive_failures=2, window=4, min_calls=4, cooldown_s=30))
    for _ in range(2):
        with pytest.raises(AllSkillsFailed):
            await p.execute(query(), 1.0)
    with pytest.raises(Overloaded):
        await p.execute(query(), 1.0)
    clock.advance(30)
    out = await p.execute(query(), 1.0)
    assert out.outcomes[0].output == "back"
    assert p.runtimes["s"].breakers["s-impl"].state(clock()) is BreakerState.CLOSED
    assert list(p.registry.impaired) == []


async def test_accounting_one_row_per_execute_and_savings_only_when_answered():
    ok, broken = skill("ok", cost=0.02), skill("broken", keywords=("broken",), cost=0.03)
    backends = backends_for(ok, broken, scripts={"broken-impl": [fail(500)]})
    sink = ListSink()
    p = make_pipeline([ok, broken], backends, sink=sink)
    answered = await p.execute(query("fine", top_k=2), 1.0)
    partial = await p.execute(query("broken too", top_k=2), 1.0)
    with pytest.raises(AllSkillsFailed):
        await p.execute(query("broken alone", force=("broken",), exclude=("ok",)), 1.0)
    with pytest.raises(NoSkillActivated):
        await p.execute(query("nothing", exclude=("ok", "broken")), 1.0)
    assert answered.outcome is QueryOutcome.OK and partial.outcome is QueryOutcome.PARTIAL
    assert [r.status for r in sink.records] == ["ok", "partial", "failed", "unrouted"]
    ok_row, partial_row, failed_row, unrouted_row = sink.records
    assert ok_row.cost_saved == pytest.approx(ok_row.baseline_cost - ok_row.total_cost)
    assert failed_row.cost_saved == 0.0 and failed_row.quality_score is None
    assert unrouted_row.quality_score is None and unrouted_row.skills_selected == 0
    t = p.registry.totals
    assert (t.queries, t.answered, t.failed_queries) == (4, 2, 2)
    assert dict(t.outcomes) == {"ok": 1, "partial": 1, "failed": 1, "unrouted": 1}
    assert t.cost_saved == pytest.approx(ok_row.cost_saved + partial_row.cost_saved)
    assert t.avg_quality == pytest.approx((ok_row.quality_score + partial_row.quality_score) / 2)


async def test_coalesced_and_batched_callers_look_the_same_to_the_orchestrator():
    from router.runtime.calls import BatchedCaller, BatchingOptions, CoalescedCaller
    plain = skill("plain")
    batchy = skill("batchy")
    backends = backends_for(plain)
    backends.update({("batchy", "batchy-impl"): FakeBackend(batchy.implementations[0], [reply("b", delay_s=0.02)],
                                                              batch=True)})
    p = make_pipeline([plain, batchy], backends, batching=BatchingOptions(enabled=True, window_s=0.05,
                                                                          max_batch_size=4))
    assert isinstance(p.runtimes["plain"].callers["plain-impl"], CoalescedCaller)
    assert isinstance(p.runtimes["batchy"].callers["batchy-impl"], BatchedCaller)
    outs = await asyncio.wait_for(asyncio.gather(*(p.execute(query(f"q{i}", force=("batchy",), top_k=1), 2.0)
                                                   for i in range(3))), GUARD_S)
    assert all(o.outcomes[0].ok for o in outs)
    assert sum(o.outcomes[0].batch_size for o in outs) >= 3
    assert len(backends[("batchy", "batchy-impl")].batches) < 3  # at least two went in one request
    assert "SkillRuntime batchy" in repr(p.runtimes["batchy"]) and "Pipeline 2 skills" in repr(p)


async def test_route_bounds_the_rejections_unless_asked_to_explain_all():
    skills = [skill(f"s{i:03d}", domains=(f"d{i % 10}",)) for i in range(120)]
    p = make_pipeline(skills, backends_for(*skills), policy=RoutingPolicy())
    out = await p.route(query(domain="d3"))
    assert len(out.plan.planned) == 3
    assert len(out.plan.rejected) == 20 and out.plan.rejections_omitted == 120 - 3 - 20
    # the best-ranked of those not chosen come first
    assert {r.reason.value for r in out.plan.rejected[:9]} == {"below_top_k"}
    full = await p.route(query(domain="d3"), explain_all=True)
    assert len(full.plan.rejected) == 117 and full.plan.rejections_omitted == 0
