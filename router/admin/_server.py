"""The admin HTTP server: the live dashboard page, its JSON, Prometheus.

    GET /                the dashboard (one self-contained HTML file, no build step)
    GET /api/dashboard   the same figures as JSON (?window=SECONDS, default 86400)
    GET /metrics         Prometheus exposition, read from the live snapshot
    POST /api/reload     read the config file again and serve it (hot reload); the
                         JSON result names the new generation, or the bad key path
                         (422, the old config keeps serving). Without a token set,
                         only a loopback peer may ask (403 otherwise).

When a token is set, every path needs it: ``Authorization: Bearer <token>``,
or ``?token=<token>`` (a browser cannot add a header to a page it opens; the
page forwards the token to its own requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from router.runtime.stats import Snapshot

from ._dashboard import WindowResult, dashboard
from ._history import History, Sample
from ._metrics import SnapshotCollector

log = logging.getLogger("router.admin")

DEFAULT_WINDOW_S = 86400.0  # the seed's dashboard: the last 24 hours
MAX_WINDOW_S = 366 * 86400.0


class AdminError(Exception):
    """The admin endpoint cannot start (bad address, port taken)."""


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise AdminError(f"server.admin_listen: must be HOST:PORT or [IPv6]:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def _page() -> bytes:
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


class AdminServer:
    """Serves the admin surface on ``listen`` from two read-only sources:
    ``snapshot()`` (the live state) and ``window(seconds)`` (the metrics
    store's aggregate). ``token()`` is read on every request, so a rotated
    token takes effect without a restart; None or "" means no token."""

    def __init__(self, listen: str, *, snapshot: Callable[[], Snapshot],
                 window: Callable[[float], Awaitable[WindowResult]],
                 token: Callable[[], str | None] = lambda: None,
                 reload: Callable[[], Awaitable[dict[str, object]]] | None = None,
                 clock: Callable[[], float] = time.time,
                 sample_interval_s: float = 2.0, history_points: int = 300, window_ttl_s: float = 5.0) -> None:
        if not sample_interval_s > 0:
            raise ValueError(f"sample_interval_s: must be positive, got {sample_interval_s!r}")
        self._host, self._port = split_listen(listen)
        self._listen = listen
        self._snapshot = snapshot
        self._window = window
        self._token = token
        self._reload = reload
        self._clock = clock
        self.sample_interval_s = sample_interval_s
        # Several open pages refresh every few seconds; they share one store
        # read per window length for this long.
        self.window_ttl_s = window_ttl_s
        self._windows: dict[float, tuple[float, WindowResult]] = {}
        self.history = History(history_points)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot))
        self.registry.register(ProcessCollector(registry=None))
        self._page = _page()
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._bound: tuple[str, int] | None = None

    def __repr__(self) -> str:
        state = f"on {self.url}" if self._bound else "stopped"
        return f"<AdminServer {state} | {self.history!r}>"

    @property
    def address(self) -> str:
        if self._bound is None:
            raise AdminError("the admin server is not started")
        host, port = self._bound
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/dashboard", self._dashboard)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/api/reload", self._reload_config)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise AdminError(f"server.admin_listen: cannot listen on {self._listen}: {e.strerror or e}") from e
        self._runner = runner
        sock = next(iter(runner.addresses), None)
        self._bound = (str(sock[0]), int(sock[1])) if sock else (self._host, self._port)
        self.sample()
        self._sampler = asyncio.create_task(self._sample_loop(), name="admin-sampler")
        log.info("admin endpoint on %s (dashboard /, /api/dashboard, /metrics%s)", self.url,
                 ", POST /api/reload" if self._reload is not None else "")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._bound = None

    def sample(self) -> None:
        """Add one reading of the live counters to the history."""
        self.history.add(Sample.of(self._snapshot(), self._clock()))

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval_s)
            try:
                self.sample()
            except Exception:  # a bad reading must not end the history
                log.exception("admin: sampling the snapshot failed")

    # ---- handlers ------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        token = self._token()
        if token:
            given = request.query.get("token", "")
            header = request.headers.get("Authorization", "")
            if header.lower().startswith("bearer "):
                given = header[7:].strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.json_response(
                    {"error": "unauthorized: send the API token as 'Authorization: Bearer <token>' "
                              "or as the 'token' query parameter"},
                    status=401, headers={"WWW-Authenticate": 'Bearer realm="skill-router admin"'})
        return await handler(request)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _dashboard(self, request: web.Request) -> web.Response:
        raw = request.query.get("window")
        window_s = DEFAULT_WINDOW_S
        if raw is not None:
            try:
                window_s = float(raw)
            except ValueError:
                window_s = math.nan
            if not (0 < window_s <= MAX_WINDOW_S):
                return web.json_response(
                    {"error": f"window: must be a number of seconds in (0, {MAX_WINDOW_S:g}], got {raw!r}"},
                    status=400)
        window: WindowResult | None = None
        error = None
        try:
            window = await self._read_window(window_s)
        except Exception as e:  # the live half of the page still answers
            log.warning("admin: reading the metrics store failed: %s", e)
            error = f"metrics store: {e}"
        body = dashboard(self._snapshot(), now=self._clock(), window_s=window_s, window=window,
                         window_error=error, history=self.history.points(),
                         sample_interval_s=self.sample_interval_s)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _read_window(self, window_s: float) -> WindowResult:
        now = self._clock()
        hit = self._windows.get(window_s)
        if hit is not None and now - hit[0] < self.window_ttl_s:
            return hit[1]
        result = await self._window(window_s)
        if len(self._windows) >= 16:  # only a few window lengths are ever asked for
            self._windows.clear()
        self._windows[window_s] = (self._clock(), result)
        return result

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _reload_config(self, request: web.Request) -> web.Response:
        if self._reload is None:
            return web.json_response({"error": "reload: not available on this admin endpoint"}, status=404)
        if not self._token() and not _loopback(request.remote):
            return web.json_response(
                {"error": "reload: set an API token to allow it from another host (without one, only a "
                          "loopback client may reload)"}, status=403)
        result = await self._reload()
        return web.json_response(result, status=200 if result.get("ok") else 422,
                                 headers={"Cache-Control": "no-store"})


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False
