"""Traces end to end: the real sidecar exports OTLP/gRPC to a real receiver
on loopback; a caller's W3C trace continues through the sidecar into the
skill backends (the emulator records the traceparent it received)."""

from __future__ import annotations

import pytest
from skill_router_client import AsyncRouterClient
from support.configs import make_config
from support.otlp_receiver import OtlpGrpcReceiver, build_tree

from router.app import build_app
from router.v1 import router_pb2 as pb

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
async def receiver():
    async with OtlpGrpcReceiver() as rx:
        yield rx


@pytest.fixture
async def traced_app(emulator, receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_SERVICE_NAME": "skill-router-e2e",
           "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    app = build_app(make_config(emulator.url), "127.0.0.1:0", env=env)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(1)


async def test_execute_continues_the_callers_trace_down_to_the_backends(traced_app, receiver, emulator) -> None:
    async with AsyncRouterClient(traced_app.address, timeout=10) as client:
        resp = await client.execute("explain vector search", domain="research", complexity=6,
                                    metadata=(("traceparent", TRACEPARENT),))
    assert resp.trace_id == CALLER_TRACE
    n_skills = len(resp.results)
    await traced_app.telemetry.aflush()
    # SERVER, execute, select, choose_implementation, synthesize + one per skill
    spans = await receiver.wait_for_spans(5 + n_skills, timeout=20, where=lambda s: s.trace_id == CALLER_TRACE)
    roots = build_tree(spans)
    assert len(roots) == 1, [r.render() for r in roots]
    server = roots[0]
    assert server.span.kind == "SERVER" and server.span.parent_span_id == CALLER_SPAN
    assert "Execute" in server.span.name
    query = server.child("router.execute")
    select = query.child("router.select")
    assert select.span.attributes["router.selection.k"] == resp.k
    assert select.span.duration_ns > 0 and select.span.start_ns >= query.span.start_ns
    assert query.child("router.synthesize").span.end_ns <= query.span.end_ns
    clients = [c for c in query.children if c.span.kind == "CLIENT"]
    assert sorted(c.span.attributes["router.skill"] for c in clients) == sorted(r.skill for r in resp.results)
    for c in clients:
        a = c.span.attributes
        model = a["gen_ai.request.model"]
        assert c.span.name == f"{a['gen_ai.operation.name']} {model}"
        assert "gen_ai.provider.name" in a and a["gen_ai.usage.input_tokens"] > 0
        assert a["router.cost_usd"] > 0 and "router.queue_wait_ms" in a
        assert c.span.start_ns >= select.span.end_ns  # execution starts after selection
    # Every backend request carried the trace, with its skill span as parent.
    skill_span_ids = {c.span.span_id for c in clients}
    received = [r for r in emulator.received if r.path.endswith(("/chat/completions", "/skill"))]
    assert len(received) == n_skills
    for r in received:
        assert r.traceparent is not None
        _, trace, parent, _ = r.traceparent.split("-")
        assert trace == CALLER_TRACE and parent in skill_span_ids
    # The query text is not recorded without the config flag.
    assert all("router.query.text" not in s.attributes for s in spans)


async def test_route_spans_selection_only(traced_app, receiver, emulator) -> None:
    async with AsyncRouterClient(traced_app.address, timeout=10) as client:
        resp = await client.route("a code question", domain="code", complexity=3,
                                  metadata=(("traceparent", TRACEPARENT),))
    await traced_app.telemetry.aflush()
    spans = await receiver.wait_for_spans(3, timeout=20, where=lambda s: s.trace_id == CALLER_TRACE)
    (server,) = build_tree(spans)
    route = server.child("router.route")
    select = route.child("router.select")
    assert select.span.attributes["router.selection.k"] == resp.k == 3
    assert not [c for c in route.children if c.span.kind == "CLIENT"]
    assert not emulator.received or all(r.path in ("/v1/models", "/healthz") for r in emulator.received)


async def test_without_a_caller_trace_the_sidecar_starts_one(traced_app, receiver) -> None:
    async with AsyncRouterClient(traced_app.address, timeout=10) as client:
        resp = await client.execute("hello", domain="code", complexity=2)
    assert len(resp.trace_id) == 32 and resp.trace_id != CALLER_TRACE
    await traced_app.telemetry.aflush()
    spans = await receiver.wait_for_spans(4, timeout=20, where=lambda s: s.trace_id == resp.trace_id)
    roots = build_tree(spans)
    assert len(roots) == 1 and roots[0].span.kind == "SERVER" and not roots[0].span.parent_span_id


async def test_stats_window_reads_the_metrics_store(emulator, tmp_path) -> None:
    cfg = make_config(emulator.url, storage={"sqlite_path": str(tmp_path / "m.db"), "flush_interval_s": 0.05})
    app = build_app(cfg, "127.0.0.1:0", env={})
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=10) as client:
            for i in range(4):
                await client.execute(f"question {i}", domain="code", complexity=3)
            assert app.store is not None
            await app.store.flush()
            s = await client.stats()
    finally:
        await app.stop(1)
    w = s.window
    assert w.available and w.store == "sqlite" and w.queries == 4
    assert w.avg_skills_selected >= 1 and w.avg_cost_per_query_usd > 0 and w.avg_response_ms > 0
    assert sum(w.skill_distribution.values()) >= 4 and len(w.hourly) >= 1
    assert w.hourly[-1].queries == 4


async def test_stats_window_is_unavailable_without_a_store(client) -> None:
    s = await client.stats()
    assert not s.window.available


async def test_stats_window_must_be_positive(client) -> None:
    import grpc
    from google.protobuf import duration_pb2
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.stats(request=pb.StatsRequest(window=duration_pb2.Duration(seconds=-5)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "window" in info.value.details()
