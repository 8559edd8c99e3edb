"""RouterService: translates requests into pipeline calls and results into
responses, nothing else. Errors are mapped by ``ErrorMappingInterceptor``
(and, for the stream, by ``abort_with``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol

import grpc

from router.core.errors import InvalidArgument
from router.core.routing import RoutePlan
from router.core.synthesis import SkillOutcome
from router.core.types import Query
from router.runtime.feedback import FeedbackReceipt
from router.runtime.pipeline import ExecuteOutcome, Pipeline, ShedSkill
from router.runtime.stats import Snapshot
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # plain data from the metrics store; no import at run time
    from router.storage import WindowAggregate

from .convert import (
    arm_stats_pb,
    feedback_pb,
    outcome_pb,
    plan_parts,
    query_from_request,
    result_pb,
    shed_pb,
    signals_pb,
    skill_stats_pb,
    timestamp_pb,
    window_pb,
)
from .errors import abort_with

DEFAULT_WINDOW_S = 24 * 3600.0
MAX_WINDOW_S = 90 * 24 * 3600.0

Redact = Callable[[str], str]


class Application(Protocol):
    """What the servicer serves (``router.app.App``)."""

    @property
    def pipeline(self) -> Pipeline: ...

    def snapshot(self) -> Snapshot: ...

    async def execute(self, query: Query, timeout_s: float | None, *,
                      explain_all: bool = False) -> tuple[ExecuteOutcome, str]:
        """Run the query (in its experiment arm): (outcome, "experiment/arm" or "")."""

    def feedback(self, query_id: str, score: float | None, skill_scores: dict[str, float]) -> FeedbackReceipt: ...

    async def window(self, window_s: float) -> tuple[WindowAggregate | None, str, int]:
        """(aggregate or None, store name, rows dropped) over ``window_s``."""


def _same(text: str) -> str:
    return text


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, app: Application, *, redact: Redact | None = None) -> None:
        self._app = app
        self._redact = redact or _same

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        p = self._app.pipeline
        query = query_from_request(request, p.policy, p.skill_names)
        out = await p.route(query, explain_all=request.explain_all)
        selections, rejections = plan_parts(out.plan)
        return pb.RouteResponse(query_id=out.query_id, selections=selections, rejections=rejections,
                                k=out.plan.k, selection_time_us=out.selection_us, moe_enabled=out.plan.moe_enabled,
                                rejections_omitted=out.plan.rejections_omitted, signals=signals_pb(out.plan.signals))

    async def Execute(self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext) -> pb.ExecuteResponse:
        p = self._app.pipeline
        query = query_from_request(request, p.policy, p.skill_names)
        out, arm = await self._app.execute(query, context.time_remaining(), explain_all=request.explain_all)
        return execute_response_pb(out, self._redact, arm)

    async def ExecuteStream(self, request: pb.ExecuteRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExecuteEvent]:
        """The same pipeline run as Execute, told to report as it goes. The
        run is its own task; when the caller cancels (or its deadline
        passes) the task is cancelled, which cancels every backend request
        still open, and the pipeline records the query as cancelled."""
        p = self._app.pipeline
        events = _StreamEvents(time.monotonic(), self._redact)
        try:
            query = query_from_request(request, p.policy, p.skill_names)
        except Exception as exc:
            await abort_with(context, exc)
            return
        run = asyncio.ensure_future(self._app.execute(query, context.time_remaining(),
                                                      explain_all=request.explain_all, events=events))
        run.add_done_callback(lambda _: events.queue.put_nowait(None))
        try:
            while (event := await events.queue.get()) is not None:
                yield event
            try:
                out, arm = run.result()
            except Exception as exc:
                await abort_with(context, exc)
                return
            yield events.stamp(pb.ExecuteEvent(done=execute_response_pb(out, self._redact, arm)))
        finally:
            if not run.done():
                run.cancel()
                await asyncio.wait([run])

    async def Feedback(self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext) -> pb.FeedbackResponse:
        score = request.score if request.HasField("score") else None
        return feedback_pb(self._app.feedback(request.query_id, score, dict(request.skill_scores)))

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        window_s = DEFAULT_WINDOW_S
        if request.HasField("window"):
            window_s = request.window.ToNanoseconds() / 1e9
            if not 0 < window_s <= MAX_WINDOW_S:
                raise InvalidArgument("window", f"must be more than 0 and at most 90 days, got {window_s:g}s")
        snap = self._app.snapshot()
        agg, store, dropped = await self._app.window(window_s)
        t = snap.totals
        now = time.time()
        return pb.StatsResponse(
            skills=[skill_stats_pb(s, now) for s in snap.skills],
            totals=pb.Totals(queries=t.queries, avg_skills_per_query=t.avg_skills_per_query, cost_usd=t.cost,
                             cost_saved_usd=t.cost_saved, baseline_cost_usd=t.baseline_cost, routes=t.routes,
                             failed_queries=t.failed_queries, outcomes=dict(t.outcomes), answered=t.answered,
                             avg_quality=t.avg_quality, avg_cost_per_query_usd=t.avg_cost_per_query,
                             cache_hits=t.cache_hits, cache_misses=t.cache_misses, cache_saved_usd=t.cache_saved,
                             feedback_received=snap.feedback_received, avg_feedback_score=snap.avg_feedback_score),
            experiments=[arm_stats_pb(a) for a in snap.experiments],
            uptime_seconds=snap.uptime_s, moe_enabled=snap.moe_enabled, window=window_pb(agg, store, dropped),
            config_generation=snap.config_generation, config_source=snap.config_source,
            config_loaded_at=timestamp_pb(snap.config_loaded_at) if snap.config_loaded_at else None,
            shared_state=None if snap.shared is None else pb.SharedStateStats(
                backend=snap.shared.backend, connected=snap.shared.connected, detail=snap.shared.detail,
                fallbacks=snap.shared.fallbacks, reconnects=snap.shared.reconnects, worker=snap.shared.worker,
                workers=snap.shared.workers),
        )


def execute_response_pb(out: ExecuteOutcome, redact: Redact = _same, arm: str = "") -> pb.ExecuteResponse:
    selections, rejections = plan_parts(out.plan, out.ran)
    ledger = out.synthesis.ledger
    return pb.ExecuteResponse(
        query_id=out.query_id, trace_id=out.trace_id, text=out.synthesis.text,
        selections=selections, rejections=rejections,
        results=[result_pb(o, w, redact) for o, w in zip(out.outcomes, out.synthesis.weights)],
        cost=pb.CostLedger(actual_usd=ledger.actual, baseline_usd=ledger.baseline, saved_usd=ledger.saved,
                           saved_fraction=ledger.saved_fraction, baseline_skills=ledger.baseline_skills,
                           cache_saved_usd=ledger.cache_saved),
        timing=pb.Timing(selection_us=out.selection_us, execution_us=out.execution_us, total_us=out.total_us),
        quality=out.synthesis.quality, k=out.plan.k, moe_enabled=out.plan.moe_enabled,
        shed=[shed_pb(s, redact) for s in out.shed], outcome=outcome_pb(out.outcome),
        rejections_omitted=out.plan.rejections_omitted, signals=signals_pb(out.plan.signals), experiment_arm=arm,
    )


class _StreamEvents:
    """The pipeline's ``QueryEvents`` for one ExecuteStream: each event
    becomes a message on a queue the handler drains (never blocks the run)."""

    __slots__ = ("queue", "redact", "t0")

    def __init__(self, t0: float, redact: Redact = _same) -> None:
        self.t0 = t0
        self.redact = redact
        self.queue: asyncio.Queue[pb.ExecuteEvent | None] = asyncio.Queue()

    def stamp(self, event: pb.ExecuteEvent) -> pb.ExecuteEvent:
        event.elapsed_ms = (time.monotonic() - self.t0) * 1000
        return event

    def _put(self, event: pb.ExecuteEvent) -> None:
        self.queue.put_nowait(self.stamp(event))

    def routed(self, query_id: str, trace_id: str, plan: RoutePlan) -> None:
        selections, rejections = plan_parts(plan)
        self._put(pb.ExecuteEvent(routed=pb.StreamRouted(
            query_id=query_id, trace_id=trace_id, selections=selections, rejections=rejections, k=plan.k,
            moe_enabled=plan.moe_enabled, rejections_omitted=plan.rejections_omitted)))

    def delta(self, skill: str, implementation: str, text: str, attempt: int) -> None:
        self._put(pb.ExecuteEvent(delta=pb.SkillDelta(skill=skill, implementation=implementation, text=text,
                                                      attempt=attempt)))

    def skill_result(self, outcome: SkillOutcome) -> None:
        self._put(pb.ExecuteEvent(skill_result=result_pb(outcome, 0.0, self.redact)))

    def shed(self, shed: ShedSkill) -> None:
        self._put(pb.ExecuteEvent(shed=shed_pb(shed, self.redact)))
