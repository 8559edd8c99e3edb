"""A sidecar with its admin endpoint on an ephemeral loopback port, a
metrics store on disk, and breakers that open after two failures in a row;
shared by the admin tests (one sidecar per module)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from skill_router_client import AsyncRouterClient

from router.app import App, build_app
from router.emulator import Emulator, EmulatorConfig
from router.v1 import router_pb2 as pb

from .configs import MODELS, make_config

WAIT_S = 20.0
DOMAINS = ("code", "research", "legal", "general")


@dataclass
class Sidecar:
    app: App
    client: AsyncRouterClient
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        assert self.app.admin is not None
        return self.app.admin.url

    async def get_json(self, path: str, status: int = 200, **kw: Any) -> Any:
        async with self.http.get(self.url + path, **kw) as r:
            body = await r.json()
            assert r.status == status, (r.status, body)
            return body

    async def get_text(self, path: str, **kw: Any) -> str:
        async with self.http.get(self.url + path, **kw) as r:
            assert r.status == 200, r.status
            return await r.text()

    async def traffic(self, n: int) -> None:
        """``n`` Execute queries over the four domains and a spread of complexity."""
        for i in range(n):
            await self.client.execute(f"question {i} about systems", domain=DOMAINS[i % 4], complexity=i % 10)

    async def open_breaker(self, skill: str = "flaky") -> None:
        """Execute on the always-failing skill until its breaker opens."""
        for i in range(20):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.client.execute(f"{skill} {i}", force_skills=[skill], top_k=1)
            stats = await self.client.stats()
            [s] = [x for x in stats.skills if x.skill == skill]
            if any(impl.breaker_state == pb.BREAKER_STATE_OPEN for impl in s.implementations):
                return
        raise AssertionError(f"{skill}'s breaker did not open")


async def until(pred: Any, what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``pred`` (async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = await pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def admin_sidecar(tmp: Path, *, sample_interval_s: float = 0.2) -> AsyncIterator[Sidecar]:
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        config = make_config(emu.url, server={"admin_listen": "127.0.0.1:0"},
                             storage={"sqlite_path": str(tmp / "metrics.db"), "flush_interval_s": 0.05},
                             admission={"breaker": {"failure_threshold": 2}})
        app = build_app(config, "127.0.0.1:0")
        assert app.admin is not None
        app.admin.sample_interval_s = sample_interval_s
        app.admin.window_ttl_s = 0.0  # every read sees the store as it is
        await app.start()
        try:
            async with AsyncRouterClient(app.address, timeout=10) as client, aiohttp.ClientSession() as http:
                yield Sidecar(app, client, http)
        finally:
            await app.stop(1)
