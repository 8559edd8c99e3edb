"""Flood: many concurrent Executes at once; what comes back?

A robustness measurement, not a speed one (issue 9): with every per-skill
admission limit raised, ``--calls`` Executes are started at once over 100
channels against ``skill-router serve --demo`` (a subprocess, emulated
backends). gRPC core's own queue of calls the application has not picked up
used to cancel most of them silently; the sidecar now raises those limits
(``server.grpc_options``) and refuses what is over ``server.max_concurrent_rpcs``
itself (RESOURCE_EXHAUSTED + RetryInfo). Reported: the status codes and how
many carried a RetryInfo.

    .venv/bin/python -m bench.flood [--calls 10000] [--limit none|N] [--root PATH]

``--root`` runs another checkout's code (e.g. an older commit exported to a
directory) with this venv, to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml

REPO = Path(__file__).resolve().parent.parent
CHANNELS = 100


def _config(root: Path, limit: int | None) -> dict:
    data = yaml.safe_load((root / "router" / "config" / "default.yaml").read_text())
    data["admission"].update({"default_concurrency_limit": 100_000, "default_queue_depth": 100_000,
                              "queue_timeout_s": 60})
    data["server"]["max_concurrent_rpcs"] = limit
    data["storage"]["sqlite_path"] = None
    for skill in data["skills"].values():
        skill.pop("concurrency_limit", None)
        skill.pop("queue_depth", None)
        for impl in skill["implementations"]:
            impl["max_connections"] = 200
    return data


async def flood(root: Path, calls: int, limit: int | None, port: int) -> dict:
    from skill_router_client import AsyncRouterClient, error_details

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flood.yaml"
        path.write_text(yaml.safe_dump(_config(root, limit)))
        env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'clients' / 'python'}"}
        target = f"127.0.0.1:{port}"
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "skill-router"), "serve", "--demo", "--config", str(path),
            "--listen", target, env=env, cwd=tmp, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    async with AsyncRouterClient(target, timeout=2) as c:
                        await c.stats()
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            codes: collections.Counter[str] = collections.Counter()
            retry_info = 0
            clients = [AsyncRouterClient(target, timeout=60, channel=grpc.aio.insecure_channel(
                target, options=[("grpc.use_local_subchannel_pool", 1)])) for _ in range(CHANNELS)]

            async def one(i: int) -> None:
                nonlocal retry_info
                try:
                    await clients[i % CHANNELS].execute("explain vector search", domain="research", complexity=3)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1
                    retry_info += error_details(err).retry_delay_s is not None

            start = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(calls)))
            wall = time.monotonic() - start
            for c in clients:
                await c.close()
            return {"codes": dict(codes), "with_retry_info": retry_info, "wall_s": round(wall, 1)}
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--limit", default="1000", help="server.max_concurrent_rpcs, or 'none'")
    p.add_argument("--root", type=Path, default=REPO, help="the checkout whose code serves")
    p.add_argument("--port", type=int, default=51_230)
    a = p.parse_args(argv)
    limit = None if a.limit == "none" else int(a.limit)
    result = asyncio.run(flood(a.root.resolve(), a.calls, limit, a.port))
    print(f"{a.calls} concurrent Executes, max_concurrent_rpcs {a.limit}, code from {a.root}: {result}")


if __name__ == "__main__":
    main()
