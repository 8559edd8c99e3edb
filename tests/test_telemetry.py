"""router.telemetry against a real OTLP receiver (gRPC and HTTP).

The observer is driven the way the pipeline drives it, under a SERVER span
that continues a caller's W3C trace context; what the receiver gets is
checked as a tree. No wall-clock durations are asserted: the pipeline's
timestamps are chosen by the test, so the spans' times are exact.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from core_fixtures import impl, query, seed_skills, skill
from support.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, ReceivedSpan, build_tree

from router.config import TelemetrySettings
from router.core.routing import RoutePlan, plan_route
from router.core.synthesis import SkillOutcome, Status, synthesize
from router.core.types import RoutingPolicy
from router.runtime.observer import NullObserver, QueryRecord
from router.telemetry import (
    OtelObserver,
    TelemetryConfigError,
    extract_context,
    read_plan,
    scrub,
    setup_telemetry,
)

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
METHOD = "/router.v1.RouterService/Execute"
QUERY_TEXT = "Which clauses of this contract limit liability for negligent misstatement?"
SECRET = "sk-live-0123456789abcdefSECRET"

SELECTION_NS = 250_000
SYNTHESIS_NS = 40_000


@pytest.fixture
async def receiver():
    async with OtlpGrpcReceiver() as rx:
        yield rx


def grpc_env(rx: OtlpGrpcReceiver, **extra: str) -> dict[str, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "skill-router-test",
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",  # exported on flush only
    }
    env.update(extra)
    return env


def legal_plan(text: str = QUERY_TEXT) -> RoutePlan:
    skills = seed_skills() + (
        skill("search", priority=2, implementations=(impl("web", backend="http", model="search-v2"),),
              keywords=("nothing-matches-this",)),
    )
    return plan_route(skills, query(text, domain="legal", complexity=8.0, top_k=3), RoutingPolicy(), {})


def outcome_for(p, *, fail: bool = False) -> SkillOutcome:
    chosen = p.choice.implementation
    if fail:
        return SkillOutcome(p.name, chosen.name, chosen.model, p.chosen.score.score, Status.FAILED,
                            error=f"401 Unauthorized: Authorization: Bearer {SECRET}", latency_ms=12.0)
    return SkillOutcome(p.name, chosen.name, chosen.model, p.chosen.score.score, Status.OK,
                        output=f"answer from {p.name}", cost=chosen.cost_per_query, latency_ms=120.0,
                        input_tokens=321, output_tokens=45, quality=chosen.quality)


def record_for(plan: RoutePlan, synth, trace_id: str) -> QueryRecord:
    top = plan.planned[0]
    return QueryRecord(
        query_id="q-1", timestamp=time.time(), rpc="execute", status="ok", query_hash="ab12",
        domain=plan.query.domain, complexity=plan.query.complexity,
        skills_considered=len(plan.planned) + len(plan.rejected), skills_selected=len(plan.planned),
        top_skill=top.name, top_skill_score=top.chosen.score.score,
        selection_time_ms=SELECTION_NS / 1e6, execution_time_ms=120.0, total_time_ms=121.0,
        total_cost=synth.ledger.actual, cost_saved=synth.ledger.saved, baseline_cost=synth.ledger.baseline,
        quality_score=synth.quality, max_utilization=0.5, avg_queue_depth=0.0,
        skills=tuple(p.name for p in plan.planned), trace_id=trace_id,
    )


async def drive(tel, plan: RoutePlan, metadata, *, failing: str = "") -> dict[str, Any]:
    """One Execute as the pipeline would report it; returns what it saw."""
    seen: dict[str, Any] = {"headers": {}, "skill_span_ids": {}}
    with tel.server_span(METHOD, metadata) as server:
        seen["server_trace_id"] = server.trace_id
        obs = tel.observer.start_query("execute", "q-1")
        seen["query_trace_id"] = obs.trace_id
        t0 = time.monotonic_ns()
        seen["t0"] = t0
        obs.selection(plan, t0, t0 + SELECTION_NS)
        obs.event("admitted", {"router.skills": [p.name for p in plan.planned]})

        async def call(p):
            with obs.skill_call(p) as sc:
                seen["headers"][p.name] = dict(sc.headers)
                seen["skill_span_ids"][p.name] = sc.span_id
                await asyncio.sleep(0)
                out = outcome_for(p, fail=(p.name == failing))
                sc.event("attempt", {"router.attempt": 1})
                sc.finish(out, queue_wait_ms=2.5, attempts=1)
                return out

        # Concurrent tasks, as the pipeline runs them: parents must not depend
        # on which task's context is current.
        outcomes = await asyncio.gather(*(asyncio.create_task(call(p)) for p in plan.planned))
        synth = synthesize(outcomes, plan.baseline_cost, plan.baseline_skills)
        t2 = time.monotonic_ns()
        seen["t2"] = t2
        obs.synthesis(synth, t2, t2 + SYNTHESIS_NS)
        obs.finish(record_for(plan, synth, obs.trace_id))
        seen["synth"] = synth
    return seen


def by_name(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def everything_exported(spans: list[ReceivedSpan]) -> str:
    return json.dumps([[s.name, s.attributes, s.events, s.status_message] for s in spans], default=str)


# ---- the span tree ----------------------------------------------------------

async def test_query_span_tree_continues_the_callers_trace(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    plan = legal_plan()
    assert len(plan.planned) == 3
    seen = await drive(tel, plan, [("traceparent", TRACEPARENT), ("user-agent", "web-app")])
    await tel.aclose()

    # server + query + select + choose_implementation + 3 skills + synthesize
    spans = await receiver.wait_for_spans(8)
    assert len(spans) == 8
    assert {s.trace_id for s in spans} == {CALLER_TRACE}
    assert seen["server_trace_id"] == seen["query_trace_id"] == CALLER_TRACE

    roots = build_tree(spans)
    assert len(roots) == 1, [r.render() for r in roots]
    server = roots[0]
    assert server.span.name == "router.v1.RouterService/Execute"
    assert server.span.kind == "SERVER"
    assert server.span.parent_span_id == CALLER_SPAN  # the web app's span
    assert server.span.attributes["rpc.system"] == "grpc"
    assert server.span.attributes["rpc.service"] == "router.v1.RouterService"
    assert server.span.attributes["rpc.method"] == "Execute"
    assert server.span.attributes["rpc.grpc.status_code"] == 0
    assert server.span.resource["service.name"] == "skill-router-test"

    q = server.child("router.execute")
    assert q.span.kind == "INTERNAL"
    assert sorted(c.span.name for c in q.children) == sorted(
        ["router.select", "router.synthesize"] + [f"chat {p.choice.implementation.model}" for p in plan.planned])
    select = q.child("router.select")
    assert [c.span.name for c in select.children] == ["router.choose_implementation"]


async def test_selection_and_implementation_spans(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    plan = legal_plan()
    seen = await drive(tel, plan, [("traceparent", TRACEPARENT)])
    await tel.aclose()
    spans = await receiver.wait_for_spans(8)

    sel = by_name(spans, "router.select")
    # Made after the fact from the pipeline's monotonic timestamps.
    assert sel.end_ns - sel.start_ns == SELECTION_NS
    query_span = by_name(spans, "router.execute")
    assert query_span.start_ns - 1_000_000 <= sel.start_ns <= query_span.end_ns
    a = sel.attributes
    assert a["router.selection.k"] == 3
    assert a["router.selection.candidates"] == len(plan.planned) + len(plan.rejected) == 5
    assert a["router.selection.activated"] == 4  # "search" is not activated by this query
    assert a["router.selection.chosen"] == [p.name for p in plan.planned]
    assert a["router.selection.scores"] == pytest.approx([p.chosen.score.score for p in plan.planned])
    assert a["router.baseline_skills"] == plan.baseline_skills
    rejected = dict(r.split(": ") for r in a["router.selection.rejected"])
    assert rejected["search"] == "not_activated"
    assert "below_top_k" in rejected.values()

    impl_span = by_name(spans, "router.choose_implementation")
    assert (impl_span.start_ns, impl_span.end_ns) == (sel.start_ns, sel.end_ns)
    ia = impl_span.attributes
    assert ia["router.implementations"] == [f"{p.name}={p.choice.implementation.name}" for p in plan.planned]
    assert ia["router.implementation.reasons"] == [p.choice.reason for p in plan.planned]
    assert ia["router.implementation.meets_quality_floor"] == [p.choice.meets_quality_floor for p in plan.planned]

    syn = by_name(spans, "router.synthesize")
    assert syn.end_ns - syn.start_ns == SYNTHESIS_NS
    assert syn.start_ns - sel.start_ns == seen["t2"] - seen["t0"]  # same clock conversion
    assert syn.attributes["router.synthesis.quality"] == pytest.approx(seen["synth"].quality)
    assert syn.attributes["router.cost_saved_usd"] == pytest.approx(seen["synth"].ledger.saved)
    assert len(syn.attributes["router.synthesis.weights"]) == 3

    assert query_span.attributes["router.query.id"] == "q-1"
    assert query_span.attributes["router.skills.selected"] == 3
    assert query_span.attributes["router.query.domain"] == "legal"
    assert [e[0] for e in query_span.events] == ["admitted"]


async def test_skill_spans_follow_genai_conventions_and_carry_traceparent(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    plan = legal_plan()
    seen = await drive(tel, plan, [("traceparent", TRACEPARENT), ("tracestate", "vendor=abc")],
                       failing="gepa")
    await tel.aclose()
    spans = await receiver.wait_for_spans(8)
    query_span = by_name(spans, "router.execute")

    for p in plan.planned:
        chosen = p.choice.implementation
        s = by_name(spans, f"chat {chosen.model}")
        assert s.kind == "CLIENT"
        assert s.parent_span_id == query_span.span_id
        a = s.attributes
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == chosen.model
        assert a["router.skill"] == p.name
        assert a["router.implementation"] == chosen.name
        assert a["router.queue_wait_ms"] == 2.5
        assert a["router.attempts"] == 1
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == 9
        assert [e[0] for e in s.events] == ["attempt"]

        # The backend joins the trace: the headers name this very span.
        headers = seen["headers"][p.name]
        assert headers["traceparent"] == f"00-{CALLER_TRACE}-{s.span_id}-01"
        assert seen["skill_span_ids"][p.name] == s.span_id
        assert headers["tracestate"] == "vendor=abc"

        if p.name == "gepa":
            assert a["error.type"] == "failed"
            assert s.status_code == "ERROR"
            assert "[REDACTED]" in s.status_message
            assert "gen_ai.usage.input_tokens" in a and a["gen_ai.usage.input_tokens"] == 0
        else:
            assert "error.type" not in a
            assert s.status_code == "UNSET"
            assert a["gen_ai.usage.input_tokens"] == 321
            assert a["gen_ai.usage.output_tokens"] == 45
            assert a["router.cost_usd"] == pytest.approx(chosen.cost_per_query)

    assert SECRET not in everything_exported(spans)


async def test_http_skill_is_an_agent_invocation(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    web = skill("search", implementations=(impl("web", backend="http", model="search-v2"),))
    plan = plan_route((web,), query("find it"), RoutingPolicy(), {})
    await drive(tel, plan, [])
    await tel.aclose()
    spans = await receiver.wait_for_spans(6)
    s = by_name(spans, "invoke_agent search-v2")
    assert s.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert s.attributes["gen_ai.agent.name"] == "search"
    assert s.attributes["gen_ai.provider.name"] == "http"
    # No caller context: the server span starts a new trace.
    server = by_name(spans, "router.v1.RouterService/Execute")
    assert server.parent_span_id == "" and server.trace_id != CALLER_TRACE


async def test_query_text_only_with_the_flag(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    await drive(tel, legal_plan(), [("traceparent", TRACEPARENT)])
    await tel.aclose()
    spans = await receiver.wait_for_spans(8)
    assert "contract" not in everything_exported(spans)
    assert "router.query.text" not in by_name(spans, "router.execute").attributes

    receiver.clear()
    tel = setup_telemetry(TelemetrySettings(record_query_text=True, max_query_text_chars=20), env=grpc_env(receiver))
    await drive(tel, legal_plan(), [("traceparent", TRACEPARENT)])
    await tel.aclose()
    spans = await receiver.wait_for_spans(8)
    assert by_name(spans, "router.execute").attributes["router.query.text"] == QUERY_TEXT[:20]


async def test_query_error_marks_the_query_span(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    with tel.server_span(METHOD, [("traceparent", TRACEPARENT)]) as server:
        obs = tel.observer.start_query("route", "q-err")
        obs.finish(None, RuntimeError(f"boom with api_key={SECRET}"))
        obs.finish(None, RuntimeError("second finish is ignored"))
        server.set_code(grpc.StatusCode.INTERNAL, "boom")
    await tel.aclose()
    spans = await receiver.wait_for_spans(2)
    q = by_name(spans, "router.route")
    assert q.status_code == "ERROR" and q.attributes["error.type"] == "RuntimeError"
    assert [e[0] for e in q.events] == ["exception"]
    s = by_name(spans, "router.v1.RouterService/Execute")
    assert s.status_code == "ERROR" and s.attributes["rpc.grpc.status_code"] == 13
    assert SECRET not in everything_exported(spans)


async def test_skill_block_that_raises_ends_its_span(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    plan = legal_plan()
    obs = tel.observer.start_query("execute", "q-cancel")
    with pytest.raises(asyncio.CancelledError), obs.skill_call(plan.planned[0]):
        raise asyncio.CancelledError()
    obs.finish(None, asyncio.CancelledError())
    await tel.aclose()
    spans = await receiver.wait_for_spans(2)
    s = by_name(spans, f"chat {plan.planned[0].choice.implementation.model}")
    assert s.attributes["error.type"] == "cancelled" and s.status_code == "ERROR"
    assert by_name(spans, "router.execute").attributes["error.type"] == "cancelled"


async def test_batch_span_links_the_queries_it_carries(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    plan = legal_plan()
    p = plan.planned[0]
    impl_spec = p.choice.implementation
    other_trace = "0af7651916cd43dd8448eb211c80319c"
    skill_spans = []
    queries = []
    for caller in (TRACEPARENT, f"00-{other_trace}-b7ad6b7169203331-01"):
        with tel.server_span(METHOD, [("traceparent", caller)]):
            obs = tel.observer.start_query("execute", "q")
            sk = obs.skill_call(p).__enter__()
            skill_spans.append(sk)
            queries.append(obs)
    with tel.observer.batch(p.name, impl_spec, "b-1", 2, 0.004, skill_spans):
        pass
    with pytest.raises(RuntimeError), tel.observer.batch(p.name, impl_spec, "b-2", 2, 0.0, skill_spans):
        raise RuntimeError("backend down")
    for sk, obs in zip(skill_spans, queries):
        sk.finish(outcome_for(p))
        obs.finish(None)
    await tel.aflush()
    await receiver.wait_for_metric("router.batch.size")
    await tel.aclose()
    spans = await receiver.wait_for_spans(8)

    batch = by_name([s for s in spans if s.attributes.get("router.batch.id") == "b-1"], f"chat {impl_spec.model} batch")
    assert batch.kind == "CLIENT" and batch.parent_span_id == ""
    assert batch.trace_id not in (CALLER_TRACE, other_trace)  # a trace of its own
    assert batch.attributes["router.batch.size"] == 2
    assert set(batch.links) == {(CALLER_TRACE, skill_spans[0].span_id), (other_trace, skill_spans[1].span_id)}
    assert batch.attributes["router.batch.first_wait_ms"] == pytest.approx(4.0)
    assert batch.attributes["gen_ai.request.model"] == impl_spec.model
    failed = next(s for s in spans if s.attributes.get("router.batch.id") == "b-2")
    assert failed.status_code == "ERROR" and failed.attributes["error.type"] == "RuntimeError"
    points = receiver.metric_points("router.batch.size")
    assert points[0][0] == {"router.skill": p.name, "router.implementation": impl_spec.name}
    assert points[0][1]["count"] == 2


# ---- metrics -----------------------------------------------------------------

async def test_metrics_are_exported(receiver):
    live = [("kimiK2", 3, 0.75, 2), ("trm", 0, 0.0, 0)]
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver), live_stats=lambda: live)
    await drive(tel, legal_plan(), [("traceparent", TRACEPARENT)], failing="gepa")
    await tel.aflush()
    await receiver.wait_for_metric("router.queries")
    await tel.aclose()

    names = {m.name for m in receiver.metrics}
    assert {"router.selection.duration", "router.skill.duration", "router.query.duration",
            "router.queries", "router.skill.calls", "router.cost", "router.cost.saved",
            "router.skill.in_flight", "router.skill.utilization", "router.skill.queue_depth",
            "gen_ai.client.operation.duration", "gen_ai.client.token.usage"} <= names

    queries = receiver.metric_points("router.queries")
    assert ({"router.rpc": "execute", "router.status": "ok"}, 1) in queries
    calls = {(a["router.skill"], a["router.status"]): v for a, v in receiver.metric_points("router.skill.calls")}
    assert calls[("gepa", "failed")] == 1
    assert sum(v for (sk, st), v in calls.items() if st == "ok") == 2
    hist = receiver.metric_points("router.selection.duration")
    assert hist[0][1]["count"] == 1 and hist[0][1]["sum"] == pytest.approx(SELECTION_NS / 1e9)
    assert {a["router.skill"]: v for a, v in receiver.metric_points("router.skill.in_flight")} == {"kimiK2": 3, "trm": 0}
    assert {a["router.skill"]: v for a, v in receiver.metric_points("router.skill.utilization")}["kimiK2"] == 0.75
    assert {a["router.skill"]: v for a, v in receiver.metric_points("router.skill.queue_depth")}["kimiK2"] == 2
    genai = receiver.metric_points("gen_ai.client.operation.duration")
    assert any(a.get("error.type") == "failed" for a, _ in genai)
    tokens = {a["gen_ai.token.type"] for a, _ in receiver.metric_points("gen_ai.client.token.usage")}
    assert tokens == {"input", "output"}


async def test_live_stats_can_be_set_later_and_may_fail(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver, OTEL_TRACES_EXPORTER="none"))

    def broken():
        raise RuntimeError("registry gone")

    tel.set_live_stats(broken)
    obs = tel.observer.start_query("route", "q")
    obs.finish(None)
    await tel.aflush()
    await receiver.wait_for_metric("router.queries")
    assert receiver.metric_points("router.skill.in_flight") == []
    tel.set_live_stats(lambda: [("ace", 1, 0.1, 0)])
    receiver.clear()
    await tel.aflush()
    await receiver.wait_for_metric("router.skill.in_flight")
    await tel.aclose()
    assert receiver.spans == []  # traces off, metrics on


# ---- OTLP/HTTP -----------------------------------------------------------------

async def test_otlp_http_export_with_headers():
    async with OtlpHttpReceiver() as rx:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme,x-note=a%20b",
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        }
        tel = setup_telemetry(TelemetrySettings(service_name="from-settings"), env=env)
        await drive(tel, legal_plan(), [("traceparent", TRACEPARENT)])
        await tel.aclose()
        spans = await rx.wait_for_spans(8)
        await rx.wait_for_metric("router.queries")
        assert {s.trace_id for s in spans} == {CALLER_TRACE}
        assert spans[0].resource["service.name"] == "from-settings"
        assert any(h.get("x-tenant") == "acme" and h.get("x-note") == "a b" for h in rx.request_headers)


# ---- sampling, disabling --------------------------------------------------------

async def test_unsampled_caller_exports_nothing_but_still_propagates(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    unsampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    seen = await drive(tel, legal_plan(), [("traceparent", unsampled)])
    await tel.aflush()
    await receiver.wait_for_metric("router.queries")  # metrics still count it
    await tel.aclose()
    assert receiver.spans == []
    assert seen["query_trace_id"] == CALLER_TRACE
    for headers in seen["headers"].values():
        assert headers["traceparent"].startswith(f"00-{CALLER_TRACE}-") and headers["traceparent"].endswith("-00")


async def test_traces_off_passes_the_callers_context_through(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver, OTEL_TRACES_EXPORTER="none"))
    seen = await drive(tel, legal_plan(), [("traceparent", TRACEPARENT)])
    await tel.aflush()
    await receiver.wait_for_metric("router.queries")
    await tel.aclose()
    assert receiver.spans == []
    assert seen["query_trace_id"] == CALLER_TRACE
    # No span of ours exists, so the backends join the web app's span itself.
    assert {h["traceparent"] for h in seen["headers"].values()} == {TRACEPARENT}


async def test_ratio_sampler_zero_exports_no_spans(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(
        receiver, OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0"))
    await drive(tel, legal_plan(), [])
    await tel.aflush()
    await tel.aclose()
    assert receiver.spans == []


def test_no_endpoint_means_null_observer():
    tel = setup_telemetry(TelemetrySettings(), env={})
    assert isinstance(tel.observer, NullObserver)
    assert not tel.enabled
    with tel.server_span(METHOD, [("traceparent", TRACEPARENT)]) as s:
        assert s.trace_id == ""
        s.set_code(grpc.StatusCode.INTERNAL)
    tel.shutdown()


def test_sdk_disabled_wins(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver, OTEL_SDK_DISABLED="true"))
    assert isinstance(tel.observer, NullObserver)


def test_exporter_none_for_both_signals(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(
        receiver, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none"))
    assert isinstance(tel.observer, NullObserver)


def test_enabled_observer_type(receiver):
    tel = setup_telemetry(None, env=grpc_env(receiver))
    assert isinstance(tel.observer, OtelObserver) and tel.enabled
    tel.shutdown()
    tel.shutdown()  # idempotent


# ---- the environment, read -----------------------------------------------------

def test_read_plan_protocols_and_endpoints():
    p = read_plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert p.traces.endpoint == "http://collector:4318/v1/traces"
    assert p.metrics.endpoint == "http://collector:4318/v1/metrics"
    p = read_plan({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/custom",
                   "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert p.traces.endpoint == "http://tempo:4318/custom" and p.metrics is None
    p = read_plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"})
    assert p.traces.protocol == "grpc" and p.traces.endpoint == "http://collector:4317"
    assert p.traces.timeout_s == 2.5
    p = read_plan({"OTEL_TRACES_EXPORTER": "otlp"})
    assert p.traces.endpoint == "http://localhost:4317" and p.metrics is None
    p = read_plan({"OTEL_TRACES_EXPORTER": "console"})
    assert p.traces.kind == "console"
    p = read_plan({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=search%20infra"})
    assert dict(p.resource_attributes) == {"deployment.environment": "prod", "team": "search infra"}
    assert not p.exports_anything


@pytest.mark.parametrize("env, key", [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
])
def test_bad_environment_names_the_variable(env, key):
    with pytest.raises(TelemetryConfigError) as e:
        read_plan(env)
    assert e.value.key == key and key in str(e.value)


def test_extract_context_from_metadata():
    from opentelemetry import trace

    ctx = extract_context([("TraceParent", TRACEPARENT), ("x-bin", b"\x00"), ("other", "x")])
    sc = trace.get_current_span(ctx).get_span_context()
    assert format(sc.trace_id, "032x") == CALLER_TRACE and sc.is_remote
    assert not trace.get_current_span(extract_context(None)).get_span_context().is_valid
    assert not trace.get_current_span(extract_context([("traceparent", "garbage")])).get_span_context().is_valid


def test_scrub_removes_credentials():
    assert SECRET not in scrub(f"failed: Authorization: Bearer {SECRET}")
    assert SECRET not in scrub(f"bad key {SECRET}")
    assert "abc" not in scrub('{"api_key": "abc"}')
    assert len(scrub("x" * 1000)) == 256


# ---- a real grpc.aio server with the interceptor ---------------------------------

async def test_interceptor_server_spans(receiver):
    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))

    async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        obs = tel.observer.start_query("route", "q-ok")
        obs.finish(None)
        return request

    async def invalid(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "query: must not be empty")

    async def unavailable(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "every chosen skill failed")

    async def crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("bug")

    async def stream(request: bytes, context: grpc.aio.ServicerContext):
        for i in range(2):
            yield request + bytes([i])

    handlers = {name: grpc.unary_unary_rpc_method_handler(fn)
                for name, fn in [("Ok", ok), ("Invalid", invalid), ("Unavailable", unavailable), ("Crash", crash)]}
    handlers["Stream"] = grpc.unary_stream_rpc_method_handler(stream)
    server = grpc.aio.server(interceptors=[tel.server_interceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.v1.Echo", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            md = (("traceparent", TRACEPARENT),)
            assert await channel.unary_unary("/test.v1.Echo/Ok")(b"hi", metadata=md) == b"hi"
            for name, code in [("Invalid", grpc.StatusCode.INVALID_ARGUMENT),
                               ("Unavailable", grpc.StatusCode.UNAVAILABLE), ("Crash", grpc.StatusCode.UNKNOWN)]:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await channel.unary_unary(f"/test.v1.Echo/{name}")(b"x", metadata=md)
                assert e.value.code() == code
            got = [r async for r in channel.unary_stream("/test.v1.Echo/Stream")(b"s", metadata=md)]
            assert got == [b"s\x00", b"s\x01"]
    finally:
        await server.stop(None)
    await tel.aclose()

    spans = await receiver.wait_for_spans(6)
    servers = {s.attributes["rpc.method"]: s for s in spans if s.kind == "SERVER"}
    assert set(servers) == {"Ok", "Invalid", "Unavailable", "Crash", "Stream"}
    for s in servers.values():
        assert s.trace_id == CALLER_TRACE and s.parent_span_id == CALLER_SPAN
        assert s.attributes["rpc.service"] == "test.v1.Echo"
        assert s.attributes["network.peer.address"] == "127.0.0.1"
    assert servers["Ok"].attributes["rpc.grpc.status_code"] == 0 and servers["Ok"].status_code == "UNSET"
    assert servers["Stream"].attributes["rpc.grpc.status_code"] == 0
    # A client's mistake is not the server's error; UNAVAILABLE and a crash are.
    assert servers["Invalid"].attributes["rpc.grpc.status_code"] == 3 and servers["Invalid"].status_code == "UNSET"
    assert servers["Unavailable"].attributes["rpc.grpc.status_code"] == 14
    assert servers["Unavailable"].status_code == "ERROR"
    assert servers["Crash"].attributes["rpc.grpc.status_code"] == 2 and servers["Crash"].status_code == "ERROR"
    assert servers["Crash"].attributes["error.type"] == "RuntimeError"
    q = by_name(spans, "router.route")
    assert q.parent_span_id == servers["Ok"].span_id



async def test_disabled_interceptor_passes_handlers_through():
    tel = setup_telemetry(TelemetrySettings(), env={})
    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)

    async def continuation(details):
        return handler

    details = type("Details", (), {"method": METHOD, "invocation_metadata": ()})()
    assert await tel.server_interceptor().intercept_service(continuation, details) is handler


async def test_a_cache_hit_is_marked_on_the_skill_span(receiver):
    from router.runtime.cache import MemoryCache
    from router.testing import FakeBackend, make_pipeline, reply

    tel = setup_telemetry(TelemetrySettings(), env=grpc_env(receiver))
    s = skill("cached", implementations=(impl("cached-impl", cost=0.03),))
    backend = FakeBackend(s.implementations[0], [reply("kept", cost=0.03)])
    p = make_pipeline([s], {("cached", "cached-impl"): backend}, observer=tel.observer, cache=MemoryCache(10))
    await p.execute(query("the same question"), 5.0)
    await p.execute(query("the same question"), 5.0)
    await tel.aflush()
    await receiver.wait_for_metric("router.skill.calls")
    await tel.aclose()
    calls = [(a.get("router.cache.hit", False), v) for a, v in receiver.metric_points("router.skill.calls")]
    assert set(calls) == {(False, 1), (True, 1)}  # (cumulative points; each export repeats them)
    # The hit called no model: the GenAI operation metric has the one real call.
    assert {v["count"] for _, v in receiver.metric_points("gen_ai.client.operation.duration")} == {1}
    spans = [x for x in await receiver.wait_for_spans(2) if x.name == "chat model-cached-impl"]
    assert len(spans) == 2 and len(backend.calls) == 1
    miss, hit = sorted(spans, key=lambda x: "router.cache.hit" in x.attributes)
    assert "router.cache.hit" not in miss.attributes and "cache.miss" in [e[0] for e in miss.events]
    assert hit.attributes["router.cache.hit"] is True and hit.attributes["router.cost_usd"] == 0
    assert hit.attributes["router.cache.saved_usd"] == pytest.approx(0.03)
    assert "cache.hit" in [e[0] for e in hit.events]
