"""Admission under 3× overload: open-loop load at three times what the skills
can serve, against the sidecar with its per-skill limits, queues and
shedding on.

Four skills with the seed's concurrency limits (kimiK2 5, trm 10, gepa 3,
ace 8; the default queue of 50 and queue timeout of 5 s), one emulated
implementation each with a fixed latency (kimiK2 400 ms, trm 200 ms, gepa
600 ms, ace 300 ms). Every query activates all four and asks for one
(``top_k=1``), so together the skills serve at most
``Σ limit / latency`` ≈ 94 queries/s: the capacity. Arrivals are open-loop
(Poisson, seeded) at 3× that for 30 s (``--quick``: 5 s), each with a 2 s
deadline, whatever the answers do; a query the best skill cannot take is
shed to the next-best one, and a query no skill can take is refused with
RESOURCE_EXHAUSTED and a RetryInfo delay.

Processes: the **sidecar** runs as a subprocess of its own (``skill-router
serve``, with its SQLite metrics store in a temporary directory), so its
resident memory (psutil RSS, sampled every 100 ms) and CPU are its alone;
the **emulated backends** run in another (``python -m router.emulator``);
the **load generator** is this process.

Reported: answers by outcome (OK / RESOURCE_EXHAUSTED / other, by status
code; calls still unanswered 10 s after their deadline count as *hung*),
p50/p99 latency of the OK answers, the highest concurrency each emulated
backend saw against the skill's limit, the sidecar's Stats (shed, rejected,
timed out, mean queue wait, the highest in-flight and queue depth seen by
sampling Stats every 100 ms), the sidecar's RSS when ready, at mid-load, at
the end and its peak, and its CPU.

The same load against the sidecar with admission off
(``BRAIN_LOAD_BALANCING_ENABLED=false``) runs second as the baseline (skip
it with ``--no-baseline``): the emulated backends have no capacity limit of
their own, so it shows what the limits protect the backends from, i.e. the
concurrency they would otherwise be driven to.

    .venv/bin/python -m bench.overload [--quick] [--json] [--duration S] [--no-baseline]

Exit status 1 when admission was on and a backend saw more concurrency than
its skill's limit, or a call hung.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import psutil

from bench._common import (
    LOOPBACK,
    emit,
    emulator_process,
    fmt,
    footer,
    json_safe,
    machine,
    md_table,
    percentile,
    quiet_logs,
    store_path,
    text_table,
    timestamp,
)

NAME = "overload"
COMMAND = ".venv/bin/python -m bench.overload"
# skill: (model, concurrency limit (the seed's), fixed backend latency ms, skill priority)
SKILLS: dict[str, tuple[str, int, float, int]] = {
    "kimiK2": ("kimi", 5, 400.0, 1),
    "trm": ("trm", 10, 200.0, 2),
    "gepa": ("gepa", 3, 600.0, 3),
    "ace": ("ace", 8, 300.0, 2),
}
OVERLOAD = 3.0
DEADLINE_S = 2.0
FULL_S = 30.0
QUICK_S = 5.0
HANG_GRACE_S = 10.0
SAMPLE_S = 0.1
SEED = 1
QUERY = {"query": "Summarise the trade-offs of this caching design", "domain": "general", "complexity": 6.0}
CONNECTIONS = 256  # per implementation: far above any limit, so the gate is the only limiter


def capacity_qps() -> float:
    return sum(limit / (latency_ms / 1000.0) for _, limit, latency_ms, _ in SKILLS.values())


def sidecar_config(emulator_url: str, store: str, admission: bool) -> dict[str, Any]:
    skills = {}
    for name, (model, limit, latency_ms, priority) in SKILLS.items():
        skills[name] = {
            "priority": priority, "optimal_complexity": 6, "concurrency_limit": limit,
            "implementations": [{
                "name": f"{name}-{model}", "backend": "http" if name in ("trm", "ace") else "openai",
                "url": emulator_url, "model": model, "quality": 0.9, "cost_per_query": 0.01,
                "expected_latency_ms": latency_ms, "max_connections": CONNECTIONS,
            }],
        }
    return {
        "skills": skills,
        "admission": {"enabled": admission},
        "server": {"grace_period_s": 2, "default_deadline_s": DEADLINE_S},
        "storage": {"sqlite_path": store},
    }


def emulator_config() -> dict[str, Any]:
    # Each emulated provider enforces a rate limit at the skill's concurrency
    # limit, as the seed's providers do: past it, 429 with Retry-After.
    return {"seed": SEED, "models": {model: {"latency_ms": latency_ms, "max_concurrency": limit, "retry_after_s": 1.0}
                                     for model, limit, latency_ms, _ in SKILLS.values()}}


# -- the sidecar subprocess ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _sidecar_files(tmp: str, config: Mapping[str, Any]) -> tuple[str, Any]:
    """The config file (JSON is YAML) and the open log file, in ``tmp``."""
    path = os.path.join(tmp, "config.yaml")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return path, open(os.path.join(tmp, "log"), "w+", encoding="utf-8")  # closed by the caller


@contextlib.asynccontextmanager
async def sidecar_process(config: Mapping[str, Any]) -> AsyncIterator[tuple[str, psutil.Process]]:
    """``skill-router serve`` with ``config`` on a free loopback port; yields
    its address once health says SERVING, and its process."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp:
        path, log_file = _sidecar_files(tmp, config)
        address = f"{LOOPBACK}:{_free_port()}"
        with log_file as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from router.cli import main; main()", "--log-level", "ERROR",
                "serve", "--config", path, "--listen", address, stdout=log, stderr=log)
            try:
                async with grpc.aio.insecure_channel(address) as ch:
                    health = health_pb2_grpc.HealthStub(ch)
                    deadline = time.monotonic() + 60
                    while True:
                        if proc.returncode is not None or time.monotonic() > deadline:
                            log.seek(0)
                            raise RuntimeError(f"the sidecar did not start: {log.read()[-2000:]}")
                        with contextlib.suppress(grpc.aio.AioRpcError):
                            resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                                break
                        await asyncio.sleep(0.1)
                yield address, psutil.Process(proc.pid)
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 15)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()


class Sampler:
    """Every ``SAMPLE_S``: the sidecar's RSS, and its Stats (the highest
    in-flight and queue depth per skill)."""

    def __init__(self, proc: psutil.Process, stub: Any, pb: Any) -> None:
        self._proc = proc
        self._stub = stub
        self._pb = pb
        self.rss: list[tuple[float, int]] = []
        self.max_in_flight: collections.Counter = collections.Counter()
        self.max_queued: collections.Counter = collections.Counter()
        self.stats_failures = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        t0 = time.perf_counter()
        while True:
            self.rss.append((time.perf_counter() - t0, self._proc.memory_info().rss))
            try:
                s = await self._stub.Stats(self._pb.StatsRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                self.stats_failures += 1
            else:
                for x in s.skills:
                    self.max_in_flight[x.skill] = max(self.max_in_flight[x.skill], x.in_flight)
                    self.max_queued[x.skill] = max(self.max_queued[x.skill], x.queue_depth)
            await asyncio.sleep(SAMPLE_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the open-loop load ---------------------------------------------------------------------


async def open_loop(stub: Any, request: Any, rate_qps: float, duration_s: float,
                    rng: random.Random) -> dict[str, Any]:
    """Poisson arrivals at ``rate_qps`` for ``duration_s``, each call on its
    own task with a ``DEADLINE_S`` deadline; never waits for an answer
    before sending the next."""
    outcomes: collections.Counter = collections.Counter()
    ok_ms: list[float] = []
    refused_ms: list[float] = []
    retry_delays: list[float] = []
    examples: dict[str, str] = {}
    tasks: set[asyncio.Task] = set()
    perf = time.perf_counter
    from skill_router_client import error_details

    async def one() -> None:
        t0 = perf()
        try:
            await stub.Execute(request, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as err:
            outcomes[err.code().name] += 1
            examples.setdefault(err.code().name, (err.details() or "")[:300])
            if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                refused_ms.append((perf() - t0) * 1000.0)
                d = error_details(err).retry_delay_s
                if d is not None:
                    retry_delays.append(d)
            return
        ok_ms.append((perf() - t0) * 1000.0)
        outcomes["OK"] += 1

    sent = 0
    max_lag = 0.0
    start = perf()
    at = start
    while True:
        at += rng.expovariate(rate_qps)
        if at - start >= duration_s:
            break
        delay = at - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, perf() - at)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    sending_s = perf() - start
    hung = 0
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=DEADLINE_S + HANG_GRACE_S)
        hung = len(pending)
        for t in pending:
            t.cancel()
    answered_s = perf() - start  # first send to last answer
    ok_ms.sort()
    refused_ms.sort()
    return {
        "sent": sent, "offered_qps": sent / sending_s if sending_s else 0.0, "max_send_lag_ms": max_lag * 1000,
        "outcomes": dict(outcomes), "hung": hung,
        "ok_p50_ms": percentile(ok_ms, 0.5), "ok_p99_ms": percentile(ok_ms, 0.99),
        "ok_max_ms": ok_ms[-1] if ok_ms else float("nan"),
        "refused_p50_ms": percentile(refused_ms, 0.5), "refused_p99_ms": percentile(refused_ms, 0.99),
        "goodput_qps": len(ok_ms) / answered_s if answered_s else 0.0, "answered_s": answered_s,
        "error_examples": examples,
        "retry_delay_s": {"min": min(retry_delays), "max": max(retry_delays)} if retry_delays else None,
    }


async def _emulator_stats(url: str) -> dict[str, Any]:
    import httpx
    async with httpx.AsyncClient(trust_env=False) as c:
        return (await c.get(f"{url}/emulator/stats", timeout=10)).json()["models"]


async def _emulator_reset(url: str) -> None:
    import httpx
    async with httpx.AsyncClient(trust_env=False) as c:
        (await c.post(f"{url}/emulator/reset", timeout=10)).raise_for_status()


async def run_variant(emu_url: str, admission: bool, duration_s: float) -> dict[str, Any]:
    from skill_router_client import build_context

    from router.v1 import router_pb2 as pb
    from router.v1 import router_pb2_grpc as pb_grpc

    request = pb.ExecuteRequest(query=QUERY["query"], context=build_context(
        domain=QUERY["domain"], complexity=QUERY["complexity"], top_k=1))
    with store_path() as store:
        async with sidecar_process(sidecar_config(emu_url, store, admission)) as (address, proc):
            async with grpc.aio.insecure_channel(address) as ch:
                stub = pb_grpc.RouterServiceStub(ch)
                # Warm-up: a few sequential queries (pools, the gates' service-time estimates).
                for _ in range(8):
                    resp = await stub.Execute(request, timeout=10)
                    if not resp.results or resp.results[0].status != pb.SKILL_STATUS_OK:
                        raise RuntimeError(f"warm-up query failed: {resp}")
                await _emulator_reset(emu_url)
                before = {x.skill: x for x in (await stub.Stats(pb.StatsRequest(), timeout=10)).skills}
                rss_ready = proc.memory_info().rss
                cpu0 = sum(proc.cpu_times()[:2])
                sampler = Sampler(proc, stub, pb)
                sampler.start()
                t0 = time.perf_counter()
                load = await open_loop(stub, request, OVERLOAD * capacity_qps(), duration_s, random.Random(SEED))
                wall = time.perf_counter() - t0
                await sampler.stop()
                cpu = sum(proc.cpu_times()[:2]) - cpu0
                await asyncio.sleep(0.5)
                rss_end = proc.memory_info().rss
                after = {x.skill: x for x in (await stub.Stats(pb.StatsRequest(), timeout=10)).skills}
                backends = await _emulator_stats(emu_url)
    samples = sampler.rss
    mid = min(samples, key=lambda s: abs(s[0] - duration_s / 2))[1] if samples else rss_ready
    skills = {}
    for name, (model, limit, latency_ms, _) in SKILLS.items():
        b, a0, a1 = backends.get(model, {}), before[name], after[name]
        skills[name] = {
            "limit": limit, "latency_ms": latency_ms,
            "backend_peak": b.get("peak_concurrent", 0), "backend_requests": b.get("requests", 0),
            "backend_429": b.get("rate_limited", 0),
            "stats_max_in_flight": sampler.max_in_flight[name], "stats_max_queued": sampler.max_queued[name],
            "queue_capacity": a1.queue_capacity,
            "shed": a1.shed - a0.shed, "rejected": a1.rejected - a0.rejected, "timed_out": a1.timed_out - a0.timed_out,
            "calls": a1.calls - a0.calls, "mean_queue_wait_ms_since_start": a1.mean_queue_wait_ms,
            "left_in_flight": a1.in_flight, "left_queued": a1.queue_depth,
        }
    return {
        "admission": admission, **load, "wall_s": wall,
        "skills": skills,
        "limits_held": all(s["backend_peak"] <= s["limit"] for s in skills.values()),
        "drained": all(s["left_in_flight"] == 0 and s["left_queued"] == 0 for s in skills.values()),
        "sidecar_rss_bytes": {"ready": rss_ready, "mid": mid, "end": rss_end,
                              "peak": max([rss_ready, rss_end, *(r for _, r in samples)])},
        "sidecar_cpu_utilization": cpu / wall if wall else 0.0,
        "stats_failures": sampler.stats_failures,
    }


async def run(duration_s: float, *, baseline: bool, quick: bool) -> dict[str, Any]:
    quiet_logs()
    variants = {}
    async with emulator_process(emulator_config()) as (emu_url, _emu):
        variants["on"] = await run_variant(emu_url, True, duration_s)
        if baseline:
            variants["off"] = await run_variant(emu_url, False, duration_s)
    return json_safe({
        "benchmark": NAME,
        "command": COMMAND + (" --quick" if quick else "") + ("" if baseline else " --no-baseline"),
        "when": timestamp(),
        "quick": quick,
        "machine": machine(),
        "duration_s": duration_s,
        "deadline_s": DEADLINE_S,
        "capacity_qps": capacity_qps(),
        "overload": OVERLOAD,
        "query": QUERY,
        "variants": variants,
    })


# -- output ---------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


_LABEL = {"on": "admission on", "off": "admission off (baseline)"}


def _outcome_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["variant", "sent", "offered qps", "OK", "RESOURCE_EXHAUSTED", "other", "hung", "goodput qps",
               "OK p50", "OK p99", "refused p50 / p99", "sidecar CPU", "RSS ready / mid / end / peak"]
    rows = []
    for key, v in result["variants"].items():
        out = v["outcomes"]
        other = {k: n for k, n in out.items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
        m = v["sidecar_rss_bytes"]
        rows.append([
            _LABEL[key], str(v["sent"]), fmt(v["offered_qps"], ".0f"), str(out.get("OK", 0)),
            str(out.get("RESOURCE_EXHAUSTED", 0)),
            (", ".join(f"{k} {n}" for k, n in sorted(other.items())) or "0"), str(v["hung"]),
            fmt(v["goodput_qps"], ".1f"), f"{fmt(v['ok_p50_ms'], '.0f')} ms", f"{fmt(v['ok_p99_ms'], '.0f')} ms",
            f"{fmt(v['refused_p50_ms'], '.1f')} / {fmt(v['refused_p99_ms'], '.1f')} ms",
            f"{fmt(v['sidecar_cpu_utilization'] * 100, '.0f')}%",
            " / ".join(_mib(m[k]) for k in ("ready", "mid", "end", "peak")),
        ])
    return headers, rows


def _skill_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["skill", "limit", "backend latency", "backend peak (on)", "backend peak (off)", "429s (on)",
               "429s (off)", "max queued (on)", "shed (on)", "rejected (on)", "timed out (on)", "mean queue wait (on)"]
    rows = []
    on = result["variants"]["on"]["skills"]
    off = result["variants"].get("off", {}).get("skills", {})
    for name, s in on.items():
        rows.append([
            name, str(s["limit"]), f"{s['latency_ms']:g} ms", str(s["backend_peak"]),
            str(off[name]["backend_peak"]) if name in off else "–", str(s["backend_429"]),
            str(off[name]["backend_429"]) if name in off else "–",
            f"{s['stats_max_queued']}/{s['queue_capacity']}", str(s["shed"]), str(s["rejected"]), str(s["timed_out"]),
            f"{fmt(s['mean_queue_wait_ms_since_start'], '.0f')} ms",
        ])
    return headers, rows


def _verdict(result: Mapping[str, Any]) -> str:
    on = result["variants"]["on"]
    parts = [
        "no limit exceeded" if on["limits_held"] else "LIMIT EXCEEDED",
        "nothing hung" if on["hung"] == 0 else f"{on['hung']} calls HUNG",
        "every gate drained (0 in flight, 0 queued after the load)" if on["drained"] else "a gate did NOT drain",
    ]
    rd = on.get("retry_delay_s")
    if rd:
        parts.append(f"RetryInfo delays {rd['min']:.2f}–{rd['max']:.2f} s")
    m = on["sidecar_rss_bytes"]
    parts.append(f"sidecar peak RSS {_mib(m['peak'])} ({m['peak'] / m['ready']:.2f}× ready)")
    return "admission on: " + "; ".join(parts)


def _intro(result: Mapping[str, Any]) -> str:
    sk = ", ".join(f"{n} {lim} at {lat:g} ms" for n, (_, lim, lat, _) in SKILLS.items())
    return (f"Open-loop Poisson arrivals at {result['overload']:g}× capacity ({result['capacity_qps']:.1f} queries/s = "
            f"Σ limit / latency over {sk}) for {result['duration_s']:g} s per variant; every query activates all four "
            f"skills, asks for top_k=1 and has a {result['deadline_s']:g} s deadline. Sidecar in a subprocess of its "
            "own (RSS and CPU are its alone), emulated backends in another, load from the bench process.")


def table(result: Mapping[str, Any]) -> str:
    h1, r1 = _outcome_rows(result)
    h2, r2 = _skill_rows(result)
    return "\n".join([
        _intro(result), text_table(h1, r1), "", text_table(h2, r2), _verdict(result),
        footer(result, None),
    ])


def markdown(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    h1, r1 = _outcome_rows(result)
    h2, r2 = _skill_rows(result)
    verdict = _verdict(result)
    return "\n".join([
        f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); "
        f"Python {m['python']}, grpcio {m['grpcio']}. {_intro(result)}",
        "", md_table(h1, r1, left=1), "", md_table(h2, r2, left=1), "",
        verdict[:1].upper() + verdict[1:] + ".",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_S:g} s per variant instead of {FULL_S:g} s")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--duration", type=float, help="seconds of load per variant")
    p.add_argument("--no-baseline", action="store_true", help="skip the admission-off run")
    args = p.parse_args(argv)
    duration = args.duration if args.duration is not None else (QUICK_S if args.quick else FULL_S)
    result = asyncio.run(run(duration, baseline=not args.no_baseline, quick=args.quick))
    emit(result, args.json, table)
    on = result["variants"]["on"]
    return 0 if on["limits_held"] and on["hung"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
