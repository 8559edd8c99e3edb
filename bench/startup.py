"""Start-up to SERVING at 100, 1,000 and 10,000 skills, and where it goes.

For each size a config is generated: N skills, each with 1-3
implementations (``openai`` and ``http`` kinds alternating, distinct
models, keywords and priorities), all pointing at one emulated provider on
loopback, the way a deployment's many skills sit on a few providers. Per
size, in one run:

- **to SERVING**: ``skill-router serve --config FILE --listen 127.0.0.1:0``
  is started as a subprocess; the time from spawning the process to the log
  line it writes once health says SERVING (then checked with a health call
  to the address the line names), and the process's resident memory then
  (psutil);
- **the floor** (the baseline, same run): a process that only imports
  ``router.app`` and exits: what any start-up pays before reading a config;
- **phases**: the same steps as ``serve``, timed one by one in a process of
  their own: import, reading and parsing the YAML, validating it (pydantic
  and the cross-checks), building the app (settings, gates, backends and
  their pools, registry, pipeline, server), opening the metrics store,
  listening, warming the backends' pools (with the cyclic GC paused, as
  ``serve`` does: ``router.app.gc_paused``).

    .venv/bin/python -m bench.startup [--quick] [--json] [--sizes 100 1000 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bench._common import (
    LOOPBACK,
    emulator_process,
    fmt,
    json_safe,
    machine,
    md_table,
    progress,
    pyplot,
    save_plot,
    text_table,
    timestamp,
)

NAME = "startup"
COMMAND = ".venv/bin/python -m bench.startup"
SIZES = (100, 1000, 10000)
QUICK_SIZES = (100, 1000)
AIMS_S = {100: 2.0, 1000: 5.0, 10000: 30.0}
START_TIMEOUT_S = 300.0
PHASES = ("import", "yaml", "validate", "build", "store", "listen", "warm")


def config_data(n: int, url: str, store: str) -> dict[str, Any]:
    skills: dict[str, Any] = {}
    for i in range(n):
        impls = []
        for j in range(1 + i % 3):
            kind = "openai" if (i + j) % 2 else "http"
            impls.append({"name": f"impl{j}", "backend": kind, "url": url, "model": f"model-{i}-{j}",
                          "quality": round(0.8 + 0.05 * j, 2), "cost_per_query": 0.01 * (1 + j),
                          "expected_latency_ms": 300 + 100 * j})
        skills[f"skill{i:05d}"] = {
            "description": f"generated skill {i}", "priority": 1 + i % 5,
            "preferred_domains": ["legal", "code", "research"][i % 3:],
            "activation": {"keywords": [f"kw{i}", f"topic{i % 50}"]},
            "concurrency_limit": 10, "queue_depth": 20, "implementations": impls,
        }
    return {"server": {"admin_listen": None, "grace_period_s": 1}, "storage": {"sqlite_path": store},
            "skills": skills}


def write_config(path: str, data: Mapping[str, Any]) -> int:
    """Write ``data`` as YAML; its size in bytes."""
    import yaml

    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(dict(data), f, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
    return os.path.getsize(path)


# -- the phases, in a process of their own -------------------------------------------------------


def phases_main(path: str) -> None:
    """Run serve's start-up steps one by one (the cyclic GC paused, as
    ``serve`` does); print one JSON object."""
    import gc

    gc.disable()
    t0 = time.perf_counter()
    import psutil

    from router.app import build_app, run
    from router.config import loader

    out: dict[str, float] = {"import": time.perf_counter() - t0}
    t = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    data, root = loader._parse_yaml(text, path)
    out["yaml"] = time.perf_counter() - t
    t = time.perf_counter()
    config = loader._build(data, path, {}, loader._Locator(root))
    out["validate"] = time.perf_counter() - t

    async def go() -> None:
        t = time.perf_counter()
        app = build_app(config, f"{LOOPBACK}:0")
        out["build"] = time.perf_counter() - t
        t = time.perf_counter()
        if app.store is not None:
            await app.store.start()
        out["store"] = time.perf_counter() - t
        t = time.perf_counter()
        await app.server.start()
        out["listen"] = time.perf_counter() - t
        t = time.perf_counter()
        failures = await app.pool.warm_all(strict=False)
        out["warm"] = time.perf_counter() - t
        out["warm_failures"] = len(failures)
        out["backends"] = len(app.pool)
        out["rss_bytes"] = psutil.Process().memory_info().rss
        await app.stop(0)

    run(go())
    print(json.dumps(out))


async def _phases(path: str) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.startup", "--phases", path,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"the phases process failed: {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


async def _floor() -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import router.app")
    await proc.wait()
    return time.perf_counter() - t0


async def _to_serving(path: str) -> dict[str, Any]:
    """Spawn ``serve`` on a port of its own choosing (``:0``); seconds to the
    log line it writes once SERVING (read off its stderr, so no other
    process's server on a recycled port can answer for it), then a health
    check of the address it names, and its RSS then."""
    import grpc
    import psutil
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from router.cli import main; main()", "--log-level", "INFO",
        "serve", "--config", path, "--listen", f"{LOOPBACK}:0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while True:
            remaining = START_TIMEOUT_S - (time.perf_counter() - t0)
            if remaining <= 0:
                return {"seconds": None, "rss_bytes": None}
            try:
                raw = await asyncio.wait_for(proc.stderr.readline(), remaining)
            except TimeoutError:
                return {"seconds": None, "rss_bytes": None}
            if not raw:
                raise RuntimeError(f"serve exited with {await proc.wait()}: {''.join(lines)[-2000:]}")
            line = raw.decode(errors="replace")
            lines.append(line)
            match = re.search(r"skill-router serving on (\S+)", line)
            if match:
                break
        seconds = time.perf_counter() - t0
        rss = psutil.Process(proc.pid).memory_info().rss
        async with grpc.aio.insecure_channel(match.group(1)) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"serve logged SERVING but health says {resp.status}")
        return {"seconds": seconds, "rss_bytes": rss}
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.communicate(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def run(sizes: Sequence[int], quick: bool) -> dict[str, Any]:
    rows = []
    async with emulator_process({"seed": 0, "default": {"latency_ms": 1}}) as (emu_url, _):
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
            for n in sizes:
                path = os.path.join(tmp, f"skills-{n}.yaml")
                data = config_data(n, emu_url, os.path.join(tmp, f"metrics-{n}.db"))
                size = await asyncio.to_thread(write_config, path, data)
                progress(f"{n} skills ({size / 2**20:.1f} MiB of YAML): the floor ...")
                floor = await _floor()
                progress(f"{n} skills: serve to SERVING ...")
                serving = await _to_serving(path)
                progress(f"{n} skills: {fmt(serving['seconds'])} s to SERVING; the phases one by one ...")
                phases = await _phases(path)
                progress(f"{n} skills: " + ", ".join(f"{p} {phases[p]:.2f} s" for p in PHASES))
                rows.append({"skills": n, "implementations": phases["backends"], "yaml_bytes": size,
                             "floor_s": floor, "to_serving_s": serving["seconds"],
                             "rss_serving_bytes": serving["rss_bytes"], "phases_s": {p: phases[p] for p in PHASES},
                             "phases_rss_bytes": phases["rss_bytes"], "warm_failures": phases["warm_failures"],
                             "aim_s": AIMS_S.get(n)})
    result: dict[str, Any] = {"benchmark": NAME, "command": COMMAND + (" --quick" if quick else ""),
                              "when": timestamp(), "quick": quick, "machine": machine(), "rows": rows}
    if not quick:
        result["plot"] = plot(result)
    return json_safe(result)


def plot(result: Mapping[str, Any]) -> str:
    plt = pyplot()
    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [f"{r['skills']:,}" for r in rows]
    bottom = [0.0] * len(rows)
    for p in PHASES:
        vals = [r["phases_s"][p] for r in rows]
        axes[0].bar(labels, vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[0].set_title("start-up phases (s)")
    axes[0].set_xlabel("skills")
    axes[0].legend(fontsize=7)
    xs = [r["skills"] for r in rows]
    axes[1].plot(xs, [r["to_serving_s"] or float("nan") for r in rows], "o-", label="serve → SERVING")
    axes[1].plot(xs, [r["floor_s"] for r in rows], "s--", label="floor (import only)")
    axes[1].plot(xs, [r["aim_s"] or float("nan") for r in rows], "g:", label="aim")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("skills")
    axes[1].set_title("seconds to SERVING")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Start-up ({result['when']})", fontsize=10)
    return save_plot(fig, "bench-startup")


def _rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["skills", "impls", "YAML", "to SERVING", "aim", "floor", *PHASES, "RSS at SERVING"]
    out = []
    for r in result["rows"]:
        out.append([f"{r['skills']:,}", f"{r['implementations']:,}", f"{r['yaml_bytes'] / 2**20:.1f} MiB",
                    f"{fmt(r['to_serving_s'])} s" if r["to_serving_s"] is not None else "not within 300 s",
                    f"≤ {r['aim_s']:g} s" if r["aim_s"] else "", f"{fmt(r['floor_s'])} s",
                    *(f"{fmt(r['phases_s'][p])} s" for p in PHASES),
                    f"{r['rss_serving_bytes'] / 2**20:.0f} MiB" if r["rss_serving_bytes"] else "–"])
    return headers, out


def table(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    return "\n".join([text_table(headers, rows),
                      f"{m['cpus']} CPUs, Python {m['python']} ({m['note']})"
                      + (" — QUICK" if result["quick"] else "")])


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = _rows(result)
    m = result["machine"]
    lines = [(f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
              f"Python {m['python']}. *to SERVING*: spawn of `skill-router serve` to the first SERVING health "
              "answer; *floor*: a process that imports `router.app` and exits (same run); the phases are timed "
              "one by one in a process of their own."), "", md_table(headers, rows)]
    if result.get("plot"):
        lines += ["", "![start-up](bench-startup.png)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} only")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--sizes", type=int, nargs="+", help=f"numbers of skills (default {SIZES})")
    p.add_argument("--phases", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phases:
        phases_main(args.phases)
        return 0
    from router.app import run as run_loop

    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    result = run_loop(run(sizes, args.quick))
    print(json.dumps(result, allow_nan=False) if args.json else table(result))
    ok = all(r["to_serving_s"] is not None for r in result["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
