"""RouterService: translates requests into pipeline calls and results into
responses, nothing else. Errors are mapped by ``ErrorMappingInterceptor``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from router.core.errors import InvalidArgument
from router.runtime.pipeline import Pipeline
from router.runtime.stats import Snapshot
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

from .convert import plan_parts, query_from_request, result_pb, shed_pb, signals_pb, skill_stats_pb, window_pb

DEFAULT_WINDOW_S = 24 * 3600.0
MAX_WINDOW_S = 90 * 24 * 3600.0

# (window seconds) -> (aggregate or None, store name, rows dropped)
WindowReader = Callable[[float], Awaitable[tuple[Any, str, int]]]


async def _no_store(window_s: float) -> tuple[Any, str, int]:
    return None, "", 0


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, pipeline: Pipeline, snapshot: Callable[[], Snapshot],
                 window: WindowReader = _no_store) -> None:
        self._pipeline = pipeline
        self._snapshot = snapshot
        self._window = window

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        p = self._pipeline
        query = query_from_request(request, p.policy, p.skill_names)
        out = await p.route(query)
        selections, rejections = plan_parts(out.plan)
        return pb.RouteResponse(query_id=out.query_id, selections=selections, rejections=rejections,
                                k=out.plan.k, selection_time_us=out.selection_us, moe_enabled=out.plan.moe_enabled,
                                signals=signals_pb(out.plan.signals))

    async def Execute(self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext) -> pb.ExecuteResponse:
        p = self._pipeline
        query = query_from_request(request, p.policy, p.skill_names)
        out = await p.execute(query, context.time_remaining())
        selections, rejections = plan_parts(out.plan, out.ran)
        ledger = out.synthesis.ledger
        return pb.ExecuteResponse(
            query_id=out.query_id, trace_id=out.trace_id, text=out.synthesis.text,
            selections=selections, rejections=rejections,
            results=[result_pb(o, w) for o, w in zip(out.outcomes, out.synthesis.weights)],
            cost=pb.CostLedger(actual_usd=ledger.actual, baseline_usd=ledger.baseline, saved_usd=ledger.saved,
                               saved_fraction=ledger.saved_fraction, baseline_skills=ledger.baseline_skills),
            timing=pb.Timing(selection_us=out.selection_us, execution_us=out.execution_us, total_us=out.total_us),
            quality=out.synthesis.quality, k=out.plan.k, moe_enabled=out.plan.moe_enabled,
            shed=[shed_pb(s) for s in out.shed],
            signals=signals_pb(out.plan.signals),
        )

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        window_s = DEFAULT_WINDOW_S
        if request.HasField("window"):
            window_s = request.window.ToNanoseconds() / 1e9
            if not 0 < window_s <= MAX_WINDOW_S:
                raise InvalidArgument("window", f"must be more than 0 and at most 90 days, got {window_s:g}s")
        snap = self._snapshot()
        agg, store, dropped = await self._window(window_s)
        t = snap.totals
        now = time.time()
        return pb.StatsResponse(
            skills=[skill_stats_pb(s, now) for s in snap.skills],
            totals=pb.Totals(queries=t.queries, avg_skills_per_query=t.avg_skills_per_query, cost_usd=t.cost,
                             cost_saved_usd=t.cost_saved, baseline_cost_usd=t.baseline_cost, routes=t.routes,
                             failed_queries=t.failed_queries),
            uptime_seconds=snap.uptime_s, moe_enabled=snap.moe_enabled, window=window_pb(agg, store, dropped),
        )
