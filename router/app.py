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
import signal
import time
from collections.abc import Callable, Mapping

from router.admin import AdminError, AdminServer
from router.backends import BackendPool
from router.config import RouterConfig
from router.core.batching import BatchKeyMode
from router.core.breaker import BreakerConfig
from router.core.errors import BackendError
from router.core.limits import AIMDLimit, Gradient2Limit, LimitAlgorithm
from router.core.retry import RetryPolicy
from router.core.routing import SkillIndex
from router.core.types import SkillSpec
from router.runtime.cache import CacheOptions, MemoryCache
from router.runtime.calls import BatchingOptions
from router.runtime.pipeline import Pipeline
from router.runtime.registry import LiveRegistry
from router.runtime.skills import SkillRuntime, SkillSettings, build_gate
from router.runtime.stats import Snapshot, skill_snapshots
from router.service.server import RouterServer
from router.service.servicer import RouterServicer
from router.storage import MetricsStore, StoreSettings, WindowAggregate, make_store
from router.telemetry import Telemetry, TelemetrySettings, setup_telemetry

log = logging.getLogger("router")

# Admission off (BRAIN_LOAD_BALANCING_ENABLED=false): count, never queue.
UNLIMITED = 1_000_000


class App:
    """The running sidecar: what the servicer serves (``pipeline``,
    ``snapshot``, ``window``) and its lifecycle (``start``, ``stop``)."""

    def __init__(self, config: RouterConfig, pool: BackendPool, registry: LiveRegistry,
                 runtimes: Mapping[str, SkillRuntime], pipeline: Pipeline, telemetry: Telemetry,
                 store: MetricsStore | None, listen: str) -> None:
        self.config = config
        self.pool = pool
        self.registry = registry
        self.runtimes = runtimes
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.store = store
        self.started_at = time.monotonic()
        self.warm_failures: dict[tuple[str, str], BackendError] = {}
        self._stopped = False
        self.server = RouterServer(RouterServicer(self), listen, interceptors=[telemetry.server_interceptor()],
                                   max_concurrent_rpcs=config.server.max_concurrent_rpcs)
        self.admin: AdminServer | None = None
        if config.server.admin_listen:
            self.admin = AdminServer(config.server.admin_listen, snapshot=self.snapshot, window=self.window,
                                     token=lambda: _api_token(config))

    @property
    def address(self) -> str:
        return self.server.address

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        return Snapshot(skill_snapshots(self.registry, self.runtimes, now), self.registry.totals,
                        now - self.started_at, self.pipeline.policy.moe_enabled)

    async def window(self, window_s: float) -> tuple[WindowAggregate | None, str, int]:
        """Stats over time, read from the metrics store (None when there is none)."""
        if self.store is None:
            return None, "", 0
        return await self.store.aggregate(window_s), self.store.backend, self.store.stats.dropped

    async def start(self) -> None:
        if self.store is not None:
            await self.store.start()
        await self.server.start()
        # Warm every pool before SERVING. A backend that cannot be reached now
        # is logged, not fatal: its calls fail (and its breaker opens) until
        # it comes up, while the other skills serve.
        self.warm_failures = await self.pool.warm_all(strict=False)
        await self.server.set_serving(True)
        log.info("skill-router serving on %s (%d skills, moe %s)", self.address, len(self.config.skills),
                 "on" if self.pipeline.policy.moe_enabled else "off")
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
        await self.server.set_serving(False)
        self.pipeline.start_draining()
        await self.server.stop(grace)
        if self.admin is not None:  # after the drain, so the dashboard and scrapes can watch it
            await self.admin.stop()
        await self.pipeline.aclose()
        await self.pool.aclose()
        if self.store is not None:
            await self.store.aclose()
        await self.telemetry.aclose()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<App {self.config.source} on {self.server.address} | {self.pipeline!r}>"


def skill_settings(config: RouterConfig) -> dict[str, SkillSettings]:
    """Typed settings per skill, resolved from the global sections, the
    per-skill overrides and the seed's environment overrides."""
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

    def one(s: SkillSpec) -> SkillSettings:
        o = config.skill_options(s.name)
        limit, depth = (s.concurrency_limit, s.queue_depth) if adm.enabled else (UNLIMITED, 0)
        return SkillSettings(
            spec=s, concurrency_limit=limit, queue_depth=depth, queue_timeout_s=o.queue_timeout_s,
            breaker=breaker, retry=retry, retry_budget_ratio=r.budget_ratio,
            batching=BatchingOptions(enabled=o.batching_enabled and o.batch_window_ms > 0 and o.max_batch_size > 1,
                                     window_s=o.batch_window_ms / 1000.0, max_batch_size=o.max_batch_size,
                                     key=BatchKeyMode.parse(bat.key), priority_bypass=bat.priority_bypass),
            batchable=frozenset(i.name for i in s.implementations
                                if config.implementation_options(s.name, i.name).can_batch),
            limit_algorithm=limit_algorithm(limit),
            cache=CacheOptions(enabled=o.cache_enabled, ttl_s=o.cache_ttl_s))

    return {s.name: one(s) for s in config.skills}


def store_settings(config: RouterConfig) -> StoreSettings | None:
    st = config.storage
    if not (st.sqlite_path or st.postgres_dsn):
        return None  # no metrics store: Stats has no window
    return StoreSettings(sqlite_path=st.sqlite_path, postgres_dsn=st.postgres_dsn,
                         retention_days=st.retention_days, batch_size=st.batch_size,
                         flush_interval_s=st.flush_interval_s, buffer_size=st.buffer_size)


def _api_token(config: RouterConfig) -> str | None:
    """The API token, when one is set (the admin endpoint asks on every request).
    Reads ``server.auth.token_env`` once that key exists; None until then."""
    auth = getattr(config.server, "auth", None)
    env_name = getattr(auth, "token_env", None)
    return (os.environ.get(env_name) or None) if env_name else None


def build_app(config: RouterConfig, listen: str | None = None, *, env: Mapping[str, str] | None = None) -> App:
    """Wire the sidecar from ``config``; ``env`` (default os.environ) holds the
    ``OTEL_*`` telemetry settings."""
    settings = skill_settings(config)
    gates = {name: build_gate(s) for name, s in settings.items()}
    telemetry = setup_telemetry(
        TelemetrySettings(service_name=config.telemetry.service_name,
                          record_query_text=config.telemetry.record_query_text),
        os.environ if env is None else env,
        live_stats=lambda: [(n, g.in_flight, g.utilization, g.queued) for n, g in gates.items()])
    pool = BackendPool.from_skills(
        config.skills, batch=lambda s, i: config.implementation_options(s.name, i.name).can_batch)
    registry = LiveRegistry([s.name for s in config.skills], success_window=config.routing.success_window,
                            default_success_rate=config.policy.default_success_rate)
    # One response cache for every skill that opts in (in-process LRU; a
    # store shared by replicas, Redis at state.redis_url, is not built yet).
    cache = MemoryCache(config.cache.max_entries) if any(s.cache.enabled for s in settings.values()) else None
    runtimes = {name: SkillRuntime(s, gates[name], pool, observer=telemetry.observer,
                                   on_transition=registry.breaker_moved, cache=cache)
                for name, s in settings.items()}
    st = store_settings(config)
    store = make_store(st) if st is not None else None
    pipeline = Pipeline(SkillIndex(config.skills), config.policy, runtimes, registry, observer=telemetry.observer,
                        sink=store, load_bias=config.admission.load_bias,
                        default_deadline_s=config.server.default_deadline_s)
    return App(config, pool, registry, runtimes, pipeline, telemetry, store, listen or config.server.listen)


async def serve(config: RouterConfig, listen: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    app = build_app(config, listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        await stop.wait()
        log.info("shutting down: draining in-flight calls for up to %.1fs", config.server.grace_period_s)
    finally:
        await app.stop()
