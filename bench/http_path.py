"""The HTTP path alone: CPU per backend call, this checkout against a git ref.

Each side runs in a process of its own (``PYTHONPATH`` at the checkout, or at
a ``git archive`` of REF): it builds one ``openai`` backend with
``router.backends.build_backend``, warms it, makes 200 calls to settle, then
``--calls`` calls at concurrency 16 to one emulated model answering in 2 ms,
and reports its process's CPU time per call. The two sides alternate for
``--rounds`` rounds against the same emulator (a process of its own).

    .venv/bin/python -m bench.http_path --before REF [--rounds 4] [--calls 3000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from bench._common import emulator_process, machine, progress, timestamp
from bench.one_skill import exported

CONCURRENCY = 16
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Run with ``python -c`` from an empty directory, so ``router`` comes from
# PYTHONPATH (the side's code) and nothing from this checkout's bench/.
SIDE = """
import asyncio, json, sys, time
import router
from router.backends import build_backend
from router.core.types import ImplementationSpec
from router.runtime.ports import SkillCall

async def main(url, calls, concurrency):
    spec = ImplementationSpec(name="m", backend="openai", url=url, model="m", quality=0.9, cost_per_query=0.01,
                              expected_latency_ms=10, optimal_complexity=5, max_connections=64)
    backend = build_backend(spec)
    await backend.warm()
    call = SkillCall(query_id="q", skill="s", implementation=spec, query="Review this NDA clause for risks",
                     domain="legal", complexity=5.0)
    for _ in range(200):
        await backend.call(call, timeout_s=10)
    slots = asyncio.Semaphore(concurrency)

    async def one():
        async with slots:
            await backend.call(call, timeout_s=10)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    print(json.dumps({"cpu_us_per_call": (time.process_time() - cpu0) / calls * 1e6,
                      "wall_s": time.perf_counter() - wall0, "router": router.__file__}))
    await backend.aclose()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def _inside(path: str, root: str) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


async def _side(root: str, url: str, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.path.join(root, "clients", "python")])}
    with tempfile.TemporaryDirectory(prefix="bench-http-side-") as empty:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SIDE, url, str(calls), str(CONCURRENCY), cwd=empty, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"side {root} failed: {err.decode()[-2000:]}")
    res = json.loads(out.decode().strip().splitlines()[-1])
    if not _inside(res["router"], root):
        raise RuntimeError(f"the side meant to run {root} imported {res['router']}")
    return res


async def run(before: str, rounds: int, calls: int) -> dict[str, Any]:
    per: dict[str, list[float]] = {"before": [], "after": []}
    with exported(before) as before_root:
        assert before_root is not None
        async with emulator_process({"seed": 0, "default": {"latency_ms": 2}}) as (url, _):
            for r in range(rounds):
                for name, root in (("before", before_root), ("after", ROOT))[:: 1 if r % 2 == 0 else -1]:
                    res = await _side(root, url, calls)
                    per[name].append(res["cpu_us_per_call"])
                    progress(f"round {r + 1}/{rounds} {name}: {res['cpu_us_per_call']:.0f} µs of CPU per call")
    return {"benchmark": "http_path", "when": timestamp(), "machine": machine(), "before": before,
            "calls": calls, "concurrency": CONCURRENCY, "cpu_us_per_call": per}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", help="the git ref to compare with")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not args.before:
        p.error("--before REF is required")
    from router.app import run as run_loop

    result = run_loop(run(args.before, args.rounds, args.calls))
    if args.json:
        print(json.dumps(result))
    else:
        for name, values in result["cpu_us_per_call"].items():
            print(f"{name:6} CPU per call: " + ", ".join(f"{v:.0f} µs" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
