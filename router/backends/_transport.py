"""httpx's API over aiohttp's connection pool, made cheap.

The backends keep ``httpx.AsyncClient`` as their API; underneath, this
transport hands each request to an ``aiohttp`` connection pool (half the CPU
per call of httpcore's, see docs/benchmarks.md). What it does differently
from ``httpx_aiohttp.AiohttpTransport``:

- **One SSL context for the process** (``shared_ssl_context``), built the
  first time an ``https://`` backend is created, and **none at all for
  ``http://`` URLs**. Building one loads the system CA bundle: ~35-75 ms of
  CPU and ~1 MiB each, which made start-up at 1,000 skills take minutes.
- **Shared per origin** (``TransportRegistry``): the implementations that
  call one scheme+host+port share one pool of keep-alive connections, so
  N skills on one provider open (and warm) one pool, not N. Each user
  still gets at most its own ``max_connections`` in flight (a semaphore
  per user, what the per-implementation pool's limit used to do); the
  shared pool holds up to the sum.
- **Lazy**: the aiohttp session is opened on the first request, inside the
  running event loop.
- Fewer layers per request: no per-request proxy or auth objects, the
  body read in one piece when the answer comes (``iter_any``).
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp.transport import map_aiohttp_exceptions

_SSL_CONTEXTS: dict[bool, ssl.SSLContext] = {}

Origin = tuple[str, str, int, bool, float]  # scheme, host, port, trust_env, keepalive_expiry


def shared_ssl_context(trust_env: bool = True) -> ssl.SSLContext:
    """The process's one client SSL context (httpx's defaults: certifi or the
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` bundle when ``trust_env``)."""
    ctx = _SSL_CONTEXTS.get(trust_env)
    if ctx is None:
        ctx = _SSL_CONTEXTS[trust_env] = httpx.create_ssl_context(trust_env=trust_env)
    return ctx


def origin_of(url: str, trust_env: bool, keepalive_expiry: float) -> Origin:
    parts = urllib.parse.urlsplit(url)
    scheme = (parts.scheme or "http").lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port, trust_env, keepalive_expiry


class _Body(httpx.AsyncByteStream):
    """The answer's body, as aiohttp receives it; closing releases the
    connection back to the pool."""

    __slots__ = ("_release", "_response")

    def __init__(self, response: aiohttp.ClientResponse, release: Any) -> None:
        self._response = response
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with map_aiohttp_exceptions():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        release, self._release = self._release, None
        self._response.release()
        if release is not None:
            release()


class OriginTransport:
    """One aiohttp pool for one origin, shared by its users; closed when the
    last user closes."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        scheme, _, _, trust_env, keepalive = origin
        self._ssl: ssl.SSLContext | bool = shared_ssl_context(trust_env) if scheme == "https" else False
        self._keepalive = keepalive
        self.limit = 0  # the sum of the users' max_connections
        self.users = 0
        self._session: aiohttp.ClientSession | None = None

    def join(self, max_connections: int) -> None:
        self.users += 1
        self.limit += max_connections
        if self._session is not None:  # joined after the first request: let the pool grow
            self._session.connector._limit = self.limit  # type: ignore[union-attr]

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=self._keepalive, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def leave(self) -> None:
        self.users -= 1
        if self.users <= 0 and self._session is not None:
            session, self._session = self._session, None
            await session.close()


class PooledTransport(httpx.AsyncBaseTransport):
    """One user's view of an ``OriginTransport``: at most
    ``max_connections`` requests in flight, from sending to the end of the
    answer's body (the rest wait, within the request's pool timeout)."""

    def __init__(self, shared: OriginTransport, max_connections: int) -> None:
        self.shared = shared
        self._slots = asyncio.Semaphore(max(1, max_connections))
        self._closed = False
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
        shared.join(max(1, max_connections))

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        t = request.extensions.get("timeout") or {}
        key = (t.get("connect"), t.get("read"), t.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            if len(self._timeouts) > 64:  # per-call deadlines vary: keep the cache small
                self._timeouts.clear()
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1],
                                                                  connect=key[2])
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        timeout = self._timeout(request)
        with map_aiohttp_exceptions():
            if self._slots.locked():  # all taken: wait, within the pool timeout
                try:
                    async with asyncio.timeout(timeout.connect):
                        await self._slots.acquire()
                except TimeoutError as exc:
                    raise httpx.PoolTimeout("no free connection within the pool timeout", request=request) from exc
            else:
                await self._slots.acquire()  # free: taken at once, no timer to arm
            try:
                response = await self.shared.session().request(
                    request.method, str(request.url), headers=request.headers, data=request.content or None,
                    allow_redirects=False, compress=False, timeout=timeout,
                    server_hostname=request.extensions.get("sni_hostname"))
            except BaseException:
                self._slots.release()
                raise
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(status_code=response.status, headers=response.raw_headers, stream=_Body(response, self._slots.release),
                              request=request, extensions=extensions)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.shared.leave()


class TransportRegistry:
    """The shared pools of one ``BackendPool``: one per origin."""

    def __init__(self) -> None:
        self._origins: dict[Origin, OriginTransport] = {}

    def transport(self, url: str, *, max_connections: int, keepalive_expiry: float = 30.0,
                  trust_env: bool = True) -> PooledTransport:
        origin = origin_of(url, trust_env, keepalive_expiry)
        shared = self._origins.get(origin)
        if shared is None or shared.users <= 0:
            shared = self._origins[origin] = OriginTransport(origin)
        return PooledTransport(shared, max_connections)

    def __len__(self) -> int:
        return len(self._origins)
