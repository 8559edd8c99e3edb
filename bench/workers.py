"""Throughput against ``server.workers``: one sidecar with 1, 2 and 4
worker processes on one port (SO_REUSEPORT), and 2 workers with their
limits shared through Redis (one Lua round trip per call), side by side.

One skill, one ``openai`` implementation, every backend answer a fixed
20 ms (the emulator in a process of its own); admission limits raised far
above the load, so this measures how much the router can push, not its
admission policy. The sidecars are real ``skill-router serve`` processes
(the supervisor and its workers); the load generator is a process of its
own with 8 connections per sidecar (the kernel spreads connections, not
calls, among workers), closed loop at concurrency 64, the variants in
interleaved rounds. CPU per call is the sidecar's process tree (supervisor
and workers), from psutil.

    .venv/bin/python -m bench.workers [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench._common import (
    LOOPBACK,
    LoadGenerator,
    Measured,
    Plan,
    bench_main,
    emulator_process,
    fmt,
    footer,
    json_safe,
    machine,
    md_table,
    quiet_logs,
    round_summary,
    text_table,
    timestamp,
)

NAME = "workers"
BACKEND_MS = 20
CONCURRENCY = 64
CHANNELS = 8
FULL = Plan(rounds=3, duration_s=6.0, warmup_s=2.0)
QUICK = Plan(rounds=1, duration_s=2.0, warmup_s=1.0)


def _config(url: str, workers: int, redis_url: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "routing": {"top_k": 1},
        "server": {"workers": workers, "admin_listen": None, "grace_period_s": 2, "max_concurrent_rpcs": 10_000},
        "storage": {"sqlite_path": None},
        "admission": {"default_concurrency_limit": 10_000, "default_queue_depth": 10_000},
        "skills": {"answer": {"implementations": [
            {"name": "m", "backend": "openai", "url": url, "model": "m", "quality": 0.9, "cost_per_query": 0.01,
             "expected_latency_ms": BACKEND_MS, "timeout_s": 10, "max_connections": 256}]}},
    }
    if redis_url:
        cfg["state"] = {"redis_url": redis_url, "key_prefix": f"bench-{os.getpid()}", "lease_s": 30}
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class _Sidecar:
    def __init__(self, config: Mapping[str, Any], workers: int, tmp: str) -> None:
        self.address = f"{LOOPBACK}:{_free_port()}"
        path = Path(tmp) / f"sidecar-{workers}-{len(os.listdir(tmp))}.yaml"
        path.write_text(yaml.safe_dump(dict(config)))
        self.workers = workers
        self.log = open(Path(tmp) / f"{path.stem}.log", "w+", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "--config", str(path), "--listen", self.address,
             "--admin-listen", ""], stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True,
            env={**os.environ, "SKILL_ROUTER_LOG_LEVEL": "INFO"})

    async def ready(self, timeout_s: float = 120.0) -> None:
        want = f"{self.workers} workers serving on" if self.workers > 1 else "skill-router serving on"
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            self.log.seek(0)
            if want in self.log.read():
                return
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        self.log.seek(0)
        raise RuntimeError(f"sidecar ({self.workers} workers) did not start: {self.log.read()[-2000:]}")

    def cpu_s(self) -> float:
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                with_t = p.cpu_times()
                total += with_t.user + with_t.system
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _start_redis(tmp: str) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        return None, None
    port = _free_port()
    proc = subprocess.Popen([binary, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://{LOOPBACK}:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, None


async def run(plan: Plan, *, profile: str | None = None, quick: bool = False) -> dict[str, Any]:
    from router.v1 import router_pb2 as pb

    quiet_logs()
    request = pb.ExecuteRequest(query="what is the answer").SerializeToString()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        redis_proc, redis_url = _start_redis(tmp)
        async with emulator_process({"seed": 0, "default": {"latency_ms": BACKEND_MS}}) as (emu_url, _emu):
            specs = {"1 worker": (1, None), "2 workers": (2, None), "4 workers": (4, None)}
            if redis_url:
                specs["2 workers + Redis"] = (2, redis_url)
            cars = {name: _Sidecar(_config(emu_url, w, r), w, tmp) for name, (w, r) in specs.items()}
            try:
                for car in cars.values():
                    await car.ready()
                async with LoadGenerator() as gen:
                    jobs = {name: {"kind": "grpc", "target": car.address, "method": "Execute", "request": request,
                                   "expect_results": 1, "channels": CHANNELS, "timeout_s": 30}
                            for name, car in cars.items()}
                    names = list(jobs)
                    for name in names:
                        await gen.run({**jobs[name], "concurrency": CONCURRENCY, "duration_s": plan.warmup_s})
                    acc = {name: Measured() for name in names}
                    for r in range(plan.rounds):
                        for name in (names if r % 2 == 0 else names[::-1]):
                            cpu0 = cars[name].cpu_s()
                            res = await gen.run({**jobs[name], "concurrency": CONCURRENCY,
                                                 "duration_s": plan.duration_s})
                            m = acc[name]
                            m.server_cpu_s += cars[name].cpu_s() - cpu0
                            m.client_cpu_s += res["client_cpu_s"]
                            m.latencies_ms.extend(res["latencies_ms"])
                            m.wall_s += res["wall_s"]
                            m.errors.update(res["errors"])
                            m.rounds.append(round_summary(res["latencies_ms"], res["wall_s"]))
                    results = {name: acc[name].summary() for name in names}
            finally:
                for car in cars.values():
                    car.stop()
                if redis_proc is not None:
                    redis_proc.kill()
                    redis_proc.wait()
    base = results["1 worker"]["throughput_qps"]
    for r in results.values():
        r["throughput_vs_1_worker"] = r["throughput_qps"] / base if base else float("nan")
    return json_safe({"benchmark": NAME, "when": timestamp(), "machine": machine(), "quick": quick,
                      "plan": {"rounds": plan.rounds, "duration_s": plan.duration_s},
                      "backend_latency_ms": BACKEND_MS, "concurrency": CONCURRENCY, "channels": CHANNELS,
                      "results": results})


def _rows(result: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, r in result["results"].items():
        rows.append([name, fmt(r["throughput_qps"], ".0f"), fmt(r["throughput_vs_1_worker"], ".2f") + "×",
                     fmt(r["p50_ms"], ".1f"), fmt(r["p99_ms"], ".1f"), fmt(r["server_cpu_us_per_call"] / 1000, ".2f"),
                     str(sum(r["errors"].values()) if isinstance(r["errors"], Mapping) else r["errors"])])
    return rows


HEADERS = ["sidecar", "calls/s", "vs 1 worker", "p50 ms", "p99 ms", "sidecar CPU ms/call", "errors"]


def table(result: Mapping[str, Any]) -> str:
    return "\n".join([
        f"Execute throughput against server.workers (c={result['concurrency']}, {result['channels']} connections, "
        f"{result['backend_latency_ms']} ms backend)",
        text_table(HEADERS, _rows(result)), footer(result, "sidecar")])


def _bars(result: Mapping[str, Any], width: int = 40) -> str:
    """Throughput as a bar per sidecar (a plot that renders anywhere)."""
    res = result["results"]
    top = max((r["throughput_qps"] for r in res.values()), default=0.0) or 1.0
    name_w = max(len(n) for n in res)
    return "\n".join(f"{n.ljust(name_w)}  {'█' * max(1, round(width * r['throughput_qps'] / top))} "
                     f"{r['throughput_qps']:.0f}/s" for n, r in res.items())


def markdown(result: Mapping[str, Any]) -> str:
    return "\n".join([
        md_table(HEADERS, _rows(result)), "", "```", _bars(result), "```", "",
        f"*{result['when']}; {footer(result, 'sidecar')}.*"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return bench_main(__doc__ or NAME, argv, run, table, full=FULL, quick=QUICK)


if __name__ == "__main__":
    main()
