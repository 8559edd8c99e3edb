"""The composition root: the only module that wires the parts together.

    config → backend pool (warm) → live registry → pipeline → servicer → server
                                   telemetry (observer) ┘      metrics store (sink)

Start-up order: listen with health NOT_SERVING, warm every backend's pool,
open the metrics store, then SERVING. Shutdown order: NOT_SERVING, stop
taking calls and give in-flight ones the grace period, close the pools,
flush the store and the telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from router.backends import BackendPool, EmbeddingsClient
from router.config import RouterConfig
from router.core.batching import BatchKeyMode
from router.core.breaker import BreakerConfig
from router.core.limits import AIMDLimit, Gradient2Limit
from router.core.retry import RetryPolicy
from router.core.signals import DEFAULT_OUT_OF_SCOPE_THRESHOLD
from router.core.types import ImplementationSpec, SkillSpec
from router.runtime.pipeline import Pipeline
from router.runtime.registry import LiveRegistry
from router.runtime.skills import AdmissionOptions, BatchingOptions, SkillRuntime, build_skill_runtimes
from router.runtime.stats import Snapshot, skill_snapshots
from router.service.server import RouterServer
from router.service.servicer import RouterServicer
from router.storage import MetricsStore, StoreSettings, open_store
from router.telemetry import Telemetry, TelemetrySettings, setup_telemetry
from router.understanding import EmbeddingsEncoder, LocalEncoder, TextUnderstanding

log = logging.getLogger("router")


@dataclass
class App:
    config: RouterConfig
    pool: BackendPool
    registry: LiveRegistry
    runtimes: dict[str, SkillRuntime]
    pipeline: Pipeline
    server: RouterServer
    telemetry: Telemetry
    store: MetricsStore | None = None
    started_at: float = field(default_factory=time.monotonic)
    _stopped: bool = False
    warm_failures: dict = field(default_factory=dict)
    understanding: TextUnderstanding | None = None

    @property
    def address(self) -> str:
        return self.server.address

    def snapshot(self) -> Snapshot:
        return Snapshot(skill_snapshots(self.registry, self.runtimes, time.monotonic()), self.registry.totals,
                        time.monotonic() - self.started_at, self.pipeline.policy.moe_enabled)

    def live_stats(self) -> list[tuple[str, int, float, int]]:
        return [(n, rt.gate.in_flight, rt.gate.utilization, rt.gate.queued) for n, rt in self.runtimes.items()]

    async def window(self, window_s: float) -> tuple[object | None, str, int]:
        """Stats over time, read from the metrics store (None when there is none)."""
        if self.store is None:
            return None, "", 0
        return await self.store.aggregate(window_s), self.store.backend, self.store.stats.dropped

    async def start(self) -> None:
        if self.understanding is not None:
            await self.understanding.start()  # fit on the examples before serving
        settings = _store_settings(self.config)
        if settings is not None:
            self.store = await open_store(settings)
            await self.store.start()
            self.pipeline.sink = self.store
        await self.server.start()
        # Warm every pool before SERVING. A backend that cannot be reached now
        # is logged, not fatal: its calls fail (and its breaker opens) until
        # it comes up, while the other skills serve.
        self.warm_failures = await self.pool.warm_all(strict=False)
        await self.server.set_serving(True)
        log.info("skill-router serving on %s (%d skills, moe %s)", self.address, len(self.config.skills),
                 "on" if self.pipeline.policy.moe_enabled else "off")

    async def stop(self, grace_s: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.server.grace_period_s if grace_s is None else grace_s
        await self.server.set_serving(False)
        self.pipeline.start_draining()
        await self.server.stop(grace)
        await self.pipeline.aclose()
        await self.pool.aclose()
        if self.understanding is not None:
            await self.understanding.aclose()
        if self.store is not None:
            await self.store.aclose()
        await self.telemetry.aclose()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _runtimes(config: RouterConfig) -> dict[str, SkillRuntime]:
    adm, bat = config.admission, config.batching
    b = adm.breaker
    breaker = BreakerConfig(consecutive_failures=b.failure_threshold, window=b.window,
                            min_calls=min(b.min_calls, b.window), failure_rate=b.failure_rate,
                            cooldown_s=b.cooldown_s, half_open_probes=b.half_open_probes)
    if not adm.enabled:  # admission off: no limits, queues or breakers (the breakers count, never trip)
        breaker = BreakerConfig(consecutive_failures=0, failure_rate=2.0)
    unlimited = 1_000_000  # admission off (BRAIN_LOAD_BALANCING_ENABLED=false): count, never queue

    def limits(s: SkillSpec) -> tuple[int, int, float]:
        if not adm.enabled:
            return unlimited, 0, config.skill_options(s.name).queue_timeout_s
        return s.concurrency_limit, s.queue_depth, config.skill_options(s.name).queue_timeout_s

    def batching(s: SkillSpec) -> BatchingOptions:
        o = config.skill_options(s.name)
        return BatchingOptions(enabled=o.batching_enabled and o.batch_window_ms > 0 and o.max_batch_size > 1,
                               window_s=o.batch_window_ms / 1000.0, max_batch_size=o.max_batch_size,
                               key=BatchKeyMode.parse(bat.key), priority_bypass=bat.priority_bypass)

    def limit_algorithm(s: SkillSpec, limit: int):  # type: ignore[no-untyped-def]
        a = adm.adaptive_limit
        if not (adm.enabled and a.enabled):
            return None
        if a.algorithm == "gradient2":
            return Gradient2Limit(limit, min_limit=a.min_limit, max_limit=a.max_limit)
        return AIMDLimit(limit, min_limit=a.min_limit, max_limit=a.max_limit, backoff_ratio=a.backoff_ratio)

    return build_skill_runtimes(
        config.skills, limits=limits, breaker=breaker, batching=batching,
        can_batch=lambda s, impl: config.implementation_options(s.name, impl).can_batch,
        budget_ratio=adm.retry.budget_ratio, limit_algorithm=limit_algorithm)


def _admission(config: RouterConfig) -> AdmissionOptions:
    r = config.admission.retry
    policy = RetryPolicy(max_attempts=r.max_attempts, base_delay_s=r.base_backoff_ms / 1000.0,
                         max_delay_s=max(r.max_backoff_ms, r.base_backoff_ms) / 1000.0, jitter=r.jitter)
    return AdmissionOptions(load_bias=config.admission.load_bias, retry=policy)


def _store_settings(config: RouterConfig) -> StoreSettings | None:
    st = config.storage
    if not (st.sqlite_path or st.postgres_dsn):
        return None  # no metrics store: Stats has no window
    return StoreSettings(sqlite_path=st.sqlite_path, postgres_dsn=st.postgres_dsn,
                         retention_days=st.retention_days, batch_size=st.batch_size,
                         flush_interval_s=st.flush_interval_s, buffer_size=st.buffer_size)


def build_understanding(config: RouterConfig) -> TextUnderstanding | None:
    """Query understanding as configured (None: the text is not read)."""
    u = config.understanding
    encoder: LocalEncoder | EmbeddingsEncoder | None = None
    if u.encoder == "local":
        encoder = LocalEncoder()
    elif u.encoder == "embeddings":
        e = u.embeddings
        assert e is not None  # the schema requires it
        client = EmbeddingsClient(ImplementationSpec(
            name="embeddings", backend="openai", url=e.url, model=e.model, quality=1.0, cost_per_query=0.0,
            expected_latency_ms=e.timeout_s * 100, optimal_complexity=5.0, api_key_env=e.api_key_env,
            timeout_s=e.timeout_s, max_connections=e.max_connections))
        cache = None if e.cache_dir is None else Path(config.base_dir) / Path(e.cache_dir).expanduser()
        encoder = EmbeddingsEncoder(client, cache_dir=cache, timeout_s=e.timeout_s, batch_size=e.batch_size)
    if encoder is None and not u.estimate_complexity:
        return None
    threshold = DEFAULT_OUT_OF_SCOPE_THRESHOLD if u.out_of_scope_threshold is None else u.out_of_scope_threshold
    return TextUnderstanding(encoder, config.skill_examples, config.domain_examples, threshold=threshold,
                             fallback_skill=config.routing.fallback_skill or "", complexity=u.estimate_complexity)


def build_app(config: RouterConfig, listen: str | None = None, *, env: Mapping[str, str] | None = None) -> App:
    """Wire the sidecar from ``config``; ``env`` (default os.environ) holds the
    ``OTEL_*`` telemetry settings."""
    app_ref: list[App] = []
    telemetry = setup_telemetry(
        TelemetrySettings(service_name=config.telemetry.service_name,
                          record_query_text=config.telemetry.record_query_text),
        os.environ if env is None else env, live_stats=lambda: app_ref[0].live_stats())
    pool = BackendPool.from_skills(
        config.skills, batch=lambda s, i: config.implementation_options(s.name, i.name).can_batch)
    registry = LiveRegistry([s.name for s in config.skills], success_window=config.routing.success_window,
                            default_success_rate=config.policy.default_success_rate)
    runtimes = _runtimes(config)
    understanding = build_understanding(config)
    pipeline = Pipeline(config.skills, config.policy, pool, registry, runtimes, admission=_admission(config),
                        observer=telemetry.observer, default_deadline_s=config.server.default_deadline_s,
                        understanding=understanding)
    servicer = RouterServicer(pipeline, lambda: app_ref[0].snapshot(), lambda w: app_ref[0].window(w))
    server = RouterServer(servicer, listen or config.server.listen, interceptors=[telemetry.server_interceptor()],
                          max_concurrent_rpcs=config.server.max_concurrent_rpcs)
    app = App(config, pool, registry, runtimes, pipeline, server, telemetry, understanding=understanding)
    app_ref.append(app)
    return app


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
