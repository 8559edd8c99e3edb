"""Experiments at run time: assign each query an arm (sticky, core.experiments),
run it there, and, for a sampled share of the treatment arms' queries, run
the control arm again in the background (a shadow) after the answer is
returned: bounded (``max_concurrent``; beyond it the shadow is skipped and
counted), never awaited by the caller, its record marked ``shadow`` and its
cost counted apart (per arm here, never in the live totals).

Per arm: queries, cost, latency from the pipeline's records; measured quality
(mean rating with a 95 % interval) from Feedback; for shadows, the share that
agreed with the answer returned (the same skills and implementations).
A k schedule arm runs at its current k, a ``probe_share`` of its queries at
k − 1, and steps down per ``core.experiments.next_k``; its queries are
labelled ``experiment/arm@k<k>``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from router.core.experiments import RatingSummary, assign_arm, next_k
from router.core.quality import mean_interval
from router.core.types import Query, RoutingPolicy

from .observer import QueryRecord
from .pipeline import ExecuteOutcome, Pipeline

log = logging.getLogger("router.experiments")

MAX_KEPT_SCORES = 100_000  # per arm: ratings kept for the interval (beyond it, the sums still count)


@dataclass(frozen=True, slots=True)
class KSchedule:
    start_k: int = 5
    end_k: int = 3
    margin: float = 0.02
    min_ratings: int = 50
    probe_share: float = 0.2


@dataclass(frozen=True, slots=True)
class ArmSpec:
    name: str
    top_k: int | None = None
    all_skills: bool = False
    implementation_policy: str | None = None  # "seed" | "expected_quality" | "static"
    k_schedule: KSchedule | None = None


@dataclass(frozen=True, slots=True)
class ExperimentSpec:
    name: str
    control: str
    arms: tuple[ArmSpec, ...]
    share: float = 1.0
    key: str = "user_id"
    shadow_share: float = 0.0
    shadow_max_concurrent: int = 4


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    arm: str
    label: str  # what the query's record carries: "experiment/arm" (+ "@k<k>" for a k schedule)
    query: Query
    policy: RoutingPolicy
    shadow: Assignment | None = None  # the control arm's run, when this query is shadowed


@dataclass
class ArmLive:
    experiment: str
    arm: str
    shadow: bool = False
    queries: int = 0
    cost: float = 0.0
    latency_ms: float = 0.0
    scores: list[float] = field(default_factory=list)
    ratings: int = 0
    agreed: int = 0
    compared: int = 0
    skipped: int = 0  # shadows not run (the bound was reached)
    current_k: int = 0

    @property
    def avg_latency_ms(self) -> float:
        return self.latency_ms / self.queries if self.queries else 0.0

    def quality(self) -> tuple[float, float, float]:
        return mean_interval(self.scores)

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0


def apply_arm(arm: ArmSpec, query: Query, policy: RoutingPolicy, k: int | None = None) -> tuple[Query, RoutingPolicy]:
    if arm.all_skills:
        query = replace(query, all_skills=True, top_k=None)
    elif arm.top_k is not None or k is not None:
        query = replace(query, top_k=k if k is not None else arm.top_k, all_skills=False)
    if arm.implementation_policy == "static":
        policy = replace(policy, dynamic_routing_enabled=False)
    elif arm.implementation_policy is not None:
        policy = replace(policy, implementation_policy=arm.implementation_policy, dynamic_routing_enabled=True)
    return query, policy


class Experiments:
    def __init__(self, specs: Sequence[ExperimentSpec], policy: RoutingPolicy, rng: random.Random) -> None:
        self.specs = tuple(specs)
        self.policy = policy
        self._rng = rng
        self.live: dict[tuple[str, str, bool], ArmLive] = {}
        self._k: dict[tuple[str, str], int] = {}
        self._k_ratings: dict[tuple[str, str, int], RatingSummary] = {}
        for e in self.specs:
            for a in e.arms:
                self.live[(e.name, a.name, False)] = ArmLive(e.name, a.name)
                if a.k_schedule is not None:
                    self._k[(e.name, a.name)] = a.k_schedule.start_k
                    self.live[(e.name, a.name, False)].current_k = a.k_schedule.start_k
            if e.shadow_share > 0:
                self.live[(e.name, e.control, True)] = ArmLive(e.name, e.control, shadow=True)
        self._arms = {(e.name, a.name): a for e in self.specs for a in e.arms}

    def __bool__(self) -> bool:
        return bool(self.specs)

    def current_k(self, experiment: str, arm: str) -> int | None:
        return self._k.get((experiment, arm))

    # ---- assignment ----------------------------------------------------------

    def assign(self, query: Query) -> Assignment | None:
        for e in self.specs:
            idx = assign_arm(e.name, query.metadata.get(e.key), e.share, len(e.arms))
            if idx is None:
                continue
            arm = e.arms[idx]
            a = self._run(e, arm, query)
            if arm.name != e.control and e.shadow_share > 0 and self._rng.random() < e.shadow_share:
                control = next(x for x in e.arms if x.name == e.control)
                a = replace(a, shadow=self._run(e, control, query))
            return a
        return None

    def _run(self, e: ExperimentSpec, arm: ArmSpec, query: Query) -> Assignment:
        k = None
        label = f"{e.name}/{arm.name}"
        if arm.k_schedule is not None:
            k = self._k[(e.name, arm.name)]
            if k > arm.k_schedule.end_k and self._rng.random() < arm.k_schedule.probe_share:
                k -= 1  # a probe of the lower k
            label += f"@k{k}"
        q, p = apply_arm(arm, query, self.policy, k)
        return Assignment(e.name, arm.name, label, q, p)

    # ---- what happened -------------------------------------------------------

    @staticmethod
    def parse(label: str) -> tuple[str, str, int | None]:
        exp, _, rest = label.partition("/")
        arm, _, k = rest.partition("@k")
        return exp, arm, int(k) if k.isdigit() else None

    def record(self, r: QueryRecord) -> None:
        if not r.arm:
            return
        exp, arm, _ = self.parse(r.arm)
        live = self.live.get((exp, arm, r.shadow))
        if live is None:
            return
        live.queries += 1
        live.cost += r.total_cost
        live.latency_ms += r.total_time_ms

    def rated(self, label: str, score: float) -> None:
        if not label:
            return
        exp, arm, k = self.parse(label)
        live = self.live.get((exp, arm, False))
        if live is None:
            return
        live.ratings += 1
        if len(live.scores) < MAX_KEPT_SCORES:
            live.scores.append(score)
        spec = self._arms.get((exp, arm))
        if k is None or spec is None or spec.k_schedule is None:
            return
        key = (exp, arm, k)
        self._k_ratings[key] = self._k_ratings.get(key, RatingSummary()).add(score)
        ks = spec.k_schedule
        cur = self._k[(exp, arm)]
        step = next_k(cur, ks.end_k, self._k_ratings.get((exp, arm, cur), RatingSummary()),
                      self._k_ratings.get((exp, arm, cur - 1), RatingSummary()),
                      margin=ks.margin, min_ratings=ks.min_ratings)
        if step.stepped:
            log.info("experiment %s arm %s: k %d → %d (%s)", exp, arm, cur, step.k, step.reason)
            self._k[(exp, arm)] = step.k
            live.current_k = step.k

    def compared(self, experiment: str, control: str, agreed: bool) -> None:
        live = self.live[(experiment, control, True)]
        live.compared += 1
        live.agreed += agreed

    def skipped(self, experiment: str, control: str) -> None:
        self.live[(experiment, control, True)].skipped += 1


def answered_set(out: ExecuteOutcome) -> frozenset[tuple[str, str]]:
    return frozenset((o.skill, o.implementation) for o in out.outcomes if o.ok)


class ExperimentRunner:
    """Runs a query in its arm and launches its shadow in the background."""

    def __init__(self, pipeline: Pipeline, experiments: Experiments, *, shadow_deadline_s: float | None = None) -> None:
        self.pipeline = pipeline
        self.experiments = experiments
        self._shadow_deadline_s = shadow_deadline_s or pipeline.default_deadline_s
        self._shadows: set[asyncio.Task[None]] = set()
        self._limits: Mapping[str, int] = {e.name: e.shadow_max_concurrent for e in experiments.specs}
        self._running: dict[str, int] = {e.name: 0 for e in experiments.specs}

    @property
    def shadows_in_flight(self) -> int:
        return len(self._shadows)

    async def execute(self, query: Query, timeout_s: float | None, *, explain_all: bool = False,
                      pipeline: Pipeline | None = None, **run: Any) -> tuple[ExecuteOutcome, str]:
        """``pipeline``: the one serving now (a reload swaps it; default the
        runner's own); ``run``: more of ``Pipeline.execute``'s keywords
        (``events`` for ExecuteStream)."""
        p = pipeline or self.pipeline
        a = self.experiments.assign(query) if self.experiments else None
        if a is None:
            return await p.execute(query, timeout_s, explain_all=explain_all, **run), ""
        out = await p.execute(a.query, timeout_s, explain_all=explain_all, policy=a.policy, arm=a.label, **run)
        if a.shadow is not None:
            self._launch(a.shadow, out, p)
        return out, a.label

    def _launch(self, shadow: Assignment, answer: ExecuteOutcome, pipeline: Pipeline) -> None:
        exp = shadow.experiment
        if self._running[exp] >= self._limits[exp]:
            self.experiments.skipped(exp, shadow.arm)
            return
        self._running[exp] += 1
        task = asyncio.get_running_loop().create_task(self._shadow(shadow, answered_set(answer), pipeline),
                                                      name=f"shadow[{shadow.label}]")
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, shadow: Assignment, answered: frozenset[tuple[str, str]], pipeline: Pipeline) -> None:
        try:
            out = await pipeline.execute(shadow.query, self._shadow_deadline_s, policy=shadow.policy,
                                              arm=shadow.label, shadow=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a shadow never surfaces: its record says how it ended
            log.debug("shadow %s ended: %s", shadow.label, exc)
            self.experiments.compared(shadow.experiment, shadow.arm, False)
        else:
            self.experiments.compared(shadow.experiment, shadow.arm, answered_set(out) == answered)
        finally:
            self._running[shadow.experiment] -= 1

    async def aclose(self, grace_s: float = 1.0) -> None:
        """Give the shadows in flight ``grace_s``, then cancel them."""
        if not self._shadows:
            return
        _, pending = await asyncio.wait(set(self._shadows), timeout=max(0.0, grace_s))
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


__all__ = ["ArmLive", "ArmSpec", "Assignment", "ExperimentRunner", "ExperimentSpec", "Experiments", "KSchedule",
           "apply_arm"]
