"""Shared machinery of the benchmarks.

Process layout (the same for every benchmark):

- the **bench process** (this one) hosts what is measured: the sidecar and,
  when there is one, the baseline server, on one asyncio loop;
- the **load generator** is a separate process (``multiprocessing``, spawn),
  so the client's CPU is not charged to the server it measures, and both the
  sidecar and the baseline are driven by the same code the same way;
- the **emulated backend** (``python -m router.emulator``) is a third
  process, so its CPU is not charged to the sidecar either.

Load is closed-loop: ``concurrency`` callers each send the next request as
soon as the previous one answered, for ``duration_s``. The variants of a
benchmark are measured in interleaved rounds (A B, B A, A B, ...) so that
drift in the machine's load hits them alike; latencies are pooled over the
rounds and the per-round ratios are kept to show the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import cProfile
import io
import json
import logging
import math
import multiprocessing
import os
import platform
import pstats
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import psutil

LOOPBACK = "127.0.0.1"
MACHINE_NOTE = "shared development machine, other work running at the same time"


def quiet_logs() -> None:
    """Keep the sidecar's start-up warnings (no API key for the emulated
    OpenRouter models) out of the benchmark's output."""
    logging.getLogger("router").setLevel(logging.ERROR)


def machine() -> dict[str, Any]:
    import grpc
    import httpx

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "grpcio": grpc.__version__,
        "httpx": httpx.__version__,
        "note": MACHINE_NOTE,
    }


# -- statistics ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of an ascending sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


@dataclass
class Measured:
    """One variant at one concurrency, pooled over the rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: collections.Counter = field(default_factory=collections.Counter)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    emulator_cpu_s: float = 0.0
    rounds: list[dict[str, float]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        n = len(lat)

        def per_call(seconds: float) -> float:
            return seconds / n * 1e6 if n else float("nan")

        return {
            "calls": n,
            "errors": dict(self.errors),
            "p50_ms": percentile(lat, 0.50),
            "p99_ms": percentile(lat, 0.99),
            "mean_ms": sum(lat) / n if n else float("nan"),
            "throughput_qps": n / self.wall_s if self.wall_s else 0.0,
            "server_cpu_us_per_call": per_call(self.server_cpu_s),
            "client_cpu_us_per_call": per_call(self.client_cpu_s),
            "emulator_cpu_us_per_call": per_call(self.emulator_cpu_s),
            "server_cpu_utilization": self.server_cpu_s / self.wall_s if self.wall_s else 0.0,
            "rounds": self.rounds,
        }


def round_summary(latencies_ms: Sequence[float], wall_s: float) -> dict[str, float]:
    lat = sorted(latencies_ms)
    return {"p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
            "throughput_qps": len(lat) / wall_s if wall_s else 0.0}


def compare(subject: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Ratios subject/baseline of the pooled p50, p99 and throughput, with
    the range of the per-round ratios."""
    out: dict[str, Any] = {
        "p50": ratio(subject["p50_ms"], baseline["p50_ms"]),
        "p99": ratio(subject["p99_ms"], baseline["p99_ms"]),
        "throughput": ratio(subject["throughput_qps"], baseline["throughput_qps"]),
    }
    for key, metric in (("p50", "p50_ms"), ("p99", "p99_ms"), ("throughput", "throughput_qps")):
        per_round = [ratio(s[metric], b[metric]) for s, b in zip(subject["rounds"], baseline["rounds"])]
        per_round = [r for r in per_round if not math.isnan(r)]
        out[f"{key}_round_range"] = [min(per_round), max(per_round)] if per_round else None
    return out


@contextlib.contextmanager
def store_path() -> Iterator[str]:
    """A SQLite metrics-store path in a temporary directory: the sidecar
    keeps its store (it is part of what is measured) without writing into
    the working directory."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        yield os.path.join(tmp, "metrics.db")


def with_store(config: Any, path: str) -> Any:
    """``config`` with its SQLite metrics store at ``path``."""
    import dataclasses

    return dataclasses.replace(config, storage=config.storage.model_copy(update={"sqlite_path": path}))


# -- processes -----------------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def _emulator_files(tmp: str, config: Mapping[str, Any]) -> tuple[str, Any]:
    """The emulator's config file, and a file for its stderr."""
    path = os.path.join(tmp, "emulator.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return path, open(os.path.join(tmp, "stderr"), "w+", encoding="utf-8")


@contextlib.asynccontextmanager
async def emulator_process(config: Mapping[str, Any]) -> AsyncIterator[tuple[str, psutil.Process]]:
    """``python -m router.emulator`` on a free loopback port, with ``config``
    (an ``EmulatorConfig`` mapping); yields its URL and its process."""
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        path, err = _emulator_files(tmp, config)
        with err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "router.emulator", "--host", LOOPBACK, "--port", "0", "--config", path,
                stdout=asyncio.subprocess.PIPE, stderr=err)
            try:
                assert proc.stdout is not None
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
                match = re.search(r"listening on (http://\S+)", line)
                if match is None:
                    err.seek(0)
                    raise RuntimeError(f"emulator did not start: {line!r} {err.read()[-2000:]}")
                yield match.group(1), psutil.Process(proc.pid)
            finally:
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 5)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()


class RssSampler:
    """Samples this process's resident set size every ``interval_s``; keeps
    the peak."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self.peak = self.now()
        self._task: asyncio.Task | None = None

    def now(self) -> int:
        return self._proc.memory_info().rss

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, self.now())


# -- the load generator (a separate process) --------------------------------------------------


class LoadGenerator:
    """A spawned process that runs closed-loop load jobs on request.

    A job is a plain dict: ``{"kind": "grpc", "target", "method", "request"
    (serialized), "check", "concurrency", "duration_s"}`` or ``{"kind":
    "http", "base_url", "calls": [(path, json body), ...], "concurrency",
    "duration_s"}``; the answer has ``latencies_ms``, ``wall_s``, ``errors``
    and ``client_cpu_s``.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_entry, args=(child,), name="bench-load", daemon=True)
        self._child = child
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-load-pipe")
        self.process: psutil.Process | None = None

    async def __aenter__(self) -> Self:
        self._proc.start()
        self._child.close()
        self.process = psutil.Process(self._proc.pid)
        await self.run({"kind": "ping"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._conn.send(None)
        await asyncio.get_running_loop().run_in_executor(self._pool, self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._pool.shutdown(wait=False)

    async def run(self, job: Mapping[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self._conn.send(dict(job))
        result = await loop.run_in_executor(self._pool, self._conn.recv)
        if "error" in result:
            raise RuntimeError(f"load generator: {result['error']}")
        return result


def _worker_entry(conn: Any) -> None:
    from router.app import run

    quiet_logs()
    run(_Worker(conn).serve())  # on uvloop when installed: the client is not the bottleneck


class _Worker:
    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._channels: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                job = await loop.run_in_executor(None, self._conn.recv)
                if job is None:
                    break
                try:
                    result = await self._job(job)
                except Exception as exc:  # reported to the bench process
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                self._conn.send(result)
        finally:
            for channel in self._channels.values():
                await channel.close()
            for client in self._clients.values():
                await client.aclose()

    async def _job(self, job: dict[str, Any]) -> dict[str, Any]:
        kind = job["kind"]
        if kind == "ping":
            return {"ok": True}
        if kind == "grpc":
            one = self._grpc_call(job)
        elif kind == "http":
            one = self._http_call(job)
        elif kind == "aiohttp":
            one = await self._aiohttp_call(job)
        elif kind == "burst":
            return await self._burst(job)
        else:
            raise ValueError(f"unknown job kind {kind!r}")
        return await closed_loop(one, int(job["concurrency"]), float(job["duration_s"]))

    async def _burst(self, job: dict[str, Any]) -> dict[str, Any]:
        """``calls`` Executes started at once over ``channels`` channels;
        every answer's status code, whether a refusal carried RetryInfo,
        and the latencies of the OK ones."""
        import grpc
        from skill_router_client import error_details

        from router.v1 import router_pb2 as pb
        from router.v1 import router_pb2_grpc as pb_grpc

        # Many concurrent streams per channel: let each channel open more
        # HTTP/2 connections rather than queue in the client.
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_concurrent_streams", 1 << 20)]
        channels = [grpc.aio.insecure_channel(job["target"], options=[*options, ("grpc.channel_id", i)])
                    for i in range(int(job["channels"]))]
        stubs = [pb_grpc.RouterServiceStub(ch) for ch in channels]
        request = pb.ExecuteRequest.FromString(job["request"])
        timeout = float(job["timeout_s"])
        codes: collections.Counter = collections.Counter()
        retry_info = 0
        ok_ms: list[float] = []
        results_short = 0
        perf = time.perf_counter

        async def one(i: int) -> None:
            nonlocal retry_info, results_short
            t0 = perf()
            try:
                resp = await stubs[i % len(stubs)].Execute(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                if error_details(exc).retry_delay_s is not None:
                    retry_info += 1
                return
            codes["OK"] += 1
            ok_ms.append((perf() - t0) * 1000.0)
            if any(r.status != pb.SKILL_STATUS_OK for r in resp.results):
                results_short += 1

        cpu0 = time.process_time()
        t0 = perf()
        try:
            await asyncio.gather(*(one(i) for i in range(int(job["calls"]))))
        finally:
            for ch in channels:
                await ch.close()
        return {"codes": dict(codes), "retry_info": retry_info, "ok_ms": ok_ms, "wall_s": perf() - t0,
                "degraded": results_short, "client_cpu_s": time.process_time() - cpu0}

    def _grpc_call(self, job: dict[str, Any]) -> Callable[[], Any]:
        import grpc

        from router.v1 import router_pb2 as pb
        from router.v1 import router_pb2_grpc as pb_grpc

        target = job["target"]
        # "channels" > 1: that many connections (server.workers: SO_REUSEPORT
        # spreads connections, not calls, among the workers), calls round robin.
        n = int(job.get("channels", 1))
        for i in range(n):
            key = target if i == 0 else f"{target}#{i}"
            if key not in self._channels:
                opts = [("grpc.use_local_subchannel_pool", 1)] if n > 1 else []
                self._channels[key] = grpc.aio.insecure_channel(target, options=opts)
        stubs = [pb_grpc.RouterServiceStub(self._channels[target if i == 0 else f"{target}#{i}"]) for i in range(n)]
        method = job["method"]
        request_type = {"Route": pb.RouteRequest, "Execute": pb.ExecuteRequest}[method]
        request = request_type.FromString(job["request"])
        rpcs = [getattr(stub, method) for stub in stubs]
        turn = iter(range(1 << 62))
        timeout = float(job.get("timeout_s", 30.0))
        expect = int(job.get("expect_results", 0))
        ok = pb.SKILL_STATUS_OK

        async def one() -> None:
            resp = await rpcs[next(turn) % n](request, timeout=timeout)
            if expect and (len(resp.results) != expect or any(r.status != ok for r in resp.results)):
                raise _Degraded()

        return one

    def _http_call(self, job: dict[str, Any]) -> Callable[[], Any]:
        """One warm pooled ``httpx.AsyncClient`` per call of the query (the
        sidecar also holds one per implementation): httpcore's pool looks at
        every pooled connection on each request, so one client holding k
        times the connections would be slower than the sidecar's k clients."""
        import httpx

        base = job["base_url"]
        n = int(job.get("max_connections", 256))
        timeout = httpx.Timeout(float(job.get("timeout_s", 30.0)))
        calls = []
        for i, (path, body) in enumerate(job["calls"]):
            key = f"{base}#{i}"
            if key not in self._clients:
                self._clients[key] = httpx.AsyncClient(
                    base_url=base, timeout=timeout, trust_env=False,
                    limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
            calls.append((self._clients[key], path, body))

        async def post(client: Any, path: str, body: Any) -> None:
            response = await client.post(path, json=body)
            response.raise_for_status()
            response.json()

        async def one() -> None:
            await asyncio.gather(*(post(client, path, body) for client, path, body in calls))

        return one


    async def _aiohttp_call(self, job: dict[str, Any]) -> Callable[[], Any]:
        """Like ``_http_call`` with one ``aiohttp.ClientSession`` per call: a
        lean Python caller, the reference for the backends' own time."""
        import aiohttp

        base = job["base_url"]
        n = int(job.get("max_connections", 256))
        timeout = aiohttp.ClientTimeout(total=float(job.get("timeout_s", 30.0)))
        calls = []
        for i, (path, body) in enumerate(job["calls"]):
            key = f"aiohttp {base}#{i}"
            if key not in self._clients:
                self._clients[key] = _AiohttpSession(aiohttp.ClientSession(
                    base, timeout=timeout, connector=aiohttp.TCPConnector(limit=n), trust_env=False))
            calls.append((self._clients[key].session, path, body))

        async def post(session: Any, path: str, body: Any) -> None:
            async with session.post(path, json=body) as response:
                response.raise_for_status()
                await response.json()

        async def one() -> None:
            await asyncio.gather(*(post(session, path, body) for session, path, body in calls))

        return one


class _AiohttpSession:
    def __init__(self, session: Any) -> None:
        self.session = session

    async def aclose(self) -> None:
        await self.session.close()


class _Degraded(Exception):
    """An Execute answer in which not every chosen skill answered."""


def _error_name(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        with contextlib.suppress(Exception):
            return str(code().name)
    if isinstance(exc, _Degraded):
        return "DEGRADED"
    return type(exc).__name__


async def closed_loop(one: Callable[[], Any], concurrency: int, duration_s: float) -> dict[str, Any]:
    """``concurrency`` callers awaiting ``one()`` back to back for
    ``duration_s``; latencies of the calls that succeeded, in ms."""
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()
    perf = time.perf_counter
    deadline = perf() + duration_s

    async def caller() -> None:
        while perf() < deadline:
            t0 = perf()
            try:
                await one()
            except Exception as exc:  # counted
                errors[_error_name(exc)] += 1
                await asyncio.sleep(0.001)
                continue
            latencies.append((perf() - t0) * 1000.0)

    cpu0 = time.process_time()
    t0 = perf()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {"latencies_ms": latencies, "wall_s": perf() - t0, "errors": dict(errors),
            "client_cpu_s": time.process_time() - cpu0}


# -- orchestration ------------------------------------------------------------------------------


class Profiler:
    """cProfile of this process's main thread (the asyncio loop that runs the
    sidecar), switched on only while the sidecar is being measured."""

    def __init__(self, setting: str | None) -> None:
        """``setting``: None (off), "" (on) or a path to also dump the raw
        stats to (read them with ``python -m pstats PATH``)."""
        self.profile = cProfile.Profile() if setting is not None else None
        self.dump_path = setting or None

    @contextlib.contextmanager
    def active(self, on: bool) -> Iterator[None]:
        if self.profile is None or not on:
            yield
            return
        self.profile.enable()
        try:
            yield
        finally:
            self.profile.disable()

    def report(self, top: int = 25) -> str:
        if self.profile is None:
            return ""
        if self.dump_path:
            self.profile.dump_stats(self.dump_path)
        out = io.StringIO()
        stats = pstats.Stats(self.profile, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        stats.print_stats("/router/", top)  # the sidecar's own functions, by cumulative time
        out.write(by_package(stats))
        return out.getvalue()


def by_package(stats: pstats.Stats) -> str:
    """Own time (tottime) summed by package: where the loop's busy time goes.
    Waiting in epoll is idle time and is left out of the shares."""
    groups: collections.Counter = collections.Counter()
    idle = 0.0
    for (file, _line, fn), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if file == "~" and "epoll" in fn:
            idle += tottime
            continue
        if "site-packages/" in file:
            key = file.split("site-packages/", 1)[1].split("/", 1)[0]
        elif "/router/" in file:
            key = "router/" + file.split("/router/", 1)[1].split("/", 1)[0]
        elif "importlib" in file or "_distutils_hack" in file or fn == "<built-in method posix.stat>":
            key = "import machinery (e.g. a failed import retried per call)"
        elif "asyncio" in file or "selectors" in file:
            key = "asyncio"
        elif file == "~" and "_contextvars.Context" in fn:
            key = "callbacks run by the loop (incl. grpc's Cython code)"
        elif file == "~":
            key = "other builtins"
        else:
            key = "stdlib " + os.path.basename(file)
        groups[key] += tottime
    busy = sum(groups.values())
    lines = [f"\nOwn time by package ({busy:.2f} s busy, {idle:.2f} s idle in epoll):"]
    for key, t in groups.most_common(16):
        lines.append(f"  {t:7.3f} s  {t / busy * 100:5.1f}%  {key}")
    return "\n".join(lines) + "\n"


async def measure(
    gen: LoadGenerator,
    variants: Mapping[str, Mapping[str, Any]],
    *,
    concurrency: int,
    rounds: int,
    duration_s: float,
    warmup_s: float,
    emulator: psutil.Process | None = None,
    profiler: Profiler | None = None,
    profiled: str | None = None,
    servers: Mapping[str, psutil.Process] | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure every variant (name → load job without concurrency/duration)
    at ``concurrency`` in ``rounds`` interleaved rounds; pooled summaries.
    The server CPU of a variant is this process's, or that of its process in
    ``servers`` (a sidecar running as a subprocess)."""
    me = psutil.Process()
    names = list(variants)
    for name in names:  # warm connections, caches and the JIT-less interpreter's branch state alike
        await gen.run({**variants[name], "concurrency": concurrency, "duration_s": warmup_s})
    acc = {name: Measured() for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            job = {**variants[name], "concurrency": concurrency, "duration_s": duration_s}
            server = (servers or {}).get(name, me)
            server0, emu0 = cpu_seconds(server), cpu_seconds(emulator)
            with profiler.active(name == profiled) if profiler else contextlib.nullcontext():
                res = await gen.run(job)
            m = acc[name]
            m.server_cpu_s += cpu_seconds(server) - server0
            m.emulator_cpu_s += cpu_seconds(emulator) - emu0
            m.client_cpu_s += res["client_cpu_s"]
            m.latencies_ms.extend(res["latencies_ms"])
            m.wall_s += res["wall_s"]
            m.errors.update(res["errors"])
            m.rounds.append(round_summary(res["latencies_ms"], res["wall_s"]))
            last = m.rounds[-1]
            progress(f"  c={concurrency} round {r + 1}/{rounds} {name}: p50 {fmt(last['p50_ms'])} ms, "
                     f"{fmt(len(res['latencies_ms']) / res['wall_s'] if res['wall_s'] else 0, '.0f')} calls/s"
                     + (f", errors {res['errors']}" if res["errors"] else ""))
    return {name: acc[name].summary() for name in names}


def progress(line: str) -> None:
    """A progress line on stderr (the result goes to stdout)."""
    print(line, file=sys.stderr, flush=True)


# -- the sidecar as a subprocess of its own ---------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _sidecar_files(tmp: str, config: Mapping[str, Any]) -> tuple[str, Any]:
    """The config file and the open log file, in ``tmp``. YAML, not JSON: a
    JSON float such as ``1e-07`` is a string to YAML 1.1."""
    import yaml

    path = os.path.join(tmp, "config.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(config, f, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
    return path, open(os.path.join(tmp, "log"), "w+", encoding="utf-8")  # closed by the caller


@contextlib.asynccontextmanager
async def sidecar_process(config: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
                          start_timeout_s: float = 60.0) -> AsyncIterator[tuple[str, psutil.Process]]:
    """``skill-router serve`` with ``config`` (a mapping, written as YAML) on
    a free loopback port; yields its address once health says
    SERVING, and its process. ``env`` is added to this process's environment."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp:
        path, log_file = _sidecar_files(tmp, config)
        address = f"{LOOPBACK}:{free_port()}"
        with log_file as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "from router.cli import main; main()", "--log-level", "ERROR",
                "serve", "--config", path, "--listen", address, stdout=log, stderr=log,
                env={**os.environ, **(env or {})})
            try:
                # Reconnect at once (gRPC's default backoff grows to 120 s).
                options = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
                           ("grpc.max_reconnect_backoff_ms", 50)]
                async with grpc.aio.insecure_channel(address, options=options) as ch:
                    health = health_pb2_grpc.HealthStub(ch)
                    deadline = time.monotonic() + start_timeout_s
                    while True:
                        if proc.returncode is not None or time.monotonic() > deadline:
                            log.seek(0)
                            raise RuntimeError(f"the sidecar did not start: {log.read()[-2000:]}")
                        with contextlib.suppress(grpc.aio.AioRpcError):
                            resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                                break
                        await asyncio.sleep(0.05)
                yield address, psutil.Process(proc.pid)
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 15)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()


# -- plots ------------------------------------------------------------------------------------------


def docs_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def save_plot(fig: Any, name: str) -> str:
    """Write ``fig`` (matplotlib) as ``docs/<name>.png``; returns the path."""
    path = os.path.join(docs_dir(), f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    progress(f"plot written: {os.path.relpath(path)}")
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- command line and output -----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration_s: float
    warmup_s: float


def parse_args(description: str, argv: Sequence[str] | None, *, full: Plan, quick: Plan) -> tuple[argparse.Namespace, Plan]:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smoke check of a few seconds (few samples; figures rough)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--rounds", type=int, help=f"interleaved rounds per variant (default {full.rounds}, quick {quick.rounds})")
    p.add_argument("--duration", type=float, help=f"seconds per round (default {full.duration_s}, quick {quick.duration_s})")
    p.add_argument("--profile", nargs="?", const="", metavar="STATS_FILE",
                   help="cProfile the sidecar's event loop while it is measured; print the hot spots to stderr "
                        "and dump the raw stats to STATS_FILE when given (the profiler slows the sidecar: "
                        "ratios of such a run are not comparable)")
    args = p.parse_args(argv)
    plan = quick if args.quick else full
    plan = Plan(args.rounds or plan.rounds, args.duration if args.duration is not None else plan.duration_s,
                plan.warmup_s)
    return args, plan


def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A markdown table; the first ``left`` columns left-aligned, the rest right."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(headers) - left)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def footer(result: Mapping[str, Any], per: str | None = "variant", *, extra: str = "") -> str:
    """The closing line of a text table: the machine and how it was measured."""
    m = result["machine"]
    line = f"{m['cpus']} CPUs, Python {m['python']}, grpcio {m['grpcio']}{extra} ({m['note']})"
    if per is not None:
        line += f"; {result['plan']['rounds']} rounds × {result['plan']['duration_s']} s per {per}"
    line += " — QUICK: rough figures" if result["quick"] else ""
    line += " — PROFILED: ratios distorted" if result.get("profiled") else ""
    return line


def bench_main(doc: str, argv: Sequence[str] | None, run: Callable[..., Any], table: Callable[[Mapping[str, Any]], str],
               *, full: Plan, quick: Plan) -> dict[str, Any]:
    """The command line every closed-loop benchmark shares: parse, run, print."""
    from router.app import run as run_loop

    args, plan = parse_args(doc.splitlines()[0], argv, full=full, quick=quick)
    result = run_loop(run(plan, profile=args.profile, quick=args.quick))  # uvloop unless SKILL_ROUTER_UVLOOP=0
    emit(result, args.json, table)
    return result


def emit(result: Mapping[str, Any], as_json: bool, table: Callable[[Mapping[str, Any]], str]) -> None:
    if as_json:
        print(json.dumps(result, allow_nan=False, default=_json_default))
    else:
        print(table(result))


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_safe(value: Any) -> Any:
    """NaN → None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
