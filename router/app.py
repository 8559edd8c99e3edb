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
import re
import signal
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from router.backends import BackendPool
from router.config import RouterConfig
from router.core.batching import BatchKeyMode
from router.core.breaker import BreakerConfig
from router.core.errors import StartupError
from router.core.limits import AIMDLimit, Gradient2Limit
from router.core.redact import Redactor
from router.core.retry import RetryPolicy
from router.core.types import SkillSpec
from router.runtime.pipeline import Pipeline
from router.runtime.registry import LiveRegistry
from router.runtime.skills import AdmissionOptions, BatchingOptions, SkillRuntime, build_skill_runtimes
from router.runtime.stats import Snapshot, skill_snapshots
from router.service.server import RouterServer, TlsFiles
from router.service.servicer import RouterServicer
from router.storage import MetricsStore, StoreSettings, open_store, query_hasher
from router.telemetry import Telemetry, TelemetrySettings, setup_telemetry

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
        for s in self.config.skills:  # per-skill health: SERVING when one implementation warmed
            warmed = any((s.name, i.name) not in self.warm_failures for i in s.implementations)
            await self.server.set_skill_serving(s.name, warmed)
        await self.server.set_serving(True)
        log.info("skill-router serving on %s (%d skills, moe %s)", self.address, len(self.config.skills),
                 "on" if self.pipeline.policy.moe_enabled else "off")

    async def stop(self, grace_s: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.server.grace_period_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        await self.server.set_serving(False)
        self.pipeline.start_draining()
        await self.server.stop(grace)
        await self.pipeline.aclose()
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
    for url_password, kv_password in re.findall(r"(?<=://)[^/@:]*:([^/@]+)@|password\s*=\s*(\S+)", dsn):
        values.append(urllib.parse.unquote(url_password or kv_password))
    for var in _OTLP_HEADER_VARS:
        values += [urllib.parse.unquote(kv.partition("=")[2].strip()) for kv in env.get(var, "").split(",")]
    return Redactor([*values, *([token] if token else [])])


def _tls(config: RouterConfig) -> TlsFiles | None:
    t = config.server.tls
    return None if t is None else TlsFiles(t.cert_file, t.key_file, t.client_ca_file)


def build_app(config: RouterConfig, listen: str | None = None, *, env: Mapping[str, str] | None = None) -> App:
    """Wire the sidecar from ``config``; ``env`` (default os.environ) holds the
    ``OTEL_*`` telemetry settings."""
    app_ref: list[App] = []
    environ = os.environ if env is None else env
    token = _server_token(config, environ)
    redact = _redactor(config, environ, token)
    telemetry = setup_telemetry(
        TelemetrySettings(service_name=config.telemetry.service_name,
                          record_query_text=config.telemetry.record_query_text,
                          baggage_allowlist=tuple(config.telemetry.baggage_allowlist)),
        environ, live_stats=lambda: app_ref[0].live_stats(), redact=redact)
    pool = BackendPool.from_skills(
        config.skills, batch=lambda s, i: config.implementation_options(s.name, i.name).can_batch,
        max_response_bytes=lambda s, i: config.implementation_options(s.name, i.name).max_response_bytes,
        redact=redact)
    registry = LiveRegistry([s.name for s in config.skills], success_window=config.routing.success_window,
                            default_success_rate=config.policy.default_success_rate)
    runtimes = _runtimes(config)
    pipeline = Pipeline(config.skills, config.policy, pool, registry, runtimes, admission=_admission(config),
                        observer=telemetry.observer, default_deadline_s=config.server.default_deadline_s,
                        hash_query=query_hasher(config.storage.sqlite_path, config.storage.postgres_dsn, environ))
    servicer = RouterServicer(pipeline, lambda: app_ref[0].snapshot(), lambda w: app_ref[0].window(w),
                              redact=redact)
    server = RouterServer(servicer, listen or config.server.listen, interceptors=[telemetry.server_interceptor()],
                          max_concurrent_rpcs=config.server.max_concurrent_rpcs, redact=redact,
                          tls=_tls(config), token=token, reflection_enabled=config.server.reflection,
                          grpc_options=config.server.grpc_options, skills=[s.name for s in config.skills],
                          health_listen=config.server.health_listen)
    telemetry.set_refused(server.refused_counts)
    app = App(config, pool, registry, runtimes, pipeline, server, telemetry)
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
