"""The composition root: the only module that wires the parts together.

    config → typed settings per skill → gates → telemetry (observer, live gauges)
           → backend pool (warm) → live registry → skill runtimes (doors, callers)
           → pipeline → App (the application the servicer serves) → server

A config generation (``Generation``) is what one config file built: its
runtimes, backends and pipeline, never re-wired. A reload (SIGHUP,
``skill-router reload``, ``POST /api/reload``) validates the file, builds the
next generation reusing the runtime of every unchanged skill and the backend
of every unchanged implementation (their gates, breakers and warm pools carry
over), warms the new backends, then swaps the one reference the servicer reads
per request. Queries in flight finish on the generation they started with;
what only the old one used is closed once they have.

Start-up order: listen with health NOT_SERVING, open the metrics store,
warm every backend's pool, then SERVING. Shutdown order: NOT_SERVING, stop
taking calls and give in-flight ones the grace period, flush the batchers,
close the pools, flush the store and the telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import random
import re
import signal
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from router.admin import AdminError, AdminServer
from router.backends import BackendPool, EmbeddingsClient, build_backend
from router.config import RouterConfig
from router.core.batching import BatchKeyMode
from router.core.breaker import BreakerConfig, Transition
from router.core.errors import BackendError, ConfigError, StartupError
from router.core.implementations import Learned
from router.core.limits import AIMDLimit, Gradient2Limit, LimitAlgorithm
from router.core.quality import QualitySettings
from router.core.ratelimit import RateLimit, split_share
from router.core.redact import Redactor
from router.core.retry import RetryPolicy
from router.core.routing import SkillIndex
from router.core.signals import DEFAULT_OUT_OF_SCOPE_THRESHOLD
from router.core.types import ImplementationSpec, Query, SkillSpec
from router.runtime.cache import CacheOptions, CacheStore, MemoryCache
from router.runtime.calls import BatchingOptions
from router.runtime.experiments import ArmSpec, ExperimentRunner, Experiments, ExperimentSpec, KSchedule
from router.runtime.feedback import AnswerMemory, FeedbackDesk, FeedbackReceipt, FeedbackRecord, QualityRegistry
from router.runtime.observer import QueryRecord
from router.runtime.pipeline import ExecuteOutcome, Pipeline
from router.runtime.ports import Backend, Understanding
from router.runtime.registry import LiveRegistry
from router.runtime.shared import Ask, LocalState, SharedState, StateStatus, StateSync
from router.runtime.skills import SkillRuntime, SkillSettings, build_gate
from router.runtime.stats import Snapshot, skill_snapshots
from router.service.server import RouterServer, TlsFiles
from router.service.servicer import RouterServicer
from router.state import RedisCache, RedisState, RedisStateSettings
from router.storage import MetricsStore, StoreSettings, WindowAggregate, make_store, query_hasher
from router.telemetry import Telemetry, setup_telemetry
from router.understanding import EmbeddingsEncoder, LocalEncoder, TextUnderstanding

log = logging.getLogger("router")
_T = TypeVar("_T")

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


Key = tuple[str, str]  # (skill, implementation)


@dataclass(frozen=True, slots=True, eq=False)
class Generation:
    """What one config built; swapped whole by a reload."""

    number: int
    config: RouterConfig
    runtimes: Mapping[str, SkillRuntime]
    backends: Mapping[Key, Backend]
    pipeline: Pipeline
    loaded_at: float = field(default_factory=time.time)  # unix seconds: when it started serving


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: ``ok`` False means the file was bad and
    ``generation`` (the old one) keeps serving; ``error`` names the key path."""

    ok: bool
    generation: int
    source: str
    error: str = ""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    warmed: tuple[str, ...] = ()  # "skill/implementation": new backends, warmed before the swap
    reused: tuple[str, ...] = ()  # backends kept with their warm pools
    warm_failures: Mapping[str, str] = field(default_factory=dict)
    needs_restart: tuple[str, ...] = ()  # changed keys that take effect only on a restart

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "generation": self.generation, "source": self.source, "error": self.error,
                "added": list(self.added), "removed": list(self.removed), "changed": list(self.changed),
                "unchanged": list(self.unchanged), "warmed": list(self.warmed), "reused": list(self.reused),
                "warm_failures": dict(self.warm_failures), "needs_restart": list(self.needs_restart)}


# Keys a reload cannot change (the listening sockets, the store, telemetry,
# the live registry's window): a change is logged and waits for a restart.
RESTART_KEYS: tuple[tuple[str, str], ...] = (
    ("server", "listen"), ("server", "admin_listen"), ("server", "max_concurrent_rpcs"),
    ("storage", ""), ("telemetry", ""), ("routing", "success_window"))


def _needs_restart(old: RouterConfig, new: RouterConfig) -> tuple[str, ...]:
    out = []
    for section, key in RESTART_KEYS:
        a, b = getattr(old, section), getattr(new, section)
        if key:
            a, b = getattr(a, key), getattr(b, key)
        if a != b:
            out.append(f"{section}.{key}" if key else section)
    return tuple(out)


def _same_settings(a: SkillSettings, b: SkillSettings, old: RouterConfig, new: RouterConfig) -> bool:
    """Whether a skill's runtime can be kept as is (its adaptive limit is a
    factory, compared through the config section it is made from)."""
    def adaptive(c: RouterConfig) -> object:
        return c.admission.adaptive_limit if c.admission.enabled and c.admission.adaptive_limit.enabled else None
    return (dataclasses.replace(a, limit_algorithm=None) == dataclasses.replace(b, limit_algorithm=None)
            and adaptive(old) == adaptive(new))


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
    ``execute``, ``feedback``, ``snapshot``, ``window``), its lifecycle
    (``start``, ``stop``) and its config generations (``reload``)."""

    def __init__(self, config: RouterConfig, pool: BackendPool, registry: LiveRegistry,
                 runtimes: Mapping[str, SkillRuntime], pipeline: Pipeline, telemetry: Telemetry,
                 store: MetricsStore | None, front: FrontDoor, *,
                 loader: Callable[[], RouterConfig] | None = None,
                 hash_query: Callable[[str], str] | None = None, shared: SharedState | None = None,
                 worker: Worker = Worker(), state_sync: StateSync | None = None,
                 cache: CacheStore | None = None, learning: Learning | None = None) -> None:
        self._generation = Generation(1, config, dict(runtimes), dict(pool.items()), pipeline)
        self.front = front
        self._hash_query = hash_query
        self.cache = cache  # the response cache, shared by every generation's runtimes
        self.learning = learning  # feedback, measured quality, experiments: they span generations
        self.pool = pool
        self.registry = registry
        self.telemetry = telemetry
        self.store = store
        self.shared: SharedState = shared or LocalState(worker=worker.index, workers=worker.count)
        self.worker = worker
        self.state_sync = state_sync
        self.started_at = time.monotonic()
        self.warm_failures: dict[tuple[str, str], BackendError] = {}
        self._stopped = False
        # Reads the config file again; default: the same file, the same environment.
        self._loader = loader or (lambda: _reread(config))
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
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
        telemetry.set_live_stats(self.live_stats)
        self.admin: AdminServer | None = None
        if srv.admin_listen and worker.index == 0:  # one admin endpoint per host: worker 0's
            # Behind the same token as the gRPC API when one is set.
            self.admin = AdminServer(srv.admin_listen, snapshot=self.snapshot, window=self.window,
                                     token=lambda: front.token, reload=self.reload_report)

    # ---- the generation serving now (one reference, read once per request) --

    @property
    def generation(self) -> Generation:
        return self._generation

    @property
    def config(self) -> RouterConfig:
        return self._generation.config

    @property
    def runtimes(self) -> Mapping[str, SkillRuntime]:
        return self._generation.runtimes

    @property
    def pipeline(self) -> Pipeline:
        return self._generation.pipeline

    @property
    def understanding(self) -> Understanding | None:
        return self._generation.pipeline.understanding

    @property
    def address(self) -> str:
        return self.server.address

    def live_stats(self) -> list[tuple[str, int, float, int]]:
        """The per-skill gauges (skill, in flight, utilization, queued) of
        the generation serving now, read at each metric export."""
        return [(n, rt.gate.in_flight, rt.gate.utilization, rt.gate.queued) for n, rt in self.runtimes.items()]

    def snapshot(self) -> Snapshot:
        now = time.monotonic()
        g = self._generation
        ln = self.learning
        return Snapshot(skill_snapshots(self.registry, g.runtimes, now, ln.quality if ln is not None else None),
                        self.registry.totals, now - self.started_at, g.pipeline.policy.moe_enabled,
                        config_generation=g.number, config_loaded_at=g.loaded_at, config_source=g.config.source,
                        shared=self.shared.status(),
                        feedback_received=ln.desk.received if ln is not None else 0,
                        avg_feedback_score=ln.desk.avg_score if ln is not None else 0.0,
                        experiments=tuple(ln.experiments.live.values()) if ln is not None else ())

    def state_changed(self, status: StateStatus) -> None:
        """The shared state went down or came back: health says so."""
        task = asyncio.get_running_loop().create_task(
            self.server.set_skill_serving(STATE_HEALTH, status.connected))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def execute(self, query: Query, timeout_s: float | None, *, explain_all: bool = False,
                      **run: object) -> tuple[ExecuteOutcome, str]:
        """Execute on the generation serving now, in the query's experiment
        arm (if any): (outcome, "experiment/arm")."""
        pipeline = self.pipeline
        if self.learning is None:
            return await pipeline.execute(query, timeout_s, explain_all=explain_all, **run), ""  # type: ignore[arg-type]
        return await self.learning.runner.execute(query, timeout_s, explain_all=explain_all, pipeline=pipeline, **run)

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
        async with self._reload_lock:  # a reload asked for during start-up waits for it
            if self.pipeline.understanding is not None:
                await self.pipeline.understanding.start()  # fit on the examples before serving
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
            self._generation = dataclasses.replace(self._generation, loaded_at=time.time())
            await self.server.set_serving(True)
        st = self.shared.status()
        log.info("skill-router serving on %s (%d skills, moe %s, config generation 1 from %s, worker %d of %d, "
                 "limits %s)", self.address, len(self.config.skills),
                 "on" if self.pipeline.policy.moe_enabled else "off", self.config.source,
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
        if self.learning is not None:  # shadows in flight get what is left of the grace
            await self.learning.runner.aclose(max(0.0, min(2.0, deadline - time.monotonic())))
        if self.admin is not None:  # after the drain, so the dashboard and scrapes can watch it
            await self.admin.stop()
        async with self._reload_lock:  # no reload swaps while the rest shuts down
            self._stopping.set()  # retired generations close now: no call is left in flight
            if self._retiring:
                await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.pipeline.aclose()
        if self.state_sync is not None:
            await self.state_sync.aclose()
        await self.shared.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        await self.pool.aclose()
        if self.pipeline.understanding is not None:
            await self.pipeline.understanding.aclose()
        if self.store is not None:
            await self.store.aclose()
        # The exporters flush in what is left of the grace, keeping half a
        # second to exit and at most 5 s (a collector that has not taken the
        # spans by then will not): past it they give up, saying so once.
        await self.telemetry.aclose(max(0.5, min(5.0, deadline - time.monotonic() - 0.5)))

    # ---- reload ----------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Read the config file again and, when it is valid, serve it: the
        next generation reuses the runtime of every unchanged skill and the
        backend of every unchanged implementation, warms the new backends,
        then takes the place of the old one in one assignment. A bad file is
        logged with its key path and the old generation keeps serving."""
        async with self._reload_lock:
            if self._stopped:
                return ReloadResult(False, self._generation.number, self.config.source, "shutting down")
            try:
                return await self._reload()
            except Exception as exc:  # a reload must never take the serving generation down
                log.exception("reload failed; generation %d keeps serving", self._generation.number)
                return ReloadResult(False, self._generation.number, self.config.source,
                                    f"reload failed: {type(exc).__name__}: {exc}")

    async def _reload(self) -> ReloadResult:
        old = self._generation
        try:
            config = await asyncio.to_thread(self._loader)  # file I/O and validation off the event loop
        except ConfigError as exc:
            issues = getattr(exc, "issues", None) or (exc,)
            log.error("reload: the config is not valid (%d problem(s)); generation %d (%s) keeps serving",
                      len(issues), old.number, old.config.source)
            for issue in issues:  # one line each: file:line: key path: what is wrong
                log.error("reload: %s", issue)
            return ReloadResult(False, old.number, old.config.source, str(exc))
        restart = _needs_restart(old.config, config)
        for key in restart:
            log.warning("reload: %s changed; it takes effect on the next restart", key)
        settings = skill_settings(config, self.worker)
        old_settings = {n: rt.settings for n, rt in old.runtimes.items()}
        runtimes: dict[str, SkillRuntime] = {}
        backends: dict[Key, Backend] = {}
        fresh: dict[Key, Backend] = {}
        rebuild: list[str] = []
        for name, st in settings.items():
            prev = old.runtimes.get(name)
            batch = {i.name: config.implementation_options(name, i.name).can_batch for i in st.spec.implementations}
            keys = [(name, i.name) for i in st.spec.implementations]
            if (prev is not None and _same_settings(old_settings[name], st, old.config, config)
                    and all(k in old.backends and old.backends[k].supports_batch == batch[k[1]] for k in keys)):
                runtimes[name] = prev  # gate, breakers, callers and backends carry over
                backends.update((k, old.backends[k]) for k in keys)
                continue
            rebuild.append(name)
            for impl in st.spec.implementations:
                key = (name, impl.name)
                was = old.backends.get(key)
                if was is not None and was.implementation == impl and was.supports_batch == batch[impl.name]:
                    backends[key] = was  # its warm pool carries over
                else:
                    try:
                        fresh[key] = backends[key] = build_backend(
                            impl, batch=batch[impl.name],
                            max_response_bytes=config.implementation_options(name, impl.name).max_response_bytes,
                            redact=self.front.redact, transports=self.pool.transports)
                    except ConfigError as exc:
                        await BackendPool(fresh).aclose()
                        log.error("reload: generation %d keeps serving: %s", old.number, exc)
                        return ReloadResult(False, old.number, old.config.source, str(exc))
        try:
            # New backends are warm before they take traffic (one that cannot be
            # reached is logged, as at start-up: its calls fail until it comes up).
            failures = await BackendPool(fresh).warm_all(strict=False)
            lookup = BackendPool(backends, transports=self.pool.transports)
            for name in rebuild:
                runtimes[name] = _runtime(settings[name], lookup, self.telemetry, self.registry,
                                          lambda: self._generation.runtimes, self.shared, self.state_sync,
                                          self.cache)
            # Query understanding is fitted on the new file's examples before the swap.
            understanding = build_understanding(config)
            if understanding is not None:
                await understanding.start()
            pipeline = Pipeline(SkillIndex(config.skills), config.policy, runtimes, self.registry,
                                observer=old.pipeline.observer, sink=old.pipeline.sink,
                                load_bias=config.admission.load_bias,
                                default_deadline_s=config.server.default_deadline_s, hash_query=self._hash_query,
                                understanding=understanding, learned=old.pipeline.learned)
        except BaseException:
            await asyncio.shield(BackendPool(fresh).aclose())  # nothing of the failed generation stays open
            raise
        new = Generation(old.number + 1, config, runtimes, backends, pipeline)
        # The swap: no await from here to the assignment.
        self.registry.set_skills(list(settings), fresh=rebuild)
        self._generation, self.pool = new, lookup
        if self.state_sync is not None:  # the breakers other processes' trips reach
            self.state_sync.breakers = {(n, i): b for n, rt in runtimes.items() for i, b in rt.breakers.items()}
        self.warm_failures = {k: e for k, e in {**self.warm_failures, **failures}.items() if k in backends}
        retired_runtimes = [rt for n, rt in old.runtimes.items() if runtimes.get(n) is not rt]
        retired_backends = {k: b for k, b in old.backends.items() if backends.get(k) is not b}
        result = ReloadResult(
            True, new.number, config.source,
            added=tuple(n for n in settings if n not in old.runtimes),
            removed=tuple(n for n in old.runtimes if n not in settings),
            changed=tuple(n for n in rebuild if n in old.runtimes),
            unchanged=tuple(n for n in settings if n not in rebuild),
            warmed=tuple(f"{s}/{i}" for s, i in fresh), reused=tuple(f"{s}/{i}" for s, i in backends if (s, i) not in fresh),
            warm_failures={f"{s}/{i}": str(e) for (s, i), e in failures.items()}, needs_restart=restart)
        log.info("config generation %d serving (%s): %d skills | added %s | removed %s | changed %s | "
                 "%d backend(s) warmed, %d kept warm", new.number, config.source, len(settings),
                 list(result.added), list(result.removed), list(result.changed), len(fresh), len(result.reused))
        task = asyncio.create_task(self._retire(old, retired_runtimes, retired_backends),
                                   name=f"retire-generation-{old.number}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return result

    async def _retire(self, old: Generation, runtimes: list[SkillRuntime], backends: Mapping[Key, Backend]) -> None:
        """Let the queries still running on ``old`` finish (at most their
        deadline and the grace period), then close what only it used."""
        server = old.config.server
        loop = asyncio.get_running_loop()
        until = loop.time() + server.default_deadline_s + server.grace_period_s
        while old.pipeline.in_flight and not self._stopping.is_set() and loop.time() < until:
            try:
                await asyncio.wait_for(self._stopping.wait(), 0.05)
            except TimeoutError:
                pass
        if old.pipeline.in_flight:
            log.warning("config generation %d: closing with %d queries still in flight", old.number,
                        old.pipeline.in_flight)
        for rt in runtimes:
            await rt.aclose()
        await BackendPool(backends).aclose()
        if old.pipeline.understanding is not None:
            await old.pipeline.understanding.aclose()
        log.info("config generation %d retired: %d skill runtime(s) and %d backend(s) closed", old.number,
                 len(runtimes), len(backends))

    @property
    def retiring(self) -> int:
        """Retired generations still waiting for their queries to finish."""
        return len(self._retiring)

    async def reload_report(self) -> dict[str, object]:
        """``reload`` as JSON-ready data (the admin endpoint's answer)."""
        return (await self.reload()).to_dict()

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
            batchable=frozenset(impl.name for impl in s.implementations
                                if config.implementation_options(s.name, impl.name).can_batch),
            limit_algorithm=limit_algorithm(limit),
            asks=asks(s, s.concurrency_limit if adm.enabled else None, share),
            cache=CacheOptions(enabled=o.cache_enabled, ttl_s=o.cache_ttl_s))

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


def _reread(config: RouterConfig) -> RouterConfig:
    """The same file again, with the environment as it is now."""
    from router.config import load_config
    return load_config(config.source)


def _runtime(settings: SkillSettings, backends: BackendPool, telemetry: Telemetry, registry: LiveRegistry,
             current: Callable[[], Mapping[str, SkillRuntime]], shared: SharedState | None = None,
             sync: StateSync | None = None, cache: CacheStore | None = None) -> SkillRuntime:
    """One skill's runtime; its breakers tell the live registry of their moves
    while it is the skill's runtime in the generation serving (``current``),
    so a retired runtime never marks the new one impaired."""
    mine: list[SkillRuntime] = []

    def moved(skill: str, implementation: str, transition: Transition) -> None:
        if mine and current().get(skill) is mine[0]:
            registry.breaker_moved(skill, implementation, transition)
            if sync is not None:
                sync.listener(skill, implementation, transition)
        else:
            log.info("breaker %s (retired config generation): %s → %s", transition.breaker,
                     transition.from_state, transition.to_state)

    rt = SkillRuntime(settings, build_gate(settings), backends, observer=telemetry.observer, on_transition=moved,
                      shared=shared, cache=cache)
    mine.append(rt)
    return rt


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


def build_shared_state(config: RouterConfig, worker: Worker) -> SharedState:
    st = config.state
    if st.redis_url is None:
        return LocalState(worker=worker.index, workers=worker.count)
    return RedisState(RedisStateSettings(url=st.redis_url, key_prefix=st.key_prefix, timeout_s=st.timeout_ms / 1000.0,
                                         worker=worker.index, workers=worker.count))


def build_app(config: RouterConfig, listen: str | None = None, *, env: Mapping[str, str] | None = None,
              loader: Callable[[], RouterConfig] | None = None, worker: Worker = Worker()) -> App:
    """Wire the sidecar from ``config``; ``env`` (default os.environ) holds the
    ``OTEL_*`` telemetry settings; ``loader`` reads the config again on a
    reload (default: ``config.source`` with the environment as it is then);
    ``worker``: which of ``server.workers`` processes this is."""
    settings = skill_settings(config, worker)
    shared = build_shared_state(config, worker)
    environ = os.environ if env is None else env
    token = _server_token(config, environ)
    redact = _redactor(config, environ, token)
    app: App | None = None
    telemetry = setup_telemetry(config.telemetry, environ, redact=redact)  # App registers its live gauges
    pool = BackendPool.from_skills(
        config.skills, batch=lambda s, i: config.implementation_options(s.name, i.name).can_batch,
        max_response_bytes=lambda s, i: config.implementation_options(s.name, i.name).max_response_bytes,
        redact=redact)
    registry = LiveRegistry([s.name for s in config.skills], success_window=config.routing.success_window,
                            default_success_rate=config.policy.default_success_rate)
    # One response cache for every skill that opts in: in Redis when
    # state.redis_url is set (shared by every replica and worker), else an
    # in-process LRU.
    cache: CacheStore | None = None
    if any(s.cache.enabled for s in settings.values()):
        st_ = config.state
        cache = (RedisCache(st_.redis_url, key_prefix=st_.key_prefix, timeout_s=st_.timeout_ms / 1000.0)
                 if st_.redis_url else MemoryCache(config.cache.max_entries))
    # Breakers that open here are published, those other processes open trip here; success
    # windows are exchanged (Redis only).
    sync = StateSync(shared, registry=registry) if isinstance(shared, RedisState) else None
    runtimes: dict[str, SkillRuntime] = {}
    current: Callable[[], Mapping[str, SkillRuntime]] = lambda: app.runtimes if app is not None else runtimes  # noqa: E731
    for name, s in settings.items():
        runtimes[name] = _runtime(s, pool, telemetry, registry, current, shared, sync, cache)
    if sync is not None:
        sync.breakers = {(name, impl): b for name, rt in runtimes.items() for impl, b in rt.breakers.items()}
    st = store_settings(config)
    store = make_store(st) if st is not None else None
    hash_query = query_hasher(config.storage.sqlite_path, config.storage.postgres_dsn, environ)
    fb = config.feedback
    rng = random.Random(fb.seed)
    quality = QualityRegistry(config.skills, QualitySettings(fb.prior_strength, fb.half_life_s,
                                                             tuple(fb.complexity_bands)), max_cells=fb.max_cells)
    memory = AnswerMemory(fb.memory_ttl_s, fb.memory_max_entries)
    experiments = Experiments(experiment_specs(config), config.policy, rng)
    sink = RecordFanout(memory, experiments, store)
    learned = Learned(quality, rng, config.policy.cost_weight, config.policy.exploration)
    pipeline = Pipeline(SkillIndex(config.skills), config.policy, runtimes, registry, observer=telemetry.observer,
                        sink=sink, load_bias=config.admission.load_bias,
                        default_deadline_s=config.server.default_deadline_s, hash_query=hash_query,
                        understanding=build_understanding(config), learned=learned)

    def to_store(rows: list[FeedbackRecord], q: float) -> None:
        if store is not None:
            store.submit_feedback(rows, q)

    desk = FeedbackDesk(memory, quality, registry, sink=to_store, on_rated=lambda a, q: experiments.rated(a.arm, q))
    learning = Learning(quality, memory, desk, experiments, ExperimentRunner(pipeline, experiments))
    front = FrontDoor(listen or config.server.listen, redact=redact, tls=_tls(config), token=token)
    app = App(config, pool, registry, runtimes, pipeline, telemetry, store, front, loader=loader,
              hash_query=hash_query, shared=shared, worker=worker, state_sync=sync, cache=cache, learning=learning)
    if isinstance(shared, RedisState):
        shared.on_change = app.state_changed
    return app


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


def loop_factory(env: Mapping[str, str] | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, unless ``SKILL_ROUTER_UVLOOP``
    (in ``env``, default os.environ) is 0/false/no/off; None: asyncio's own."""
    value = (os.environ if env is None else env).get("SKILL_ROUTER_UVLOOP", "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[object, object, _T], *, env: Mapping[str, str] | None = None) -> _T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` picks."""
    with asyncio.Runner(loop_factory=loop_factory(env)) as runner:
        return runner.run(main)


def loop_name() -> str:
    loop = asyncio.get_running_loop()
    module = type(loop).__module__.split(".", 1)[0]
    return "uvloop" if module == "uvloop" else "asyncio"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Start-up allocates millions of long-lived objects (10,000 skills) and
    next to no garbage: the cyclic GC is paused meanwhile (its full passes
    over the growing heap were about 45% of start-up at 5,000 skills), and
    what was built is frozen (``gc.freeze``) so later collections, on the
    request path, never scan it again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


async def serve(config: RouterConfig, listen: str | None = None, worker: Worker = Worker(),
                ready: Callable[[], None] | None = None, *,
                loader: Callable[[], RouterConfig] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully; SIGHUP reloads
    the config (``loader``, default: the same file again). ``ready`` is
    called once SERVING (the supervisor of several workers waits for it)."""
    log.info("event loop: %s", loop_name())
    with gc_paused():
        app = build_app(config, listen, loader=loader, worker=worker)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[ReloadResult]] = set()

        def hangup() -> None:
            log.info("SIGHUP: reloading %s", app.config.source)
            task = loop.create_task(app.reload(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, hangup)  # before start: a reload asked for then waits for it
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
        log.info("shutting down: draining in-flight calls for up to %.1fs", app.config.server.grace_period_s)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        if watcher is not None:
            watcher.cancel()
        await app.stop()
