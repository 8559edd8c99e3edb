"""The composition root: the only module that wires the parts together.

    config → typed settings per skill → gates → telemetry (observer, live gauges)
           → backend pool (warm) → live registry → skill runtimes (doors, callers)
           → pipeline → App (the application the servicer serves) → server

Start-up order: listen with health NOT_SERVING, open the metrics store,
warm every backend's pool, then SERVING. Shutdown order: NOT_SERVING, stop
taking calls and give in-flight ones the grace period, flush the batchers,
close the pools, flush the store and the telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.admin import AdminError, AdminServer
from router.backends import BackendPool
from router.config import RouterConfig
from router.core.batching import BatchKeyMode
from router.core.breaker import BreakerConfig, Transition
from router.core.errors import BackendError, StartupError
from router.core.limits import AIMDLimit, Gradient2Limit, LimitAlgorithm
from router.core.ratelimit import RateLimit, split_share
from router.core.redact import Redactor
from router.core.retry import RetryPolicy
from router.core.routing import SkillIndex
from router.core.types import SkillSpec
from router.runtime.calls import BatchingOptions
from router.runtime.pipeline import Pipeline
from router.runtime.registry import LiveRegistry
from router.runtime.shared import Ask, LocalState, SharedState, StateStatus, StateSync
from router.runtime.skills import SkillRuntime, SkillSettings, build_gate
from router.runtime.stats import Snapshot, skill_snapshots
from router.service.server import RouterServer, TlsFiles
from router.service.servicer import RouterServicer
from router.state import RedisState, RedisStateSettings
from router.storage import MetricsStore, StoreSettings, WindowAggregate, make_store, query_hasher
from router.telemetry import Telemetry, TelemetrySettings, setup_telemetry

log = logging.getLogger("router")

# Admission off (BRAIN_LOAD_BALANCING_ENABLED=false): count, never queue.
UNLIMITED = 1_000_000

# The health service name that says whether the shared state is reachable
# (SERVING) or the worker serves on local limits (NOT_SERVING).
STATE_HEALTH = "shared-state"


@dataclass(frozen=True, slots=True)
class Worker:
    """Which of ``server.workers`` processes this one is (``router.cli``
    sets it in each worker it starts)."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True, slots=True)
class FrontDoor:
    """How the sidecar meets its callers: where it listens, TLS, the token,
    and the redactor every message to a caller passes through."""

    listen: str
    redact: Redactor
    tls: TlsFiles | None = None
    token: str | None = None


class App:
    """The running sidecar: what the servicer serves (``pipeline``,
    ``snapshot``, ``window``) and its lifecycle (``start``, ``stop``)."""

    def __init__(self, config: RouterConfig, pool: BackendPool, registry: LiveRegistry,
                 runtimes: Mapping[str, SkillRuntime], pipeline: Pipeline, telemetry: Telemetry,
                 store: MetricsStore | None, front: FrontDoor, shared: SharedState | None = None,
                 worker: Worker = Worker(), state_sync: StateSync | None = None) -> None:
        self.config = config
        self.pool = pool
        self.registry = registry
        self.runtimes = runtimes
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.store = store
        self.shared: SharedState = shared or LocalState(worker=worker.index, workers=worker.count)
        self.worker = worker
        self.state_sync = state_sync
        self.started_at = time.monotonic()
        self.warm_failures: dict[tuple[str, str], BackendError] = {}
        self._stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        srv = config.server
        self.server = RouterServer(RouterServicer(self, redact=front.redact), front.listen,
                                   interceptors=[telemetry.server_interceptor()],
                                   max_concurrent_rpcs=srv.max_concurrent_rpcs, redact=front.redact, tls=front.tls,
                                   token=front.token, reflection_enabled=srv.reflection,
                                   grpc_options=srv.grpc_options, skills=[s.name for s in config.skills],
                                   health_listen=srv.health_listen if worker.index == 0 else None,
                                   reuse_port=worker.count > 1)
        telemetry.set_refused(self.server.refused_counts)
        self.admin: AdminServer | None = None
        if srv.admin_listen and worker.index == 0:  # one admin endpoint per host: worker 0's
            # Behind the same token as the gRPC API when one is set.
            self.admin = AdminServer(srv.admin_listen, snapshot=self.snapshot, window=self.window,
                                     token=lambda: front.token)

    @property
    def address(self) -> str:
        return self.server.address

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        return Snapshot(skill_snapshots(self.registry, self.runtimes, now), self.registry.totals,
                        now - self.started_at, self.pipeline.policy.moe_enabled, self.shared.status())

    def state_changed(self, status: StateStatus) -> None:
        """The shared state went down or came back: health says so."""
        task = asyncio.get_running_loop().create_task(
            self.server.set_skill_serving(STATE_HEALTH, status.connected))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def window(self, window_s: float) -> tuple[WindowAggregate | None, str, int]:
        """Stats over time, read from the metrics store (None when there is none)."""
        if self.store is None:
            return None, "", 0
        return await self.store.aggregate(window_s), self.store.backend, self.store.stats.dropped

    async def start(self) -> None:
        if self.store is not None:
            await self.store.start()
        await self.server.start()
        await self.shared.start()
        await self.server.set_skill_serving(STATE_HEALTH, self.shared.status().connected)
        if self.state_sync is not None:
            self.state_sync.start()
        # Warm every pool before SERVING. A backend that cannot be reached now
        # is logged, not fatal: its calls fail (and its breaker opens) until
        # it comes up, while the other skills serve.
        self.warm_failures = await self.pool.warm_all(strict=False)
        for s in self.config.skills:  # per-skill health: SERVING when one implementation warmed
            warmed = any((s.name, i.name) not in self.warm_failures for i in s.implementations)
            await self.server.set_skill_serving(s.name, warmed)
        await self.server.set_serving(True)
        st = self.shared.status()
        log.info("skill-router serving on %s (%d skills, moe %s, worker %d of %d, limits %s)", self.address,
                 len(self.config.skills), "on" if self.pipeline.policy.moe_enabled else "off",
                 self.worker.index + 1, self.worker.count,
                 ("shared in " + st.backend + ("" if st.connected else " (unreachable: local limits)"))
                 if st.backend != "in_process" else
                 ("split among the workers" if self.worker.count > 1 else "in-process"))
        if self.admin is not None:
            try:
                await self.admin.start()
            except AdminError as e:  # the operator surface never takes the sidecar down
                log.warning("admin endpoint off: %s", e)
                self.admin = None

    async def stop(self, grace_s: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.server.grace_period_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        await self.server.set_serving(False)
        self.pipeline.start_draining()
        await self.server.stop(grace)
        if self.admin is not None:  # after the drain, so the dashboard and scrapes can watch it
            await self.admin.stop()
        await self.pipeline.aclose()
        if self.state_sync is not None:
            await self.state_sync.aclose()
        await self.shared.aclose()
        await self.pool.aclose()
        if self.store is not None:
            await self.store.aclose()
        # The exporters flush in what is left of the grace, keeping half a
        # second to exit and at most 5 s (a collector that has not taken the
        # spans by then will not): past it they give up, saying so once.
        await self.telemetry.aclose(max(0.5, min(5.0, deadline - time.monotonic() - 0.5)))

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<App {self.config.source} on {self.server.address} | {self.pipeline!r}>"


def skill_settings(config: RouterConfig, worker: Worker = Worker()) -> dict[str, SkillSettings]:
    """Typed settings per skill, resolved from the global sections, the
    per-skill overrides and the seed's environment overrides.

    Limits never multiply by ``server.workers``: with ``state.redis_url``
    each worker's gate keeps the whole limit and the shared lease bounds
    the sum over every worker and replica (while Redis is unreachable, each
    worker falls back to its share); without it, each worker's gate holds
    its exact share (``split_share``). A limit smaller than the workers
    leaves some workers a share of 0: their gate keeps one slot but the
    door refuses every call (SHARED_LIMIT), so a standby skill or another
    worker takes it. Provider rate limits are split the same way."""
    adm, bat = config.admission, config.batching
    b = adm.breaker
    breaker = BreakerConfig(consecutive_failures=b.failure_threshold, window=b.window,
                            min_calls=min(b.min_calls, b.window), failure_rate=b.failure_rate,
                            cooldown_s=b.cooldown_s, half_open_probes=b.half_open_probes)
    if not adm.enabled:  # admission off: no limits, queues or breakers (the breakers count, never trip)
        breaker = BreakerConfig(consecutive_failures=0, failure_rate=2.0)
    r = adm.retry
    retry = RetryPolicy(max_attempts=r.max_attempts, base_delay_s=r.base_backoff_ms / 1000.0,
                        max_delay_s=max(r.max_backoff_ms, r.base_backoff_ms) / 1000.0, jitter=r.jitter)
    a = adm.adaptive_limit

    def limit_algorithm(limit: int) -> Callable[[], LimitAlgorithm] | None:
        if not (adm.enabled and a.enabled):
            return None
        if a.algorithm == "gradient2":
            return lambda: Gradient2Limit(limit, min_limit=a.min_limit, max_limit=a.max_limit)
        return lambda: AIMDLimit(limit, min_limit=a.min_limit, max_limit=a.max_limit, backoff_ratio=a.backoff_ratio)

    shared = config.state.redis_url is not None
    i, n = worker.index, worker.count

    def asks(s: SkillSpec, limit: int | None, share: int | None) -> dict[str, Ask]:
        out = {}
        for impl in s.implementations:
            io = config.implementation_options(s.name, impl.name)
            rate = RateLimit(io.rpm, io.tpm)
            ask = Ask(s.name, impl.name, limit=limit if shared else None,
                      local_limit=share if (shared or (share is not None and share < 1)) else None,
                      lease_s=config.state.lease_s, rate=rate, local_rate=rate.share(i, n), tokens=io.expected_tokens)
            if ask.needed:
                out[impl.name] = ask
        return out

    def one(s: SkillSpec) -> SkillSettings:
        o = config.skill_options(s.name)
        limit, depth = (s.concurrency_limit, s.queue_depth) if adm.enabled else (UNLIMITED, 0)
        share = split_share(limit, i, n) if adm.enabled else None
        if adm.enabled and not shared:
            limit = max(1, share or 0)  # this worker's share (a share of 0: the door refuses)
        return SkillSettings(
            spec=s, concurrency_limit=limit, queue_depth=depth, queue_timeout_s=o.queue_timeout_s,
            breaker=breaker, retry=retry, retry_budget_ratio=r.budget_ratio,
            batching=BatchingOptions(enabled=o.batching_enabled and o.batch_window_ms > 0 and o.max_batch_size > 1,
                                     window_s=o.batch_window_ms / 1000.0, max_batch_size=o.max_batch_size,
                                     key=BatchKeyMode.parse(bat.key), priority_bypass=bat.priority_bypass),
            batchable=frozenset(i.name for i in s.implementations
                                if config.implementation_options(s.name, i.name).can_batch),
            limit_algorithm=limit_algorithm(limit),
            asks=asks(s, s.concurrency_limit if adm.enabled else None, share))

    return {s.name: one(s) for s in config.skills}


def store_settings(config: RouterConfig) -> StoreSettings | None:
    st = config.storage
    if not (st.sqlite_path or st.postgres_dsn):
        return None  # no metrics store: Stats has no window
    return StoreSettings(sqlite_path=st.sqlite_path, postgres_dsn=st.postgres_dsn,
                         retention_days=st.retention_days, batch_size=st.batch_size,
                         flush_interval_s=st.flush_interval_s, buffer_size=st.buffer_size)


def _server_token(config: RouterConfig, env: Mapping[str, str]) -> str | None:
    name = config.server.auth.token_env
    if not name:
        return None
    token = env.get(name, "")
    if not token:
        raise StartupError("server.auth.token_env", f"names {name}, which is not set (or empty)")
    return token


_OTLP_HEADER_VARS = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                     "OTEL_EXPORTER_OTLP_METRICS_HEADERS")


def _redactor(config: RouterConfig, env: Mapping[str, str], token: str | None) -> Redactor:
    """Every secret the sidecar holds, for redaction by value: the API keys,
    the server's token, the metrics store's password, the OTLP headers."""
    names = {i.api_key_env for s in config.skills for i in s.implementations if i.api_key_env}
    values = [v for n in names for v in (os.environ.get(n), env.get(n)) if v]
    dsn = config.storage.postgres_dsn or ""
    redis = config.state.redis_url or ""
    for url_password, _ in re.findall(r"(?<=://)[^/@:]*:([^/@]+)@()", redis):
        values.append(urllib.parse.unquote(url_password))
    for url_password, kv_password in re.findall(r"(?<=://)[^/@:]*:([^/@]+)@|password\s*=\s*(\S+)", dsn):
        values.append(urllib.parse.unquote(url_password or kv_password))
    for var in _OTLP_HEADER_VARS:
        values += [urllib.parse.unquote(kv.partition("=")[2].strip()) for kv in env.get(var, "").split(",")]
    return Redactor([*values, *([token] if token else [])])


def _tls(config: RouterConfig) -> TlsFiles | None:
    t = config.server.tls
    return None if t is None else TlsFiles(t.cert_file, t.key_file, t.client_ca_file)


def build_shared_state(config: RouterConfig, worker: Worker) -> SharedState:
    st = config.state
    if st.redis_url is None:
        return LocalState(worker=worker.index, workers=worker.count)
    return RedisState(RedisStateSettings(url=st.redis_url, key_prefix=st.key_prefix, timeout_s=st.timeout_ms / 1000.0,
                                         worker=worker.index, workers=worker.count))


def build_app(config: RouterConfig, listen: str | None = None, *, env: Mapping[str, str] | None = None,
              worker: Worker = Worker()) -> App:
    """Wire the sidecar from ``config``; ``env`` (default os.environ) holds the
    ``OTEL_*`` telemetry settings; ``worker``: which of ``server.workers``
    processes this is."""
    settings = skill_settings(config, worker)
    shared = build_shared_state(config, worker)
    gates = {name: build_gate(s) for name, s in settings.items()}
    environ = os.environ if env is None else env
    token = _server_token(config, environ)
    redact = _redactor(config, environ, token)
    telemetry = setup_telemetry(
        TelemetrySettings(service_name=config.telemetry.service_name,
                          record_query_text=config.telemetry.record_query_text,
                          baggage_allowlist=tuple(config.telemetry.baggage_allowlist)),
        environ, live_stats=lambda: [(n, g.in_flight, g.utilization, g.queued) for n, g in gates.items()],
        redact=redact)
    pool = BackendPool.from_skills(
        config.skills, batch=lambda s, i: config.implementation_options(s.name, i.name).can_batch,
        max_response_bytes=lambda s, i: config.implementation_options(s.name, i.name).max_response_bytes,
        redact=redact)
    registry = LiveRegistry([s.name for s in config.skills], success_window=config.routing.success_window,
                            default_success_rate=config.policy.default_success_rate)
    # Breakers that open here are published, those other processes open trip here; success
    # windows are exchanged (Redis only).
    sync = StateSync(shared, registry=registry) if isinstance(shared, RedisState) else None

    def moved(skill: str, impl: str, t: Transition) -> None:
        registry.breaker_moved(skill, impl, t)
        if sync is not None:
            sync.listener(skill, impl, t)

    runtimes = {name: SkillRuntime(s, gates[name], pool, observer=telemetry.observer,
                                   on_transition=moved, shared=shared)
                for name, s in settings.items()}
    if sync is not None:
        sync.breakers = {(name, impl): b for name, rt in runtimes.items() for impl, b in rt.breakers.items()}
    st = store_settings(config)
    store = make_store(st) if st is not None else None
    pipeline = Pipeline(SkillIndex(config.skills), config.policy, runtimes, registry, observer=telemetry.observer,
                        sink=store, load_bias=config.admission.load_bias,
                        default_deadline_s=config.server.default_deadline_s,
                        hash_query=query_hasher(config.storage.sqlite_path, config.storage.postgres_dsn, environ))
    front = FrontDoor(listen or config.server.listen, redact=redact, tls=_tls(config), token=token)
    app = App(config, pool, registry, runtimes, pipeline, telemetry, store, front, shared=shared, worker=worker,
              state_sync=sync)
    if isinstance(shared, RedisState):
        shared.on_change = app.state_changed
    return app


async def serve(config: RouterConfig, listen: str | None = None, worker: Worker = Worker(),
                ready: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully. ``ready`` is
    called once SERVING (the supervisor of several workers waits for it)."""
    app = build_app(config, listen, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = None
    if worker.count > 1:  # a worker outlives no supervisor: a SIGKILLed one leaves no orphans on the port
        parent = os.getppid()

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.5)
                if os.getppid() != parent:
                    break
            log.warning("supervisor (pid %d) gone: worker %d stopping", parent, worker.index)
            stop.set()
        watcher = loop.create_task(watch())
    await app.start()
    if ready is not None:
        ready()
    try:
        await stop.wait()
        log.info("shutting down: draining in-flight calls for up to %.1fs", config.server.grace_period_s)
    finally:
        if watcher is not None:
            watcher.cancel()
        await app.stop()
