"""The response cache without a socket: the store (LRU, TTL), the key, and
the caching caller inside the pipeline (hits cost nothing, misses share
one fetch, only answers are kept) and the pipeline's stream events."""

from __future__ import annotations

import asyncio

import pytest
from core_fixtures import impl, query, skill

from router.core.errors import AllSkillsFailed
from router.core.synthesis import Status
from router.runtime.cache import CacheEntry, CacheOptions, MemoryCache, cache_key, normalize_query
from router.runtime.ports import SkillCall, SkillReply
from router.testing import FakeBackend, FakeClock, ListSink, fail, make_pipeline, reply

GUARD_S = 10.0


def entry(text: str = "x", cost: float = 0.01) -> CacheEntry:
    return CacheEntry(SkillReply(text), cost, 0.0)


async def test_memory_cache_evicts_the_least_recently_used_and_expires_by_ttl():
    clock = FakeClock(0.0)
    c = MemoryCache(2, clock=clock)
    await c.put("a", entry("a"), 10)
    await c.put("b", entry("b"), 10)
    assert (await c.get("a")).reply.output == "a"  # a is now the most recent
    await c.put("c", entry("c"), 10)
    assert await c.get("b") is None and len(c) == 2 and c.evictions == 1
    clock.advance(10)
    assert await c.get("a") is None and await c.get("c") is None and len(c) == 0


def call(**kw) -> SkillCall:
    base = dict(query_id="q1", skill="s", implementation=impl("s-impl"), query="What  is\tMoE? ", domain="general",
                complexity=6.2, metadata={"tier": "pro"}, headers={"traceparent": "00-aa-bb-01"})
    base.update(kw)
    return SkillCall(**base)


def test_the_key_ignores_ids_and_spacing_but_not_the_context_the_call_depends_on():
    k = cache_key(call())
    assert k.startswith("cache:s:s-impl:")
    assert normalize_query(" What  is\tMoE? ") == "What is MoE?"
    # Another query id, trace, spacing and the same complexity band: the same answer.
    assert cache_key(call(query_id="q2", headers={}, query="What is MoE?", complexity=6.9)) == k
    for other in (call(query="What is MoE?!"), call(domain="legal"), call(complexity=7.0),
                  call(metadata={"tier": "free"}), call(metadata={}), call(system_prompt="be brief"),
                  call(skill="t"), call(implementation=impl("s-other"))):
        assert cache_key(other) != k


def cached_pipeline(script=(), *, options=CacheOptions(enabled=True, ttl_s=60), stream=False):
    s = skill("s", implementations=(impl("s-impl", cost=0.04),))
    backend = FakeBackend(s.implementations[0], script, stream=stream)
    sink = ListSink()
    p = make_pipeline([s], {("s", "s-impl"): backend}, sink=sink, cache=MemoryCache(100), cache_options=options)
    return p, backend, sink


async def test_a_repeated_query_is_answered_from_the_cache_at_no_cost_and_the_ledger_counts_the_saving():
    p, backend, sink = cached_pipeline([reply("the answer", cost=0.04)])
    first = await asyncio.wait_for(p.execute(query("What is MoE?"), 5.0), GUARD_S)
    second = await asyncio.wait_for(p.execute(query("What  is MoE?"), 5.0), GUARD_S)
    assert len(backend.calls) == 1
    [a], [b] = first.outcomes, second.outcomes
    assert (a.cached, a.cost) == (False, 0.04)
    assert (b.cached, b.cost, b.cache_saved, b.output, b.implementation) == (True, 0.0, 0.04, "the answer", "s-impl")
    assert b.cache_age_ms >= 0
    assert second.synthesis.ledger.actual == 0.0 and second.synthesis.ledger.cache_saved == 0.04
    r1, r2 = sink.records
    assert (r1.skills_cached, r1.skills_cache_missed) == ((), ("s",))
    assert (r2.skills_cached, r2.skills_cache_missed, r2.cache_saved, r2.total_cost) == (("s",), (), 0.04, 0.0)
    assert (p.registry.totals.cache_hits, p.registry.totals.cache_misses) == (1, 1)
    stats = p.runtimes["s"].cache_stats()
    assert (stats.hits, stats.misses, stats.stored) == (1, 1, 1)
    # A hit is not a call of the skill: its latency and success rate are the backend's.
    assert p.registry.skills["s"].calls == 1


async def test_only_answers_are_cached():
    p, backend, _ = cached_pipeline([fail(500), reply("late answer")])
    with pytest.raises(AllSkillsFailed):
        await asyncio.wait_for(p.execute(query(), 5.0), GUARD_S)
    second = await asyncio.wait_for(p.execute(query(), 5.0), GUARD_S)
    third = await asyncio.wait_for(p.execute(query(), 5.0), GUARD_S)
    assert len(backend.calls) == 2
    assert not second.outcomes[0].cached and third.outcomes[0].cached


async def test_misses_for_a_key_being_fetched_wait_for_that_fetch():
    p, backend, _ = cached_pipeline([reply("slow answer", delay_s=0.05, cost=0.04)])
    outs = await asyncio.wait_for(asyncio.gather(*(p.execute(query(), 5.0) for _ in range(4))), GUARD_S)
    assert len(backend.calls) == 1
    assert [o.outcomes[0].output for o in outs] == ["slow answer"] * 4
    # They shared one call: its cost is split, never paid four times.
    assert abs(sum(o.synthesis.ledger.actual for o in outs) - 0.04) < 1e-12


async def test_a_skill_that_opts_out_is_called_every_time():
    p, backend, _ = cached_pipeline(options=CacheOptions(enabled=False))
    for _ in range(3):
        out = await asyncio.wait_for(p.execute(query(), 5.0), GUARD_S)
        assert not out.outcomes[0].cached
    assert len(backend.calls) == 3 and p.runtimes["s"].cache_stats() is None


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def routed(self, query_id, trace_id, plan):
        self.seen.append(("routed", tuple(x.name for x in plan.planned)))

    def delta(self, skill, implementation, text, attempt):
        self.seen.append(("delta", skill, text, attempt))

    def skill_result(self, outcome):
        self.seen.append(("result", outcome.skill, outcome.status, outcome.cached))

    def shed(self, shed):
        self.seen.append(("shed", shed.skill, shed.replaced_by))


async def test_the_pipeline_reports_routing_deltas_and_results_in_order_and_a_hit_comes_whole():
    p, backend, sink = cached_pipeline([reply("one two three")], stream=True)
    ev = Events()
    out = await asyncio.wait_for(p.execute(query(), 5.0, events=ev), GUARD_S)
    assert ev.seen == [("routed", ("s",)), ("delta", "s", "one", 1), ("delta", "s", " two", 1),
                       ("delta", "s", " three", 1), ("result", "s", Status.OK, False)]
    assert out.outcomes[0].output == "one two three"
    ev2 = Events()
    await asyncio.wait_for(p.execute(query(), 5.0, events=ev2), GUARD_S)
    assert ev2.seen == [("routed", ("s",)), ("result", "s", Status.OK, True)]
    assert len(backend.calls) == 1 and [r.status for r in sink.records] == ["ok", "ok"]


async def test_without_events_a_streaming_backend_is_called_whole():
    s = skill("s")
    backend = FakeBackend(s.implementations[0], [reply("whole answer")], stream=True)
    p = make_pipeline([s], {("s", "s-impl"): backend})
    out = await asyncio.wait_for(p.execute(query(), 5.0), GUARD_S)
    assert out.outcomes[0].output == "whole answer" and len(backend.calls) == 1


def test_cache_config_defaults_and_per_skill_overrides():
    from support.configs import config_data

    from router.app import skill_settings
    from router.config import parse_config

    off = skill_settings(parse_config(config_data("http://127.0.0.1:9"), "<cache tests>", {}))
    assert not any(s.cache.enabled for s in off.values())
    data = config_data("http://127.0.0.1:9", cache={"enabled": True, "ttl_s": 60, "max_entries": 7})
    data["skills"]["trm"]["cache"] = {"enabled": False}  # its answers depend on the user
    data["skills"]["ace"]["cache"] = {"ttl_s": 5}
    cfg = parse_config(data, "<cache tests>", {})
    s = skill_settings(cfg)
    assert cfg.cache.max_entries == 7
    assert s["trm"].cache == CacheOptions(enabled=False, ttl_s=60)
    assert s["ace"].cache == CacheOptions(enabled=True, ttl_s=5)
    assert s["kimiK2"].cache == CacheOptions(enabled=True, ttl_s=60)


def test_bad_cache_settings_name_the_key():
    from support.configs import config_data

    from router.config import InvalidConfig, parse_config

    for sections, path in (({"cache": {"ttl_s": -1}}, "cache.ttl_s"),
                           ({"cache": {"max_entries": 0}}, "cache.max_entries"),
                           ({"cache": {"enabled": "sometimes"}}, "cache.enabled"),
                           ({"cache": {"ttl": 5}}, "cache.ttl")):
        with pytest.raises(InvalidConfig) as info:
            parse_config(config_data("http://127.0.0.1:9", **sections), "<cache tests>", {})
        assert info.value.path == path, (path, str(info.value))
    data = config_data("http://127.0.0.1:9")
    data["skills"]["trm"]["cache"] = {"ttl_s": 0}
    with pytest.raises(InvalidConfig) as info:
        parse_config(data, "<cache tests>", {})
    assert info.value.path == "skills.trm.cache.ttl_s"


async def test_a_retried_stream_starts_over_with_the_next_attempt_number():
    from router.core.retry import RetryPolicy

    s = skill("s")
    backend = FakeBackend(s.implementations[0], [fail(503), reply("second try")], stream=True)
    p = make_pipeline([s], {("s", "s-impl"): backend},
                      retry=RetryPolicy(max_attempts=2, base_delay_s=0.001, max_delay_s=0.001))
    ev = Events()
    out = await asyncio.wait_for(p.execute(query(), 5.0, events=ev), GUARD_S)
    assert [e for e in ev.seen if e[0] == "delta"] == [("delta", "s", "second", 2), ("delta", "s", " try", 2)]
    assert out.outcomes[0].attempts == 2 and out.outcomes[0].output == "second try"


async def test_a_failed_skill_is_reported_then_shed_then_its_stand_in_answers():
    a, b = skill("a", optimal=5), skill("b", optimal=8)
    backends = {("a", "a-impl"): FakeBackend(a.implementations[0], [fail(503)]),
                ("b", "b-impl"): FakeBackend(b.implementations[0], [reply("b here")])}
    p = make_pipeline([a, b], backends)
    ev = Events()
    out = await asyncio.wait_for(p.execute(query(top_k=1), 5.0, events=ev), GUARD_S)
    assert ev.seen == [("routed", ("a",)), ("result", "a", Status.FAILED, False), ("shed", "a", "b"),
                       ("result", "b", Status.OK, False)]
    assert [o.skill for o in out.outcomes] == ["b"]
