"""The emulated backend, exercised over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from router.core.errors import ConfigError
from router.emulator import Emulator, EmulatorConfig, InvalidProfile, ModelProfile

FAST = ModelProfile(latency_ms=0)


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
            "alpha": ModelProfile(latency_ms=0, input_tokens=11, output_tokens=7),
            "beta": ModelProfile(latency_ms=0, price_per_input_token=0.001, price_per_output_token=0.002),
        },
        default=FAST,
        seed=1,
    )
    async with Emulator(config) as emulator:
        yield emulator


@pytest.fixture
async def client(emu):
    async with httpx.AsyncClient(base_url=emu.url, timeout=10, limits=httpx.Limits(max_connections=100)) as c:
        yield c


def chat(model: str, text: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


# -- endpoints -----------------------------------------------------------------------


async def test_url_is_an_ephemeral_loopback_port(emu):
    assert emu.url.startswith("http://127.0.0.1:")
    assert emu.port > 0
    assert "in-flight 0" in repr(emu)


async def test_chat_completion_shape_usage_and_echo(emu, client):
    r = await client.post("/v1/chat/completions", json=chat("alpha", "What is the capital of France?"))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "alpha"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    content = body["choices"][0]["message"]["content"]
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert "alpha" in content and "capital of France" in content
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    s = emu.stats()["alpha"]
    assert (s.requests, s.concurrent, s.peak_concurrent, s.input_tokens, s.output_tokens) == (1, 0, 1, 11, 7)


async def test_streamed_chat_is_server_sent_events_ending_with_done(emu, client):
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    r = await client.post("/v1/chat/completions", headers=headers,
                          json=chat("alpha", "Stream this", stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-received-traceparent"] == headers["traceparent"]
    lines = [line for line in r.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    text = "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"])
    whole = (await client.post("/v1/chat/completions", json=chat("alpha", "Stream this"))).json()
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    bad = await client.post("/v1/chat/completions", json=chat("alpha", "x", stream="yes"))
    assert bad.status_code == 400 and "'stream'" in bad.json()["error"]["message"]


async def test_token_estimate_follows_prompt_length(client):
    short = (await client.post("/v1/chat/completions", json=chat("gamma", "hi"))).json()["usage"]
    long = (await client.post("/v1/chat/completions", json=chat("gamma", "word " * 400))).json()["usage"]
    assert long["prompt_tokens"] > 10 * short["prompt_tokens"]
    assert short["total_tokens"] == short["prompt_tokens"] + short["completion_tokens"]


async def test_completions_single_prompt_and_vllm_batch(emu, client):
    single = (await client.post("/v1/completions", json={"model": "alpha", "prompt": "one"})).json()
    assert single["object"] == "text_completion"
    assert [c["index"] for c in single["choices"]] == [0]
    prompts = ["first question", "second question", "third question"]
    batch = (await client.post("/v1/completions", json={"model": "alpha", "prompt": prompts})).json()
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2]
    for choice, prompt in zip(batch["choices"], prompts):
        assert prompt in choice["text"] and "alpha" in choice["text"]
    assert batch["usage"]["prompt_tokens"] == 3 * 11
    s = emu.stats()["alpha"]
    assert (s.requests, s.batches, s.items) == (2, 1, 3)


async def test_models_and_healthz(client):
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {"alpha", "beta"}
    assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_skill_contract_with_cost(client):
    r = await client.post(
        "/skill",
        json={
            "query": "Review my pull request",
            "context": {"domain": "coding", "complexity": 6.0, "metadata": {"tier": "pro"}},
            "skill": "code_review",
            "model": "beta",
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert "beta" in body["output"] and "code_review" in body["output"] and "pull request" in body["output"]
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert body["cost"] == pytest.approx(usage["input_tokens"] * 0.001 + usage["output_tokens"] * 0.002)


async def test_skill_without_prices_has_no_cost(client):
    body = (await client.post("/skill", json={"query": "q", "model": "alpha"})).json()
    assert "cost" not in body
    assert body["usage"] == {"input_tokens": 11, "output_tokens": 7}


async def test_skill_under_a_model_path_answers_as_that_model(emu, client):
    # An http implementation names no model; its URL picks the profile.
    body = (await client.post("/models/alpha/skill", json={"query": "q", "skill": "trm", "model": ""})).json()
    assert body["model"] == "alpha" and body["usage"] == {"input_tokens": 11, "output_tokens": 7}
    r = await client.post("/models/beta/skill/batch", json={"items": [{"query": "a"}, {"query": "b"}], "model": ""})
    assert [x["model"] for x in r.json()["results"]] == ["beta", "beta"]
    # A model the body names still wins over the path.
    body = (await client.post("/models/alpha/skill", json={"query": "q", "model": "beta"})).json()
    assert body["model"] == "beta"
    assert (await client.get("/models/alpha/healthz")).status_code == 200
    stats = emu.stats()
    assert (stats["alpha"].requests, stats["beta"].requests, stats["beta"].items) == (1, 2, 2)
    assert "default" not in stats


async def test_a_model_path_gets_that_models_latency():
    # Not a timing assertion: the path's 1-hour model is held until resumed,
    # the unscaled default answers at once.
    config = EmulatorConfig(models={"glacial": ModelProfile(latency_ms=3_600_000)}, default=FAST)
    async with Emulator(config) as e, httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        slow = asyncio.create_task(c.post("/models/glacial/skill", json={"query": "q", "model": ""}))
        await eventually(lambda: e.stats().get("glacial") is not None and e.stats()["glacial"].concurrent == 1,
                         what="the glacial call in flight")
        assert (await c.post("/skill", json={"query": "q", "model": ""})).status_code == 200
        assert not slow.done() and e.stats()["glacial"].concurrent == 1
        slow.cancel()


async def test_skill_batch_fails_single_items(emu, client):
    marker = emu.config.fail_marker
    items = [
        {"query": "question zero", "model": "alpha"},
        {"query": f"question one {marker}", "model": "alpha"},
        {"query": "question two", "model": "alpha"},
    ]
    r = await client.post("/skill/batch", json={"items": items})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 3
    assert "question zero" in results[0]["output"]
    assert results[1]["status"] == 500 and "alpha" in results[1]["error"]
    assert "question two" in results[2]["output"]
    s = emu.stats()["alpha"]
    assert (s.requests, s.batches, s.items, s.errors) == (1, 1, 3, 1)


async def test_skill_batch_error_rate_fails_items_not_the_request(emu, client):
    emu.set_profile("alpha", ModelProfile(latency_ms=0, error_rate=1.0))
    r = await client.post("/skill/batch", json={"items": [{"query": "a", "model": "alpha"}] * 4})
    assert r.status_code == 200
    assert all("error" in result for result in r.json()["results"])
    assert emu.stats()["alpha"].errors == 4


async def test_fail_marker_fails_single_call(emu, client):
    r = await client.post("/v1/chat/completions", json=chat("alpha", f"x {emu.config.fail_marker}"))
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"


# -- injected failures ---------------------------------------------------------------


async def test_error_rate_answers_500(emu, client):
    emu.set_profile("alpha", ModelProfile(latency_ms=0, error_rate=1.0))
    r = await client.post("/v1/chat/completions", json=chat("alpha", "q"))
    assert r.status_code == 500
    assert "alpha" in r.json()["error"]["message"]
    assert emu.stats()["alpha"].errors == 1


async def test_rate_limit_answers_429_with_retry_after(emu, client):
    emu.set_profile("alpha", ModelProfile(latency_ms=0, rate_limit_rate=1.0, retry_after_s=2.5))
    r = await client.post("/skill", json={"query": "q", "model": "alpha"})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "3"  # whole seconds, rounded up
    assert r.headers["retry-after-ms"] == "2500"
    s = emu.stats()["alpha"]
    assert (s.rate_limited, s.concurrent) == (1, 0)


async def test_malformed_answers(emu, client):
    emu.set_profile("alpha", ModelProfile(latency_ms=0, malformed_rate=1.0))
    r = await client.post("/v1/chat/completions", json=chat("alpha", "q"))
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    emu.set_profile("alpha", ModelProfile(latency_ms=0, malformed_rate=1.0, malformed_kind="wrong_shape"))
    body = (await client.post("/skill", json={"query": "q", "model": "alpha"})).json()
    assert "output" not in body
    assert emu.stats()["alpha"].malformed == 2


async def test_set_profile_switches_a_model_to_failing_and_back(emu, client):
    assert (await client.post("/v1/chat/completions", json=chat("alpha", "q"))).status_code == 200
    healthy = emu.profile("alpha")
    emu.set_profile("alpha", ModelProfile(latency_ms=0, error_rate=1.0))
    assert (await client.post("/v1/chat/completions", json=chat("alpha", "q"))).status_code == 500
    emu.set_profile("alpha", healthy)
    assert (await client.post("/v1/chat/completions", json=chat("alpha", "q"))).status_code == 200


async def test_default_profile_serves_unknown_models_and_can_change(emu, client):
    assert (await client.post("/v1/chat/completions", json=chat("unknown-model", "q"))).status_code == 200
    emu.set_profile(None, ModelProfile(latency_ms=0, error_rate=1.0))
    assert (await client.post("/v1/chat/completions", json=chat("unknown-model", "q"))).status_code == 500
    assert (await client.post("/v1/chat/completions", json=chat("alpha", "q"))).status_code == 200


async def test_seeded_failures_repeat():
    async def statuses() -> list[int]:
        config = EmulatorConfig(default=ModelProfile(latency_ms=0, error_rate=0.5), seed=42)
        async with Emulator(config) as e, httpx.AsyncClient(base_url=e.url) as c:
            return [(await c.post("/skill", json={"query": "q"})).status_code for _ in range(20)]

    first, second = await statuses(), await statuses()
    assert first == second
    assert set(first) == {200, 500}


# -- concurrency ---------------------------------------------------------------------


async def test_concurrency_is_counted_exactly(emu, client):
    emu.pause("alpha")
    n = 25
    tasks = [asyncio.create_task(client.post("/v1/chat/completions", json=chat("alpha", f"q{i}"))) for i in range(n)]
    await eventually(lambda: emu.stats().get("alpha") and emu.stats()["alpha"].concurrent == n, what=f"{n} in flight")
    emu.resume("alpha")
    responses = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in responses)
    # Each caller got its own answer.
    assert sorted(r.json()["choices"][0]["message"]["content"].split(": ")[1] for r in responses) == sorted(
        f"q{i}" for i in range(n)
    )
    s = emu.stats()["alpha"]
    assert (s.requests, s.concurrent, s.peak_concurrent) == (n, 0, n)


async def test_max_concurrency_answers_429_beyond_the_limit(emu, client):
    emu.set_profile("alpha", ModelProfile(latency_ms=0, max_concurrency=3, retry_after_s=1))
    emu.pause("alpha")
    held = [asyncio.create_task(client.post("/skill", json={"query": f"q{i}", "model": "alpha"})) for i in range(3)]
    await eventually(lambda: emu.stats().get("alpha") and emu.stats()["alpha"].concurrent == 3, what="3 in flight")
    extra = await asyncio.gather(*(client.post("/skill", json={"query": "x", "model": "alpha"}) for _ in range(2)))
    assert [r.status_code for r in extra] == [429, 429]
    assert extra[0].headers["Retry-After"] == "1"
    emu.resume("alpha")
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
    s = emu.stats()["alpha"]
    assert (s.requests, s.rate_limited, s.peak_concurrent, s.concurrent) == (5, 2, 3, 0)


async def test_client_disconnect_releases_the_concurrency_slot(emu):
    emu.pause("alpha")
    async with httpx.AsyncClient(base_url=emu.url) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/chat/completions", json=chat("alpha", "q"), timeout=httpx.Timeout(5, read=0.05))
    await eventually(lambda: emu.stats()["alpha"].concurrent == 0, what="the slot released")
    assert emu.stats()["alpha"].peak_concurrent == 1


async def test_reset_stats_keeps_requests_in_flight(emu, client):
    await client.post("/v1/chat/completions", json=chat("alpha", "q"))
    emu.pause("alpha")
    task = asyncio.create_task(client.post("/v1/chat/completions", json=chat("alpha", "q")))
    await eventually(lambda: emu.stats()["alpha"].concurrent == 1, what="1 in flight")
    emu.reset_stats()
    s = emu.stats()["alpha"]
    assert (s.requests, s.concurrent, s.peak_concurrent) == (0, 1, 1)
    emu.resume("alpha")
    await task
    assert emu.stats()["alpha"].concurrent == 0


async def test_stats_endpoint_and_reset(emu, client):
    await client.post("/v1/chat/completions", json=chat("alpha", "q"))
    await client.post("/skill", json={"query": "q", "model": "beta"})
    stats = (await client.get("/emulator/stats")).json()
    assert stats["models"]["alpha"]["requests"] == 1
    assert stats["models"]["beta"]["requests"] == 1
    assert stats["total"]["requests"] == 2
    assert (await client.post("/emulator/reset")).status_code == 200
    assert emu.stats()["alpha"].requests == 0


# -- headers, auth, bad requests ---------------------------------------------------


async def test_traceparent_is_echoed_and_recorded(emu, client):
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await client.post("/skill", json={"query": "q"}, headers={"traceparent": tp, "tracestate": "k=v"})
    assert r.headers["x-received-traceparent"] == tp
    assert r.headers["x-received-tracestate"] == "k=v"
    assert emu.received[-1].traceparent == tp
    r = await client.get("/healthz")
    assert "x-received-traceparent" not in r.headers


async def test_api_key_required_when_configured():
    async with Emulator(EmulatorConfig(default=FAST, api_key="sk-emu")) as e, httpx.AsyncClient(base_url=e.url) as c:
        denied = await c.post("/skill", json={"query": "q"})
        assert denied.status_code == 401
        ok = await c.post("/skill", json={"query": "q"}, headers={"Authorization": "Bearer sk-emu"})
        assert ok.status_code == 200
        assert [r.authorization for r in e.received] == [False, True]
        assert all("sk-emu" not in repr(r) for r in e.received)


@pytest.mark.parametrize(
    "path, body, needle",
    [
        ("/v1/chat/completions", {"model": "alpha"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}]}, "model"),
        ("/v1/completions", {"model": "alpha", "prompt": [1, 2]}, "prompt"),
        ("/skill", {"context": {}}, "query"),
        ("/skill/batch", {"items": []}, "items"),
        ("/skill/batch", {"items": [{"query": "ok"}, {"nope": 1}]}, "items[1].query"),
    ],
)
async def test_bad_requests_answer_400_naming_the_field(client, path, body, needle):
    r = await client.post(path, json=body)
    assert r.status_code == 400
    assert needle in r.json()["error"]["message"]


async def test_non_json_body_answers_400(client):
    r = await client.post("/skill", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


async def test_unknown_path_answers_404_json(client):
    r = await client.get("/nope")
    assert r.status_code == 404
    assert "error" in r.json()


# -- config ---------------------------------------------------------------------------


def test_lognormal_latency_matches_median_and_p99():
    profile = ModelProfile(latency_ms=100, p99_ms=400)
    rng = random.Random(7)
    samples = sorted(profile.sample_latency_ms(rng) for _ in range(20000))
    assert statistics.median(samples) == pytest.approx(100, rel=0.05)
    assert samples[int(0.99 * len(samples))] == pytest.approx(400, rel=0.15)


def test_fixed_latency_and_batch_latency():
    rng = random.Random(0)
    assert ModelProfile(latency_ms=50).sample_latency_ms(rng) == 50
    assert ModelProfile(latency_ms=50, batch_overhead_ms=30, per_item_ms=5).batch_latency_ms(rng, 4) == 50
    assert ModelProfile(latency_ms=50, per_item_ms=5).batch_latency_ms(rng, 4) == 70


def test_profile_rejects_out_of_range_values():
    with pytest.raises(InvalidProfile, match="error_rate"):
        ModelProfile(error_rate=1.5)
    with pytest.raises(InvalidProfile, match="max_concurrency"):
        ModelProfile(max_concurrency=0)


def test_config_from_mapping():
    config = EmulatorConfig.from_mapping(
        {
            "seed": 3,
            "latency_scale": 0.01,
            "default": {"latency_ms": 5},
            "models": {"gpt-4o": {"latency_ms": 2000, "p99_ms": 4000, "error_rate": 0.01}},
        }
    )
    assert config.seed == 3 and config.latency_scale == 0.01
    assert config.profile("gpt-4o").p99_ms == 4000
    assert config.profile("other").latency_ms == 5


@pytest.mark.parametrize(
    "data, path",
    [
        ({"modles": {}}, "modles"),
        ({"models": {"m": {"latency": 3}}}, "models.m.latency"),
        ({"models": {"m": {"error_rate": 2}}}, "models.m.error_rate"),
        ({"models": {"m": {"max_concurrency": 1.5}}}, "models.m.max_concurrency"),
        ({"default": {"latency_ms": "fast"}}, "default.latency_ms"),
        ({"latency_scale": -1}, "latency_scale"),
    ],
)
def test_config_errors_name_the_key_path(data, path):
    with pytest.raises(ConfigError) as info:
        EmulatorConfig.from_mapping(data, source="emu.yaml")
    assert info.value.path == path
    assert str(info.value).startswith(f"emu.yaml: {path}: ")


def test_config_from_yaml_file(tmp_path: Path):
    f = tmp_path / "emu.yaml"
    f.write_text("seed: 9\nmodels:\n  m: {latency_ms: 1, rate_limit_rate: 0.5}\n")
    config = EmulatorConfig.from_file(f)
    assert config.seed == 9 and config.profile("m").rate_limit_rate == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        EmulatorConfig.from_file(bad)


async def test_latency_scale_applies(emu):
    # Not a timing assertion: a 1-hour model answers because of the scale.
    config = EmulatorConfig(default=ModelProfile(latency_ms=3_600_000), latency_scale=0.0)
    async with Emulator(config) as e, httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        assert (await c.post("/skill", json={"query": "q"})).status_code == 200


def test_standalone_process(tmp_path: Path):
    cfg = tmp_path / "emu.json"
    cfg.write_text('{"latency_scale": 0.0, "models": {"m": {"latency_ms": 100}}}')
    with subprocess.Popen(
        [sys.executable, "-m", "router.emulator", "--port", "0", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            line = proc.stdout.readline()
            assert line.startswith("emulator listening on http://127.0.0.1:"), line
            url = line.rsplit(" ", 1)[1].strip()
            assert httpx.get(url + "/healthz").json() == {"status": "ok"}
            assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["m"]
        finally:
            proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_standalone_bad_config_exits_2(tmp_path: Path):
    cfg = tmp_path / "emu.yaml"
    cfg.write_text("models: {m: {error_rate: 3}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "router.emulator", "--port", "0", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "models.m.error_rate" in proc.stderr
