"""What every HTTP backend shares: one warm, pooled keep-alive client per
implementation, the whole-call deadline, header pass-through and error
mapping. The kinds (``_openai``, ``_http``) only build payloads and read
answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp
import httpx

from router.backends._errors import decode_json, map_httpx_exceptions, protocol_error, status_error
from router.backends._transport import PooledTransport, TransportRegistry
from router.core.errors import BackendConnectionError, BackendError, BackendProtocolError, BackendTimeout
from router.core.redact import Redactor
from router.core.types import ImplementationSpec
from router.runtime.ports import SkillCall, SkillReply

logger = logging.getLogger("router.backends")

_USER_AGENT = "skill-router/0.1"
_DEFAULT = object()
# The default bound of one answer's body (decoded); per implementation
# ``max_response_bytes`` in the config.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def _same(text: str) -> str:
    return text


def _base_url(url: str) -> str:
    """The implementation's URL as the client's base. A trailing ``/v1``
    is dropped, so ``https://api.openai.com/v1`` and ``https://api.openai.com``
    both work with the ``/v1/...`` paths the backends use."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _json_bytes(payload: Any) -> bytes:
    """The body httpx's ``json=`` sends (compact, UTF-8)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def price(implementation: ImplementationSpec, input_tokens: int, output_tokens: int) -> float | None:
    """Cost from usage when the implementation has per-token prices, else None."""
    p_in = implementation.price_per_input_token
    p_out = implementation.price_per_output_token
    if p_in is None and p_out is None:
        return None
    return input_tokens * (p_in or 0.0) + output_tokens * (p_out or 0.0)


class PooledBackend:
    """Base of the HTTP backends (``router.runtime.ports.Backend``).

    Options:
      ``batch``            whether ``call_batch`` is available (``supports_batch``).
      ``warm_path``        GET by ``warm()``; None skips the request (default per kind).
      ``warm_connections`` how many connections ``warm()`` opens at once (≤ max_connections).
      ``warm_timeout_s``   bound of ``warm()`` (default: min(implementation.timeout_s, 10)).
      ``keepalive_expiry`` seconds an idle pooled connection is kept.
      ``trust_env``        honour HTTP(S)_PROXY/NO_PROXY and SSL env vars (httpx's default).
      ``max_response_bytes`` bound of an answer's (decoded) body, enforced while
                           reading it; over it the call fails (``BackendProtocolError``).
      ``redact``           applied to every backend text that goes into an error
                           (the sidecar's secrets by value and shape; see
                           ``router.core.redact``). This backend's own key is
                           always redacted.
      ``transports``       the shared per-origin pools (``TransportRegistry``) this
                           backend's connections come from; None: a pool of its own.
    """

    kind: ClassVar[str] = ""
    default_warm_path: ClassVar[str | None] = None

    def __init__(
        self,
        implementation: ImplementationSpec,
        *,
        batch: bool = False,
        warm_path: str | object | None = _DEFAULT,
        warm_connections: int = 1,
        warm_timeout_s: float | None = None,
        keepalive_expiry: float = 30.0,
        trust_env: bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        redact: Callable[[str], str] | None = None,
        transports: TransportRegistry | None = None,
    ) -> None:
        self.implementation = implementation
        self._batch = batch
        self.warm_path: str | None = self.default_warm_path if warm_path is _DEFAULT else warm_path  # type: ignore[assignment]
        self._warm_connections = max(1, min(warm_connections, implementation.max_connections))
        self._warm_timeout_s = warm_timeout_s if warm_timeout_s is not None else min(implementation.timeout_s, 10.0)
        self._where = f"{self.kind} backend {implementation.name!r} ({implementation.url})"
        self._in_flight = 0
        self._closed = False
        self._urls: dict[str, httpx.URL] = {}

        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be at least 1, got {max_response_bytes}")
        self.max_response_bytes = max_response_bytes
        base_redact = redact or _same
        self._redact: Callable[[str], str] = base_redact
        headers = {"User-Agent": _USER_AGENT}
        key_env = implementation.api_key_env
        if key_env:
            key = os.environ.get(key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
                own = Redactor([key])
                self._redact = lambda text: base_redact(own(text))
            else:
                logger.warning(
                    "%s: environment variable %s is not set; calling without an API key", self._where, key_env
                )
        limits = httpx.Limits(
            max_connections=implementation.max_connections,
            max_keepalive_connections=implementation.max_connections,
            keepalive_expiry=keepalive_expiry,
        )
        # httpx's API over aiohttp's connection pool, shared per origin, with
        # one SSL context for the process and none for http:// (_transport).
        if transports is None:
            transports = TransportRegistry()
        self.transport: PooledTransport = transports.transport(
            implementation.url, max_connections=implementation.max_connections,
            keepalive_expiry=keepalive_expiry, trust_env=trust_env)
        self._client = httpx.AsyncClient(
            base_url=_base_url(implementation.url),
            headers=headers,
            timeout=httpx.Timeout(implementation.timeout_s),
            limits=limits,
            trust_env=trust_env,
            transport=self.transport,
        )
        # Requests go straight to the transport as httpx.Request objects:
        # the client's redirect, auth, cookie-jar and hook layers cost about
        # a third of the HTTP path's CPU (py-spy, docs/benchmarks.md) and
        # none of them applies to a backend API. Not when the environment sets a proxy for this URL: then the
        # client's proxy mount is used, as before.
        self._headers = {"User-Agent": _USER_AGENT, "Accept": "application/json", **headers}
        self._direct = not any(pattern.matches(httpx.URL(implementation.url))
                               for pattern in self._client._mounts)

    @property
    def warm_key(self) -> tuple[object, ...] | None:
        """Backends with equal keys share what ``warm()`` checks and opens
        (the same pool, path and credentials): ``BackendPool`` warms one of
        them. None: nothing to warm."""
        if self.warm_path is None:
            return None
        return (id(self.transport.shared), self.warm_path, self.implementation.api_key_env)

    # -- Backend port ------------------------------------------------------------

    @property
    def supports_batch(self) -> bool:
        return self._batch

    async def warm(self) -> None:
        """Open ``warm_connections`` pooled connections with concurrent GETs
        of ``warm_path``. Raises ``BackendConnectionError`` when the backend
        cannot be reached, does not answer in time or answers non-2xx."""
        if self.warm_path is None:
            return
        path = self.warm_path
        results = await asyncio.gather(
            *(self._warm_one(path) for _ in range(self._warm_connections)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        logger.debug("%s: warm (%d connection(s))", self._where, self._warm_connections)

    async def _warm_one(self, path: str) -> None:
        try:
            response = await self._send("GET", path, None, None, self._warm_timeout_s)
        except BackendError as exc:
            raise BackendConnectionError(f"cannot warm {exc}") from exc
        if not response.is_success:
            raise BackendConnectionError(f"cannot warm {self._where}: GET {path} answered HTTP {response.status_code}")

    async def call(self, call: SkillCall, timeout_s: float) -> SkillReply:
        raise NotImplementedError

    async def call_batch(self, calls: Sequence[SkillCall], timeout_s: float) -> list[SkillReply | BackendError]:
        raise NotImplementedError(f"{self._where} is not configured for batching")

    @property
    def supports_stream(self) -> bool:
        return False

    async def call_stream(self, call: SkillCall, timeout_s: float, on_delta: Callable[[str], None]) -> SkillReply:
        raise NotImplementedError(f"{self._where} cannot stream")

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    def __repr__(self) -> str:
        impl = self.implementation
        state = "closed" if self._closed else f"in-flight {self._in_flight}/{impl.max_connections}"
        batch = " | batch" if self._batch else ""
        return f"<{type(self).__name__} {impl.name} {impl.model} {impl.url} | {state}{batch}>"

    # -- the wire ------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        payload: Any,
        headers: Mapping[str, str] | None,
        timeout_s: float,
    ) -> httpx.Response:
        """One request whose whole duration (pool wait, connect, send, read
        of the full body) is bounded by ``timeout_s``; every failure mapped."""
        if not timeout_s > 0:
            raise BackendTimeout(f"{self._where}: no time left for the call ({timeout_s:g}s)")
        if self._closed:
            raise BackendConnectionError(f"{self._where}: the backend's client is closed")
        url = self._urls.get(path)
        if url is None:
            # Merged with the base URL once per path: httpx re-parses a
            # string URL on every request (~0.1 ms of CPU each).
            url = self._urls[path] = self._client.build_request(method, path).url
        self._in_flight += 1
        try:
            with map_httpx_exceptions(self._where, self._redact):
                async with asyncio.timeout(timeout_s):
                    if not self._direct:
                        request = self._client.build_request(
                            method, url, json=payload, headers=dict(headers) if headers else None, timeout=timeout_s)
                        response = await self._client.send(request, stream=True)
                    else:
                        request = httpx.Request(
                            method, url, headers={**self._headers, **headers} if headers else self._headers,
                            content=None if payload is None else _json_bytes(payload),
                            extensions={"timeout": {"connect": timeout_s, "read": timeout_s, "write": timeout_s,
                                                    "pool": timeout_s}})
                        if payload is not None:
                            request.headers["Content-Type"] = "application/json"
                        response = await self.transport.handle_async_request(request)
                    try:
                        await self._read_bounded(response)
                    finally:
                        await response.aclose()
                    return response
        except TimeoutError as exc:
            raise BackendTimeout(f"{self._where}: no answer within {timeout_s:g}s") from exc
        finally:
            self._in_flight -= 1

    async def _read_bounded(self, response: httpx.Response) -> None:
        """Read the body, failing as soon as it is over ``max_response_bytes``
        (by Content-Length before reading, else while reading), so an
        oversized answer never sits in memory whole."""
        limit = self.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit and "content-encoding" not in response.headers:
            raise BackendProtocolError(
                f"{self._where}: answer body is {int(declared)} bytes, over max_response_bytes ({limit})")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise BackendProtocolError(
                    f"{self._where}: answer body is over max_response_bytes ({limit}); stopped reading")
            chunks.append(chunk)
        # What httpx's own aread() does; the body is now .content/.text.
        response._content = b"".join(chunks)

    @contextlib.asynccontextmanager
    async def _stream_lines(self, path: str, payload: Any, headers: Mapping[str, str] | None,
                            timeout_s: float) -> AsyncIterator[AsyncIterator[str]]:
        """POST ``payload`` and read the answer line by line as it arrives
        (server-sent events). The whole request, the reading included, is
        bounded by ``timeout_s``; a non-2xx answer raises its status error;
        a connection that breaks mid-way raises ``BackendConnectionError``.
        Leaving the block (done, failed or cancelled) closes the response,
        which gives the connection back to the pool or drops it."""
        if not timeout_s > 0:
            raise BackendTimeout(f"{self._where}: no time left for the call ({timeout_s:g}s)")
        if self._closed:
            raise BackendConnectionError(f"{self._where}: the backend's client is closed")
        self._in_flight += 1
        try:
            with map_httpx_exceptions(self._where, self._redact):
                async with asyncio.timeout(timeout_s):
                    request = self._client.build_request("POST", path, json=payload,
                                                         headers=dict(headers) if headers else None,
                                                         timeout=timeout_s)
                    response = await self._client.send(request, stream=True)
                    try:
                        if not response.is_success:
                            await response.aread()
                            raise status_error(response, self._where, self._redact)
                        yield self._lines(response)
                    finally:
                        await response.aclose()
        except TimeoutError as exc:
            raise BackendTimeout(f"{self._where}: no answer within {timeout_s:g}s") from exc
        finally:
            self._in_flight -= 1

    async def _lines(self, response: httpx.Response) -> AsyncIterator[str]:
        n = 0
        try:
            async for line in response.aiter_lines():
                n += 1
                yield line
        except (httpx.TransportError, aiohttp.ClientError) as exc:  # the body broke off
            raise BackendConnectionError(
                f"{self._where}: the answer's stream broke off mid-way (after {n} lines): "
                f"{type(exc).__name__}") from exc

    async def _post_json(self, path: str, payload: Any, headers: Mapping[str, str] | None, timeout_s: float) -> Any:
        response = await self._send("POST", path, payload, headers, timeout_s)
        if not response.is_success:
            raise status_error(response, self._where, self._redact)
        return decode_json(response, self._where, self._redact)


def token_count(value: Any, what: str, where: str) -> int:
    """A usage count from an answer: a non-negative integer, or 0 when absent."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise protocol_error(where, f"{what} must be a non-negative integer, got {value!r}")
    return value


def split_tokens(total: int, weights: Sequence[int]) -> list[int]:
    """Share ``total`` among items in proportion to ``weights`` (largest
    remainder), so the shares add up to ``total`` exactly."""
    n = len(weights)
    if n == 0:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights = [1] * n
        weight_sum = n
    exact = [total * w / weight_sum for w in weights]
    shares = [int(x) for x in exact]
    leftover = total - sum(shares)
    by_remainder = sorted(range(n), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[:leftover]:
        shares[i] += 1
    return shares
