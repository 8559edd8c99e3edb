"""Admin overhead: what the admin endpoint costs the sidecar's Execute path.

Two sidecars in this process, built from the same config (the bundled
default, limits raised, as in ``execute_overhead``; every emulated model
answers in 20 ms): one with the admin endpoint off, one with it on and
hammered, while its rounds run, by a scraper process that fetches
``/metrics`` and ``/api/dashboard`` ten times a second each (Prometheus
scrapes every 5–60 s and a dashboard refreshes every 3 s: this is a stress,
roughly 50× a watched, scraped sidecar). The scraper is a separate process
so its own CPU is not counted as the sidecar's; only the sidecar process's
CPU is (the admin server, its sampler and the snapshot reads live there).
A load-generator process drives both sidecars closed-loop at concurrency 1
and 32, in interleaved rounds. Also reported: the scraper's own latency and
response size for each path, under that load.

    .venv/bin/python -m bench.admin_overhead [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from bench._common import (
    LOOPBACK,
    LoadGenerator,
    Plan,
    bench_main,
    compare,
    emulator_process,
    fmt,
    footer,
    json_safe,
    machine,
    md_table,
    measure,
    percentile,
    quiet_logs,
    store_path,
    text_table,
    timestamp,
)
from bench.execute_overhead import BACKEND_MS, REQUEST, bench_config

NAME = "admin_overhead"
COMMAND = ".venv/bin/python -m bench.admin_overhead"
CONCURRENCY = (1, 32)
SCRAPE_HZ = 10.0
FULL = Plan(rounds=6, duration_s=1.5, warmup_s=0.5)
QUICK = Plan(rounds=2, duration_s=0.3, warmup_s=0.1)

# The scraper: stdlib only, prints one JSON line per fetch (path, ms, bytes, status).
SCRAPER = r"""
import json, sys, time, urllib.request
base, hz = sys.argv[1], float(sys.argv[2])
paths = ("/metrics", "/api/dashboard")
next_t = time.monotonic()
while True:
    for p in paths:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(base + p, timeout=10) as r:
                n, status = len(r.read()), r.status
        except Exception as e:
            n, status = 0, repr(e)
        print(json.dumps([p, (time.perf_counter() - t0) * 1000, n, status]), flush=True)
    next_t += 1 / hz
    time.sleep(max(0.0, next_t - time.monotonic()))
"""


class _Scraped:
    """Wraps the load generator: while a round runs against ``target``, the
    scraper process runs against ``admin_url``; the fetches are kept."""

    def __init__(self, gen: LoadGenerator, target: str, admin_url: str) -> None:
        self._gen, self._target, self._url = gen, target, admin_url
        self.fetches: list[list[Any]] = []

    async def run(self, job: Mapping[str, Any]) -> dict[str, Any]:
        if job.get("target") != self._target:
            return await self._gen.run(job)
        async with self._scraper():
            return await self._gen.run(job)

    @contextlib.asynccontextmanager
    async def _scraper(self) -> AsyncIterator[None]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SCRAPER, self._url, str(SCRAPE_HZ),
                                                    stdout=asyncio.subprocess.PIPE)
        try:
            yield
        finally:
            proc.terminate()
            out, _ = await proc.communicate()
            self.fetches += [json.loads(line) for line in out.decode().splitlines() if line.startswith("[")]


async def run(plan: Plan, *, profile: str | None = None, quick: bool = False) -> dict[str, Any]:
    from skill_router_client import build_context

    from router.app import build_app
    from router.v1 import router_pb2 as pb
    from router.v1 import router_pb2_grpc as pb_grpc

    quiet_logs()
    request = pb.ExecuteRequest(query=REQUEST["query"],
                                context=build_context(domain=REQUEST["domain"], complexity=REQUEST["complexity"]))
    levels = []
    with store_path() as db_off, store_path() as db_on:
        async with emulator_process({"seed": 0, "default": {"latency_ms": BACKEND_MS}}) as (emu_url, emu_proc):
            off = build_app(bench_config(emu_url, db_off).with_admin_listen(None), f"{LOOPBACK}:0")
            on = build_app(bench_config(emu_url, db_on).with_admin_listen(f"{LOOPBACK}:0"), f"{LOOPBACK}:0")
            await off.start()
            await on.start()
            try:
                assert on.admin is not None, "the admin endpoint did not start"
                async with grpc.aio.insecure_channel(on.address) as channel:
                    probe = await pb_grpc.RouterServiceStub(channel).Execute(request, timeout=10)
                job = {"kind": "grpc", "method": "Execute", "request": request.SerializeToString(), "timeout_s": 30,
                       "expect_results": len(probe.results)}
                variants = {"admin_off": {**job, "target": off.address}, "admin_on": {**job, "target": on.address}}
                async with LoadGenerator() as gen:
                    scraped = _Scraped(gen, on.address, on.admin.url)
                    for c in CONCURRENCY:
                        m = await measure(scraped, variants, concurrency=c, rounds=plan.rounds,  # type: ignore[arg-type]
                                          duration_s=plan.duration_s, warmup_s=plan.warmup_s, emulator=emu_proc)
                        levels.append({"concurrency": c, "admin_off": m["admin_off"], "admin_on": m["admin_on"],
                                       "ratio": compare(m["admin_on"], m["admin_off"])})
            finally:
                await on.stop(0)
                await off.stop(0)
    scrapes = {}
    for path in ("/metrics", "/api/dashboard"):
        got = [f for f in scraped.fetches if f[0] == path]
        ok = sorted(f[1] for f in got if f[3] == 200)
        scrapes[path] = {"fetches": len(got), "failed": len(got) - len(ok),
                         "p50_ms": percentile(ok, 0.5) if ok else None, "p99_ms": percentile(ok, 0.99) if ok else None,
                         "bytes": max((f[2] for f in got), default=0)}
    return json_safe({
        "benchmark": NAME,
        "command": COMMAND + (" --quick" if quick else ""),
        "when": timestamp(),
        "quick": quick,
        "profiled": False,
        "machine": machine(),
        "plan": {"rounds": plan.rounds, "duration_s": plan.duration_s, "warmup_s": plan.warmup_s},
        "backend_latency_ms": BACKEND_MS,
        "scrape_hz": SCRAPE_HZ,
        "skills": len(probe.selections),
        "levels": levels,
        "scrapes": scrapes,
    })


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["concurrency", "p50 off", "p50 on", "p50 ×", "p99 off", "p99 on", "p99 ×",
               "qps off", "qps on", "qps ×", "sidecar CPU/query off", "sidecar CPU/query on"]
    rows = []
    for lv in result["levels"]:
        a, b, r = lv["admin_off"], lv["admin_on"], lv["ratio"]
        rows.append([
            str(lv["concurrency"]),
            f"{fmt(a['p50_ms'])} ms", f"{fmt(b['p50_ms'])} ms", fmt(r["p50"]),
            f"{fmt(a['p99_ms'])} ms", f"{fmt(b['p99_ms'])} ms", fmt(r["p99"]),
            fmt(a["throughput_qps"], ".0f"), fmt(b["throughput_qps"], ".0f"), fmt(r["throughput"]),
            f"{fmt(a['server_cpu_us_per_call'], '.0f')} µs", f"{fmt(b['server_cpu_us_per_call'], '.0f')} µs",
        ])
    return headers, rows


def _scrape_line(result: Mapping[str, Any]) -> str:
    parts = []
    for path, s in result["scrapes"].items():
        parts.append(f"{path}: {s['fetches']} fetches ({s['failed']} failed), p50 {fmt(s['p50_ms'])} ms, "
                     f"p99 {fmt(s['p99_ms'])} ms, {s['bytes']} bytes")
    return "scraper, under the load: " + "; ".join(parts)


def _errors(result: Mapping[str, Any]) -> list[str]:
    return [f"concurrency {lv['concurrency']}, {name}: errors {lv[name]['errors']}"
            for lv in result["levels"] for name in ("admin_off", "admin_on") if lv[name]["errors"]]


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    return "\n".join([
        (f"Execute with the admin endpoint off vs on and scraped at {fmt(result['scrape_hz'], '.0f')} Hz "
         f"(/metrics and /api/dashboard each; × = on / off)"),
        text_table(headers, rows),
        _scrape_line(result),
        footer(result, "variant and concurrency"),
        *_errors(result),
    ])


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    lines = [
        (f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
         f"Python {m['python']}. {result['plan']['rounds']} interleaved rounds × {result['plan']['duration_s']} s "
         f"per variant and concurrency; backends answer in {fmt(result['backend_latency_ms'], '.0f')} ms. "
         f"\"on\" is scraped at {fmt(result['scrape_hz'], '.0f')} Hz on `/metrics` and on `/api/dashboard` "
         f"during its rounds (a separate process). × is on / off."),
        "",
        md_table(headers, rows),
        "",
        "S" + _scrape_line(result)[1:] + ".",
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
