"""One-skill Execute: what one hop through the sidecar costs, per call.

The question of issue 12's table: a query that the sidecar answers with one
skill (``top_k=1``, the skill forced), whose emulated model answers in a
fixed 20 ms. Three variants, all driven by the same load generator (its own
process, on uvloop, closed loop):

- **direct** (the baseline): the load generator sends the very request the
  sidecar's backend sends (same path, same body) straight to the emulator
  with ``aiohttp`` on a warm pool: a client that is not itself the
  bottleneck (its CPU per call is shown);
- **sidecar (uvloop)**: ``skill-router serve`` as a subprocess of its own
  (the default: uvloop), the load generator calling ``Execute``;
- **sidecar (asyncio)**: the same with ``SKILL_ROUTER_UVLOOP=0``: what
  uvloop buys, measured in the same run.

The emulator runs in a process of its own. The sidecar's CPU per call is its
process's CPU time (psutil, every thread) over the calls it answered; the
bundled default config with the admission limits and pools raised (so this
measures the hop, not the admission policy), the SQLite metrics store in a
temporary directory (its writes included), telemetry off (no OTLP endpoint).
Concurrency 1 (added latency) and 64 (calls/s per host).

With ``--before REF`` a fourth sidecar runs the code of git ref REF
(exported with ``git archive``, on asyncio's loop, as it was): the changes
measured before and after in the same run.

With ``--py-spy FILE`` the uvloop sidecar is sampled by py-spy (200 Hz)
while it is measured at the highest concurrency: a speedscope profile, or
py-spy's raw collapsed stacks when FILE ends in ``.txt``.

    .venv/bin/python -m bench.one_skill [--quick] [--json] [--rounds N] [--duration S] [--before REF]
                                        [--py-spy FILE]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc

from bench._common import (
    LoadGenerator,
    Plan,
    bench_main,
    emulator_process,
    fmt,
    footer,
    json_safe,
    machine,
    md_table,
    measure,
    progress,
    pyplot,
    quiet_logs,
    save_plot,
    sidecar_process,
    store_path,
    text_table,
    timestamp,
)

NAME = "one_skill"
COMMAND = ".venv/bin/python -m bench.one_skill"
CONCURRENCY = (1, 64)
BACKEND_MS = 20.0
SKILL = "legal"
FULL = Plan(rounds=4, duration_s=2.0, warmup_s=0.5)
QUICK = Plan(rounds=1, duration_s=0.5, warmup_s=0.2)
REQUEST = {"query": "Review this NDA clause for risks in a leasing deal", "domain": "legal", "complexity": 6.0}
LIMIT = 1024
CONNECTIONS = 256
VARIANTS = (("direct", "direct (aiohttp)"), ("sidecar_uvloop", "sidecar (uvloop)"),
            ("sidecar_asyncio", "sidecar (asyncio loop)"), ("sidecar_before", "sidecar before (REF)"))
SIDECARS = tuple(name for name, _ in VARIANTS if name != "direct")


def _variants(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    ref = result.get("before_ref")
    return [(n, label.replace("REF", f"`{ref}`, asyncio loop")) for n, label in VARIANTS
            if n != "sidecar_before" or ref]


@contextlib.contextmanager
def exported(ref: str | None) -> Iterator[str | None]:
    """``git archive REF`` unpacked in a temporary directory (None: no ref)."""
    if ref is None:
        yield None
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        archive = subprocess.run(["git", "-C", root, "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield tmp
AIMS = {"cpu_ms": 1.0, "added_p50_ms": 2.0, "qps_c64": 1000.0}


def config_data(emulator_url: str, store: str) -> dict[str, Any]:
    """The bundled default config: limits and pools raised, URLs to the emulator."""
    import yaml

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
    data["storage"]["sqlite_path"] = store
    data["server"]["admin_listen"] = None
    return data


BEFORE_REF: str | None = None  # --before REF
PY_SPY: str | None = None  # --py-spy FILE


async def run(plan: Plan, *, profile: str | None = None, quick: bool = False) -> dict[str, Any]:
    with exported(BEFORE_REF) as before_root:
        return await _run(plan, quick, before_root)


async def _run(plan: Plan, quick: bool, before_root: str | None) -> dict[str, Any]:
    from skill_router_client import build_context

    from bench.execute_overhead import baseline_calls
    from router.config import parse_config
    from router.v1 import router_pb2 as pb
    from router.v1 import router_pb2_grpc as pb_grpc

    quiet_logs()
    request = pb.ExecuteRequest(query=REQUEST["query"], context=build_context(
        domain=REQUEST["domain"], complexity=REQUEST["complexity"], top_k=1, force_skills=[SKILL]))
    levels = []
    memory: dict[str, int] = {}
    with store_path() as db_uv, store_path() as db_aio:
        async with emulator_process({"seed": 0, "default": {"latency_ms": BACKEND_MS}}) as (emu_url, emu_proc):
            data = config_data(emu_url, db_uv)
            progress("starting the sidecars (uvloop, asyncio loop" + (f", {BEFORE_REF}" if before_root else "") + ") ...")
            async with contextlib.AsyncExitStack() as stack:
                addr_uv, proc_uv = await stack.enter_async_context(sidecar_process(data))
                addr_aio, proc_aio = await stack.enter_async_context(sidecar_process(
                    {**data, "storage": {**data["storage"], "sqlite_path": db_aio}}, env={"SKILL_ROUTER_UVLOOP": "0"}))
                servers = {"sidecar_uvloop": proc_uv, "sidecar_asyncio": proc_aio}
                targets = {"sidecar_uvloop": addr_uv, "sidecar_asyncio": addr_aio}
                if before_root is not None:
                    db_before = stack.enter_context(store_path())
                    before = {**data, "storage": {**data["storage"], "sqlite_path": db_before}}
                    targets["sidecar_before"], servers["sidecar_before"] = await stack.enter_async_context(
                        sidecar_process(before, env={
                            "PYTHONPATH": os.pathsep.join([before_root, os.path.join(before_root, "clients", "python")]),
                            "SKILL_ROUTER_UVLOOP": "0"}))
                memory["ready"] = proc_uv.memory_info().rss
                async with grpc.aio.insecure_channel(addr_uv) as channel:
                    probe = await pb_grpc.RouterServiceStub(channel).Execute(request, timeout=10)
                if len(probe.results) != 1 or probe.results[0].status != pb.SKILL_STATUS_OK:
                    raise RuntimeError(f"the probe Execute did not answer with one skill: {probe.results}")
                calls = baseline_calls(parse_config(data, "bench"), probe)
                sidecar = {"kind": "grpc", "method": "Execute", "request": request.SerializeToString(),
                           "timeout_s": 30, "expect_results": 1}
                variants = {
                    "direct": {"kind": "aiohttp", "base_url": emu_url, "calls": calls,
                               "max_connections": CONNECTIONS, "timeout_s": 30},
                    **{name: {**sidecar, "target": target} for name, target in targets.items()},
                }
                async with LoadGenerator() as gen:
                    for c in CONCURRENCY:
                        progress(f"concurrency {c}: {plan.rounds} interleaved rounds × {plan.duration_s} s per variant")
                        spy = None
                        if PY_SPY and c == CONCURRENCY[-1]:
                            seconds = int(plan.rounds * plan.duration_s * len(variants) + plan.warmup_s + 2)
                            progress(f"py-spy: sampling the uvloop sidecar for {seconds} s into {PY_SPY}")
                            spy = await asyncio.create_subprocess_exec(
                                os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid",
                                str(proc_uv.pid), "--duration", str(seconds), "--rate", "200", "--nonblocking",
                                "--format", "raw" if PY_SPY.endswith(".txt") else "speedscope", "--output", PY_SPY,
                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                        m = await measure(gen, variants, concurrency=c, rounds=plan.rounds,
                                          duration_s=plan.duration_s, warmup_s=plan.warmup_s, emulator=emu_proc,
                                          servers=servers)
                        if spy is not None:
                            await spy.wait()
                        level: dict[str, Any] = {"concurrency": c, **m}
                        d = m["direct"]
                        for name in targets:
                            s = m[name]
                            level[f"{name}_added_p50_ms"] = s["p50_ms"] - d["p50_ms"]
                            level[f"{name}_added_p99_ms"] = s["p99_ms"] - d["p99_ms"]
                            level[f"{name}_qps_ratio"] = s["throughput_qps"] / d["throughput_qps"]
                        levels.append(level)
                memory["after_load"] = proc_uv.memory_info().rss
    result = {
        "benchmark": NAME,
        "command": COMMAND + (" --quick" if quick else "") + (f" --before {BEFORE_REF}" if before_root else ""),
        "when": timestamp(),
        "quick": quick,
        "machine": machine(),
        "plan": {"rounds": plan.rounds, "duration_s": plan.duration_s, "warmup_s": plan.warmup_s},
        "backend_latency_ms": BACKEND_MS,
        "skill": SKILL,
        "call": [f"{path} {body.get('model') or body.get('skill')}" for path, body in calls],
        "levels": levels,
        "rss_bytes": memory,
        "aims": AIMS,
        "before_ref": BEFORE_REF if before_root else None,
    }
    if not quick:
        result["plot"] = plot(result)
    return json_safe(result)


def plot(result: Mapping[str, Any]) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    variants = _variants(result)
    labels = [label.replace(", asyncio loop", "").replace("`", "").replace(" (", "\n(") for _, label in variants]
    colors = ["#888888", "#1f77b4", "#ff7f0e", "#d62728"][:len(variants)]
    by_c = {lv["concurrency"]: lv for lv in result["levels"]}
    c1, c64 = by_c[CONCURRENCY[0]], by_c[CONCURRENCY[-1]]
    axes[0].bar(labels, [c1[n]["p50_ms"] for n, _ in variants], color=colors)
    axes[0].set_title("p50 latency at c=1 (ms)")
    axes[1].bar(labels, [c64[n]["throughput_qps"] for n, _ in variants], color=colors)
    axes[1].axhline(AIMS["qps_c64"], color="green", linestyle="--", linewidth=1, label="aim")
    axes[1].set_title(f"calls/s at c={CONCURRENCY[-1]}")
    axes[1].legend()
    sc = [(label, n) for (n, _), label in zip(variants, labels) if n != "direct"]
    width = 0.35
    xs = range(len(sc))
    for i, lv in enumerate((c1, c64)):
        axes[2].bar([x + i * width for x in xs], [lv[n]["server_cpu_us_per_call"] / 1000 for _, n in sc], width,
                    label=f"c={lv['concurrency']}")
    axes[2].axhline(AIMS["cpu_ms"], color="green", linestyle="--", linewidth=1, label="aim")
    axes[2].set_xticks([x + width / 2 for x in xs], [label for label, _ in sc])
    axes[2].set_title("sidecar CPU per call (ms)")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"One-skill Execute, {result['backend_latency_ms']:g} ms backend ({result['when']})", fontsize=10)
    return save_plot(fig, "bench-one-skill")


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["concurrency", "variant", "p50", "p99", "p50 added", "calls/s", "calls/s ×", "sidecar CPU/call",
               "load-gen CPU/call"]
    rows = []
    for lv in result["levels"]:
        for name, label in _variants(result):
            v = lv[name]
            side = name != "direct"
            rows.append([
                str(lv["concurrency"]), label, f"{fmt(v['p50_ms'])} ms", f"{fmt(v['p99_ms'])} ms",
                f"{fmt(lv[name + '_added_p50_ms'], '+.2f')} ms" if side else "",
                fmt(v["throughput_qps"], ".0f"),
                fmt(lv[name + "_qps_ratio"]) if side else "",
                f"{fmt(v['server_cpu_us_per_call'] / 1000, '.3f')} ms" if side else "",
                f"{fmt(v['client_cpu_us_per_call'] / 1000, '.3f')} ms",
            ])
    return headers, rows


def _verdict(result: Mapping[str, Any]) -> str:
    by_c = {lv["concurrency"]: lv for lv in result["levels"]}
    c1, c64 = by_c[CONCURRENCY[0]], by_c[CONCURRENCY[-1]]
    cpu = min(c1["sidecar_uvloop"]["server_cpu_us_per_call"], c64["sidecar_uvloop"]["server_cpu_us_per_call"]) / 1000
    cpu_aio = min(c1["sidecar_asyncio"]["server_cpu_us_per_call"],
                  c64["sidecar_asyncio"]["server_cpu_us_per_call"]) / 1000
    added = c1["sidecar_uvloop_added_p50_ms"]
    qps = c64["sidecar_uvloop"]["throughput_qps"]
    ok = lambda good: "met" if good else "not met"  # noqa: E731
    before = ""
    if result.get("before_ref"):
        b = min(c1["sidecar_before"]["server_cpu_us_per_call"], c64["sidecar_before"]["server_cpu_us_per_call"]) / 1000
        before = (f"Before ({result['before_ref']}, asyncio loop): CPU per call {fmt(b, '.3f')} ms, added p50 at c=1 "
                  f"{fmt(c1['sidecar_before_added_p50_ms'], '+.2f')} ms, "
                  f"{fmt(c64['sidecar_before']['throughput_qps'], '.0f')} calls/s at c={CONCURRENCY[-1]}; this "
                  f"branch on the same loop {fmt(cpu_aio, '.3f')} ms ({fmt(abs(1 - cpu_aio / b) * 100, '.0f')}% "
                  f"{'less' if cpu_aio <= b else 'more'}). ")
    return before + (f"Against the aims (uvloop): sidecar CPU per call {fmt(cpu, '.3f')} ms (aim ≤ {AIMS['cpu_ms']:g} ms: "
            f"{ok(cpu <= AIMS['cpu_ms'])}; asyncio loop {fmt(cpu_aio, '.3f')} ms, uvloop "
            f"{'saves' if cpu <= cpu_aio else 'costs'} {fmt(abs(1 - cpu / cpu_aio) * 100, '.0f')}%); added p50 at c=1 {fmt(added, '+.2f')} ms "
            f"(aim ≤ +{AIMS['added_p50_ms']:g} ms: {ok(added <= AIMS['added_p50_ms'])}); {fmt(qps, '.0f')} calls/s at "
            f"c={CONCURRENCY[-1]} (aim ≥ {AIMS['qps_c64']:g}: {ok(qps >= AIMS['qps_c64'])})")


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    return "\n".join([
        f"One-skill Execute ({result['skill']}: {', '.join(result['call'])}; backend {result['backend_latency_ms']:g} ms)",
        text_table(headers, rows), _verdict(result) + ".", footer(result, "variant and concurrency"),
    ])


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    lines = [
        (f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
         f"Python {m['python']}, grpcio {m['grpcio']}. {result['plan']['rounds']} interleaved rounds × "
         f"{result['plan']['duration_s']} s per variant and concurrency. One skill (`{result['skill']}`, "
         f"{', '.join(f'`{c}`' for c in result['call'])}), the emulated model answers in "
         f"{result['backend_latency_ms']:g} ms. *p50 added* is sidecar − direct; *calls/s ×* is sidecar / direct."),
        "",
        md_table(headers, rows, left=2),
        "",
        _verdict(result) + ".",
    ]
    if result.get("plot"):
        lines += ["", "![one-skill Execute](bench-one-skill.png)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    global BEFORE_REF, PY_SPY
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--py-spy" in argv:  # sample the uvloop sidecar while it is measured at the highest concurrency
        i = argv.index("--py-spy")
        PY_SPY = argv[i + 1]
        del argv[i:i + 2]
    if "--before" in argv:  # a git ref whose code runs as a fourth sidecar: before and after in one run
        i = argv.index("--before")
        BEFORE_REF = argv[i + 1]
        del argv[i:i + 2]
    bench_main(__doc__, argv, run, table, full=FULL, quick=QUICK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
