"""Batching on/off: what micro-batching buys at saturation and what it costs
in latency when there is no load to amortise.

One batch-capable emulated skill (``http`` kind, ``batch: http_batch``):
a batched request (``POST /skill/batch``) takes a fixed overhead plus a
small cost per item, and a single request (``POST /skill``) takes the same
as a batch of one, so batching changes nothing for a lone query. The
skill's gate allows a few requests at once, so under load the gate, not the
backend, is what queries wait for: a batch takes one permit for many
queries. Two sidecars run in this process, identical but for
``batching.enabled``; a separate load-generator process drives both with
the same Execute request (``force_skills`` the skill, ``top_k`` 1),
closed-loop, in interleaved rounds, at three loads:

- **idle**: one client at a time. An idle skill sends at once, so
  batching should add nothing.
- **moderate**: as many clients as the gate has permits: nothing queues
  with batching off; with batching on a query that arrives while a batch is
  in flight waits at most one window.
- **saturated**: many more clients than permits: throughput with batching
  on vs off, the headline ratio.

Reported per load: p50/p99 and throughput of both, p50 added by batching
(on − off), throughput on/off, and from the batching sidecar's own counters
the batches sent, mean batch size (queries per backend request), mean wait
of a batch's first query and why batches were sent.

    .venv/bin/python -m bench.batching [--quick] [--json] [--profile [STATS_FILE]]
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
)

NAME = "batching"
COMMAND = ".venv/bin/python -m bench.batching"
FULL = Plan(rounds=3, duration_s=3.0, warmup_s=0.5)
QUICK = Plan(rounds=1, duration_s=0.6, warmup_s=0.2)

SKILL = "batched"
MODEL = "batched"
LIMIT = 4  # the skill's concurrency limit (gate permits)
BATCH_OVERHEAD_MS = 50.0  # a batched request's fixed cost
PER_ITEM_MS = 2.0  # plus this per query in it
SINGLE_MS = BATCH_OVERHEAD_MS + PER_ITEM_MS  # a single request costs what a batch of one does
WINDOW_MS = 20.0
MAX_BATCH_SIZE = 32
LOADS = (("idle", 1), ("moderate", LIMIT), ("saturated", 64))
REQUEST = {"query": "Summarise this support ticket and suggest a reply", "domain": "general", "complexity": 5.0}


def emulator_config() -> dict[str, Any]:
    return {"seed": 0, "models": {MODEL: {"latency_ms": SINGLE_MS, "batch_overhead_ms": BATCH_OVERHEAD_MS,
                                          "per_item_ms": PER_ITEM_MS}}}


def sidecar_config(emulator_url: str, *, batching: bool, sqlite_path: str) -> Any:
    from router.config import parse_config

    data = {
        "skills": {SKILL: {
            "concurrency_limit": LIMIT,
            # Deep and patient enough that nothing is shed at saturation with
            # batching off: both sidecars answer every query; they differ in
            # how long queries wait for a permit.
            "queue_depth": 1024, "queue_timeout_s": 60,
            "implementations": [{
                "name": f"{SKILL}-http", "backend": "http", "url": emulator_url, "model": MODEL, "quality": 0.9,
                "cost_per_query": 0.01, "expected_latency_ms": SINGLE_MS, "batch": "http_batch",
                "max_connections": 4 * LIMIT, "timeout_s": 60,
            }],
        }},
        "batching": {"enabled": batching, "window_ms": WINDOW_MS, "max_batch_size": MAX_BATCH_SIZE},
        "storage": {"sqlite_path": sqlite_path},
        "server": {"grace_period_s": 5},
    }
    return parse_config(data, f"bench.batching (batching {'on' if batching else 'off'})", {})


def _batch_delta(after: Any, before: Any) -> dict[str, Any]:
    """The batching sidecar's counters over one load (its warm-up included)."""
    if after is None:
        return {"batches": 0, "items": 0, "mean_batch_size": None, "mean_first_wait_ms": None, "flush_reasons": {}}
    b0 = before.batches if before else 0
    i0 = before.items if before else 0
    w0 = before.first_wait_sum_s if before else 0.0
    r0 = dict(before.flush_reasons) if before else {}
    batches, items = after.batches - b0, after.items - i0
    reasons = {k: v - r0.get(k, 0) for k, v in after.flush_reasons.items() if v - r0.get(k, 0)}
    return {
        "batches": batches, "items": items,
        "mean_batch_size": items / batches if batches else None,
        "mean_first_wait_ms": (after.first_wait_sum_s - w0) / batches * 1000 if batches else None,
        "flush_reasons": reasons,
    }


async def run(plan: Plan, *, profile: str | None = None, quick: bool = False) -> dict[str, Any]:
    from skill_router_client import build_context

    from router.app import build_app
    from router.v1 import router_pb2 as pb
    from router.v1 import router_pb2_grpc as pb_grpc

    quiet_logs()
    profiler = Profiler(profile)
    request = pb.ExecuteRequest(query=REQUEST["query"], context=build_context(
        domain=REQUEST["domain"], complexity=REQUEST["complexity"], force_skills=[SKILL], top_k=1))
    loads = []
    async with emulator_process(emulator_config()) as (emu_url, emu_proc):
        with store_path() as off_db, store_path() as on_db:
            apps = {"off": build_app(sidecar_config(emu_url, batching=False, sqlite_path=off_db), f"{LOOPBACK}:0"),
                    "on": build_app(sidecar_config(emu_url, batching=True, sqlite_path=on_db), f"{LOOPBACK}:0")}
            for app in apps.values():
                await app.start()
            try:
                for name, app in apps.items():
                    async with grpc.aio.insecure_channel(app.address) as channel:
                        probe = await pb_grpc.RouterServiceStub(channel).Execute(request, timeout=10)
                    bad = [f"{r.skill}: {r.error}" for r in probe.results if r.status != pb.SKILL_STATUS_OK]
                    if bad or len(probe.results) != 1:
                        raise RuntimeError(f"the probe Execute (batching {name}) did not succeed: {bad or 'no result'}")
                variants = {name: {"kind": "grpc", "target": app.address, "method": "Execute",
                                   "request": request.SerializeToString(), "timeout_s": 60, "expect_results": 1}
                            for name, app in apps.items()}
                on_rt = apps["on"].runtimes[SKILL]
                async with LoadGenerator() as gen:
                    for load, clients in LOADS:
                        before = on_rt.batch_stats()
                        m = await measure(gen, variants, concurrency=clients, rounds=plan.rounds,
                                          duration_s=plan.duration_s, warmup_s=plan.warmup_s, emulator=emu_proc,
                                          profiler=profiler, profiled="on")
                        off, on = m["off"], m["on"]
                        loads.append({
                            "load": load, "clients": clients, "off": off, "on": on, "ratio": compare(on, off),
                            "added_ms": {"p50": on["p50_ms"] - off["p50_ms"], "p99": on["p99_ms"] - off["p99_ms"]},
                            "batching": _batch_delta(on_rt.batch_stats(), before),
                        })
            finally:
                for app in apps.values():
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
        "backend": {"single_ms": SINGLE_MS, "batch_overhead_ms": BATCH_OVERHEAD_MS, "per_item_ms": PER_ITEM_MS},
        "limit": LIMIT,
        "window_ms": WINDOW_MS,
        "max_batch_size": MAX_BATCH_SIZE,
        "request": REQUEST,
        "loads": loads,
        "saturated_throughput_ratio": loads[-1]["ratio"]["throughput"],
    })


# -- output ------------------------------------------------------------------------------------


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["load (clients)", "p50 off", "p50 on", "p50 added", "p99 off", "p99 on", "qps off", "qps on",
               "qps on/off", "batches", "mean batch size", "mean first wait", "sent because"]
    rows = []
    for lv in result["loads"]:
        off, on, r, a, b = lv["off"], lv["on"], lv["ratio"], lv["added_ms"], lv["batching"]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(b["flush_reasons"].items(), key=lambda kv: -kv[1]))
        rows.append([
            f"{lv['load']} ({lv['clients']})",
            f"{fmt(off['p50_ms'])} ms", f"{fmt(on['p50_ms'])} ms", f"{fmt(a['p50'], '+.2f')} ms",
            f"{fmt(off['p99_ms'])} ms", f"{fmt(on['p99_ms'])} ms",
            fmt(off["throughput_qps"], ".0f"), fmt(on["throughput_qps"], ".0f"), f"{fmt(r['throughput'])}×",
            str(b["batches"]), fmt(b["mean_batch_size"]), f"{fmt(b['mean_first_wait_ms'])} ms", reasons or "–",
        ])
    return headers, rows


def _setup(result: Mapping[str, Any]) -> str:
    be = result["backend"]
    return (f"one `http` skill with `batch: http_batch`, gate limit {result['limit']} (queue deep enough that "
            f"nothing is shed); the emulated backend takes {be['batch_overhead_ms']:g} ms + {be['per_item_ms']:g} ms "
            f"per query for a batch and {be['single_ms']:g} ms for a single request; batching on: window "
            f"{result['window_ms']:g} ms, max batch size {result['max_batch_size']}")


def _errors(result: Mapping[str, Any]) -> list[str]:
    return [f"{lv['load']}, batching {name}: errors {lv[name]['errors']}"
            for lv in result["loads"] for name in ("off", "on") if lv[name]["errors"]]


def _spread(result: Mapping[str, Any]) -> str:
    parts = []
    for lv in result["loads"]:
        rng = lv["ratio"].get("throughput_round_range")
        if rng:
            parts.append(f"{lv['load']} {fmt(rng[0])}–{fmt(rng[1])}")
    return "per-round throughput on/off: " + ", ".join(parts)


def _headline(result: Mapping[str, Any]) -> str:
    by = {lv["load"]: lv for lv in result["loads"]}
    sat, idle, mod = by["saturated"], by["idle"], by["moderate"]
    return (f"saturated: {fmt(sat['ratio']['throughput'])}× the throughput with batching on "
            f"({fmt(sat['batching']['mean_batch_size'])} queries per backend request); p50 added: "
            f"idle {fmt(idle['added_ms']['p50'], '+.2f')} ms, moderate {fmt(mod['added_ms']['p50'], '+.2f')} ms "
            f"(window {result['window_ms']:g} ms)")


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    return "\n".join([
        f"Batching off vs on ({_setup(result)})",
        text_table(headers, rows),
        _headline(result),
        _spread(result),
        footer(result, "variant and load"),
        *_errors(result),
    ])


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    h = _headline(result)
    lines = [
        f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
        f"Python {m['python']}, grpcio {m['grpcio']}. {result['plan']['rounds']} interleaved rounds × "
        f"{result['plan']['duration_s']} s per variant and load. Setup: {_setup(result)}. *Added* is on − off; "
        f"batches, mean batch size, first-query wait and send reasons are the batching sidecar's own counters "
        f"over the load (warm-up included).",
        "",
        md_table(headers, rows),
        "",
        h[0].upper() + h[1:] + ".",
        "",
        _spread(result)[0].upper() + _spread(result)[1:] + ".",
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
