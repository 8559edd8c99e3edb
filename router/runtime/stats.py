"""A snapshot of the sidecar's live state, read by the Stats RPC and the
telemetry gauges. Plain data; the service layer turns it into protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.core.breaker import BreakerState
from router.core.types import Priority

from .experiments import ArmLive
from .feedback import QualityRegistry
from .registry import LiveRegistry, Totals
from .shared import StateStatus
from .skills import SkillRuntime


@dataclass(frozen=True, slots=True)
class ImplementationSnapshot:
    name: str
    breaker_state: BreakerState
    half_open_in_s: float | None  # seconds from now until an open breaker half-opens
    consecutive_failures: int
    failure_rate: float
    times_opened: int
    declared_quality: float = 0.0
    measured_quality: float = 0.0  # the posterior mean (= declared without ratings)
    ratings: int = 0
    measured_low: float = 0.0  # 95 % credible interval
    measured_high: float = 0.0


@dataclass(frozen=True, slots=True)
class SkillSnapshot:
    skill: str
    in_flight: int
    concurrency_limit: int
    queued: int  # waiting now (the bound is ``queue_capacity``)
    calls: int
    failures: int
    success_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    rejected: int = 0
    shed: int = 0
    timed_out: int = 0
    queue_by_priority: Mapping[str, int] = None  # type: ignore[assignment]
    queue_capacity: int = 0
    mean_queue_wait_ms: float = 0.0
    implementations: tuple[ImplementationSnapshot, ...] = ()
    batches: int = 0
    mean_batch_size: float = 0.0
    mean_batch_wait_ms: float = 0.0
    coalesced_calls: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_saved: float = 0.0

    @property
    def utilization(self) -> float:
        return self.in_flight / self.concurrency_limit if self.concurrency_limit else 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    skills: tuple[SkillSnapshot, ...]
    totals: Totals
    uptime_s: float
    moe_enabled: bool
    config_generation: int = 1  # 1 at start, one more per reload that took effect
    config_loaded_at: float = 0.0  # unix seconds: when that generation started serving
    config_source: str = ""  # the file it was read from
    shared: StateStatus | None = None  # where limits are held (None: not reported)
    feedback_received: int = 0
    avg_feedback_score: float = 0.0
    experiments: tuple[ArmLive, ...] = ()  # one per experiment arm (and its shadow runs)


def skill_snapshots(registry: LiveRegistry, runtimes: Mapping[str, SkillRuntime], now: float,
                    quality: QualityRegistry | None = None) -> tuple[SkillSnapshot, ...]:
    out = []
    for name, live in registry.skills.items():
        rt = runtimes[name]
        g = rt.gate.stats()
        p50, p99 = live.latency_quantiles(0.5, 0.99)
        impls = []
        declared = {i.name: i.quality for i in rt.spec.implementations}
        for impl_name, b in rt.breakers.items():
            state = b.state(now)
            at = b.half_open_at
            q = declared.get(impl_name, 0.0)
            post = quality.implementation(name, impl_name, q) if quality is not None else None
            low, high = post.interval() if post is not None else (q, q)
            impls.append(ImplementationSnapshot(
                impl_name, state, max(0.0, at - now) if state is BreakerState.OPEN and at is not None else None,
                b.consecutive_failures, b.failure_rate, b.times_opened, q,
                post.mean if post is not None else q, post.ratings if post is not None else 0, low, high))
        bs = rt.batch_stats()
        cs = rt.cache_stats()
        out.append(SkillSnapshot(
            skill=name, in_flight=g.in_flight, concurrency_limit=g.limit, queued=g.queued,
            calls=live.calls, failures=live.failures, success_rate=live.success_rate(registry.default_success_rate),
            latency_p50_ms=p50, latency_p99_ms=p99,
            rejected=g.rejected + g.displaced, shed=g.shed, timed_out=g.timed_out + g.deadline_expired,
            queue_by_priority={p.name.lower(): g.queued_by_priority.get(p, 0) for p in Priority},
            queue_capacity=g.queue_depth, mean_queue_wait_ms=g.mean_queue_wait_s * 1000,
            implementations=tuple(impls),
            batches=bs.batches if bs else 0, mean_batch_size=bs.mean_batch_size if bs else 0.0,
            mean_batch_wait_ms=(bs.mean_first_wait_s * 1000) if bs else 0.0,
            coalesced_calls=rt.coalesced_calls(),
            cache_hits=cs.hits if cs else 0, cache_misses=cs.misses if cs else 0, cache_saved=cs.saved if cs else 0.0,
        ))
    return tuple(out)
