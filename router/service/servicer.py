"""RouterService: translates requests into pipeline calls and results into
responses, nothing else. Errors are mapped by ``ErrorMappingInterceptor``."""

from __future__ import annotations

from typing import Callable

import grpc

from router.runtime.pipeline import Pipeline
from router.runtime.stats import Snapshot
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

from .convert import plan_parts, query_from_request, result_pb


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, pipeline: Pipeline, snapshot: Callable[[], Snapshot]) -> None:
        self._pipeline = pipeline
        self._snapshot = snapshot

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        p = self._pipeline
        query = query_from_request(request, p.policy, p.skill_names)
        out = p.route(query)
        selections, rejections = plan_parts(out.plan)
        return pb.RouteResponse(query_id=out.query_id, selections=selections, rejections=rejections,
                                k=out.plan.k, selection_time_us=out.selection_us, moe_enabled=out.plan.moe_enabled)

    async def Execute(self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext) -> pb.ExecuteResponse:
        p = self._pipeline
        query = query_from_request(request, p.policy, p.skill_names)
        out = await p.execute(query, context.time_remaining())
        selections, rejections = plan_parts(out.plan)
        ledger = out.synthesis.ledger
        return pb.ExecuteResponse(
            query_id=out.query_id, trace_id=out.trace_id, text=out.synthesis.text,
            selections=selections, rejections=rejections,
            results=[result_pb(o, w) for o, w in zip(out.outcomes, out.synthesis.weights)],
            cost=pb.CostLedger(actual_usd=ledger.actual, baseline_usd=ledger.baseline, saved_usd=ledger.saved,
                               saved_fraction=ledger.saved_fraction, baseline_skills=ledger.baseline_skills),
            timing=pb.Timing(selection_us=out.selection_us, execution_us=out.execution_us, total_us=out.total_us),
            quality=out.synthesis.quality, k=out.plan.k, moe_enabled=out.plan.moe_enabled,
        )

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        snap = self._snapshot()
        t = snap.totals
        return pb.StatsResponse(
            skills=[pb.SkillStats(skill=s.skill, in_flight=s.in_flight, concurrency_limit=s.concurrency_limit,
                                  utilization=s.utilization, queue_depth=s.queue_depth, calls=s.calls,
                                  failures=s.failures, success_rate=s.success_rate,
                                  latency_p50_ms=s.latency_p50_ms, latency_p99_ms=s.latency_p99_ms)
                    for s in snap.skills],
            totals=pb.Totals(queries=t.queries, avg_skills_per_query=t.avg_skills_per_query, cost_usd=t.cost,
                             cost_saved_usd=t.cost_saved, baseline_cost_usd=t.baseline_cost, routes=t.routes,
                             failed_queries=t.failed_queries),
            uptime_seconds=snap.uptime_s, moe_enabled=snap.moe_enabled,
        )
