"""The ``http`` kind: a skill served by the web app itself (or any service)
over a small JSON contract.

The contract
============

``implementation.url`` is the service's base URL. Every request carries
``Content-Type: application/json``, the W3C ``traceparent``/``tracestate``
headers of the caller's trace, and ``Authorization: Bearer <key>`` when the
implementation names an ``api_key_env`` that is set.

``POST {url}/skill`` — one query::

    request  {"query": "How do I ...?",
              "context": {"domain": "coding", "complexity": 6.5,
                          "metadata": {"user_tier": "pro"}},
              "skill": "code_review",
              "model": "<implementation.model>",
              "query_id": "q-123",                 # for the service's logs
              "system_prompt": "..."}              # only when the skill has one
    response 200 {"output": "the skill's answer",
                  "usage": {"input_tokens": 12, "output_tokens": 80},   # optional
                  "cost": 0.0031,                                       # optional
                  "model": "the model that answered"}                   # optional

``usage`` counts default to 0. Without ``cost`` the router prices the call
from usage when the implementation has per-token prices, else it uses the
implementation's declared ``cost_per_query``.

``POST {url}/skill/batch`` — several queries of one skill and model in one
request (used only when the implementation is configured for batching)::

    request  {"model": "<implementation.model>",
              "items": [<a /skill request>, ...]}
    response 200 {"results": [<a /skill response> | {"error": "why",
                                                     "status": 503,          # optional
                                                     "retry_after_s": 2}, # optional
                              ...]}

``results[i]`` answers ``items[i]``; there must be exactly one per item. An
item's ``error`` fails that item only (with ``status`` it is treated like an
HTTP answer of that status: 429 and 5xx may be retried).

Failures of the whole request: answer a non-2xx status with a JSON body
``{"error": "why"}`` (or ``{"error": {"message": "why"}}``, ``{"detail":
"why"}``); on 429/503 add ``Retry-After`` (seconds or an HTTP-date). A body
that is not JSON, or not the shape above, is a protocol error.

``GET {url}/healthz`` — any 2xx; the router calls it once at start-up to
open its pooled connections (``warm``) and will not report healthy until it
answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.backends._base import PooledBackend, price, token_count
from router.backends._errors import item_error, protocol_error
from router.core.errors import BackendError
from router.core.types import BackendKind
from router.runtime.ports import SkillCall, SkillReply


class HttpBackend(PooledBackend):
    """A warm pooled client for one ``http`` skill implementation."""

    kind = BackendKind.HTTP
    default_warm_path = "/healthz"

    def _item(self, call: SkillCall) -> dict[str, Any]:
        item: dict[str, Any] = {
            "query": call.query,
            "context": {
                "domain": call.domain,
                "complexity": call.complexity,
                "metadata": dict(call.metadata),
            },
            "skill": call.skill,
            "model": self.implementation.model,
            "query_id": call.query_id,
        }
        if call.system_prompt:
            item["system_prompt"] = call.system_prompt
        return item

    async def call(self, call: SkillCall, timeout_s: float) -> SkillReply:
        data = await self._post_json("/skill", self._item(call), call.headers, timeout_s)
        return self._reply(data, "answer")

    async def call_batch(self, calls: Sequence[SkillCall], timeout_s: float) -> list[SkillReply | BackendError]:
        if not self._batch:
            return await super().call_batch(calls, timeout_s)
        if not calls:
            return []
        payload = {"model": self.implementation.model, "items": [self._item(c) for c in calls]}
        # One HTTP request carries one trace context: the first call's.
        data = await self._post_json("/skill/batch", payload, calls[0].headers, timeout_s)
        where = self._where
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise protocol_error(where, "batch answer has no results list")
        if len(results) != len(calls):
            raise protocol_error(where, f"batch answer has {len(results)} results for {len(calls)} items")
        out: list[SkillReply | BackendError] = []
        for i, result in enumerate(results):
            if isinstance(result, dict) and "error" in result:
                out.append(item_error(where, i, result, self._redact))
                continue
            try:
                out.append(self._reply(result, f"results[{i}]"))
            except BackendError as exc:
                out.append(exc)
        return out

    def _reply(self, data: Any, what: str) -> SkillReply:
        where = self._where
        if not isinstance(data, dict):
            raise protocol_error(where, f"{what} must be a JSON object, got {type(data).__name__}")
        output = data.get("output")
        if not isinstance(output, str):
            raise protocol_error(where, f"{what}.output is not a string")
        usage = data.get("usage")
        if usage is None:
            usage = {}
        elif not isinstance(usage, dict):
            raise protocol_error(where, f"{what}.usage is not an object")
        tokens_in = token_count(usage.get("input_tokens"), f"{what}.usage.input_tokens", where)
        tokens_out = token_count(usage.get("output_tokens"), f"{what}.usage.output_tokens", where)
        cost = data.get("cost")
        if cost is None:
            cost = price(self.implementation, tokens_in, tokens_out) if usage else None
        elif isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
            raise protocol_error(where, f"{what}.cost must be a non-negative number, got {cost!r}")
        model = data.get("model")
        return SkillReply(
            output=output,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost=float(cost) if cost is not None else None,
            model=model if isinstance(model, str) and model else self.implementation.model,
        )
