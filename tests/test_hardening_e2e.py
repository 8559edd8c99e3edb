"""Hardening at the edges (issue 9), end to end: the real sidecar on a
loopback port, a real misbehaving backend on loopback (support/edge_backend),
a real OTLP receiver and a real SQLite metrics store.

One sidecar serves the module; the tests that need their own settings
(the call limiter, gRPC options) start their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import stat
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skill_router_client import AsyncRouterClient, build_context, error_details
from support.edge_backend import LEAKED_SHAPES, EdgeBackend, edge_config, skill
from support.otlp_receiver import OtlpGrpcReceiver

from router.app import build_app
from router.config import parse_config
from router.v1 import router_pb2 as pb

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY_ENV = "EDGE_TEST_PROVIDER_KEY"
KEY = "zq-live-7Hc2Lk9Pw3Xy5Mn8Rt4"  # no known key shape: only redaction by value catches it
HASH_KEY = "edge-test-query-hash-key-0123456789"
MiB = 1024 * 1024


def skills() -> dict:
    return {
        "leaky": skill("echo-key", "leaky", api_key_env=KEY_ENV),
        "shapes": skill("shapes", "shapes"),
        "huge": skill("huge", "huge", max_response_bytes=MiB),
        "chunked": skill("huge-chunked", "chunked", max_response_bytes=MiB),
        "echo": skill("echo-headers", "echo"),
        "fine": skill("fine", "fine"),
        "dead": {**skill("fine", "dead"), "implementations": [
            {**skill("fine", "dead")["implementations"][0], "name": "dead-impl"}]},
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend():
    async with EdgeBackend() as b:
        yield b


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def receiver():
    async with OtlpGrpcReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store") / "metrics.db"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@pytest.fixture(scope="module")
def logs():
    handler = _Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(backend, receiver, store_path, logs):
    data = edge_config(backend.url, skills(), storage={"sqlite_path": str(store_path), "flush_interval_s": 0.05},
                       telemetry={"baggage_allowlist": ["tenant"]})
    # The dead skill's backend is a closed port: it does not warm.
    data["skills"]["dead"]["implementations"][0]["url"] = "http://127.0.0.1:9"
    os.environ[KEY_ENV] = KEY
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    a = build_app(parse_config(data, "<edges>", {}), "127.0.0.1:0", env=env)
    await a.start()
    try:
        yield a
    finally:
        await a.stop(1)
        del os.environ[KEY_ENV]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(app):
    async with AsyncRouterClient(app.address, timeout=10) as c:
        yield c


def _read(path: Path) -> bytes:
    return path.read_bytes()


# --- secrets ------------------------------------------------------------------


async def test_a_backend_echoing_the_key_never_gets_it_to_the_caller_a_span_a_log_or_the_store(
        app, client, backend, receiver, logs, store_path) -> None:
    # Only the leaky skill: every chosen skill failed → UNAVAILABLE, whose message quotes the backend.
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await client.execute("hello", force_skills=["leaky"])
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    message = ei.value.details()
    assert KEY not in message and "Incorrect API key provided: [REDACTED]" in message
    # With a skill that answers: OK, and the failed one's results[].error is redacted.
    resp = await client.execute("hello", force_skills=["leaky", "fine"])
    errors = {r.skill: r.error for r in resp.results}
    assert "[REDACTED]" in errors["leaky"] and KEY not in errors["leaky"] and errors["fine"] == ""
    # The backend did receive the key (it is used, just never echoed).
    assert any(h.get("authorization") == f"Bearer {KEY}" for h in backend.headers_seen)
    # Spans: the SERVER span's status, the skill spans' status and events.
    await app.telemetry.aflush()
    spans = await receiver.wait_for_spans(4, timeout=20, where=lambda s: s.kind in ("SERVER", "CLIENT"))
    exported = json.dumps([[s.name, s.status_message, s.attributes, s.events] for s in receiver.spans], default=str)
    assert "[REDACTED]" in exported
    assert KEY not in exported
    assert any(s.kind == "SERVER" and "[REDACTED]" in (s.status_message or "") for s in spans)
    # Logs and the metrics store.
    assert not [line for line in logs.lines if KEY in line]
    await asyncio.sleep(0.2)  # the store's writer flushes every 50 ms
    assert KEY.encode() not in _read(store_path)


async def test_key_shapes_the_sidecar_does_not_hold_are_scrubbed(client) -> None:
    resp = await client.execute("hello", force_skills=["shapes", "fine"])
    error = {r.skill: r.error for r in resp.results}["shapes"]
    assert error.count("[REDACTED]") == len(LEAKED_SHAPES)
    for leaked in LEAKED_SHAPES:
        assert leaked not in error


async def test_baggage_is_forwarded_only_by_the_allowlist_and_the_trace_context_always(client, backend) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    resp = await client.execute("hello", force_skills=["echo"], metadata=(
        ("traceparent", f"00-{trace}-b7ad6b7169203331-01"),
        ("baggage", "user.email=alice%40example.com,tenant=acme,session=s3cr3t")))
    seen = json.loads(resp.results[0].output)
    assert seen["traceparent"].split("-")[1] == trace
    assert seen["baggage"] == "tenant=acme"


async def test_query_hash_is_keyed_and_its_key_persisted_beside_the_store(app, client, store_path) -> None:
    text = "a query whose hash must not be guessable"
    await client.execute(text, force_skills=["fine"])
    key_file = Path(f"{store_path}.hashkey")
    for _ in range(100):
        await asyncio.sleep(0.05)
        with sqlite3.connect(store_path) as db:
            rows = [r[0] for r in db.execute("SELECT query_hash FROM brain_moe_metrics")]
        expected = hmac.new(_read(key_file), text.encode(), hashlib.sha256).hexdigest()[:32]
        if expected in rows:
            break
    assert expected in rows
    assert hashlib.sha256(text.encode()).hexdigest()[:16] not in {r[:16] for r in rows}
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    # The key comes from the environment when set.
    from router.storage import query_hasher
    keyed = query_hasher(str(store_path), None, {"SKILL_ROUTER_QUERY_HASH_KEY": HASH_KEY})
    assert keyed(text) == hmac.new(HASH_KEY.encode(), text.encode(), hashlib.sha256).hexdigest()[:32]
    # And the persisted key is reused by the next sidecar on the same store.
    assert query_hasher(str(store_path), None, {})(text) == expected


# --- bounds -------------------------------------------------------------------


async def test_long_inputs_get_their_own_status_with_a_short_message(client) -> None:
    cases = [
        ({"domain": "d" * 3_900_000}, grpc.StatusCode.INVALID_ARGUMENT, "context.domain"),
        ({"force_skills": ["x" * 1_000_000]}, grpc.StatusCode.NOT_FOUND, "context.force_skills[0]"),
        ({"exclude_skills": ["fine"] * 1000}, grpc.StatusCode.INVALID_ARGUMENT, "context.exclude_skills"),
        ({"metadata": {"k" * 100_000: "v"}}, grpc.StatusCode.INVALID_ARGUMENT, "context.metadata["),
    ]
    for kw, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await client.route("hello", timeout=30, context=build_context(**kw))
        d = error_details(ei.value)
        assert d.code == code, (field, d.code, d.message[:200])
        assert len(d.message.encode()) < 1024 and (d.field or "").startswith(field)


async def test_an_oversized_answer_fails_the_call_with_a_clear_reason(client) -> None:
    for name in ("huge", "chunked"):
        resp = await client.execute("hello", force_skills=[name, "fine"])
        result = {r.skill: r for r in resp.results}[name]
        assert result.status == pb.SKILL_STATUS_FAILED
        assert "max_response_bytes" in result.error and "1048576" in result.error
        assert len(resp.SerializeToString()) < 64 * 1024


async def test_undecodable_requests_get_invalid_argument_and_at_most_one_log_line(app, logs) -> None:
    before = len(logs.lines)
    async with grpc.aio.insecure_channel(app.address) as ch:
        execute = ch.unary_unary("/router.v1.RouterService/Execute")
        for junk in [b"\xff\xff\xff\xff", b"\x0a\x05\xc3\x28abc", b"\x12\x80\x80\x80\x80\x10"] * 10:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await execute(junk, timeout=5)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Error" not in ei.value.details() or "cannot be decoded" in ei.value.details()
            assert len(ei.value.details()) < 1024
    new = [line for line in logs.lines[before:] if "undecodable" in line or "Traceback" in line]
    assert len(new) <= 1, new


async def test_health_is_serving_while_a_dead_backends_skill_says_not_serving(app) -> None:
    async with grpc.aio.insecure_channel(app.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        async def status(service: str) -> int:
            return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status

        serving = health_pb2.HealthCheckResponse.SERVING
        assert await status("") == serving
        assert await status("router.v1.RouterService") == serving
        assert await status("router.v1.RouterService/fine") == serving
        assert await status("router.v1.RouterService/dead") == health_pb2.HealthCheckResponse.NOT_SERVING


# --- the front door -----------------------------------------------------------


async def test_a_flood_is_refused_visibly_with_retry_info_never_cancelled(backend, receiver) -> None:
    data = edge_config(backend.url, {"slow": skill("slow", "slow", max_connections=64)},
                       server={"max_concurrent_rpcs": 4},
                       admission={"default_concurrency_limit": 64, "default_queue_depth": 200})
    env = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "flood",
           "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    a = build_app(parse_config(data, "<flood>", {}), "127.0.0.1:0", env=env)
    await a.start()
    try:
        async with AsyncRouterClient(a.address, timeout=20) as c:
            results = await asyncio.gather(*(c.execute("slow please") for _ in range(40)), return_exceptions=True)
        codes: dict[str, int] = {}
        for r in results:
            if isinstance(r, grpc.aio.AioRpcError):
                d = error_details(r)
                assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (d.code, d.message)
                assert d.retry_delay_s is not None and d.retry_delay_s > 0
                codes[d.code.name] = codes.get(d.code.name, 0) + 1
            else:
                codes["OK"] = codes.get("OK", 0) + 1
        assert codes.get("OK", 0) >= 4 and codes.get("RESOURCE_EXHAUSTED", 0) > 0
        assert a.server.limiter is not None and a.server.limiter.refused == codes["RESOURCE_EXHAUSTED"]
        # Counted where an operator looks: the router.rpc.refused metric.
        await a.telemetry.aflush()
        await receiver.wait_for_metric("router.rpc.refused", timeout=20)
        points = {attrs.get("router.reason"): value for attrs, value in receiver.metric_points("router.rpc.refused")}
        assert points.get("overloaded") == codes["RESOURCE_EXHAUSTED"], points
    finally:
        await a.stop(1)


async def test_grpc_options_come_from_the_config(backend) -> None:
    data = edge_config(backend.url, {"fine": skill("fine", "fine")},
                       server={"grpc_options": {"grpc.max_receive_message_length": 2048}})
    a = build_app(parse_config(data, "<options>", {}), "127.0.0.1:0", env={})
    await a.start()
    try:
        async with AsyncRouterClient(a.address, timeout=10) as c:
            await c.route("fine " * 10)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await c.route("fine " * 1000)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await a.stop(1)
