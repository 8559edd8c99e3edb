"""The ``openai`` kind: any OpenAI-compatible server (OpenAI, vLLM, the
emulator).

- ``call``: ``POST {url}/v1/chat/completions`` with ``model`` and
  ``messages`` (the skill's system prompt, when set, then the query as the
  user message); the answer is ``choices[0].message.content`` and ``usage``.
- ``call_batch`` (only with ``batch=True``): one vLLM-style
  ``POST {url}/v1/completions`` whose ``prompt`` is the list of rendered
  prompts (``system prompt + blank line + query``); choice ``index`` i
  answers call i. The answer's usage is shared among the items in proportion
  to their prompt and answer lengths. A batch fails or succeeds as a whole.
- ``call_stream``: the same request with ``stream: true`` (and
  ``stream_options.include_usage``); the answer comes as server-sent events,
  ``data: {chunk}`` lines whose ``choices[0].delta.content`` pieces are
  handed to ``on_delta`` as they arrive, ending with ``data: [DONE]``. A
  stream that ends without ``[DONE]`` or breaks off fails the call.
- ``warm``: ``GET {url}/v1/models``.
- ``Authorization: Bearer $<api_key_env>`` when the variable is set.
- Cost from usage when the implementation has per-token prices, else None.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from router.backends._base import PooledBackend, price, split_tokens, token_count
from router.backends._errors import protocol_error
from router.core.errors import BackendConnectionError, BackendError, BackendProtocolError
from router.core.types import BackendKind
from router.runtime.ports import SkillCall, SkillReply


def render_prompt(call: SkillCall) -> str:
    """The plain-text prompt of one call for ``/v1/completions``."""
    return f"{call.system_prompt}\n\n{call.query}" if call.system_prompt else call.query


class OpenAIBackend(PooledBackend):
    """A warm pooled client for one OpenAI-compatible implementation."""

    kind = BackendKind.OPENAI
    default_warm_path = "/v1/models"

    @staticmethod
    def _messages(call: SkillCall) -> list[dict[str, str]]:
        messages = []
        if call.system_prompt:
            messages.append({"role": "system", "content": call.system_prompt})
        messages.append({"role": "user", "content": call.query})
        return messages

    @property
    def supports_stream(self) -> bool:
        return True

    async def call_stream(self, call: SkillCall, timeout_s: float, on_delta: Callable[[str], None]) -> SkillReply:
        impl, where = self.implementation, self._where
        payload = {"model": impl.model, "messages": self._messages(call), "stream": True,
                   "stream_options": {"include_usage": True}}
        parts: list[str] = []
        usage: dict[str, Any] = {}
        model = impl.model
        done = False
        async with self._stream_lines("/v1/chat/completions", payload, call.headers, timeout_s) as lines:
            async for line in lines:
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise protocol_error(where, f"stream chunk is not JSON: {data[:80]!r}") from None
                if not isinstance(chunk, dict):
                    raise protocol_error(where, "stream chunk is not a JSON object")
                if "error" in chunk:
                    err = chunk["error"]
                    msg = err.get("message") if isinstance(err, dict) else err
                    raise protocol_error(where, f"the stream reported an error: {msg}")
                if isinstance(chunk.get("usage"), dict):
                    usage = {"usage": chunk["usage"]}
                model = _model(chunk, model)
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    text = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(text, str) and text:
                        parts.append(text)
                        on_delta(text)
        if not done:
            raise BackendConnectionError(f"{where}: the answer's stream ended before [DONE]")
        tokens_in, tokens_out, priced = self._usage(usage)
        return SkillReply(output="".join(parts), input_tokens=tokens_in, output_tokens=tokens_out,
                          cost=price(impl, tokens_in, tokens_out) if priced else None, model=model)

    async def call(self, call: SkillCall, timeout_s: float) -> SkillReply:
        impl = self.implementation
        data = await self._post_json(
            "/v1/chat/completions", {"model": impl.model, "messages": self._messages(call)}, call.headers, timeout_s
        )
        where = self._where
        if not isinstance(data, dict):
            raise protocol_error(where, f"answer must be a JSON object, got {type(data).__name__}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise protocol_error(where, "answer has no choices[0]")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise protocol_error(where, "choices[0].message.content is not a string")
        tokens_in, tokens_out, priced = self._usage(data)
        return SkillReply(
            output=content,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost=price(impl, tokens_in, tokens_out) if priced else None,
            model=_model(data, impl.model),
        )

    async def call_batch(self, calls: Sequence[SkillCall], timeout_s: float) -> list[SkillReply | BackendError]:
        if not self._batch:
            return await super().call_batch(calls, timeout_s)
        if not calls:
            return []
        impl = self.implementation
        prompts = [render_prompt(c) for c in calls]
        # One HTTP request carries one trace context: the first call's.
        data = await self._post_json(
            "/v1/completions", {"model": impl.model, "prompt": prompts}, calls[0].headers, timeout_s
        )
        where = self._where
        if not isinstance(data, dict):
            raise protocol_error(where, f"answer must be a JSON object, got {type(data).__name__}")
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise protocol_error(where, "answer has no choices list")
        texts: list[str | None] = [None] * len(calls)
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise protocol_error(where, f"choices[{position}] is not an object")
            index = choice.get("index", position)
            text = choice.get("text")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(calls):
                raise protocol_error(
                    where, f"choices[{position}].index {index!r} is not one of the {len(calls)} prompts"
                )
            if not isinstance(text, str):
                raise protocol_error(where, f"choices[{position}].text is not a string")
            texts[index] = text
        tokens_in, tokens_out, priced = self._usage(data)
        shares_in = split_tokens(tokens_in, [len(p) for p in prompts])
        shares_out = split_tokens(tokens_out, [len(t or "") for t in texts])
        model = _model(data, impl.model)
        results: list[SkillReply | BackendError] = []
        for i, text in enumerate(texts):
            if text is None:
                results.append(BackendProtocolError(f"{where}: no choice answers prompt {i}"))
                continue
            results.append(
                SkillReply(
                    output=text,
                    input_tokens=shares_in[i],
                    output_tokens=shares_out[i],
                    cost=price(impl, shares_in[i], shares_out[i]) if priced else None,
                    model=model,
                )
            )
        return results

    def _usage(self, data: dict[str, Any]) -> tuple[int, int, bool]:
        """(prompt tokens, completion tokens, whether usage was reported)."""
        usage = data.get("usage")
        if usage is None:
            return 0, 0, False
        if not isinstance(usage, dict):
            raise protocol_error(self._where, "usage is not an object")
        return (
            token_count(usage.get("prompt_tokens"), "usage.prompt_tokens", self._where),
            token_count(usage.get("completion_tokens"), "usage.completion_tokens", self._where),
            True,
        )


def _model(data: dict[str, Any], fallback: str) -> str:
    model = data.get("model")
    return model if isinstance(model, str) and model else fallback
