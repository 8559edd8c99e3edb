"""Route overhead: the sidecar's Route RPC against a bare grpc.aio server.

The sidecar runs the bundled default config (``load_config()``) pointed at an
emulated backend (Route never calls a backend; start-up warms the pools).
The baseline is a bare ``grpc.aio`` server in the same process, on the same
loop, serving ``router.v1.RouterService/Route`` with a canned
``RouteResponse``: the very answer the sidecar gave to the benchmark's
request, so both send the same bytes back, and the baseline does no routing,
validation, error mapping, health or reflection. A separate load-generator
process drives both with the same generated stub, closed-loop at concurrency
1 and 64 (the concurrencies of issue 12's table), in interleaved rounds.

    .venv/bin/python -m bench.route_overhead [--quick] [--json] [--profile [STATS_FILE]]
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from bench._common import (
    LOOPBACK,
    LoadGenerator,
    Plan,
    Profiler,
    bench_main,
    compare,
    emulator_process,
    fmt,
    footer,
    json_safe,
    machine,
    md_table,
    measure,
    quiet_logs,
    store_path,
    text_table,
    timestamp,
    with_store,
)

NAME = "route_overhead"
COMMAND = ".venv/bin/python -m bench.route_overhead"
CONCURRENCY = (1, 64)
FULL = Plan(rounds=6, duration_s=1.5, warmup_s=0.5)
QUICK = Plan(rounds=2, duration_s=0.25, warmup_s=0.1)
REQUEST = {"query": "Review this NDA clause for risks in a leasing deal", "domain": "legal", "complexity": 6.0}


def _canned_servicer(response: Any) -> Any:
    from router.v1 import router_pb2_grpc as pb_grpc

    class Canned(pb_grpc.RouterServiceServicer):
        async def Route(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            return response

    return Canned()


async def _baseline_server(response: Any) -> tuple[grpc.aio.Server, str]:
    from router.v1 import router_pb2_grpc as pb_grpc

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_RouterServiceServicer_to_server(_canned_servicer(response), server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    return server, f"{LOOPBACK}:{port}"


async def run(plan: Plan, *, profile: str | None = None, quick: bool = False) -> dict[str, Any]:
    from skill_router_client import build_context

    from router.app import build_app
    from router.config import load_config
    from router.v1 import router_pb2 as pb
    from router.v1 import router_pb2_grpc as pb_grpc

    quiet_logs()
    profiler = Profiler(profile)
    request = pb.RouteRequest(query=REQUEST["query"],
                              context=build_context(domain=REQUEST["domain"], complexity=REQUEST["complexity"]))
    levels = []
    with store_path() as db:
        async with emulator_process({"seed": 0}) as (emu_url, emu_proc):
            app = build_app(with_store(load_config().with_urls(emu_url), db), f"{LOOPBACK}:0")
            await app.start()
            try:
                async with grpc.aio.insecure_channel(app.address) as channel:
                    canned = await pb_grpc.RouterServiceStub(channel).Route(request, timeout=10)
                baseline, baseline_address = await _baseline_server(canned)
                try:
                    job = {"kind": "grpc", "method": "Route", "request": request.SerializeToString(), "timeout_s": 10}
                    variants = {"baseline": {**job, "target": baseline_address}, "sidecar": {**job, "target": app.address}}
                    async with LoadGenerator() as gen:
                        for c in CONCURRENCY:
                            m = await measure(gen, variants, concurrency=c, rounds=plan.rounds, duration_s=plan.duration_s,
                                              warmup_s=plan.warmup_s, emulator=emu_proc, profiler=profiler,
                                              profiled="sidecar")
                            levels.append({"concurrency": c, "baseline": m["baseline"], "sidecar": m["sidecar"],
                                           "ratio": compare(m["sidecar"], m["baseline"])})
                finally:
                    await baseline.stop(0)
            finally:
                await app.stop(0)
    if profile is not None:
        print(profiler.report(), file=sys.stderr)
    return json_safe({
        "benchmark": NAME,
        "command": COMMAND + (" --quick" if quick else ""),
        "when": timestamp(),
        "quick": quick,
        "profiled": profile is not None,
        "machine": machine(),
        "plan": {"rounds": plan.rounds, "duration_s": plan.duration_s, "warmup_s": plan.warmup_s},
        "request": REQUEST,
        "response_bytes": canned.ByteSize(),
        "selected": [s.skill for s in canned.selections],
        "levels": levels,
    })


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["concurrency", "p50 bare", "p50 sidecar", "p50 ×", "p99 bare", "p99 sidecar", "p99 ×",
               "qps bare", "qps sidecar", "qps ×", "server CPU/call bare", "server CPU/call sidecar"]
    rows = []
    for lv in result["levels"]:
        b, s, r = lv["baseline"], lv["sidecar"], lv["ratio"]
        rows.append([
            str(lv["concurrency"]),
            f"{fmt(b['p50_ms'], '.3f')} ms", f"{fmt(s['p50_ms'], '.3f')} ms", fmt(r["p50"]),
            f"{fmt(b['p99_ms'], '.3f')} ms", f"{fmt(s['p99_ms'], '.3f')} ms", fmt(r["p99"]),
            fmt(b["throughput_qps"], ".0f"), fmt(s["throughput_qps"], ".0f"), fmt(r["throughput"]),
            f"{fmt(b['server_cpu_us_per_call'], '.0f')} µs", f"{fmt(s['server_cpu_us_per_call'], '.0f')} µs",
        ])
    return headers, rows


def _errors(result: Mapping[str, Any]) -> list[str]:
    out = []
    for lv in result["levels"]:
        for name in ("baseline", "sidecar"):
            if lv[name]["errors"]:
                out.append(f"concurrency {lv['concurrency']}, {name}: errors {lv[name]['errors']}")
    return out


def _spread(result: Mapping[str, Any]) -> list[str]:
    out = []
    for lv in result["levels"]:
        r = lv["ratio"]
        parts = [f"{k} {fmt(r[k + '_round_range'][0])}–{fmt(r[k + '_round_range'][1])}"
                 for k in ("p50", "p99", "throughput") if r.get(k + "_round_range")]
        out.append(f"concurrency {lv['concurrency']}: " + ", ".join(parts))
    return out


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    lines = [
        (f"Route: sidecar vs bare grpc.aio server (canned RouteResponse, {result['response_bytes']} bytes; "
        f"ratio × = sidecar / bare)"),
        text_table(headers, rows),
        "per-round ratio ranges: " + "; ".join(_spread(result)),
        footer(result, "variant and concurrency"),
        *_errors(result),
    ]
    return "\n".join(lines)


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    lines = [
        (f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
        f"Python {m['python']}, grpcio {m['grpcio']}. {result['plan']['rounds']} interleaved rounds × "
        f"{result['plan']['duration_s']} s per variant and concurrency. Request: "
        f"`{result['request']['query']}` (domain `{result['request']['domain']}`, complexity "
        f"{result['request']['complexity']}; the sidecar selects {', '.join(result['selected'])}); "
        f"response {result['response_bytes']} bytes on both sides. × is sidecar / bare."),
        "",
        md_table(headers, rows),
        "",
        "Per-round ratio ranges: " + "; ".join(_spread(result)) + ".",
    ]
    errs = _errors(result)
    if errs:
        lines += ["", "Errors: " + "; ".join(errs) + "."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    bench_main(__doc__, argv, run, table, full=FULL, quick=QUICK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
