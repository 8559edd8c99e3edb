"""A snapshot of the sidecar's live state, read by the Stats RPC and the
telemetry gauges. Plain data; the service layer turns it into protobuf."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import LiveRegistry, Totals


@dataclass(frozen=True, slots=True)
class SkillSnapshot:
    skill: str
    in_flight: int
    concurrency_limit: int
    queue_depth: int
    calls: int
    failures: int
    success_rate: float
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def utilization(self) -> float:
        return self.in_flight / self.concurrency_limit if self.concurrency_limit else 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    skills: tuple[SkillSnapshot, ...]
    totals: Totals
    uptime_s: float
    moe_enabled: bool


def skill_snapshots(registry: LiveRegistry, limits: dict[str, int]) -> tuple[SkillSnapshot, ...]:
    out = []
    for name, live in registry.skills.items():
        p50, p99 = live.latency_quantiles(0.5, 0.99)
        out.append(SkillSnapshot(
            skill=name, in_flight=live.in_flight, concurrency_limit=limits.get(name, 0), queue_depth=0,
            calls=live.calls, failures=live.failures, success_rate=live.success_rate(registry.default_success_rate),
            latency_p50_ms=p50, latency_p99_ms=p99))
    return tuple(out)
