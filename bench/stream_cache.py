"""Streaming and caching: time to first byte of ExecuteStream against
Execute's total, and a Zipf replay with the response cache on and off.

Part 1, time to first byte. Three skills chosen for every query, with
backends of different latencies (emulated, in a process of their own): an
``openai`` model that streams its first token after 100 ms and a word every
10 ms, an ``http`` skill that answers whole after 300 ms, and an ``openai``
model whose first token comes after 800 ms. Execute waits for the slowest;
ExecuteStream sends the routing decision at once and the fast skill's first
token as it comes. The same query shape is sent one at a time, Execute and
ExecuteStream interleaved (A B, B A, ...), from the same client. Reported:
p50/p90 of Execute's total, and of ExecuteStream's first event (the routing
decision), first token and last event (``done``), with ratios against
Execute's total in the same run.

Part 2, the cache. A workload with repeats: ``distinct`` questions drawn
from a Zipf distribution (s = 1.1, seeded: a few questions are asked often,
most rarely), replayed at concurrency 8 against two sidecars over the same
emulated backends (100 ms each, two skills chosen per query, $0.04 and
$0.02): one with ``cache.enabled: false``, one with it on. Reported: total
cost, backend requests, hit rate, p50/p99 latency; ratios cache on / off.

    .venv/bin/python -m bench.stream_cache [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bench._common import emulator_process, fmt, machine, md_table, percentile, quiet_logs, text_table, timestamp

NAME = "stream_cache"

EMULATOR = {
    "seed": 7,
    "models": {
        "fast": {"latency_ms": 100, "token_ms": 10},
        "whole": {"latency_ms": 300},
        "slow": {"latency_ms": 800, "token_ms": 10},
        "cache-a": {"latency_ms": 100},
        "cache-b": {"latency_ms": 100},
    },
}


def _impl(name: str, backend: str, url: str, model: str, cost: float, latency_ms: float) -> dict[str, Any]:
    return {"name": name, "backend": backend, "url": url if backend == "openai" else f"{url}/models/{model}",
            "model": model, "quality": 0.9, "cost_per_query": cost, "expected_latency_ms": latency_ms,
            "max_connections": 64, "timeout_s": 10}


def sidecar_config(url: str, *, cache: bool) -> Any:
    from router.config import parse_config

    def skill(model: str, backend: str, cost: float, latency_ms: float, keyword: str) -> dict[str, Any]:
        return {"activation": {"keywords": [keyword]}, "concurrency_limit": 64, "queue_depth": 256,
                "implementations": [_impl(f"{model}-impl", backend, url, model, cost, latency_ms)]}

    skills = {
        "fast": skill("fast", "openai", 0.01, 100, "three"),
        "whole": skill("whole", "http", 0.02, 300, "three"),
        "slow": skill("slow", "openai", 0.03, 800, "three"),
        "cache-a": skill("cache-a", "http", 0.04, 100, "zipf"),
        "cache-b": skill("cache-b", "openai", 0.02, 100, "zipf"),
    }
    data = {"skills": skills, "storage": {"sqlite_path": None}, "server": {"admin_listen": None},
            "cache": {"enabled": cache, "ttl_s": 3600, "max_entries": 10000}}
    return parse_config(data, "<bench stream_cache>", {})


THREE = {"domain": "general", "complexity": 5, "force_skills": ["fast", "whole", "slow"]}
TWO = {"domain": "general", "complexity": 5, "force_skills": ["cache-a", "cache-b"]}


async def ttfb(url: str, samples: int) -> dict[str, Any]:
    from skill_router_client import AsyncRouterClient

    from router.app import build_app

    app = build_app(sidecar_config(url, cache=False), "127.0.0.1:0")
    await app.start()
    execute_ms: list[float] = []
    first_event_ms: list[float] = []
    first_delta_ms: list[float] = []
    done_ms: list[float] = []
    try:
        async with AsyncRouterClient(app.address, timeout=30) as client:
            await client.execute("warm up three", **THREE)

            async def unary(i: int) -> None:
                t0 = time.perf_counter()
                await client.execute(f"question {i} for three skills", **THREE)
                execute_ms.append((time.perf_counter() - t0) * 1000)

            async def streamed(i: int) -> None:
                t0 = time.perf_counter()
                first = delta = None
                async for ev in client.execute_stream(f"question {i} for three skills", **THREE):
                    now = (time.perf_counter() - t0) * 1000
                    if first is None:
                        first = now
                    if delta is None and ev.WhichOneof("event") == "delta":
                        delta = now
                assert first is not None and delta is not None
                first_event_ms.append(first)
                first_delta_ms.append(delta)
                done_ms.append((time.perf_counter() - t0) * 1000)

            for i in range(samples):
                order = (unary, streamed) if i % 2 == 0 else (streamed, unary)
                for run in order:
                    await run(i)
    finally:
        await app.stop(1)

    def q(values: list[float]) -> dict[str, float]:
        s = sorted(values)
        return {"p50_ms": percentile(s, 0.5), "p90_ms": percentile(s, 0.9)}

    ex = q(execute_ms)
    out = {"samples": samples, "execute_total": ex, "stream_first_event": q(first_event_ms),
           "stream_first_token": q(first_delta_ms), "stream_done": q(done_ms)}
    for key in ("stream_first_event", "stream_first_token", "stream_done"):
        out[key]["ratio_p50"] = out[key]["p50_ms"] / ex["p50_ms"]
    return out


def zipf_workload(distinct: int, requests: int, s: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    weights = [1.0 / (rank ** s) for rank in range(1, distinct + 1)]
    return rng.choices(range(distinct), weights=weights, k=requests)


async def replay(url: str, workload: Sequence[int], *, cache: bool, concurrency: int = 8) -> dict[str, Any]:
    from skill_router_client import AsyncRouterClient

    from router.app import build_app

    app = build_app(sidecar_config(url, cache=cache), "127.0.0.1:0")
    await app.start()
    latencies: list[float] = []
    cost = saved = 0.0
    hits = 0
    try:
        async with AsyncRouterClient(app.address, timeout=30) as client:
            queue = list(reversed(workload))

            async def caller() -> None:
                nonlocal cost, saved, hits
                while queue:
                    i = queue.pop()
                    t0 = time.perf_counter()
                    resp = await client.execute(f"zipf question number {i}: what does it mean?", **TWO)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    cost += resp.cost.actual_usd
                    saved += resp.cost.cache_saved_usd
                    hits += sum(1 for r in resp.results if r.cached)

            t0 = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            wall = time.perf_counter() - t0
    finally:
        await app.stop(1)
    s = sorted(latencies)
    calls = 2 * len(workload)
    return {"cache": cache, "requests": len(workload), "cost_usd": cost, "cache_saved_usd": saved,
            "backend_calls": calls - hits, "hit_rate": hits / calls, "p50_ms": percentile(s, 0.5),
            "p99_ms": percentile(s, 0.99), "mean_ms": sum(s) / len(s), "wall_s": wall}


async def run(quick: bool) -> dict[str, Any]:
    quiet_logs()
    samples = 6 if quick else 30
    distinct, requests = (100, 200) if quick else (500, 2000)
    workload = zipf_workload(distinct, requests, 1.1, seed=11)
    async with emulator_process(EMULATOR) as (url, _):
        first = await ttfb(url, samples)
        off = await replay(url, workload, cache=False)
        on = await replay(url, workload, cache=True)
    return {"name": NAME, "timestamp": timestamp(), "machine": machine(), "quick": quick, "ttfb": first,
            "zipf": {"distinct": distinct, "requests": requests, "s": 1.1, "off": off, "on": on,
                     "ratio_cost": on["cost_usd"] / off["cost_usd"], "ratio_p50": on["p50_ms"] / off["p50_ms"],
                     "ratio_p99": on["p99_ms"] / off["p99_ms"],
                     "ratio_backend_calls": on["backend_calls"] / off["backend_calls"]}}


def _ttfb_rows(r: Mapping[str, Any]) -> list[list[str]]:
    t = r["ttfb"]
    rows = [["Execute (total)", fmt(t["execute_total"]["p50_ms"], ".0f"), fmt(t["execute_total"]["p90_ms"], ".0f"),
             "1.00"]]
    for key, label in (("stream_first_event", "ExecuteStream first event (routing)"),
                       ("stream_first_token", "ExecuteStream first token"), ("stream_done", "ExecuteStream done")):
        rows.append([label, fmt(t[key]["p50_ms"], ".0f"), fmt(t[key]["p90_ms"], ".0f"), fmt(t[key]["ratio_p50"])])
    return rows


def _zipf_rows(r: Mapping[str, Any]) -> list[list[str]]:
    z = r["zipf"]
    rows = []
    for key in ("off", "on"):
        v = z[key]
        rows.append([f"cache {key}", fmt(v["cost_usd"], ".2f"), str(v["backend_calls"]), fmt(v["hit_rate"] * 100, ".0f"),
                     fmt(v["p50_ms"], ".0f"), fmt(v["p99_ms"], ".0f")])
    rows.append(["on / off", fmt(z["ratio_cost"]), fmt(z["ratio_backend_calls"]), "", fmt(z["ratio_p50"]),
                 fmt(z["ratio_p99"])])
    return rows


TTFB_HEADERS = ["", "p50 ms", "p90 ms", "p50 / Execute"]
ZIPF_HEADERS = ["", "cost $", "backend calls", "hit %", "p50 ms", "p99 ms"]


def _note(r: Mapping[str, Any]) -> str:
    m, z = r["machine"], r["zipf"]
    return (f"{m['cpus']} CPUs, Python {m['python']} ({m['note']}); {r['ttfb']['samples']} queries per variant; "
            f"Zipf replay: {z['requests']} requests over {z['distinct']} questions, s = {z['s']}, concurrency 8"
            + (" — QUICK: rough figures" if r["quick"] else ""))


def table(r: Mapping[str, Any]) -> str:
    return "\n\n".join([text_table(TTFB_HEADERS, _ttfb_rows(r)), text_table(ZIPF_HEADERS, _zipf_rows(r)), _note(r)])


def markdown(r: Mapping[str, Any]) -> str:
    return "\n\n".join([f"Measured {r['timestamp']} with `.venv/bin/python -m bench.stream_cache`.", md_table(TTFB_HEADERS, _ttfb_rows(r)),
                        md_table(ZIPF_HEADERS, _zipf_rows(r)), _note(r) + "."])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke check (few samples; figures rough)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    result = asyncio.run(run(args.quick))
    if args.json:
        import json
        print(json.dumps(result, allow_nan=False))
    else:
        print(table(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
