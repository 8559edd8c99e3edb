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
import random
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
from router.core.breaker import BreakerConfig
from router.core.errors import BackendError, StartupError
from router.core.implementations import Learned
from router.core.limits import AIMDLimit, Gradient2Limit, LimitAlgorithm
from router.core.quality import QualitySettings
from router.core.redact import Redactor
from router.core.retry import RetryPolicy
from router.core.routing import SkillIndex
from router.core.types import Query, SkillSpec
from router.runtime.calls import BatchingOptions
from router.runtime.experiments import ArmSpec, ExperimentRunner, Experiments, ExperimentSpec, KSchedule
from router.runtime.feedback import AnswerMemory, FeedbackDesk, FeedbackReceipt, FeedbackRecord, QualityRegistry
from router.runtime.observer import QueryRecord
from router.runtime.pipeline import ExecuteOutcome, Pipeline
from router.runtime.registry import LiveRegistry
from router.runtime.skills import SkillRuntime, SkillSettings, build_gate
from router.runtime.stats import Snapshot, skill_snapshots
from router.service.server import RouterServer, TlsFiles
from router.service.servicer import RouterServicer
from router.storage import MetricsStore, StoreSettings, WindowAggregate, make_store, query_hasher
from router.telemetry import Telemetry, TelemetrySettings, setup_telemetry

log = logging.getLogger("router")

# Admission off (BRAIN_LOAD_BALANCING_ENABLED=false): count, never queue.
UNLIMITED = 1_000_000


@dataclass(frozen=True, slots=True)
class FrontDoor:
    """How the sidecar meets its callers: where it listens, TLS, the token,
    and the redactor every message to a caller passes through."""

    listen: str
    redact: Redactor
    tls: TlsFiles | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Learning:
    """Feedback, measured quality and experiments (docs/feedback.md)."""

    quality: QualityRegistry
    memory: AnswerMemory
    desk: FeedbackDesk
    experiments: Experiments
    runner: ExperimentRunner


class RecordFanout:
    """The pipeline's record sink: remembers who answered (for Feedback),
    counts experiment arms, and hands the row to the metrics store."""

    def __init__(self, memory: AnswerMemory, experiments: Experiments, store: MetricsStore | None) -> None:
        self._memory = memory
        self._experiments = experiments
        self._store = store

    def submit(self, record: QueryRecord) -> None:
        if not record.shadow:
            self._memory.remember_record(record)
        self._experiments.record(record)
        if self._store is not None:
            self._store.submit(record)


class App:
    """The running sidecar: what the servicer serves (``pipeline``,
    ``execute``, ``feedback``, ``snapshot``, ``window``) and its lifecycle
    (``start``, ``stop``)."""

    def __init__(self, config: RouterConfig, pool: BackendPool, registry: LiveRegistry,
                 runtimes: Mapping[str, SkillRuntime], pipeline: Pipeline, telemetry: Telemetry,
                 store: MetricsStore | None, front: FrontDoor, learning: Learning | None = None) -> None:
        self.config = config
        self.learning = learning
        self.pool = pool
        self.registry = registry
        self.runtimes = runtimes
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.store = store
        self.started_at = time.monotonic()
        self.warm_failures: dict[tuple[str, str], BackendError] = {}
        self._stopped = False
        srv = config.server
        self.server = RouterServer(RouterServicer(self, redact=front.redact), front.listen,
                                   interceptors=[telemetry.server_interceptor()],
                                   max_concurrent_rpcs=srv.max_concurrent_rpcs, redact=front.redact, tls=front.tls,
                                   token=front.token, reflection_enabled=srv.reflection,
                                   grpc_options=srv.grpc_options, skills=[s.name for s in config.skills],
                                   health_listen=srv.health_listen)
        telemetry.set_refused(self.server.refused_counts)
        self.admin: AdminServer | None = None
        if srv.admin_listen:
            # Behind the same token as the gRPC API when one is set.
            self.admin = AdminServer(srv.admin_listen, snapshot=self.snapshot, window=self.window,
                                     token=lambda: front.token)

    @property
    def address(self) -> str:
        return self.server.address

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        ln = self.learning
        if ln is None:
            return Snapshot(skill_snapshots(self.registry, self.runtimes, now), self.registry.totals,
                            now - self.started_at, self.pipeline.policy.moe_enabled)
        return Snapshot(skill_snapshots(self.registry, self.runtimes, now, ln.quality), self.registry.totals,
                        now - self.started_at, self.pipeline.policy.moe_enabled, ln.desk.received,
                        ln.desk.avg_score, tuple(ln.experiments.live.values()))

    async def execute(self, query: Query, timeout_s: float | None, *,
                      explain_all: bool = False) -> tuple[ExecuteOutcome, str]:
        """Execute in the query's experiment arm (if any): (outcome, "experiment/arm")."""
        if self.learning is None:
            return await self.pipeline.execute(query, timeout_s, explain_all=explain_all), ""
        return await self.learning.runner.execute(query, timeout_s, explain_all=explain_all)

    def feedback(self, query_id: str, score: float | None, skill_scores: Mapping[str, float]) -> FeedbackReceipt:
        if self.learning is None:
            raise StartupError("feedback", "feedback is not wired in this App")
        return self.learning.desk.submit(query_id, score, skill_scores)

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
        for s in self.config.skills:  # per-skill health: SERVING when one implementation warmed
            warmed = any((s.name, i.name) not in self.warm_failures for i in s.implementations)
            await self.server.set_skill_serving(s.name, warmed)
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
        deadline = time.monotonic() + grace
        await self.server.set_serving(False)
        self.pipeline.start_draining()
        await self.server.stop(grace)
        if self.learning is not None:  # shadows in flight get what is left of the grace
            await self.learning.runner.aclose(max(0.0, min(2.0, deadline - time.monotonic())))
        if self.admin is not None:  # after the drain, so the dashboard and scrapes can watch it
            await self.admin.stop()
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
            limit_algorithm=limit_algorithm(limit))

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
    settings = skill_settings(config)
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
    runtimes = {name: SkillRuntime(s, gates[name], pool, observer=telemetry.observer,
                                   on_transition=registry.breaker_moved)
                for name, s in settings.items()}
    st = store_settings(config)
    store = make_store(st) if st is not None else None
    fb = config.feedback
    rng = random.Random(fb.seed)
    quality = QualityRegistry(config.skills, QualitySettings(fb.prior_strength, fb.half_life_s,
                                                             tuple(fb.complexity_bands)), max_cells=fb.max_cells)
    memory = AnswerMemory(fb.memory_ttl_s, fb.memory_max_entries)
    experiments = Experiments(experiment_specs(config), config.policy, rng)
    pipeline = Pipeline(SkillIndex(config.skills), config.policy, runtimes, registry, observer=telemetry.observer,
                        sink=RecordFanout(memory, experiments, store), load_bias=config.admission.load_bias,
                        default_deadline_s=config.server.default_deadline_s,
                        hash_query=query_hasher(config.storage.sqlite_path, config.storage.postgres_dsn, environ),
                        learned=Learned(quality, rng, config.policy.cost_weight, config.policy.exploration))

    def to_store(rows: list[FeedbackRecord], q: float) -> None:
        if store is not None:
            store.submit_feedback(rows, q)

    desk = FeedbackDesk(memory, quality, registry, sink=to_store, on_rated=lambda a, q: experiments.rated(a.arm, q))
    learning = Learning(quality, memory, desk, experiments, ExperimentRunner(pipeline, experiments))
    front = FrontDoor(listen or config.server.listen, redact=redact, tls=_tls(config), token=token)
    return App(config, pool, registry, runtimes, pipeline, telemetry, store, front, learning)


def experiment_specs(config: RouterConfig) -> list[ExperimentSpec]:
    """The enabled experiments of the config, as the runtime's specs."""
    out = []
    for name, e in config.experiments.items():
        if not e.enabled:
            continue
        arms = tuple(ArmSpec(arm, a.top_k, a.all_skills, a.implementation_policy,
                             None if a.k_schedule is None else KSchedule(
                                 a.k_schedule.start_k, a.k_schedule.end_k, a.k_schedule.margin,
                                 a.k_schedule.min_ratings, a.k_schedule.probe_share))
                     for arm, a in e.arms.items())
        out.append(ExperimentSpec(name, e.control, arms, e.share, e.key, e.shadow.share, e.shadow.max_concurrent))
    return out


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
