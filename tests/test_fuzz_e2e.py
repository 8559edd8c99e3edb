"""Seeded fuzzing of the real server: random bytes and mutated valid
requests through a raw channel. Only OK, INVALID_ARGUMENT, NOT_FOUND and
RESOURCE_EXHAUSTED may come back, every status message is under 1 KiB, and
the sidecar answers normally afterwards."""

from __future__ import annotations

import asyncio
import collections
import random

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skill_router_client import AsyncRouterClient
from support.configs import config_data

from router.app import build_app
from router.config import parse_config
from router.v1 import router_pb2 as pb

SEED = 9
REQUESTS = 2000
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
METHODS = ("Route", "Execute", "Stats")


def _seeds() -> dict[str, list[bytes]]:
    ctx = pb.QueryContext(domain="research", complexity=6, required_quality=0.8, top_k=2,
                          force_skills=["trm"], exclude_skills=["legal"], priority=pb.PRIORITY_HIGH,
                          metadata={"user_tier": "pro", "k": "v"})
    queries = ["explain vector search", "why does my parser leak?", "é ü 漢字 🙂", "x" * 300]
    route = [pb.RouteRequest(query=q, context=ctx).SerializeToString() for q in queries]
    route.append(pb.RouteRequest(query="hello").SerializeToString())
    execute = [pb.ExecuteRequest(query=q, context=ctx).SerializeToString() for q in queries]
    stats = [pb.StatsRequest().SerializeToString()]
    req = pb.StatsRequest()
    req.window.FromSeconds(3600)
    stats.append(req.SerializeToString())
    return {"Route": route, "Execute": execute, "Stats": stats}


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:  # flip a byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 2:  # insert random bytes
            at = rng.randint(0, len(b))
            b[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:  # duplicate a slice (repeated fields, overlong lengths)
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randint(1, 16)]
        elif op == 4 and b:  # a varint that never ends
            b[rng.randrange(len(b))] = 0xFF
        else:  # an oversized length prefix
            b += bytes([0x0A, 0xFF, 0xFF, 0xFF, 0x0F])
    return bytes(b)


def _requests(rng: random.Random) -> list[tuple[str, bytes]]:
    seeds = _seeds()
    out = []
    for _ in range(REQUESTS):
        method = rng.choice(METHODS)
        if rng.random() < 0.3:
            data = rng.randbytes(rng.randint(0, 200))
        else:
            data = _mutate(rng, rng.choice(seeds[method]))
        out.append((method, data))
    return out


async def test_fuzzed_requests_get_only_the_expected_codes_and_short_messages(emulator) -> None:
    data = config_data(emulator.url)
    for name in ("flaky", "slow"):  # the fixtures' failing skills answer UNAVAILABLE by design
        del data["skills"][name]
    app = build_app(parse_config(data, "<fuzz>", {}), "127.0.0.1:0", env={})
    await app.start()
    try:
        rng = random.Random(SEED)
        codes: collections.Counter[str] = collections.Counter()
        limit = asyncio.Semaphore(32)
        async with grpc.aio.insecure_channel(app.address) as ch:
            calls = {m: ch.unary_unary(f"/router.v1.RouterService/{m}") for m in METHODS}

            async def one(method: str, body: bytes) -> None:
                async with limit:
                    try:
                        await calls[method](body, timeout=20)
                        code, message = grpc.StatusCode.OK, ""
                    except grpc.aio.AioRpcError as err:
                        code, message = err.code(), err.details() or ""
                codes[code.name] += 1
                assert code in ALLOWED, (method, body[:64], code, message[:300])
                assert len(message.encode()) < 1024, (method, code, len(message))

            await asyncio.gather(*(one(m, b) for m, b in _requests(rng)))
        assert sum(codes.values()) == REQUESTS
        assert codes["INVALID_ARGUMENT"] > 0 and codes["OK"] > 0, codes
        # And it still answers.
        async with AsyncRouterClient(app.address, timeout=10) as client:
            resp = await client.execute("explain vector search", domain="research", complexity=6)
            assert resp.text and resp.results
        async with grpc.aio.insecure_channel(app.address) as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop(1)
