"""Execute overhead: what the sidecar adds to the backends' own time.

Every emulated model answers in a fixed 20 ms (no jitter). The sidecar runs
the bundled default config pointed at the emulator, with the per-skill
admission limits, queues and connection pools raised far above the load (so
this measures the router's overhead, not its admission policy, which has a
benchmark of its own). The baseline is what the web app would do without
the sidecar: send, per query, the same k requests concurrently that the
sidecar sends for its k chosen skills (``POST /v1/chat/completions`` for
``openai`` skills, ``POST /skill`` for ``http`` skills, same bodies) with
warm pooled ``httpx.AsyncClient``s, the library the sidecar's backends use
(one client per call, as the sidecar holds one per implementation: httpcore's
pool looks at every pooled connection on each request, so one client with k
times the connections would be slower than the sidecar's). A second
reference does the same with ``aiohttp`` (a leaner client): the closest a
Python caller gets to the backends' own time. All three are driven from the
same load-generator process, closed-loop at concurrency 1, 16 and 64, in
interleaved rounds; the emulator runs in a process of its own.

Reported: p50/p99 latency, the milliseconds the sidecar adds and the ratio
(against the aiohttp baseline, a caller that is not itself the bottleneck;
against the httpx one, CPU-bound in its process at concurrency 16 and 64,
in the JSON and the last
columns), throughput, CPU per query (load generator + sidecar process), and
the sidecar process's resident memory (psutil) before start, when ready, at
its peak under load and after the load.

    .venv/bin/python -m bench.execute_overhead [--quick] [--json] [--profile [STATS_FILE]]
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from bench._common import (
    LOOPBACK,
    LoadGenerator,
    Plan,
    Profiler,
    RssSampler,
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

NAME = "execute_overhead"
COMMAND = ".venv/bin/python -m bench.execute_overhead"
CONCURRENCY = (1, 16, 64)
BACKEND_MS = 20.0
FULL = Plan(rounds=4, duration_s=1.5, warmup_s=0.5)
QUICK = Plan(rounds=1, duration_s=0.3, warmup_s=0.1)
REQUEST = {"query": "Review this NDA clause for risks in a leasing deal", "domain": "legal", "complexity": 6.0}
# Far above the highest concurrency: no queueing or shedding in the sidecar,
# no waiting for a pooled connection on either side.
LIMIT = 1024
CONNECTIONS = 256


def bench_config(emulator_url: str, store: str) -> Any:
    """The bundled default config with admission limits and pools raised."""
    import yaml

    from router.config import default_config_path, parse_config

    data = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    data["admission"]["default_concurrency_limit"] = LIMIT
    data["admission"]["default_queue_depth"] = LIMIT
    for skill in data["skills"].values():
        skill["concurrency_limit"] = LIMIT
        skill["queue_depth"] = LIMIT
        for impl in skill["implementations"]:
            impl["max_connections"] = CONNECTIONS
    data["storage"]["sqlite_path"] = store
    return parse_config(data, "default.yaml (bench: limits raised)").with_urls(emulator_url)


def baseline_calls(config: Any, response: Any) -> list[tuple[str, dict[str, Any]]]:
    """The requests the sidecar sent for ``response`` (an ExecuteResponse):
    one per chosen skill, with the bodies its backends build."""
    skills = {s.name: s for s in config.skills}
    calls: list[tuple[str, dict[str, Any]]] = []
    for sel in response.selections:
        skill = skills[sel.skill]
        impl = next(i for i in skill.implementations if i.name == sel.implementation.implementation.name)
        system_prompt = getattr(skill, "system_prompt", None)
        if impl.backend == "openai":
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages.append({"role": "user", "content": REQUEST["query"]})
            calls.append(("/v1/chat/completions", {"model": impl.model, "messages": messages}))
        else:
            item: dict[str, Any] = {
                "query": REQUEST["query"],
                "context": {"domain": REQUEST["domain"], "complexity": REQUEST["complexity"], "metadata": {}},
                "skill": skill.name, "model": impl.model, "query_id": response.query_id,
            }
            if system_prompt:
                item["system_prompt"] = system_prompt
            calls.append(("/skill", item))
    return calls


async def run(plan: Plan, *, profile: str | None = None, quick: bool = False) -> dict[str, Any]:
    from skill_router_client import build_context

    from router.app import build_app
    from router.v1 import router_pb2 as pb
    from router.v1 import router_pb2_grpc as pb_grpc

    quiet_logs()
    profiler = Profiler(profile)
    request = pb.ExecuteRequest(query=REQUEST["query"],
                                context=build_context(domain=REQUEST["domain"], complexity=REQUEST["complexity"]))
    levels = []
    rss = RssSampler()
    memory: dict[str, int] = {"before_start": rss.now()}
    emulator = {"seed": 0, "default": {"latency_ms": BACKEND_MS}}
    with store_path() as db:
        async with emulator_process(emulator) as (emu_url, emu_proc):
            config = bench_config(emu_url, db)
            app = build_app(config, f"{LOOPBACK}:0")
            await app.start()
            try:
                memory["ready"] = rss.now()
                async with grpc.aio.insecure_channel(app.address) as channel:
                    probe = await pb_grpc.RouterServiceStub(channel).Execute(request, timeout=10)
                bad = [f"{r.skill}: {r.error}" for r in probe.results if r.status != pb.SKILL_STATUS_OK]
                if bad or not probe.results:
                    raise RuntimeError(f"the sidecar's probe Execute did not succeed: {bad or 'no results'}")
                calls = baseline_calls(config, probe)
                direct = {"base_url": emu_url, "calls": calls, "max_connections": CONNECTIONS, "timeout_s": 30}
                variants = {
                    "direct_httpx": {"kind": "http", **direct},
                    "direct_aiohttp": {"kind": "aiohttp", **direct},
                    "sidecar": {"kind": "grpc", "target": app.address, "method": "Execute",
                                "request": request.SerializeToString(), "timeout_s": 30,
                                "expect_results": len(probe.results)},
                }
                rss.start()
                async with LoadGenerator() as gen:
                    for c in CONCURRENCY:
                        m = await measure(gen, variants, concurrency=c, rounds=plan.rounds, duration_s=plan.duration_s,
                                          warmup_s=plan.warmup_s, emulator=emu_proc, profiler=profiler,
                                          profiled="sidecar")
                        level: dict[str, Any] = {"concurrency": c, **m}
                        s = m["sidecar"]
                        for base in ("direct_httpx", "direct_aiohttp"):
                            b = m[base]
                            level[f"vs_{base.removeprefix('direct_')}"] = {
                                **compare(s, b),
                                "added_ms": {"p50": s["p50_ms"] - b["p50_ms"], "p99": s["p99_ms"] - b["p99_ms"],
                                             "mean": s["mean_ms"] - b["mean_ms"]},
                            }
                        levels.append(level)
                await rss.stop()
                memory["peak_under_load"] = rss.peak
                await asyncio.sleep(0.5)
                memory["after_load"] = rss.now()
            finally:
                await app.stop(0)
        memory["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
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
        "backend_latency_ms": BACKEND_MS,
        "request": REQUEST,
        "k": len(calls),
        "calls": [f"{path} {body.get('model') or body.get('skill')}" for path, body in calls],
        "selected": [s.skill for s in probe.selections],
        "levels": levels,
        "rss_bytes": memory,
        "rss_peak_over_ready": memory["peak_under_load"] / memory["ready"],
    })


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


VARIANTS = (("direct_httpx", "direct (httpx)"), ("direct_aiohttp", "direct (aiohttp)"), ("sidecar", "sidecar"))


def _cpu_per_query(name: str, summary: Mapping[str, Any]) -> float:
    """Load generator + sidecar CPU per query (the sidecar process is idle
    while a direct variant runs, so only the load generator counts there)."""
    cpu = summary["client_cpu_us_per_call"]
    if name == "sidecar":
        cpu += summary["server_cpu_us_per_call"]
    return cpu / 1000.0


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["concurrency", "variant", "p50", "p99", "qps", "CPU/query", "p50 added (×)", "p99 added (×)",
               "p50 added vs httpx (×)"]
    rows = []
    for lv in result["levels"]:
        for name, label in VARIANTS:
            v = lv[name]
            row = [str(lv["concurrency"]), label, f"{fmt(v['p50_ms'])} ms", f"{fmt(v['p99_ms'])} ms",
                   fmt(v["throughput_qps"], ".0f"), f"{fmt(_cpu_per_query(name, v))} ms"]
            if name == "sidecar":
                # The baseline is the aiohttp caller: the httpx one is CPU-bound
                # in its one process at concurrency 16+ and flatters the sidecar.
                h, a = lv["vs_httpx"], lv["vs_aiohttp"]
                row += [f"{fmt(a['added_ms']['p50'], '+.2f')} ms ({fmt(a['p50'])}×)",
                        f"{fmt(a['added_ms']['p99'], '+.2f')} ms ({fmt(a['p99'])}×)",
                        f"{fmt(h['added_ms']['p50'], '+.2f')} ms ({fmt(h['p50'])}×)"]
            else:
                row += ["", "", ""]
            rows.append(row)
    return headers, rows


def _memory_line(result: Mapping[str, Any]) -> str:
    m = result["rss_bytes"]
    return (f"sidecar process RSS: before start {_mib(m['before_start'])}, ready {_mib(m['ready'])}, "
            f"peak under load {_mib(m['peak_under_load'])} ({fmt(result['rss_peak_over_ready'])}× ready), "
            f"after load {_mib(m['after_load'])}")


def _errors(result: Mapping[str, Any]) -> list[str]:
    out = []
    for lv in result["levels"]:
        for name, label in VARIANTS:
            if lv[name]["errors"]:
                out.append(f"concurrency {lv['concurrency']}, {label}: errors {lv[name]['errors']}")
    return out


def _spread(result: Mapping[str, Any]) -> str:
    out = []
    for lv in result["levels"]:
        r = lv["vs_aiohttp"]
        parts = [f"{k} {fmt(r[k + '_round_range'][0])}–{fmt(r[k + '_round_range'][1])}"
                 for k in ("p50", "p99") if r.get(k + "_round_range")]
        out.append(f"concurrency {lv['concurrency']}: " + ", ".join(parts))
    return "per-round sidecar/direct (aiohttp) ratios: " + "; ".join(out)


def _utilization(result: Mapping[str, Any]) -> str:
    parts = []
    for lv in result["levels"]:
        s = lv["sidecar"]
        parts.append(f"{lv['concurrency']}: {fmt(s['server_cpu_utilization'] * 100, '.0f')}% "
                     f"({fmt(s['server_cpu_us_per_call'] / 1000)} ms/query)")
    return "sidecar process CPU while loaded (100% = one core), by concurrency: " + ", ".join(parts)


def _notes(result: Mapping[str, Any]) -> list[str]:
    return [_spread(result), _utilization(result), _memory_line(result)]


def _cap(line: str) -> str:
    return line[:1].upper() + line[1:] + "."


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    lines = [
        (f"Execute: sidecar vs calling the k={result['k']} backends directly ({', '.join(result['calls'])}; "
        f"every backend answers in {result['backend_latency_ms']:g} ms). "
        "Added = sidecar - direct (aiohttp), × = sidecar / direct; the httpx caller is CPU-bound at c ≥ 16."),
        text_table(headers, rows),
        *_notes(result),
        footer(result, "variant and concurrency", extra=f", httpx {result['machine']['httpx']}"),
        *_errors(result),
    ]
    return "\n".join(lines)


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    lines = [
        (f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
        f"Python {m['python']}, grpcio {m['grpcio']}, httpx {m['httpx']}. {result['plan']['rounds']} interleaved "
        f"rounds × {result['plan']['duration_s']} s per variant and concurrency. Request: "
        f"`{result['request']['query']}` (domain `{result['request']['domain']}`, complexity "
        f"{result['request']['complexity']}); the sidecar chooses k={result['k']} skills "
        f"({', '.join(result['selected'])}), so each query is {result['k']} concurrent backend calls on every side: "
        f"{', '.join(f'`{c}`' for c in result['calls'])}. Every backend answers in "
        f"{result['backend_latency_ms']:g} ms. *Added* is sidecar − direct (aiohttp), × is sidecar / direct; CPU/query is "
        "the load generator's plus the sidecar process's CPU time per query (the emulator's excluded)."),
        "",
        md_table(headers, rows, left=2),
    ]
    for note in _notes(result):
        lines += ["", _cap(note)]
    errs = _errors(result)
    if errs:
        lines += ["", "Errors: " + "; ".join(errs) + "."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    bench_main(__doc__, argv, run, table, full=FULL, quick=QUICK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
