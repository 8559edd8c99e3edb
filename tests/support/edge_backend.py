"""A real OpenAI-compatible backend on loopback that misbehaves on purpose,
for the hardening tests. The request's ``model`` picks the behaviour:

    echo-key      401 whose error message quotes the Authorization header's key
    shapes        500 whose error carries key-shaped strings the sidecar does not hold
    huge          200 with a body of ``HUGE_BYTES`` (with Content-Length)
    huge-chunked  200 with a body of ``HUGE_BYTES``, chunked (no Content-Length)
    echo-headers  200 whose answer is the JSON of the request headers it received
    slow          200 after ``SLOW_S`` seconds
    anything else 200 "ok"
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

HUGE_BYTES = 5 * 1024 * 1024
SLOW_S = 1.0
LEAKED_SHAPES = ("AIzaSyA1234567890abcdefghijklmnopqrstu", "gsk_abcdefghijklmnopqrstuvwxyz0123",
                 "AKIAIOSFODNN7EXAMPLE")


def _answer(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


class EdgeBackend:
    def __init__(self) -> None:
        self.url = ""
        self.headers_seen: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.headers_seen.append(headers)
        if model == "echo-key":
            key = headers.get("authorization", "").removeprefix("Bearer ")
            return web.json_response({"error": {"message": f"Incorrect API key provided: {key} (org x)"}}, status=401)
        if model == "shapes":
            return web.json_response({"error": "upstream rejected " + " and ".join(LEAKED_SHAPES)}, status=500)
        if model == "huge":
            return web.Response(body=json.dumps(_answer("x" * HUGE_BYTES)).encode(), content_type="application/json")
        if model == "huge-chunked":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b'{"choices": [{"index": 0, "message": {"content": "')
            chunk = b"x" * 65536
            try:
                for _ in range(HUGE_BYTES // len(chunk)):
                    await resp.write(chunk)
                await resp.write(b'"}}]}')
                await resp.write_eof()
            except (ConnectionResetError, asyncio.CancelledError):
                pass
            return resp
        if model == "echo-headers":
            return web.json_response(_answer(json.dumps(headers)))
        if model == "slow":
            await asyncio.sleep(SLOW_S)
        return web.json_response(_answer("ok"))

    async def __aenter__(self) -> EdgeBackend:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def skill(model: str, keyword: str, **impl: Any) -> dict[str, Any]:
    """A skill activated by ``keyword`` with one openai implementation of ``model``."""
    return {
        "priority": 1, "optimal_complexity": 5, "activation": {"keywords": [keyword]},
        "implementations": [{"name": f"{model}-impl", "backend": "openai", "url": "http://x", "model": model,
                             "quality": 0.9, "cost_per_query": 0.01, "expected_latency_ms": 50, **impl}],
    }


def edge_config(url: str, skills: dict[str, Any], **sections: Any) -> dict[str, Any]:
    for s in skills.values():
        for i in s["implementations"]:
            i["url"] = url
    data: dict[str, Any] = {"skills": skills, "storage": {"sqlite_path": None}, "server": {"grace_period_s": 1}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return data
