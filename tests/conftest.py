"""Shared fixtures: a real emulated backend on loopback, a real sidecar on an
ephemeral loopback port, and clients talking gRPC to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.configs import MODELS, make_config

from router.config import RouterConfig
from router.emulator import Emulator, EmulatorConfig


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        yield emu


@pytest.fixture
def config(emulator: Emulator) -> RouterConfig:
    return make_config(emulator.url)


@pytest.fixture
async def app(config: RouterConfig):  # type: ignore[no-untyped-def]
    from router.app import build_app
    a = build_app(config, "127.0.0.1:0")
    await a.start()
    try:
        yield a
    finally:
        await a.stop(1)


@pytest.fixture
async def client(app):  # type: ignore[no-untyped-def]
    from skill_router_client import AsyncRouterClient
    async with AsyncRouterClient(app.address, timeout=10) as c:
        yield c
