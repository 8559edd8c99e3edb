"""Tracing overhead: Route and Execute through the sidecar with telemetry off and on.

The same sidecar (``router.app.build_app``, the bundled default config with
the admission limits and pools raised as in ``bench.execute_overhead``,
pointed at an emulated backend whose models answer in 20 ms) is built once
per variant, all in the bench process, differing only in the ``OTEL_*``
variables handed to ``build_app(env=...)``:

- **off** — no OTLP endpoint: the ``NullObserver`` path, nothing exported;
- **metrics only** — the endpoint with ``OTEL_TRACES_EXPORTER=none``: the
  pipeline's metrics, no spans (separates the two costs);
- **traces, all sampled** — the endpoint alone (traces and metrics, the
  default ``parentbased_always_on`` sampler): every query is traced;
- **traces, 10% sampled** — ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``,
  ``OTEL_TRACES_SAMPLER_ARG=0.1`` (the calls carry no trace context, so the
  ratio decides).

Telemetry goes over OTLP/gRPC to a real receiver on 127.0.0.1 running in a
process of its own (a grpc.aio server implementing ``TraceService/Export``
and ``MetricsService/Export`` that counts what it gets and discards it), so
the collector's CPU is not charged to the sidecar. After every round of a
variant its pending spans are flushed (``force_flush``; that CPU counts for
the variant), so the spans received in a round are that round's, and none
are left to be exported while the next variant runs. The load generator
(a separate process) drives every variant with the same request,
closed-loop, in interleaved rounds: Route at concurrency 1 and 32, Execute
at 16; the emulator runs in a process of its own.

Reported per variant: p50/p99 latency, throughput, the sidecar process's CPU
per call, spans received per call (the proof that export happened, and of
any dropped by the batch processor's bounded queue) and the receiver's CPU
per call; ratios against *off*.

    .venv/bin/python -m bench.tracing_overhead [--quick] [--json] [--profile [STATS_FILE]]

``--profile`` profiles the sidecar's event loop while the *traces, all
sampled* variant is measured (the batch span processor's export thread is
not in it).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psutil

from bench._common import (
    LOOPBACK,
    LoadGenerator,
    Measured,
    Plan,
    Profiler,
    bench_main,
    compare,
    cpu_seconds,
    emulator_process,
    fmt,
    footer,
    json_safe,
    machine,
    md_table,
    quiet_logs,
    round_summary,
    store_path,
    text_table,
    timestamp,
)

NAME = "tracing_overhead"
COMMAND = ".venv/bin/python -m bench.tracing_overhead"
ROUTE_CONCURRENCY = (1, 32)
EXECUTE_CONCURRENCY = 16
BACKEND_MS = 20.0
FULL = Plan(rounds=4, duration_s=1.25, warmup_s=0.3)
QUICK = Plan(rounds=1, duration_s=0.2, warmup_s=0.05)
REQUEST = {"query": "Review this NDA clause for risks in a leasing deal", "domain": "legal", "complexity": 6.0}
BASELINE = "off"
PROFILED = "traces"
FLUSH_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    otel: Mapping[str, str] | None  # None: no endpoint at all; else added to the endpoint
    rpcs: tuple[str, ...] = ("Route", "Execute")

    def env(self, endpoint: str) -> dict[str, str]:
        if self.otel is None:
            return {}
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": f"skill-router-bench-{self.name}",
                **self.otel}

    @property
    def traced(self) -> bool:
        return self.otel is not None and self.otel.get("OTEL_TRACES_EXPORTER") != "none"


VARIANTS = (
    Variant("off", "off", None),
    Variant("metrics", "metrics only", {"OTEL_TRACES_EXPORTER": "none"}),
    Variant("traces", "traces, all sampled", {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}),
    Variant("sampled", "traces, 10% sampled",
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}),
)
LABELS = {v.name: v.label for v in VARIANTS}


# -- the OTLP receiver (a separate process) ------------------------------------------------------

SPANS, TRACE_REQUESTS, METRIC_REQUESTS, METRIC_POINTS = range(4)


class Receiver:
    """A spawned process serving OTLP/gRPC ``TraceService/Export`` and
    ``MetricsService/Export`` on 127.0.0.1: counts spans, metric data points
    and requests (in shared memory the bench process reads), keeps nothing."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._counts = ctx.RawArray("q", 4)
        self._conn, self._child = ctx.Pipe()
        self._proc = ctx.Process(target=_receiver_entry, args=(self._counts, self._child),
                                 name="bench-otlp-receiver", daemon=True)
        self.port = 0
        self.process: psutil.Process | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def spans(self) -> int:
        return int(self._counts[SPANS])

    def counts(self) -> dict[str, int]:
        return {"spans": int(self._counts[SPANS]), "trace_requests": int(self._counts[TRACE_REQUESTS]),
                "metric_requests": int(self._counts[METRIC_REQUESTS]),
                "metric_points": int(self._counts[METRIC_POINTS])}

    async def __aenter__(self) -> Receiver:
        self._proc.start()
        self._child.close()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._conn.poll, 30):
            raise RuntimeError(f"OTLP receiver did not start (exit code {self._proc.exitcode})")
        self.port = int(self._conn.recv())
        self.process = psutil.Process(self._proc.pid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._conn.send(None)
        await asyncio.get_running_loop().run_in_executor(None, self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


def _receiver_entry(counts: Any, conn: Any) -> None:
    asyncio.run(_receiver_serve(counts, conn))


async def _receiver_serve(counts: Any, conn: Any) -> None:
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            counts[SPANS] += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            counts[TRACE_REQUESTS] += 1
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        async def Export(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            counts[METRIC_POINTS] += sum(len(getattr(m, m.WhichOneof("data")).data_points)
                                         for rm in request.resource_metrics for sm in rm.scope_metrics
                                         for m in sm.metrics if m.WhichOneof("data"))
            counts[METRIC_REQUESTS] += 1
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    conn.send(port)
    try:
        with contextlib.suppress(EOFError, OSError):
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # None (or EOF): stop
    finally:
        await server.stop(0)


# -- measuring -------------------------------------------------------------------------------------


async def _flush_traces(app: Any) -> None:
    """Export the spans the sidecar still holds (blocking: off the loop)."""
    provider = app.telemetry.tracer_provider
    if provider is not None and not await asyncio.to_thread(provider.force_flush, FLUSH_TIMEOUT_MS):
        raise RuntimeError("span flush timed out")


async def _measure(gen: LoadGenerator, variants: Mapping[str, tuple[Mapping[str, Any], Any]], *, concurrency: int,
                   plan: Plan, emulator: psutil.Process, receiver: Receiver, profiler: Profiler) -> dict[str, Any]:
    """Like ``bench._common.measure``, plus: each variant's pending spans are
    flushed after each of its runs (the flush's CPU counts for the variant,
    not its wall time), and the spans received and the receiver's CPU are
    counted per round."""
    me = psutil.Process()
    names = list(variants)
    for name in names:
        job, app = variants[name]
        await gen.run({**job, "concurrency": concurrency, "duration_s": plan.warmup_s})
        await _flush_traces(app)
    acc = {name: Measured() for name in names}
    spans = dict.fromkeys(names, 0)
    receiver_cpu = dict.fromkeys(names, 0.0)
    loop_cpu = dict.fromkeys(names, 0.0)
    for r in range(plan.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            job, app = variants[name]
            server0, emu0 = cpu_seconds(me), cpu_seconds(emulator)
            rx0, spans0 = cpu_seconds(receiver.process), receiver.spans
            loop0 = time.thread_time()  # this thread runs the event loop, hence the sidecars
            with profiler.active(name == PROFILED):
                res = await gen.run({**job, "concurrency": concurrency, "duration_s": plan.duration_s})
            loop_cpu[name] += time.thread_time() - loop0
            await _flush_traces(app)
            m = acc[name]
            m.server_cpu_s += cpu_seconds(me) - server0
            m.emulator_cpu_s += cpu_seconds(emulator) - emu0
            m.client_cpu_s += res["client_cpu_s"]
            m.latencies_ms.extend(res["latencies_ms"])
            m.wall_s += res["wall_s"]
            m.errors.update(res["errors"])
            m.rounds.append(round_summary(res["latencies_ms"], res["wall_s"]))
            spans[name] += receiver.spans - spans0
            receiver_cpu[name] += cpu_seconds(receiver.process) - rx0
    out: dict[str, Any] = {}
    for name in names:
        s = acc[name].summary()
        calls = s["calls"] + sum(s["errors"].values())
        s["spans_received"] = spans[name]
        s["spans_per_call"] = spans[name] / calls if calls else float("nan")
        s["receiver_cpu_us_per_call"] = receiver_cpu[name] / calls * 1e6 if calls else float("nan")
        # The process's CPU split: the event loop's thread (the request path)
        # and the rest (the span processor's export thread, the flush, gRPC's
        # and the metrics store's threads).
        s["loop_cpu_us_per_call"] = loop_cpu[name] / calls * 1e6 if calls else float("nan")
        s["other_threads_cpu_us_per_call"] = s["server_cpu_us_per_call"] - s["loop_cpu_us_per_call"]
        out[name] = s
    return out


def _level(rpc: str, concurrency: int, measured: Mapping[str, Any]) -> dict[str, Any]:
    off = measured[BASELINE]
    vs_off = {}
    for name, s in measured.items():
        if name == BASELINE:
            continue
        vs_off[name] = {**compare(s, off),
                        "server_cpu_added_us": s["server_cpu_us_per_call"] - off["server_cpu_us_per_call"],
                        "loop_cpu_added_us": s["loop_cpu_us_per_call"] - off["loop_cpu_us_per_call"],
                        "other_threads_cpu_added_us": (s["other_threads_cpu_us_per_call"]
                                                       - off["other_threads_cpu_us_per_call"]),
                        "p50_added_ms": s["p50_ms"] - off["p50_ms"], "p99_added_ms": s["p99_ms"] - off["p99_ms"]}
    return {"rpc": rpc, "concurrency": concurrency, "variants": dict(measured), "vs_off": vs_off}


async def run(plan: Plan, *, profile: str | None = None, quick: bool = False) -> dict[str, Any]:
    from skill_router_client import build_context

    from bench.execute_overhead import bench_config
    from router.app import build_app
    from router.v1 import router_pb2 as pb
    from router.v1 import router_pb2_grpc as pb_grpc

    quiet_logs()
    profiler = Profiler(profile)
    context = build_context(domain=REQUEST["domain"], complexity=REQUEST["complexity"])
    route = pb.RouteRequest(query=REQUEST["query"], context=context)
    execute = pb.ExecuteRequest(query=REQUEST["query"], context=context)
    levels = []
    emulator = {"seed": 0, "default": {"latency_ms": BACKEND_MS}}
    with contextlib.ExitStack() as stores:
        async with emulator_process(emulator) as (emu_url, emu_proc), Receiver() as rx:
            apps: dict[str, Any] = {}
            try:
                for v in VARIANTS:
                    app = build_app(bench_config(emu_url, stores.enter_context(store_path())), f"{LOOPBACK}:0",
                                    env=v.env(rx.endpoint))
                    apps[v.name] = app
                    await app.start()
                probes, routed = {}, {}
                for name, app in apps.items():
                    async with grpc.aio.insecure_channel(app.address) as channel:
                        stub = pb_grpc.RouterServiceStub(channel)
                        routed[name] = await stub.Route(route, timeout=10)
                        probes[name] = await stub.Execute(execute, timeout=10)
                    bad = [f"{r.skill}: {r.error}" for r in probes[name].results if r.status != pb.SKILL_STATUS_OK]
                    if bad or not probes[name].results:
                        raise RuntimeError(f"{name}: the probe Execute did not succeed: {bad or 'no results'}")
                probe = probes[BASELINE]
                k = len(probe.results)
                jobs = {
                    "Route": {"kind": "grpc", "method": "Route", "request": route.SerializeToString(), "timeout_s": 10},
                    "Execute": {"kind": "grpc", "method": "Execute", "request": execute.SerializeToString(),
                                "timeout_s": 30, "expect_results": k},
                }
                async with LoadGenerator() as gen:
                    for rpc, c in [*(("Route", c) for c in ROUTE_CONCURRENCY), ("Execute", EXECUTE_CONCURRENCY)]:
                        variants = {v.name: ({**jobs[rpc], "target": apps[v.name].address}, apps[v.name])
                                    for v in VARIANTS if rpc in v.rpcs}
                        m = await _measure(gen, variants, concurrency=c, plan=plan, emulator=emu_proc,
                                           receiver=rx, profiler=profiler)
                        levels.append(_level(rpc, c, m))
            finally:
                for app in apps.values():
                    await app.stop(0)  # flushes the telemetry: the last metric export
            received = rx.counts()
    if profile is not None:
        print(profiler.report(), file=sys.stderr)
    problems = []
    for lv in levels:
        for name, s in lv["variants"].items():
            traced = next(v for v in VARIANTS if v.name == name).traced
            if traced and not s["spans_received"]:
                problems.append(f"{lv['rpc']} c={lv['concurrency']} {LABELS[name]}: no spans received")
            if not traced and s["spans_received"]:
                problems.append(f"{lv['rpc']} c={lv['concurrency']} {LABELS[name]}: "
                                f"{s['spans_received']} spans received from an untraced sidecar")
    if not received["metric_points"]:
        problems.append("no metric data points received")
    return json_safe({
        "benchmark": NAME,
        "command": COMMAND + (" --quick" if quick else ""),
        "when": timestamp(),
        "quick": quick,
        "profiled": profile is not None,
        "machine": machine(),
        "plan": {"rounds": plan.rounds, "duration_s": plan.duration_s, "warmup_s": plan.warmup_s},
        "backend_latency_ms": BACKEND_MS,
        "request": REQUEST,
        "k": k,
        "selected": [s.skill for s in routed[BASELINE].selections],
        "variants": {v.name: {"label": v.label, "otel": v.env("http://127.0.0.1:<receiver>")} for v in VARIANTS},
        "levels": levels,
        "received": received,
        "problems": problems,
    })


# -- output ----------------------------------------------------------------------------------------


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["RPC (concurrency)", "telemetry", "p50", "p99", "qps", "p50 ×", "p99 ×", "qps ×",
               "sidecar CPU/call", "CPU added (loop, other threads)", "spans/call", "receiver CPU/call"]
    rows = []
    for lv in result["levels"]:
        for name, s in lv["variants"].items():
            r = lv["vs_off"].get(name)
            rows.append([
                f"{lv['rpc']} ({lv['concurrency']})", LABELS[name],
                f"{fmt(s['p50_ms'], '.3f')} ms", f"{fmt(s['p99_ms'], '.3f')} ms", fmt(s["throughput_qps"], ".0f"),
                fmt(r["p50"]) if r else "", fmt(r["p99"]) if r else "", fmt(r["throughput"]) if r else "",
                f"{fmt(s['server_cpu_us_per_call'], '.0f')} µs",
                (f"{fmt(r['server_cpu_added_us'], '+.0f')} µs ({fmt(r['loop_cpu_added_us'], '+.0f')}, "
                 f"{fmt(r['other_threads_cpu_added_us'], '+.0f')})") if r else "",
                fmt(s["spans_per_call"]), f"{fmt(s['receiver_cpu_us_per_call'], '.0f')} µs",
            ])
    return headers, rows


def _spread(result: Mapping[str, Any]) -> list[str]:
    out = []
    for lv in result["levels"]:
        parts = []
        for name, r in lv["vs_off"].items():
            rng = r.get("throughput_round_range")
            if rng:
                parts.append(f"{LABELS[name]} {fmt(rng[0])}–{fmt(rng[1])}")
        out.append(f"{lv['rpc']} ({lv['concurrency']}): " + ", ".join(parts))
    return out


def _received(result: Mapping[str, Any]) -> str:
    rx = result["received"]
    return (f"the receiver got {rx['spans']} spans in {rx['trace_requests']} trace exports and "
            f"{rx['metric_points']} metric data points in {rx['metric_requests']} metric exports")


def _errors(result: Mapping[str, Any]) -> list[str]:
    out = []
    for lv in result["levels"]:
        for name, s in lv["variants"].items():
            if s["errors"]:
                out.append(f"{lv['rpc']} ({lv['concurrency']}), {LABELS[name]}: errors {s['errors']}")
    return out + list(result["problems"])


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    lines = [
        ("Telemetry off vs on, OTLP/gRPC to a receiver in its own process (× = variant / off; CPU added = "
         "sidecar process CPU per call over off, split into the event loop's thread and the other threads)"),
        text_table(headers, rows),
        "per-round throughput ratios vs off: " + "; ".join(_spread(result)),
        _received(result),
        footer(result, "variant and level"),
        *_errors(result),
    ]
    return "\n".join(lines)


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    lines = [
        (f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
         f"Python {m['python']}, grpcio {m['grpcio']}. {result['plan']['rounds']} interleaved rounds × "
         f"{result['plan']['duration_s']} s per variant and level. Request: `{result['request']['query']}` "
         f"(domain `{result['request']['domain']}`, complexity {result['request']['complexity']}; Route selects "
         f"{', '.join(result['selected'])}, Execute calls those k={result['k']} backends, each answering in "
         f"{result['backend_latency_ms']:g} ms). × is variant / off; *CPU added* is the sidecar process's CPU "
         "per call over *off* (the span flush after each round included), split into the event loop's "
         "thread (the request path) and the process's other threads (the batch span processor's export "
         "thread, gRPC's, the metrics store's); *receiver CPU* is the OTLP receiver process's, not charged to "
         "the sidecar."),
        "",
        md_table(headers, rows, left=2),
        "",
        "Per-round throughput ratios vs off: " + "; ".join(_spread(result)) + ".",
        "",
        _received(result)[:1].upper() + _received(result)[1:] + ".",
    ]
    errs = _errors(result)
    if errs:
        lines += ["", "Errors: " + "; ".join(errs) + "."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    result = bench_main(__doc__, argv, run, table, full=FULL, quick=QUICK)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
