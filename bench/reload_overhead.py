"""Reload overhead: what hot reloads cost the queries being served.

Two sidecars in this process, built from the same config file (the bundled
default, limits raised, as in ``execute_overhead``; every emulated model
answers in 20 ms): one steady, one reloaded every ``RELOAD_EVERY_S`` while
its rounds run. Each reload reads and validates the file, which alternates
between two versions differing in one skill's concurrency limit, so every
reload builds a changed runtime for that skill, reuses the other runtimes and
every backend, swaps, and retires the old generation once its queries are
done: about 20× what an operator editing the file does in a busy minute. A
load-generator process drives both closed-loop at concurrency 1 and 32, in
interleaved rounds. Also reported: how long a reload takes (read, validate,
build, swap), and the errors (none expected: no query may fail because of a
reload).

    .venv/bin/python -m bench.reload_overhead [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml

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
from bench.execute_overhead import BACKEND_MS, CONNECTIONS, LIMIT, REQUEST

NAME = "reload_overhead"
COMMAND = ".venv/bin/python -m bench.reload_overhead"
CONCURRENCY = (1, 32)
RELOAD_EVERY_S = 0.2
FULL = Plan(rounds=6, duration_s=1.5, warmup_s=0.5)
QUICK = Plan(rounds=2, duration_s=0.3, warmup_s=0.1)


def config_text(emulator_url: str, store: str, variant: int) -> str:
    """The bundled config, limits raised, pointed at the emulator; ``variant``
    1 raises the first skill's limit by one."""
    from router.config import default_config_path

    data = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    data["admission"]["default_concurrency_limit"] = LIMIT
    data["admission"]["default_queue_depth"] = LIMIT
    for skill in data["skills"].values():
        skill["concurrency_limit"] = LIMIT
        skill["queue_depth"] = LIMIT
        for impl in skill["implementations"]:
            impl["max_connections"] = CONNECTIONS
            impl["url"] = emulator_url
            impl.pop("api_key_env", None)
    first = next(iter(data["skills"].values()))
    first["concurrency_limit"] = LIMIT + variant
    data["storage"]["sqlite_path"] = store
    data["server"]["admin_listen"] = None
    return yaml.safe_dump(data, sort_keys=False)


class _Reloading:
    """Wraps the load generator: while a round runs against ``app``, the
    config file is rewritten and reloaded every ``RELOAD_EVERY_S``."""

    def __init__(self, gen: LoadGenerator, app: Any, path: Path, texts: Sequence[str]) -> None:
        self._gen, self._app, self._path, self._texts = gen, app, path, texts
        self.durations_ms: list[float] = []
        self.failed = 0

    async def run(self, job: Mapping[str, Any]) -> dict[str, Any]:
        if job.get("target") != self._app.address:
            return await self._gen.run(job)
        async with self._reloading():
            return await self._gen.run(job)

    @contextlib.asynccontextmanager
    async def _reloading(self) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(RELOAD_EVERY_S)
                await asyncio.to_thread(self._path.write_text, self._texts[self._app.generation.number % 2])
                t0 = time.perf_counter()
                result = await self._app.reload()
                self.durations_ms.append((time.perf_counter() - t0) * 1000)
                self.failed += not result.ok

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run(plan: Plan, *, profile: str | None = None, quick: bool = False) -> dict[str, Any]:
    from skill_router_client import build_context

    from router.app import build_app
    from router.config import load_config
    from router.v1 import router_pb2 as pb
    from router.v1 import router_pb2_grpc as pb_grpc

    quiet_logs()
    request = pb.ExecuteRequest(query=REQUEST["query"],
                                context=build_context(domain=REQUEST["domain"], complexity=REQUEST["complexity"]))
    levels = []
    with store_path() as db_steady, store_path() as db_reload, tempfile.TemporaryDirectory() as tmp:
        async with emulator_process({"seed": 0, "default": {"latency_ms": BACKEND_MS}}) as (emu_url, emu_proc):
            steady_file, reload_file = Path(tmp, "steady.yaml"), Path(tmp, "reloaded.yaml")
            texts = [config_text(emu_url, db_reload, v) for v in (0, 1)]
            await asyncio.to_thread(steady_file.write_text, config_text(emu_url, db_steady, 0))
            await asyncio.to_thread(reload_file.write_text, texts[0])
            steady = build_app(load_config(steady_file, {}), f"{LOOPBACK}:0")
            reloaded = build_app(load_config(reload_file, {}), f"{LOOPBACK}:0",
                                 loader=lambda: load_config(reload_file, {}))
            await steady.start()
            await reloaded.start()
            try:
                async with grpc.aio.insecure_channel(steady.address) as channel:
                    probe = await pb_grpc.RouterServiceStub(channel).Execute(request, timeout=10)
                job = {"kind": "grpc", "method": "Execute", "request": request.SerializeToString(), "timeout_s": 30,
                       "expect_results": len(probe.results)}
                variants = {"steady": {**job, "target": steady.address},
                            "reloading": {**job, "target": reloaded.address}}
                async with LoadGenerator() as gen:
                    driver = _Reloading(gen, reloaded, reload_file, texts)
                    for c in CONCURRENCY:
                        m = await measure(driver, variants, concurrency=c, rounds=plan.rounds,  # type: ignore[arg-type]
                                          duration_s=plan.duration_s, warmup_s=plan.warmup_s, emulator=emu_proc)
                        levels.append({"concurrency": c, "steady": m["steady"], "reloading": m["reloading"],
                                       "ratio": compare(m["reloading"], m["steady"])})
                generations = reloaded.generation.number
            finally:
                await reloaded.stop(0)
                await steady.stop(0)
    d = sorted(driver.durations_ms)
    return json_safe({
        "benchmark": NAME,
        "command": COMMAND + (" --quick" if quick else ""),
        "when": timestamp(),
        "quick": quick,
        "profiled": False,
        "machine": machine(),
        "plan": {"rounds": plan.rounds, "duration_s": plan.duration_s, "warmup_s": plan.warmup_s},
        "backend_latency_ms": BACKEND_MS,
        "reload_every_s": RELOAD_EVERY_S,
        "skills": len(probe.selections),
        "levels": levels,
        "reloads": {"count": len(d), "failed": driver.failed, "generations": generations,
                    "p50_ms": percentile(d, 0.5) if d else None, "p99_ms": percentile(d, 0.99) if d else None},
    })


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["concurrency", "p50 steady", "p50 reloading", "p50 ×", "p99 steady", "p99 reloading", "p99 ×",
               "qps steady", "qps reloading", "qps ×", "errors steady", "errors reloading"]
    rows = []
    for lv in result["levels"]:
        a, b, r = lv["steady"], lv["reloading"], lv["ratio"]
        rows.append([
            str(lv["concurrency"]),
            f"{fmt(a['p50_ms'])} ms", f"{fmt(b['p50_ms'])} ms", fmt(r["p50"]),
            f"{fmt(a['p99_ms'])} ms", f"{fmt(b['p99_ms'])} ms", fmt(r["p99"]),
            fmt(a["throughput_qps"], ".0f"), fmt(b["throughput_qps"], ".0f"), fmt(r["throughput"]),
            str(sum(a["errors"].values())), str(sum(b["errors"].values())),
        ])
    return headers, rows


def _reload_line(result: Mapping[str, Any]) -> str:
    r = result["reloads"]
    return (f"reloads: {r['count']} ({r['failed']} failed; generation {r['generations']} serving at the end), "
            f"each p50 {fmt(r['p50_ms'])} ms, p99 {fmt(r['p99_ms'])} ms (read, validate, build, swap)")


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    return "\n".join([
        f"Execute on a steady sidecar vs one reloaded every {fmt(result['reload_every_s'] * 1000, '.0f')} ms "
        "(× = reloading / steady)",
        text_table(headers, rows),
        _reload_line(result),
        footer(result, "variant and concurrency"),
    ])


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    return "\n".join([
        (f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
         f"Python {m['python']}. {result['plan']['rounds']} interleaved rounds × {result['plan']['duration_s']} s "
         f"per variant and concurrency; backends answer in {fmt(result['backend_latency_ms'], '.0f')} ms. "
         f"\"reloading\" reads, validates and swaps in its config file every "
         f"{fmt(result['reload_every_s'] * 1000, '.0f')} ms during its rounds (one skill's limit alternates). "
         "× is reloading / steady."),
        "",
        md_table(headers, rows),
        "",
        "R" + _reload_line(result)[1:] + ".",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    bench_main(__doc__, argv, run, table, full=FULL, quick=QUICK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
