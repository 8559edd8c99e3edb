"""A flood of concurrent Executes: every one answered or refused, and memory.

Issue 12's row "10,000 concurrent Executes, 3 skills each, 1-2 s backends,
limits raised as a user would": the sidecar (``skill-router serve``, a
subprocess of its own) runs the bundled default config pointed at the
emulator (a process of its own; every model answers in a lognormal
1.4 s median, 2 s p99), with the per-skill limits and queues raised to hold
the whole flood (concurrency limit 100,000, queue 100,000 deep, queue
timeout 60 s, 1,500 connections per implementation). The load generator (a
process of its own) starts every Execute at once over 64 channels, each
with a 120 s deadline, and counts what comes back by status code (and
whether a refusal carries a RetryInfo delay). The sidecar's resident memory
is sampled every 100 ms (psutil).

A second variant runs the same flood **past capacity**: each skill's limit
set to 20 in flight and 20 queued; what does not fit must be refused with
RESOURCE_EXHAUSTED and RetryInfo, never dropped or cancelled.

    .venv/bin/python -m bench.flood_memory [--calls 10000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from bench._common import (
    LoadGenerator,
    fmt,
    json_safe,
    machine,
    md_table,
    percentile,
    progress,
    sidecar_process,
    text_table,
    timestamp,
)
from bench.one_skill import REQUEST

NAME = "flood_memory"
COMMAND = ".venv/bin/python -m bench.flood_memory"
CALLS = 10_000
QUICK_CALLS = 1_000
CHANNELS = 64
TIMEOUT_S = 120.0
AIM_RSS = 1 << 30
VARIANTS = {"raised": {"limit": 100_000, "queue": 100_000},
            "past_capacity": {"limit": 20, "queue": 20}}


def config_data(emulator_url: str, limit: int, queue: int) -> dict[str, Any]:
    import yaml

    from router.config import default_config_path

    data = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    data["admission"].update({"default_concurrency_limit": limit, "default_queue_depth": queue,
                              "queue_timeout_s": 60})
    for skill in data["skills"].values():
        skill["concurrency_limit"] = limit
        skill["queue_depth"] = queue
        skill.pop("pinned", None)
        for impl in skill["implementations"]:
            impl["max_connections"] = 1500
            impl["url"] = emulator_url
            impl["timeout_s"] = 60
            impl.pop("api_key_env", None)
    data["server"].update({"admin_listen": None, "default_deadline_s": TIMEOUT_S, "grace_period_s": 2})
    data["storage"]["sqlite_path"] = None
    return data


async def _sample_rss(proc: Any, out: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            out["peak"] = max(out.get("peak", 0), proc.memory_info().rss)
        except Exception:  # the process is gone
            return
        await asyncio.sleep(0.1)


async def run_variant(gen: LoadGenerator, emu_url: str, name: str, calls: int) -> dict[str, Any]:
    from skill_router_client import build_context

    from router.v1 import router_pb2 as pb

    v = VARIANTS[name]
    request = pb.ExecuteRequest(query=REQUEST["query"], context=build_context(
        domain=REQUEST["domain"], complexity=REQUEST["complexity"]))
    async with sidecar_process(config_data(emu_url, v["limit"], v["queue"])) as (address, proc):
        rss: dict[str, int] = {"ready": proc.memory_info().rss}
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(proc, rss, stop))
        cpu0 = sum(proc.cpu_times()[:2])
        progress(f"{name}: {calls} Executes at once over {CHANNELS} channels ...")
        res = await gen.run({"kind": "burst", "target": address, "request": request.SerializeToString(),
                             "calls": calls, "channels": CHANNELS, "timeout_s": TIMEOUT_S})
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        stop.set()
        await sampler
        rss["after"] = proc.memory_info().rss
    ok = sorted(res["ok_ms"])
    progress(f"{name}: {res['codes']} in {res['wall_s']:.1f} s, peak RSS {rss.get('peak', 0) / 2**20:.0f} MiB")
    return {"variant": name, **v, "calls": calls, "codes": res["codes"], "retry_info": res["retry_info"],
            "degraded": res["degraded"], "wall_s": res["wall_s"], "ok_p50_ms": percentile(ok, 0.5),
            "ok_p99_ms": percentile(ok, 0.99), "rss": rss, "sidecar_cpu_s": cpu}


async def run(calls: int, quick: bool) -> dict[str, Any]:
    from bench._common import emulator_process

    emulator = {"seed": 0, "default": {"latency_ms": 1400, "p99_ms": 2000}}
    rows = []
    async with emulator_process(emulator) as (emu_url, _), LoadGenerator() as gen:
        for name in VARIANTS:
            rows.append(await run_variant(gen, emu_url, name, calls))
    return json_safe({"benchmark": NAME, "command": COMMAND + (f" --calls {calls}" if calls != CALLS else ""),
                      "when": timestamp(), "quick": quick, "machine": machine(), "rows": rows})


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["variant", "per-skill limit / queue", "Executes", "OK", "RESOURCE_EXHAUSTED (with RetryInfo)",
               "CANCELLED", "other", "wall", "OK p50 / p99", "sidecar RSS ready / peak", "sidecar CPU"]
    out = []
    for r in result["rows"]:
        codes = dict(r["codes"])
        ok, rex, can = codes.pop("OK", 0), codes.pop("RESOURCE_EXHAUSTED", 0), codes.pop("CANCELLED", 0)
        out.append([r["variant"].replace("_", " "), f"{r['limit']:,} / {r['queue']:,}", f"{r['calls']:,}",
                    f"{ok:,}", f"{rex:,} ({r['retry_info']:,})", f"{can:,}",
                    ", ".join(f"{k} {n:,}" for k, n in codes.items()) or "0", f"{fmt(r['wall_s'], '.1f')} s",
                    f"{fmt(r['ok_p50_ms'] / 1000, '.2f')} / {fmt(r['ok_p99_ms'] / 1000, '.2f')} s",
                    f"{r['rss']['ready'] / 2**20:.0f} / {r['rss'].get('peak', 0) / 2**20:.0f} MiB",
                    f"{fmt(r['sidecar_cpu_s'], '.1f')} s"])
    return headers, out


def _verdict(result: Mapping[str, Any]) -> str:
    parts = []
    for r in result["rows"]:
        codes = r["codes"]
        answered = codes.get("OK", 0)
        silent = codes.get("CANCELLED", 0)
        refused = codes.get("RESOURCE_EXHAUSTED", 0)
        peak = r["rss"].get("peak", 0)
        if r["variant"] == "raised":
            parts.append(f"limits raised: {answered:,} of {r['calls']:,} answered, {r['calls'] - answered:,} not, "
                         f"peak RSS {peak / 2**20:.0f} MiB (aim: all answered within "
                         f"{AIM_RSS / 2**30:g} GiB: {'met' if answered == r['calls'] and peak <= AIM_RSS else 'not met'})")
        else:
            parts.append(f"past capacity: {refused:,} refused with RESOURCE_EXHAUSTED ({r['retry_info']:,} with "
                         f"RetryInfo), {silent:,} CANCELLED")
    return "; ".join(parts)


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    return "\n".join([text_table(headers, rows), _verdict(result) + "."])


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    return "\n".join([
        f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
        f"Python {m['python']}, grpcio {m['grpcio']}.", "", md_table(headers, rows), "", _verdict(result) + "."])


def main(argv: Sequence[str] | None = None) -> int:
    from router.app import run as run_loop

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, help=f"Executes in the flood (default {CALLS:,}; --quick {QUICK_CALLS:,})")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    calls = args.calls or (QUICK_CALLS if args.quick else CALLS)
    result = run_loop(run(calls, args.quick))
    print(json.dumps(result, allow_nan=False) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
