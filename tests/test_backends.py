"""The httpx backends against the real emulated backend on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace

import pytest

from router.backends import (
    BackendPool,
    HttpBackend,
    OpenAIBackend,
    build_backend,
    parse_retry_after,
    render_prompt,
)
from router.backends._base import split_tokens
from router.core.errors import (
    BackendConnectionError,
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeout,
)
from router.core.types import ActivationRule, ImplementationSpec, SkillSpec
from router.emulator import Emulator, EmulatorConfig, ModelProfile
from router.runtime.ports import SkillCall, SkillReply

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def eventually(predicate, *, what: str, limit_s: float = 5.0) -> None:
    """Poll until ``predicate()`` holds; a generous bound, not a timing assertion."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit_s
    while not predicate():
        if loop.time() > give_up:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def emu():
    config = EmulatorConfig(
        models={
            "chat-model": ModelProfile(latency_ms=0, input_tokens=100, output_tokens=20),
            "skill-model": ModelProfile(latency_ms=0, price_per_input_token=0.01, price_per_output_token=0.02),
            "slow-model": ModelProfile(latency_ms=60_000),
        },
        default=ModelProfile(latency_ms=0),
        seed=5,
    )
    async with Emulator(config) as emulator:
        yield emulator


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def impl(url: str, *, backend: str = "openai", model: str = "chat-model", **kw) -> ImplementationSpec:
    return ImplementationSpec(
        name=kw.pop("name", f"{model}-impl"),
        backend=backend,
        url=url,
        model=model,
        quality=0.9,
        cost_per_query=0.01,
        expected_latency_ms=100,
        optimal_complexity=5,
        **kw,
    )


def skill_call(implementation: ImplementationSpec, query: str = "What is MoE routing?", **kw) -> SkillCall:
    return SkillCall(
        query_id=kw.pop("query_id", "q-1"),
        skill=kw.pop("skill", "explain"),
        implementation=implementation,
        query=query,
        domain=kw.pop("domain", "general"),
        complexity=kw.pop("complexity", 5.0),
        **kw,
    )


@pytest.fixture
async def backends():
    """Collects backends built in a test and closes them afterwards."""
    made: list = []

    def make(implementation: ImplementationSpec, **kw):
        backend = build_backend(implementation, **kw)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


# -- openai kind -----------------------------------------------------------------------


async def test_chat_call_with_usage_and_per_token_cost(emu, backends):
    spec = impl(emu.url, price_per_input_token=0.001, price_per_output_token=0.003)
    backend = backends(spec)
    assert isinstance(backend, OpenAIBackend) and not backend.supports_batch
    reply = await backend.call(skill_call(spec, "Explain top-k gating"), timeout_s=5)
    assert isinstance(reply, SkillReply)
    assert "chat-model" in reply.output and "Explain top-k gating" in reply.output
    assert (reply.input_tokens, reply.output_tokens) == (100, 20)
    assert reply.cost == pytest.approx(100 * 0.001 + 20 * 0.003)
    assert reply.model == "chat-model"


async def test_chat_call_without_prices_has_no_cost(emu, backends):
    spec = impl(emu.url)
    reply = await backends(spec).call(skill_call(spec), timeout_s=5)
    assert reply.cost is None


async def test_system_prompt_is_sent(emu, backends):
    spec = impl(emu.url, model="estimating-model")
    backend = backends(spec)
    bare = await backend.call(skill_call(spec, "q"), timeout_s=5)
    prompted = await backend.call(skill_call(spec, "q", system_prompt="You are terse. " * 40), timeout_s=5)
    # The emulator estimates prompt tokens from every message's length.
    assert prompted.input_tokens > bare.input_tokens + 100
    assert "q" in prompted.output


async def test_url_with_trailing_v1_is_accepted(emu, backends):
    spec = impl(emu.url + "/v1/")
    reply = await backends(spec).call(skill_call(spec), timeout_s=5)
    assert "chat-model" in reply.output


async def test_openai_batch_uses_vllm_completions(emu, backends):
    spec = impl(emu.url, price_per_input_token=0.5, price_per_output_token=0.0)
    backend = backends(spec, batch=True)
    assert backend.supports_batch
    queries = ["alpha question", "beta question", "gamma question"]
    calls = [skill_call(spec, q, query_id=f"q{i}", system_prompt="Be brief.") for i, q in enumerate(queries)]
    replies = await backend.call_batch(calls, timeout_s=5)
    assert len(replies) == 3
    for reply, query in zip(replies, queries):
        assert isinstance(reply, SkillReply)
        assert query in reply.output and "chat-model" in reply.output
    # The aggregate usage (3 × 100 prompt, 3 × 20 completion) is shared out exactly.
    assert sum(r.input_tokens for r in replies) == 300
    assert sum(r.output_tokens for r in replies) == 60
    assert sum(r.cost for r in replies) == pytest.approx(150)
    s = emu.stats()["chat-model"]
    assert (s.requests, s.batches, s.items) == (1, 1, 3)
    assert await backend.call_batch([], timeout_s=5) == []


async def test_call_batch_without_batch_mode_is_not_implemented(emu, backends):
    spec = impl(emu.url)
    with pytest.raises(NotImplementedError):
        await backends(spec).call_batch([skill_call(spec)], timeout_s=5)
    spec = impl(emu.url, backend="http")
    with pytest.raises(NotImplementedError):
        await backends(spec).call_batch([skill_call(spec)], timeout_s=5)


async def test_openai_batch_fails_as_a_whole(emu, backends):
    spec = impl(emu.url)
    backend = backends(spec, batch=True)
    calls = [skill_call(spec, "fine"), skill_call(spec, f"bad {emu.config.fail_marker}")]
    with pytest.raises(BackendStatusError) as info:
        await backend.call_batch(calls, timeout_s=5)
    assert info.value.status_code == 500


def test_render_prompt():
    spec = impl("http://unused")
    assert render_prompt(skill_call(spec, "q")) == "q"
    assert render_prompt(skill_call(spec, "q", system_prompt="sys")) == "sys\n\nq"


def test_split_tokens_adds_up():
    assert split_tokens(10, [1, 1, 1]) == [4, 3, 3]
    assert split_tokens(7, [0, 0]) == [4, 3]
    assert split_tokens(0, [5, 9]) == [0, 0]
    assert split_tokens(5, []) == []
    assert sum(split_tokens(101, [3, 17, 29, 1])) == 101


# -- http kind ---------------------------------------------------------------------------


async def test_http_skill_call(emu, backends):
    spec = impl(emu.url, backend="http", model="skill-model")
    backend = backends(spec)
    assert isinstance(backend, HttpBackend)
    reply = await backend.call(
        skill_call(spec, "Summarise this document", skill="summarize", metadata={"tier": "pro"}), timeout_s=5
    )
    assert "skill-model" in reply.output and "summarize" in reply.output and "Summarise this document" in reply.output
    assert reply.input_tokens > 0 and reply.output_tokens > 0
    # The emulator priced it (its profile has prices; the implementation has none).
    assert reply.cost == pytest.approx(reply.input_tokens * 0.01 + reply.output_tokens * 0.02)
    assert emu.received[-1].path == "/skill"


async def test_http_cost_falls_back_to_implementation_prices(emu, backends):
    spec = impl(emu.url, backend="http", model="plain-model", price_per_input_token=1.0)
    reply = await backends(spec).call(skill_call(spec), timeout_s=5)
    assert reply.cost == pytest.approx(reply.input_tokens * 1.0)


async def test_http_batch_with_a_failed_item(emu, backends):
    spec = impl(emu.url, backend="http", model="skill-model")
    backend = backends(spec, batch=True)
    calls = [
        skill_call(spec, "first"),
        skill_call(spec, f"second {emu.config.fail_marker}"),
        skill_call(spec, "third"),
    ]
    results = await backend.call_batch(calls, timeout_s=5)
    assert isinstance(results[0], SkillReply) and "first" in results[0].output
    assert isinstance(results[1], BackendStatusError)
    assert results[1].status_code == 500 and results[1].retryable
    assert isinstance(results[2], SkillReply) and "third" in results[2].output
    s = emu.stats()["skill-model"]
    assert (s.batches, s.items, s.errors) == (1, 3, 1)


# -- error mapping -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "http"])
async def test_500_maps_to_status_error(emu, backends, kind):
    emu.set_profile("chat-model", ModelProfile(latency_ms=0, error_rate=1.0))
    spec = impl(emu.url, backend=kind)
    with pytest.raises(BackendStatusError) as info:
        await backends(spec).call(skill_call(spec), timeout_s=5)
    err = info.value
    assert err.status_code == 500 and err.retryable and err.retry_after_s is None
    assert "emulated failure" in str(err)


@pytest.mark.parametrize("kind", ["openai", "http"])
async def test_429_maps_to_status_error_with_retry_after(emu, backends, kind):
    emu.set_profile("chat-model", ModelProfile(latency_ms=0, rate_limit_rate=1.0, retry_after_s=2.5))
    spec = impl(emu.url, backend=kind)
    with pytest.raises(BackendStatusError) as info:
        await backends(spec).call(skill_call(spec), timeout_s=5)
    assert info.value.status_code == 429 and info.value.retryable
    assert info.value.retry_after_s == pytest.approx(2.5)
    assert "rate limit" in str(info.value)


async def test_timeout_maps_to_backend_timeout(emu, backends):
    spec = impl(emu.url, model="slow-model")
    backend = backends(spec)
    with pytest.raises(BackendTimeout):
        await backend.call(skill_call(spec), timeout_s=0.05)
    # The emulator sees the abandoned request go.
    await eventually(lambda: emu.stats()["slow-model"].concurrent == 0, what="the request released")
    assert "in-flight 0/" in repr(backend)


async def test_timeout_bounds_a_call_waiting_for_a_pooled_connection(emu, backends):
    spec = impl(emu.url, model="slow-model", max_connections=1)
    backend = backends(spec)
    first = asyncio.create_task(backend.call(skill_call(spec), timeout_s=30))
    await eventually(lambda: emu.stats().get("slow-model") and emu.stats()["slow-model"].concurrent == 1, what="busy")
    with pytest.raises(BackendTimeout):
        await backend.call(skill_call(spec), timeout_s=0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_no_time_left_is_a_timeout(emu, backends):
    spec = impl(emu.url)
    with pytest.raises(BackendTimeout):
        await backends(spec).call(skill_call(spec), timeout_s=0)
    assert emu.stats() == {}


async def test_caller_cancellation_propagates(emu, backends):
    spec = impl(emu.url, model="slow-model")
    backend = backends(spec)
    task = asyncio.create_task(backend.call(skill_call(spec), timeout_s=30))
    await eventually(lambda: emu.stats().get("slow-model") and emu.stats()["slow-model"].concurrent == 1, what="sent")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "in-flight 0/" in repr(backend)


@pytest.mark.parametrize("kind", ["openai", "http"])
async def test_connection_refused_maps_to_connection_error(backends, kind):
    spec = impl(f"http://127.0.0.1:{free_port()}", backend=kind)
    with pytest.raises(BackendConnectionError) as info:
        await backends(spec).call(skill_call(spec), timeout_s=5)
    assert info.value.retryable
    assert spec.name in str(info.value)


@pytest.mark.parametrize("kind", ["openai", "http"])
@pytest.mark.parametrize("malformed_kind", ["invalid_json", "wrong_shape"])
async def test_bad_json_maps_to_protocol_error(emu, backends, kind, malformed_kind):
    emu.set_profile("chat-model", ModelProfile(latency_ms=0, malformed_rate=1.0, malformed_kind=malformed_kind))
    spec = impl(emu.url, backend=kind)
    with pytest.raises(BackendProtocolError):
        await backends(spec).call(skill_call(spec), timeout_s=5)


@pytest.mark.parametrize("kind", ["openai", "http"])
async def test_bad_batch_answer_maps_to_protocol_error(emu, backends, kind):
    emu.set_profile("chat-model", ModelProfile(latency_ms=0, malformed_rate=1.0, malformed_kind="wrong_shape"))
    spec = impl(emu.url, backend=kind)
    with pytest.raises(BackendProtocolError):
        await backends(spec, batch=True).call_batch([skill_call(spec), skill_call(spec)], timeout_s=5)


async def test_error_after_close_is_a_connection_error(emu):
    spec = impl(emu.url)
    backend = build_backend(spec)
    await backend.aclose()
    with pytest.raises(BackendConnectionError):
        await backend.call(skill_call(spec), timeout_s=5)
    assert "closed" in repr(backend)


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),  # in the past
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "x", "retry-after": "9"}, 9.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers, expected):
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(headers, now=now) == expected


# -- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "http"])
async def test_traceparent_is_forwarded(emu, backends, kind):
    spec = impl(emu.url, backend=kind)
    call = skill_call(spec, headers={"traceparent": TRACEPARENT, "tracestate": "router=1"})
    await backends(spec).call(call, timeout_s=5)
    seen = emu.received[-1]
    assert (seen.traceparent, seen.tracestate) == (TRACEPARENT, "router=1")


async def test_batch_forwards_the_first_calls_traceparent(emu, backends):
    spec = impl(emu.url)
    calls = [skill_call(spec, headers={"traceparent": TRACEPARENT}), skill_call(spec)]
    await backends(spec, batch=True).call_batch(calls, timeout_s=5)
    assert emu.received[-1].traceparent == TRACEPARENT


async def test_api_key_header_is_sent(monkeypatch, backends, caplog):
    monkeypatch.setenv("EMU_TEST_KEY", "sk-secret-123")
    caplog.set_level(logging.DEBUG, logger="router.backends")
    async with Emulator(EmulatorConfig(default=ModelProfile(latency_ms=0), api_key="sk-secret-123")) as e:
        spec = impl(e.url, api_key_env="EMU_TEST_KEY")
        backend = backends(spec)
        await backend.warm()
        reply = await backend.call(skill_call(spec), timeout_s=5)
        assert reply.output
        assert all(r.authorization and r.status == 200 for r in e.received)
        assert "sk-secret-123" not in repr(backend)

        # A backend without the key is refused, and the error names no key.
        keyless = backends(impl(e.url, api_key_env="EMU_TEST_MISSING_KEY"))
        with pytest.raises(BackendStatusError) as info:
            await keyless.call(skill_call(keyless.implementation), timeout_s=5)
        assert info.value.status_code == 401 and not info.value.retryable
    assert "EMU_TEST_MISSING_KEY" in caplog.text
    assert "sk-secret-123" not in caplog.text


# -- pooling and warm-up --------------------------------------------------------------------


async def test_warm_opens_connections_that_calls_reuse(emu, backends):
    spec = impl(emu.url, max_connections=4)
    backend = backends(spec, warm_connections=3)
    await backend.warm()
    warm_requests = [r for r in emu.received if r.path == "/v1/models"]
    assert len(warm_requests) == 3 and all(r.status == 200 for r in warm_requests)
    warm_ports = {r.client_port for r in warm_requests}
    assert len(warm_ports) == 3  # three connections opened at once
    for i in range(5):
        await backend.call(skill_call(spec, f"q{i}"), timeout_s=5)
    call_ports = {r.client_port for r in emu.received if r.path == "/v1/chat/completions"}
    assert call_ports <= warm_ports  # kept alive and reused, no new connections


async def test_http_kind_warms_on_healthz(emu, backends):
    spec = impl(emu.url, backend="http")
    await backends(spec).warm()
    assert [r.path for r in emu.received] == ["/healthz"]


async def test_warm_path_is_configurable(emu, backends):
    await backends(impl(emu.url), warm_path="/healthz").warm()
    await backends(impl(emu.url), warm_path=None).warm()  # no request at all
    assert [r.path for r in emu.received] == ["/healthz"]


@pytest.mark.parametrize("kind", ["openai", "http"])
async def test_warm_failure_on_a_dead_port(backends, kind):
    spec = impl(f"http://127.0.0.1:{free_port()}", backend=kind)
    with pytest.raises(BackendConnectionError, match="cannot warm"):
        await backends(spec).warm()


async def test_warm_failure_on_non_2xx(emu, backends):
    with pytest.raises(BackendConnectionError, match="HTTP 404"):
        await backends(impl(emu.url), warm_path="/no-such-path").warm()


async def test_pool_limits_concurrent_connections(emu, backends):
    spec = impl(emu.url, max_connections=2)
    backend = backends(spec)
    emu.pause("chat-model")
    tasks = [asyncio.create_task(backend.call(skill_call(spec, f"q{i}"), timeout_s=10)) for i in range(6)]
    await eventually(lambda: emu.stats().get("chat-model") and emu.stats()["chat-model"].concurrent == 2, what="2 in")
    assert "in-flight 6/2" in repr(backend)
    emu.resume("chat-model")
    replies = await asyncio.gather(*tasks)
    assert sorted(r.output.rsplit(": ", 1)[1] for r in replies) == [f"q{i}" for i in range(6)]
    assert emu.stats()["chat-model"].peak_concurrent == 2


# -- factory and pool -------------------------------------------------------------------------


def test_an_unknown_backend_kind_cannot_be_configured():
    # The kind is a BackendKind: an implementation of another kind cannot exist.
    with pytest.raises(ValueError, match="'grpc' is not a valid BackendKind"):
        impl("http://unused", backend="grpc")


def make_skill(name: str, *implementations: ImplementationSpec) -> SkillSpec:
    return SkillSpec(
        name=name,
        priority=1,
        activation=ActivationRule(),
        preferred_domains=frozenset(),
        optimal_complexity=5,
        concurrency_limit=4,
        queue_depth=8,
        implementations=implementations,
    )


async def test_backend_pool(emu):
    openai_impl = impl(emu.url, name="main")
    http_impl = impl(emu.url, backend="http", name="web", model="skill-model")
    skills = [make_skill("explain", openai_impl, http_impl), make_skill("review", replace(openai_impl))]
    pool = BackendPool.from_skills(skills, batch=lambda skill, im: im.backend == "http")
    try:
        assert len(pool) == 3 and ("explain", "web") in pool
        assert isinstance(pool.get("explain", "main"), OpenAIBackend)
        assert pool.get("explain", "web").supports_batch
        assert not pool.get("review", "main").supports_batch
        assert pool.get("explain", "main") is not pool.get("review", "main")
        with pytest.raises(KeyError, match="nope"):
            pool.get("explain", "nope")
        assert await pool.warm_all(concurrency=2) == {}
        # The two openai implementations share the origin's pool, path and
        # credentials: one warm request checks both.
        assert sorted(r.path for r in emu.received) == ["/healthz", "/v1/models"]
        reply = await pool.get("review", "main").call(skill_call(openai_impl), timeout_s=5)
        assert reply.output
    finally:
        await pool.aclose()
        await pool.aclose()  # idempotent


async def test_backend_pool_warm_failures(emu):
    dead = impl(f"http://127.0.0.1:{free_port()}", name="dead")
    pool = BackendPool.from_skills([make_skill("explain", impl(emu.url, name="alive"), dead)])
    try:
        with pytest.raises(BackendConnectionError, match=r"1 of 2 backend.*explain/dead"):
            await pool.warm_all()
        failures = await pool.warm_all(strict=False)
        assert list(failures) == [("explain", "dead")]
        assert isinstance(failures[("explain", "dead")], BackendError)
    finally:
        await pool.aclose()


async def test_implementations_on_one_origin_share_a_pool_each_within_its_limit(emu):
    a, b = impl(emu.url, name="a", max_connections=2), impl(emu.url, name="b", max_connections=3)
    other = impl(emu.url.replace("127.0.0.1", "localhost"), name="c")  # another origin: a pool of its own
    pool = BackendPool.from_skills([make_skill("explain", a, b), make_skill("review", other)])
    try:
        first, second = pool.get("explain", "a"), pool.get("explain", "b")
        assert first.transport.shared is second.transport.shared
        assert pool.get("review", "c").transport.shared is not first.transport.shared
        assert first.transport.shared.limit == 5
        emu.pause("chat-model")
        tasks = [asyncio.create_task(backend.call(skill_call(backend.implementation, f"{name}{i}"), timeout_s=10))
                 for name, backend in (("a", first), ("b", second)) for i in range(6)]
        await eventually(lambda: emu.stats().get("chat-model") and emu.stats()["chat-model"].concurrent == 5,
                         what="2 of a's and 3 of b's calls in")
        assert "in-flight 6/2" in repr(first) and "in-flight 6/3" in repr(second)
        emu.resume("chat-model")
        replies = await asyncio.gather(*tasks)
        assert len(replies) == 12 and emu.stats()["chat-model"].peak_concurrent == 5
        ports = {r.client_port for r in emu.received if r.path == "/v1/chat/completions"}
        assert len(ports) <= 5  # connections kept alive and shared, never more than the sum of the limits
    finally:
        await pool.aclose()
    assert first.transport.shared.users == 0


async def test_a_backend_joining_an_open_pool_grows_it(emu):
    from router.backends._transport import TransportRegistry

    transports = TransportRegistry()
    first = build_backend(impl(emu.url, name="a", max_connections=2), transports=transports)
    second = None
    try:
        await first.call(skill_call(first.implementation), timeout_s=5)  # the shared session is open now
        second = build_backend(impl(emu.url, name="b", max_connections=3), transports=transports)
        assert second.transport.shared is first.transport.shared and second.transport.shared.limit == 5
        assert second.transport.shared.session().connector.limit == 5
        assert (await second.call(skill_call(second.implementation), timeout_s=5)).output
        await first.aclose()  # one user leaving keeps the pool open for the other
        assert (await second.call(skill_call(second.implementation), timeout_s=5)).output
    finally:
        await first.aclose()
        if second is not None:
            await second.aclose()
    assert first.transport.shared.users == 0


def test_no_ssl_context_for_http_and_one_for_every_https_backend():
    from router.backends._transport import shared_ssl_context

    plain = build_backend(impl("http://127.0.0.1:1"))
    assert plain.transport.shared._ssl is False
    secure = [build_backend(impl(f"https://host{i}.example:443")) for i in range(3)]
    assert {id(b.transport.shared._ssl) for b in secure} == {id(shared_ssl_context())}


async def test_a_dead_origin_is_one_warm_request_and_one_log_line(caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    impls = [impl(dead, name=f"i{n}") for n in range(5)]
    pool = BackendPool.from_skills([make_skill("explain", *impls)])
    caplog.set_level(logging.WARNING, logger="router.backends")
    try:
        failures = await pool.warm_all(strict=False)
        assert sorted(failures) == [("explain", f"i{n}") for n in range(5)]
        lines = [r.getMessage() for r in caplog.records if "did not warm" in r.getMessage()]
        assert len(lines) == 1 and "explain/i0, explain/i1, explain/i2 (and 2 more" in lines[0]
    finally:
        await pool.aclose()


async def test_backend_pool_rejects_duplicates(emu):
    pool = BackendPool()
    pool.add("s", build_backend(impl(emu.url)))
    with pytest.raises(ValueError, match="already has a backend"):
        pool.add("s", build_backend(impl(emu.url)))
    await pool.aclose()


# -- streaming (openai kind, server-sent events) ------------------------------------------


async def test_streamed_chat_hands_out_deltas_and_returns_the_whole_answer(emu, backends):
    emu.set_profile("stream-model", ModelProfile(latency_ms=0, token_ms=1, input_tokens=50, output_tokens=9))
    spec = impl(emu.url, model="stream-model", price_per_input_token=0.001, price_per_output_token=0.003)
    backend = backends(spec)
    assert backend.supports_stream
    deltas: list[str] = []
    streamed = await backend.call_stream(skill_call(spec, "Explain top-k gating"), 5, deltas.append)
    whole = await backend.call(skill_call(spec, "Explain top-k gating"), 5)
    assert len(deltas) > 3 and "".join(deltas) == streamed.output == whole.output
    assert (streamed.input_tokens, streamed.output_tokens) == (50, 9)
    assert streamed.cost == pytest.approx(50 * 0.001 + 9 * 0.003) and streamed.model == "stream-model"


async def test_a_stream_that_breaks_off_is_a_connection_error_after_its_first_deltas(emu, backends):
    emu.set_profile("breaks", ModelProfile(latency_ms=0, stream_break_after=2))
    spec = impl(emu.url, model="breaks")
    deltas: list[str] = []
    with pytest.raises(BackendConnectionError, match="broke off mid-way"):
        await backends(spec).call_stream(skill_call(spec), 5, deltas.append)
    assert deltas == ["breaks", " answers:"]


async def test_a_refused_stream_is_a_status_error(emu, backends):
    emu.set_profile("limited", ModelProfile(latency_ms=0, rate_limit_rate=1.0, retry_after_s=2))
    spec = impl(emu.url, model="limited")
    with pytest.raises(BackendStatusError) as info:
        await backends(spec).call_stream(skill_call(spec), 5, lambda _: None)
    assert info.value.status_code == 429 and info.value.retry_after_s == 2


async def test_a_cancelled_or_timed_out_stream_releases_the_backend_request(emu, backends):
    emu.set_profile("dribble", ModelProfile(latency_ms=0, token_ms=60_000))
    spec = impl(emu.url, model="dribble")
    backend = backends(spec)
    with pytest.raises(BackendTimeout):
        await backend.call_stream(skill_call(spec), 0.2, lambda _: None)
    await eventually(lambda: emu.stats()["dribble"].concurrent == 0, what="the timed-out stream released")
    got: list[str] = []
    task = asyncio.ensure_future(backend.call_stream(skill_call(spec), 30, got.append))
    await eventually(lambda: bool(got), what="the first delta")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: emu.stats()["dribble"].concurrent == 0, what="the cancelled stream released")
    assert emu.stats()["dribble"].peak_concurrent == 1


async def test_http_skills_do_not_stream(emu, backends):
    assert not backends(impl(emu.url, backend="http", model="skill-model")).supports_stream
