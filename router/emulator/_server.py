"""The emulated backend: a real aiohttp server on loopback.

Endpoints (every response echoes an incoming ``traceparent``/``tracestate``
as ``x-received-traceparent``/``x-received-tracestate``):

- ``POST /v1/chat/completions``  OpenAI chat: ``{model, messages}`` →
  ``{id, object, created, model, choices[0].message.content, usage}``.
  With ``stream: true``: server-sent events, one ``chat.completion.chunk``
  per word (``choices[0].delta.content``) ``token_ms`` apart after the
  first, a usage chunk when ``stream_options.include_usage``, then
  ``data: [DONE]`` (``stream_break_after``: the connection breaks off).
- ``POST /v1/completions``  OpenAI/vLLM completions: ``prompt`` is a string
  or a list of strings (a batch: one choice per prompt, with ``index``).
  A batch fails or succeeds as a whole.
- ``POST /v1/embeddings``  OpenAI embeddings: ``input`` is a string or a
  list of strings → ``{data:[{index, embedding}], model, usage}``. The
  vectors are deterministic (a hashed bag of words and character trigrams,
  ``dimensions`` long, default 256, unit length), so texts that share words
  are near.
- ``GET /v1/models``, ``GET /healthz``.
- ``POST /skill``  the ``http`` skill contract (see ``router.backends``):
  ``{query, context:{domain, complexity, metadata}, skill, model}`` →
  ``{output, usage:{input_tokens, output_tokens}, cost?, model}``.
- ``POST /skill/batch``  ``{items:[...]}`` → ``{results:[{output, ...} |
  {error, status}]}``; ``error_rate`` and the fail marker fail single items.
- ``POST /models/{model}/skill``, ``POST /models/{model}/skill/batch``,
  ``GET /models/{model}/healthz``  the
  same, answering as ``model`` when the body names none: an ``http``
  implementation has no model, so pointing its ``url`` at
  ``{emulator}/models/{name}`` gives it its own profile (latency, failures).
- ``GET /emulator/stats`` (per-model counters), ``POST /emulator/reset``.

Failures: 401 without the configured API key, 400 on a malformed request
(OpenAI-style ``{"error": {"message", "type"}}`` body), 429 with
``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms`` when rate
limited or above ``max_concurrency``, 500 for injected errors.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import math
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Self

from aiohttp import web

from router.emulator._config import EmulatorConfig, ModelProfile

_ECHO_CHARS = 160
_DEFAULT_MODEL = "default"
_MODEL_KEY = web.RequestKey("model", str)


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Counters of one model since the start or the last ``reset_stats``.

    ``requests`` counts HTTP requests (a batch is one request; its items are
    in ``items``); ``concurrent`` is the number in flight now and
    ``peak_concurrent`` the most at once; ``errors`` counts 500 answers and
    failed batch items; ``rate_limited`` counts 429 answers.
    """

    requests: int = 0
    concurrent: int = 0
    peak_concurrent: int = 0
    errors: int = 0
    rate_limited: int = 0
    malformed: int = 0
    batches: int = 0
    items: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """What the emulator saw of one request (the API key itself is not kept)."""

    method: str
    path: str
    model: str
    traceparent: str | None
    tracestate: str | None
    authorization: bool
    status: int
    client_port: int | None = None  # the client's source port: one per connection


class _Counters:
    __slots__ = tuple(f.name for f in fields(ModelStats))

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self) -> ModelStats:
        return ModelStats(**{name: getattr(self, name) for name in self.__slots__})

    def reset(self) -> None:
        concurrent = self.concurrent
        for name in self.__slots__:
            setattr(self, name, 0)
        # Requests still in flight stay counted; they decrement on the way out.
        self.concurrent = concurrent
        self.peak_concurrent = concurrent


class _Reply(Exception):
    """Answer at once with this response (auth, validation, 429)."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


@dataclass(slots=True)
class _Flight:
    """The draws made for one admitted request."""

    profile: ModelProfile
    fail: bool
    malformed: bool


def _error_body(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _echo(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _ECHO_CHARS else flat[: _ECHO_CHARS - 1] + "…"


class Emulator:
    """The emulated backend, started in-process on loopback.

    ::

        async with Emulator(EmulatorConfig(latency_scale=0.01)) as emu:
            httpx.post(emu.url + "/v1/chat/completions", ...)
            emu.stats()["gpt-4o"].peak_concurrent

    ``port=0`` picks a free port; ``emu.url`` has the real one.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        request_log_size: int = 1000,
    ) -> None:
        self.config = config or EmulatorConfig()
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._profiles: dict[str, ModelProfile] = dict(self.config.models)
        self._default = self.config.default
        self._rng = random.Random(self.config.seed)
        self._counters: dict[str, _Counters] = {}
        self._ids = itertools.count(1)
        self._received: collections.deque[ReceivedRequest] = collections.deque(maxlen=request_log_size)
        self._gates: dict[str | None, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for gate in self._gates.values():
            gate.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "stopped"
        in_flight = sum(c.concurrent for c in self._counters.values())
        return f"<Emulator {where} | models {len(self._profiles)} | in-flight {in_flight}>"

    # -- control -------------------------------------------------------------

    def profile(self, model: str) -> ModelProfile:
        return self._profiles.get(model, self._default)

    def set_profile(self, model: str | None, profile: ModelProfile) -> None:
        """Replace a model's profile from now on (``None``: the default
        profile for unconfigured models). Requests in flight keep theirs."""
        if model is None:
            self._default = profile
        else:
            self._profiles[model] = profile

    def stats(self) -> dict[str, ModelStats]:
        return {model: c.snapshot() for model, c in self._counters.items()}

    def reset_stats(self) -> None:
        for c in self._counters.values():
            c.reset()
        self._received.clear()

    @property
    def received(self) -> list[ReceivedRequest]:
        """The most recent requests, oldest first."""
        return list(self._received)

    def pause(self, model: str | None = None) -> None:
        """Hold admitted requests of ``model`` (None: every model) in flight,
        counted as concurrent, until ``resume``. Lets tests build exact
        concurrency without relying on timing."""
        self._gates.setdefault(model, asyncio.Event()).clear()

    def resume(self, model: str | None = None) -> None:
        gate = self._gates.get(model)
        if gate is not None:
            gate.set()

    # -- the flight of one request ----------------------------------------------

    def _counter(self, model: str) -> _Counters:
        c = self._counters.get(model)
        if c is None:
            c = self._counters[model] = _Counters()
        return c

    @contextlib.asynccontextmanager
    async def _flight(self, model: str, *, items: int | None, texts: Sequence[str]) -> AsyncIterator[_Flight]:
        """Admit one request of ``model`` (``items``: a batch of that many),
        hold it for its latency and yield the failure draws. The concurrency
        counter goes up on entry and down in ``finally``, cancellation too."""
        profile = self.profile(model)
        c = self._counter(model)
        c.requests += 1
        if items is not None:
            c.batches += 1
            c.items += items
        # Draw in a fixed order so a seed gives the same run for the same arrivals.
        rng = self._rng
        rate_limited = rng.random() < profile.rate_limit_rate if profile.rate_limit_rate else False
        fail = rng.random() < profile.error_rate if profile.error_rate else False
        malformed = rng.random() < profile.malformed_rate if profile.malformed_rate else False
        latency_ms = profile.sample_latency_ms(rng) if items is None else profile.batch_latency_ms(rng, items)
        marker = self.config.fail_marker
        if marker and any(marker in t for t in texts):
            fail = True
        if profile.max_concurrency is not None and c.concurrent >= profile.max_concurrency:
            c.rate_limited += 1
            raise _Reply(
                self._too_many(profile, f"model {model!r} is at its concurrency limit ({profile.max_concurrency})")
            )
        if rate_limited:
            c.rate_limited += 1
            raise _Reply(self._too_many(profile, f"rate limit reached for model {model!r}"))
        c.concurrent += 1
        c.peak_concurrent = max(c.peak_concurrent, c.concurrent)
        try:
            for key in (None, model):
                gate = self._gates.get(key)
                if gate is not None and not gate.is_set():
                    await gate.wait()
            delay = latency_ms * self.config.latency_scale / 1000.0
            if delay > 0:
                await asyncio.sleep(delay)
            if malformed:
                c.malformed += 1
            yield _Flight(profile=profile, fail=fail, malformed=malformed)
        finally:
            c.concurrent -= 1

    def _too_many(self, profile: ModelProfile, message: str) -> web.Response:
        response = _error_body(429, message, "rate_limit_exceeded")
        response.headers["Retry-After"] = str(math.ceil(profile.retry_after_s))
        response.headers["retry-after-ms"] = str(round(profile.retry_after_s * 1000))
        return response

    def _server_error(self, model: str) -> web.Response:
        self._counter(model).errors += 1
        return _error_body(500, f"emulated failure of model {model!r}", "server_error")

    @staticmethod
    def _malformed(profile: ModelProfile) -> web.Response:
        if profile.malformed_kind == "wrong_shape":
            return web.json_response({"unexpected": "shape", "choices": "not-a-list"})
        return web.Response(status=200, body=b'{"choices": [{"message": ', content_type="application/json")

    def _answer(self, model: str, text: str, skill: str = "") -> str:
        who = f"{model} ({skill})" if skill else model
        return f"{who} answers: {_echo(text)}"

    def _usage(self, profile: ModelProfile, prompt: str, output: str) -> tuple[int, int]:
        tokens_in = profile.input_tokens if profile.input_tokens is not None else _estimate_tokens(prompt)
        tokens_out = profile.output_tokens if profile.output_tokens is not None else _estimate_tokens(output)
        return tokens_in, tokens_out

    def _count_tokens(self, model: str, tokens_in: int, tokens_out: int) -> None:
        c = self._counter(model)
        c.input_tokens += tokens_in
        c.output_tokens += tokens_out

    # -- HTTP ------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/skill", self._skill)
        app.router.add_post("/skill/batch", self._skill_batch)
        app.router.add_post("/models/{model:.+}/skill", self._skill)
        app.router.add_post("/models/{model:.+}/skill/batch", self._skill_batch)
        app.router.add_get("/models/{model:.+}/healthz", self._healthz)
        app.router.add_get("/emulator/stats", self._stats)
        app.router.add_post("/emulator/reset", self._reset)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        traceparent = request.headers.get("traceparent")
        tracestate = request.headers.get("tracestate")
        authorization = request.headers.get("Authorization")
        response: web.StreamResponse
        try:
            api_key = self.config.api_key
            if api_key is not None and authorization != f"Bearer {api_key}":
                response = _error_body(401, "missing or wrong API key", "invalid_api_key")
            else:
                response = await handler(request)
        except _Reply as reply:
            response = reply.response
        except web.HTTPException as exc:
            response = _error_body(exc.status, exc.reason, "invalid_request_error")
        if traceparent is not None:
            response.headers["x-received-traceparent"] = traceparent
        if tracestate is not None:
            response.headers["x-received-tracestate"] = tracestate
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self._received.append(
            ReceivedRequest(
                method=request.method,
                path=request.path,
                model=request.get(_MODEL_KEY, ""),
                traceparent=traceparent,
                tracestate=tracestate,
                authorization=authorization is not None,
                status=response.status,
                client_port=peer[1] if isinstance(peer, tuple) and len(peer) >= 2 else None,
            )
        )
        return response

    @staticmethod
    async def _json_object(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError):
            raise _Reply(_error_body(400, "request body is not valid JSON", "invalid_request_error")) from None
        if not isinstance(body, dict):
            raise _Reply(_error_body(400, "request body must be a JSON object", "invalid_request_error"))
        return body

    @staticmethod
    def _bad(message: str) -> _Reply:
        return _Reply(_error_body(400, message, "invalid_request_error"))

    def _model_of(self, request: web.Request, body: Mapping[str, Any], *, required: bool) -> str:
        model = body.get("model")
        if model is None and not required:
            model = _DEFAULT_MODEL
        if not isinstance(model, str) or not model:
            raise self._bad("'model' must be a non-empty string")
        request[_MODEL_KEY] = model
        return model

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        model = self._model_of(request, body, required=True)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise self._bad("'input' must be a string or a non-empty list of strings")
        dims = body.get("dimensions", 256)
        if not isinstance(dims, int) or not 8 <= dims <= 4096:
            raise self._bad("'dimensions' must be an integer between 8 and 4096")
        self._counter(model).requests += 1
        tokens = sum(len(t.split()) for t in texts)
        return web.json_response({
            "object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": hashed_embedding(t, dims)}
                     for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_object(request)
        model = self._model_of(request, body, required=True)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise self._bad("'messages' must be a non-empty list")
        contents: list[str] = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise self._bad(f"'messages[{i}]' must be an object with a 'role'")
            content = message.get("content", "")
            if not isinstance(content, str):
                raise self._bad(f"'messages[{i}].content' must be a string")
            contents.append(content)
        user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), contents[-1])
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise self._bad("'stream' must be a boolean")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise self._bad("'stream_options' must be an object")
        async with self._flight(model, items=None, texts=contents) as flight:
            if flight.fail:
                return self._server_error(model)
            if flight.malformed:
                return self._malformed(flight.profile)
            output = self._answer(model, user)
            tokens_in, tokens_out = self._usage(flight.profile, "\n".join(contents), output)
            self._count_tokens(model, tokens_in, tokens_out)
            if stream:
                return await self._stream_chat(request, model, flight.profile, output, (tokens_in, tokens_out),
                                               bool(options.get("include_usage")))
            # Whole or streamed, the model takes as long to write the answer.
            writing = flight.profile.token_ms * (len(output.split(" ")) - 1) * self.config.latency_scale / 1000.0
            if writing > 0:
                await asyncio.sleep(writing)
            return web.json_response(
                {
                    "id": f"chatcmpl-emu-{next(self._ids)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": output}, "finish_reason": "stop"}
                    ],
                    "usage": {
                        "prompt_tokens": tokens_in,
                        "completion_tokens": tokens_out,
                        "total_tokens": tokens_in + tokens_out,
                    },
                }
            )

    async def _stream_chat(self, request: web.Request, model: str, profile: ModelProfile, output: str,
                           usage: tuple[int, int], include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        for name in ("traceparent", "tracestate"):  # the middleware cannot add headers once sent
            if name in request.headers:
                response.headers[f"x-received-{name}"] = request.headers[name]
        await response.prepare(request)
        cid = f"chatcmpl-emu-{next(self._ids)}"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": choices, **extra}
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        words = output.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        delay = profile.token_ms * self.config.latency_scale / 1000.0
        await response.write(chunk([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]))
        for i, piece in enumerate(pieces):
            if profile.stream_break_after is not None and i >= profile.stream_break_after:
                self._counter(model).errors += 1
                assert request.transport is not None
                request.transport.close()  # broken off mid-way: no [DONE], no end of the body
                return response
            if i and delay > 0:
                await asyncio.sleep(delay)
            await response.write(chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
        await response.write(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if include_usage:
            tokens_in, tokens_out = usage
            await response.write(chunk([], usage={"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                                                  "total_tokens": tokens_in + tokens_out}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _completions(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        model = self._model_of(request, body, required=True)
        prompt = body.get("prompt")
        batched = isinstance(prompt, list)
        prompts: list[str] = prompt if batched else [prompt]  # type: ignore[assignment, list-item]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise self._bad("'prompt' must be a string or a non-empty list of strings")
        async with self._flight(model, items=len(prompts) if batched else None, texts=prompts) as flight:
            if flight.fail:
                return self._server_error(model)
            if flight.malformed:
                return self._malformed(flight.profile)
            choices = []
            total_in = total_out = 0
            for index, text in enumerate(prompts):
                output = self._answer(model, text)
                tokens_in, tokens_out = self._usage(flight.profile, text, output)
                total_in += tokens_in
                total_out += tokens_out
                choices.append({"index": index, "text": output, "logprobs": None, "finish_reason": "stop"})
            self._count_tokens(model, total_in, total_out)
            return web.json_response(
                {
                    "id": f"cmpl-emu-{next(self._ids)}",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": choices,
                    "usage": {
                        "prompt_tokens": total_in,
                        "completion_tokens": total_out,
                        "total_tokens": total_in + total_out,
                    },
                }
            )

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [{"id": m, "object": "model", "created": created, "owned_by": "emulator"} for m in self._profiles]
        return web.json_response({"object": "list", "data": data})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _skill_item(self, item: Any, where: str, default_model: str | None = None) -> tuple[str, str, str]:
        """Validate one ``/skill`` body; return (query, skill, model)."""
        if not isinstance(item, dict):
            raise self._bad(f"'{where}' must be a JSON object")
        query = item.get("query")
        if not isinstance(query, str):
            raise self._bad(f"'{where}query' must be a string")
        context = item.get("context", {})
        if context is not None and not isinstance(context, dict):
            raise self._bad(f"'{where}context' must be an object")
        skill = item.get("skill", "")
        if not isinstance(skill, str):
            raise self._bad(f"'{where}skill' must be a string")
        model = item.get("model") or default_model or _DEFAULT_MODEL
        if not isinstance(model, str):
            raise self._bad(f"'{where}model' must be a string")
        return query, skill, model

    def _skill_result(self, profile: ModelProfile, model: str, query: str, skill: str) -> dict[str, Any]:
        output = self._answer(model, query, skill)
        tokens_in, tokens_out = self._usage(profile, query, output)
        result: dict[str, Any] = {
            "output": output,
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
            "model": model,
        }
        cost = profile.cost(tokens_in, tokens_out)
        if cost is not None:
            result["cost"] = cost
        return result

    async def _skill(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        query, skill, model = self._skill_item(body, "", request.match_info.get("model"))
        request[_MODEL_KEY] = model
        async with self._flight(model, items=None, texts=[query]) as flight:
            if flight.fail:
                return self._server_error(model)
            if flight.malformed:
                return self._malformed(flight.profile)
            result = self._skill_result(flight.profile, model, query, skill)
            self._count_tokens(model, result["usage"]["input_tokens"], result["usage"]["output_tokens"])
            return web.json_response(result)

    async def _skill_batch(self, request: web.Request) -> web.Response:
        body = await self._json_object(request)
        raw_items = body.get("items")
        if not isinstance(raw_items, list) or not raw_items:
            raise self._bad("'items' must be a non-empty list")
        top_model = body.get("model")
        if top_model is not None and not isinstance(top_model, str):
            raise self._bad("'model' must be a string")
        top_model = top_model or request.match_info.get("model")
        items = [self._skill_item(item, f"items[{i}].", top_model) for i, item in enumerate(raw_items)]
        model = top_model or items[0][2]
        request[_MODEL_KEY] = model
        # The marker fails single items below, not the whole batch.
        async with self._flight(model, items=len(items), texts=()) as flight:
            if flight.malformed:
                return self._malformed(flight.profile)
            marker = self.config.fail_marker
            error_rate = flight.profile.error_rate
            results: list[dict[str, Any]] = []
            c = self._counter(model)
            for query, skill, item_model in items:
                failed = (bool(marker) and marker in query) or (error_rate > 0 and self._rng.random() < error_rate)
                if failed:
                    c.errors += 1
                    results.append({"error": f"emulated failure of model {item_model!r}", "status": 500})
                    continue
                result = self._skill_result(self.profile(item_model), item_model, query, skill)
                self._count_tokens(model, result["usage"]["input_tokens"], result["usage"]["output_tokens"])
                results.append(result)
            return web.json_response({"results": results})

    async def _stats(self, request: web.Request) -> web.Response:
        models = {model: asdict(s) for model, s in self.stats().items()}
        total = {key: sum(s[key] for s in models.values()) for key in _Counters.__slots__}
        total["peak_concurrent"] = max((s["peak_concurrent"] for s in models.values()), default=0)
        return web.json_response({"models": models, "total": total})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"status": "reset"})


def hashed_embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit vector: words (weight 1) and character trigrams
    (weight 0.5) hashed into ``dims`` buckets with a hashed sign."""
    import hashlib

    vec = [0.0] * dims
    words = "".join(c.lower() if c.isalnum() else " " for c in text).split()
    feats = [(w, 1.0) for w in words]
    for w in words:
        padded = f" {w} "
        feats.extend((padded[i:i + 3], 0.5) for i in range(len(padded) - 2))
    for feat, weight in feats:
        h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
        vec[h % dims] += weight if (h >> 32) & 1 else -weight
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
