"""Authentication and exposure (issue 9), end to end: the real sidecar with
TLS, mTLS and a bearer token, certificates made at run time
(support/certs.py), the Python clients, health and reflection."""

from __future__ import annotations

import logging

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from skill_router_client import AsyncRouterClient, RouterClient, TlsConfig
from support.certs import Pki, make_pki
from support.configs import make_config

from router.app import build_app

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "tok-9f8e7d6c5b4a39281706"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def emulated():
    from support.configs import MODELS

    from router.emulator import Emulator, EmulatorConfig
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        yield emu


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secured(emulated, pki):
    """TLS + mTLS + token, listening on loopback (reflection on by default there)."""
    config = make_config(emulated.url, server={
        "tls": {"cert_file": pki.server_cert, "key_file": pki.server_key, "client_ca_file": pki.ca},
        "auth": {"token_env": "EDGE_TEST_SERVER_TOKEN"}, "health_listen": "127.0.0.1:0"})
    app = build_app(config, "127.0.0.1:0", env={"EDGE_TEST_SERVER_TOKEN": TOKEN})
    await app.start()
    try:
        yield app
    finally:
        await app.stop(1)


def mtls(pki: Pki) -> TlsConfig:
    return TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)


async def test_a_client_with_a_certificate_and_the_token_is_served(secured, pki, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        async with AsyncRouterClient(secured.address, timeout=10, tls=mtls(pki), token=TOKEN) as c:
            resp = await c.execute("explain vector search", domain="research", complexity=6)
            assert resp.text and resp.results
            assert (await c.stats()).totals.queries >= 1
    assert TOKEN not in caplog.text


async def test_without_the_right_token_every_rpc_but_health_is_unauthenticated(secured, pki, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
            async with AsyncRouterClient(secured.address, timeout=10, tls=mtls(pki), token=token) as c:
                for call in (c.route("hello"), c.execute("hello"), c.stats()):
                    with pytest.raises(grpc.aio.AioRpcError) as ei:
                        await call
                    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert TOKEN not in (ei.value.details() or "")
        # Reflection needs the token too; health does not.
        creds = mtls(pki).credentials()
        async with grpc.aio.secure_channel(secured.address, creds) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                async for _ in stream:
                    pass
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in caplog.text


async def test_a_plaintext_health_port_serves_probes_and_nothing_else(secured) -> None:
    async with grpc.aio.insecure_channel(secured.server.health_address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await AsyncRouterClient(secured.address, channel=ch, token=TOKEN).route("hello")
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_client_without_a_valid_certificate_is_refused(secured, pki) -> None:
    refused = [
        TlsConfig(ca_file=pki.ca),  # no client certificate
        TlsConfig(ca_file=pki.ca, cert_file=pki.rogue_cert, key_file=pki.rogue_key),  # from an untrusted CA
    ]
    for tls in refused:
        async with AsyncRouterClient(secured.address, timeout=5, tls=tls, token=TOKEN) as c:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await c.route("hello")
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    async with AsyncRouterClient(secured.address, timeout=5, token=TOKEN) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await plaintext.route("hello")
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_blocking_client_takes_tls_and_the_token(secured, pki) -> None:
    import asyncio

    def call() -> int:
        with RouterClient(secured.address, timeout=10, tls=mtls(pki), token=TOKEN) as c:
            return len(c.route("hello", domain="research").selections)

    assert await asyncio.to_thread(call) >= 1


async def _reflected(ch: grpc.aio.Channel, metadata=()) -> list[str]:
    stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata)
    names = []
    async for resp in stream:
        names += [s.name for s in resp.list_services_response.service]
    return names


async def test_tls_without_a_client_ca_and_reflection_by_config(emulated, pki) -> None:
    tls_only = {"tls": {"cert_file": pki.server_cert, "key_file": pki.server_key}}
    on = build_app(make_config(emulated.url, server=tls_only), "127.0.0.1:0", env={})
    off = build_app(make_config(emulated.url, server={**tls_only, "reflection": False}), "127.0.0.1:0", env={})
    await on.start()
    await off.start()
    try:
        creds = TlsConfig(ca_file=pki.ca).credentials()
        async with grpc.aio.secure_channel(on.address, creds) as ch:
            assert "router.v1.RouterService" in await _reflected(ch)  # default on loopback
        async with grpc.aio.secure_channel(off.address, creds) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await _reflected(ch)
            assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with AsyncRouterClient(off.address, timeout=10, tls=TlsConfig(ca_file=pki.ca)) as c:
            assert (await c.route("hello", domain="research")).selections
    finally:
        await on.stop(0)
        await off.stop(0)


async def test_the_command_line_takes_tls_and_the_token(secured, pki) -> None:
    import json

    from test_cli import run
    tls = ("--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key)
    rc, out, err = await run("stats", "--target", secured.address, "--json", *tls,
                             env={"SKILL_ROUTER_TOKEN": TOKEN})
    assert rc == 0, err
    assert json.loads(out)["skills"]
    rc, out, err = await run("route", "hello", "--target", secured.address, *tls, "--token-env", "EDGE_NO_SUCH_VAR")
    assert rc == 1 and "UNAUTHENTICATED" in err and TOKEN not in out + err
