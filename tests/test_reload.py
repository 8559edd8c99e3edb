"""Hot reload: SIGHUP, ``skill-router reload`` and ``POST /api/reload`` read
the config file again and swap it in without a restart, through the real
sidecar (a ``skill-router serve`` subprocess, or an in-process App on a
loopback port) and real HTTP backends (the emulator on loopback)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skill_router_client import AsyncRouterClient

from router.admin import AdminServer
from router.app import build_app
from router.config import load_config
from router.emulator import Emulator, EmulatorConfig, ModelProfile
from router.v1 import router_pb2 as pb

CLI = str(Path(sys.executable).parent / "skill-router")
MODELS = {**{m: ModelProfile(latency_ms=2) for m in ("alpha", "beta", "gamma")},
          "broken": ModelProfile(latency_ms=1, error_rate=1.0)}


def skill(url: str, name: str, limit: int = 2, model: str | None = None) -> dict[str, Any]:
    """A skill that only queries naming it activate, on its own emulated
    model, so the emulator's log tells its backend's requests apart."""
    return {"priority": 1, "optimal_complexity": 5, "concurrency_limit": limit, "queue_depth": 10,
            "activation": {"keywords": [name]},
            "implementations": [{"name": f"{name}-http", "backend": "http", "url": f"{url}/models/{model or name}",
                                 "model": model or name, "quality": 0.9, "cost_per_query": 0.01, "expected_latency_ms": 50}]}


def write_config(path: Path, url: str, *, alpha_limit: int = 2, gamma: bool = False,
                 admin: str | None = None, alpha_model: str | None = None, **extra: Any) -> None:
    skills = {"alpha": skill(url, "alpha", alpha_limit, alpha_model), "beta": skill(url, "beta")}
    if gamma:
        skills["gamma"] = skill(url, "gamma")
    data: dict[str, Any] = {"skills": skills, "storage": {"sqlite_path": None},
                            "server": {"grace_period_s": 5, "admin_listen": admin}, **extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def warm_gets(emu: Emulator, model: str) -> int:
    return sum(1 for r in emu.received if r.method == "GET" and r.path == f"/models/{model}/healthz")


def start_warms(emu: Emulator) -> int:
    """Warm requests of alpha's and beta's backends: they call one origin, so
    they share one connection pool, warmed once (router.backends._transport)."""
    return warm_gets(emu, "alpha") + warm_gets(emu, "beta")


def first(emu: Emulator, method: str, path: str) -> int:
    return next(i for i, r in enumerate(emu.received) if r.method == method and r.path == path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(cond: Callable[[], Any], what: str, timeout: float = 30) -> None:
    async def wait() -> None:
        while True:
            ok = cond()
            if asyncio.iscoroutine(ok):
                ok = await ok
            if ok:
                return
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


async def cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(CLI, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as e:
        yield e


class Sidecar:
    """``skill-router serve`` as a subprocess; its log is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, address: str, admin: str) -> None:
        self.proc, self.address, self.admin = proc, address, admin
        self.log: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.log.append(line.decode(errors="replace").rstrip())

    def logged(self, *parts: str) -> bool:
        return any(all(p in line for p in parts) for line in self.log)


@pytest.fixture
async def sidecar(tmp_path: Path, emu: Emulator) -> AsyncIterator[tuple[Sidecar, Path]]:
    config = tmp_path / "router.yaml"
    admin = f"127.0.0.1:{free_port()}"
    write_config(config, emu.url, admin=admin)
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    proc = await asyncio.create_subprocess_exec(
        CLI, "serve", "--config", str(config), "--listen", address, "--pid-file", str(tmp_path / "router.pid"),
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    side = Sidecar(proc, address, admin)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            health = health_pb2_grpc.HealthStub(ch)

            async def serving() -> bool:
                try:
                    r = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return r.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.aio.AioRpcError:
                    return False

            await until(serving, "the sidecar is SERVING", 60)
        yield side, config
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await side._reader


async def test_sighup_adds_a_skill_and_changes_a_limit_while_a_query_in_flight_finishes(
        sidecar: tuple[Sidecar, Path], emu: Emulator, tmp_path: Path) -> None:
    side, config = sidecar
    assert start_warms(emu) == 1
    async with AsyncRouterClient(side.address, timeout=30) as client:
        stats = await client.stats()
        assert stats.config_generation == 1 and stats.config_source == str(config)
        assert [s.skill for s in stats.skills] == ["alpha", "beta"]
        assert stats.skills[0].concurrency_limit == 2

        # A query in flight on alpha (its backend holds it) when the reload lands.
        emu.pause("alpha")
        in_flight = asyncio.create_task(client.execute("an alpha question", domain="general", complexity=5))
        await until(lambda: emu.stats().get("alpha") and emu.stats()["alpha"].concurrent == 1,
                    "the alpha call is in flight")

        write_config(config, emu.url, alpha_limit=7, gamma=True, admin=side.admin)
        rc, out, err = await cli("reload", "--pid-file", str(tmp_path / "router.pid"))
        assert rc == 0 and "SIGHUP" in out, err

        async def generation(n: int) -> bool:
            return (await client.stats()).config_generation == n

        await until(lambda: generation(2), "generation 2 serves")
        stats = await client.stats()
        assert [s.skill for s in stats.skills] == ["alpha", "beta", "gamma"]
        assert stats.skills[0].concurrency_limit == 7  # the new limit
        rc, out, err = await cli("health", "--target", side.address)
        assert rc == 0 and "SERVING (config generation 2)" in out, err
        assert not in_flight.done()

        # The query in flight finishes, on the config it started with.
        emu.resume("alpha")
        resp = await in_flight
        assert resp.outcome == pb.QUERY_OUTCOME_OK and [r.skill for r in resp.results] == ["alpha"]

        # The new skill serves; it was warmed before it took traffic.
        resp = await client.execute("a gamma question", domain="general", complexity=5)
        assert resp.outcome == pb.QUERY_OUTCOME_OK and [r.skill for r in resp.results] == ["gamma"]
        assert warm_gets(emu, "gamma") == 1
        assert first(emu, "GET", "/models/gamma/healthz") < first(emu, "POST", "/models/gamma/skill")
        # Unchanged backends (beta's, and alpha's whose limit alone changed) kept their warm pools.
        assert start_warms(emu) == 1
        # The totals carry over across generations.
        stats = await client.stats()
        assert stats.totals.queries == 2 and stats.totals.outcomes["ok"] == 2
        await until(lambda: side.logged("config generation 2 serving", "added ['gamma']", "changed ['alpha']"),
                    "the swap is logged")
        await until(lambda: side.logged("config generation 1 retired"), "generation 1 is retired")


async def test_a_bad_file_is_logged_with_its_key_path_and_the_old_config_keeps_serving(
        sidecar: tuple[Sidecar, Path], emu: Emulator) -> None:
    side, config = sidecar
    text = config.read_text()
    config.write_text(text.replace("concurrency_limit: 2", "concurrency_limit: -3", 1)
                      .replace("queue_depth: 10", "queue_dept: 10", 1))
    rc, out, err = await cli("reload", "--admin", side.admin)
    assert rc == 1 and "422" in err and "skills.alpha.concurrency_limit" in err, err
    assert "skills.alpha.queue_dept" in err  # every problem of the file, each with its key path
    await until(lambda: side.logged("reload: ", f"{config}:", "skills.alpha.concurrency_limit"),
                "the bad key path is logged")
    assert side.logged("reload: the config is not valid (2 problem(s)); generation 1", "keeps serving")
    async with AsyncRouterClient(side.address, timeout=30) as client:
        stats = await client.stats()
        assert stats.config_generation == 1 and stats.skills[0].concurrency_limit == 2
        resp = await client.execute("an alpha question", domain="general", complexity=5)
        assert resp.outcome == pb.QUERY_OUTCOME_OK

        # A SIGHUP with the bad file: the same, logged; then fixed, the admin reload takes it.
        side.proc.send_signal(signal.SIGHUP)
        await until(lambda: sum("reload: the config is not valid" in line for line in side.log) == 2,
                    "the second bad reload is logged")
        assert (await client.stats()).config_generation == 1
        write_config(config, emu.url, alpha_limit=3, admin=side.admin)
        rc, out, err = await cli("reload", "--admin", side.admin, "--json")
        assert rc == 0, err
        body = json.loads(out)
        assert body["ok"] and body["generation"] == 2 and body["changed"] == ["alpha"]
        assert body["warmed"] == [] and sorted(body["reused"]) == ["alpha/alpha-http", "beta/beta-http"]
        assert (await client.stats()).skills[0].concurrency_limit == 3
    assert start_warms(emu) == 1


@pytest.fixture
async def app_and_file(tmp_path: Path, emu: Emulator) -> AsyncIterator[tuple[Any, Path]]:
    path = tmp_path / "router.yaml"
    write_config(path, emu.url, gamma=True)
    app = build_app(load_config(path, {}), "127.0.0.1:0", loader=lambda: load_config(path, {}))
    await app.start()
    try:
        yield app, path
    finally:
        await app.stop(1)


async def test_a_removed_backend_drains_then_closes(app_and_file: tuple[Any, Path], emu: Emulator) -> None:
    app, path = app_and_file
    gamma_backend = app.generation.backends[("gamma", "gamma-http")]
    async with AsyncRouterClient(app.address, timeout=30) as client:
        emu.pause("gamma")
        in_flight = asyncio.create_task(client.execute("a gamma question", domain="general", complexity=5))
        await until(lambda: emu.stats().get("gamma") and emu.stats()["gamma"].concurrent == 1,
                    "the gamma call is in flight")
        write_config(path, emu.url, gamma=False)
        result = await app.reload()
        assert result.ok and result.removed == ("gamma",) and result.generation == 2
        assert "gamma" not in app.runtimes and [s.skill for s in (await client.stats()).skills] == ["alpha", "beta"]
        # A new query cannot reach the removed skill; the one in flight still can.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.execute("a gamma question", domain="general", complexity=5)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # no skill activated: gamma is gone
        # The old generation waits for its query: the removed backend stays open.
        assert app.retiring == 1 and "closed" not in repr(gamma_backend)
        emu.resume("gamma")
        resp = await in_flight
        assert resp.outcome == pb.QUERY_OUTCOME_OK and [r.skill for r in resp.results] == ["gamma"]
        await until(lambda: "closed" in repr(gamma_backend), "the removed backend is closed")
        totals = (await client.stats()).totals  # the in-flight query counts once, on the live totals
        assert totals.queries == 2 and dict(totals.outcomes) == {"ok": 1, "unrouted": 1}


async def test_admin_reload_is_behind_the_token(app_and_file: tuple[Any, Path], emu: Emulator) -> None:
    app, path = app_and_file
    admin = AdminServer("127.0.0.1:0", snapshot=app.snapshot, window=app.window, token=lambda: "s3cret",
                        reload=app.reload_report)
    await admin.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{admin.url}/api/reload") as r:
                assert r.status == 401
            assert app.generation.number == 1
            write_config(path, emu.url, alpha_limit=4, gamma=True)
            auth = {"Authorization": "Bearer s3cret"}
            async with http.post(f"{admin.url}/api/reload", headers=auth) as r:
                body = await r.json()
                assert r.status == 200 and body["generation"] == 2 and body["changed"] == ["alpha"], body
            async with http.get(f"{admin.url}/api/dashboard", headers=auth) as r:
                assert (await r.json())["config"]["generation"] == 2
            async with http.get(f"{admin.url}/metrics", headers=auth) as r:
                assert f'skill_router_config_generation{{source="{path}"}} 2.0' in await r.text()
            path.write_text("skills: {}\nrouting: {top_k: zero}\n")
            async with http.post(f"{admin.url}/api/reload", headers=auth) as r:
                body = await r.json()
                assert r.status == 422 and not body["ok"] and body["generation"] == 2
                assert "routing.top_k" in body["error"]
            assert app.generation.number == 2 and app.runtimes["alpha"].gate.limit == 4
    finally:
        await admin.stop()


async def test_a_reload_that_fixes_a_broken_backend_serves_at_once(tmp_path: Path, emu: Emulator) -> None:
    """The changed skill gets new breakers (closed): it does not wait out the
    old backend's cooldown, and the old breaker no longer marks it impaired."""
    path = tmp_path / "router.yaml"
    admission = {"breaker": {"failure_threshold": 1, "cooldown_s": 600}, "retry": {"max_attempts": 1}}
    write_config(path, emu.url, alpha_model="broken", admission=admission)
    app = build_app(load_config(path, {}), "127.0.0.1:0", loader=lambda: load_config(path, {}))
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=30) as client:
            with pytest.raises(grpc.aio.AioRpcError):
                await client.execute("an alpha question", domain="general", complexity=5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.execute("an alpha question", domain="general", complexity=5)
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "breaker open" in err.value.details()
            write_config(path, emu.url, admission=admission)  # alpha's backend fixed
            result = await app.reload()
            assert result.ok and result.changed == ("alpha",) and result.warmed == ("alpha/alpha-http",)
            assert "alpha" not in app.registry.impaired
            resp = await client.execute("an alpha question", domain="general", complexity=5)
            assert resp.outcome == pb.QUERY_OUTCOME_OK and resp.results[0].model == "alpha"
            stats = await client.stats()
            assert stats.config_generation == 2
            assert [i.breaker_state for i in stats.skills[0].implementations] == [pb.BREAKER_STATE_CLOSED]
    finally:
        await app.stop(1)


async def test_queries_under_load_never_fail_across_reloads(app_and_file: tuple[Any, Path], emu: Emulator) -> None:
    app, path = app_and_file
    outcomes: list[int] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def load(client: AsyncRouterClient, name: str) -> None:
        while not stop.is_set():
            try:
                resp = await client.execute(f"a {name} question", domain="general", complexity=5)
                outcomes.append(resp.outcome)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc)

    async with AsyncRouterClient(app.address, timeout=30) as client:
        workers = [asyncio.create_task(load(client, n)) for n in ("alpha", "beta", "gamma", "alpha")]
        try:
            for i in range(6):
                n = len(outcomes)
                await until(lambda n=n: len(outcomes) >= n + 5, "queries are answered between reloads")
                write_config(path, emu.url, alpha_limit=3 + i % 2, gamma=True)
                result = await app.reload()
                assert result.ok and result.changed == ("alpha",) and result.warmed == ()
        finally:
            stop.set()
            await asyncio.gather(*workers)
        await until(lambda: app.retiring == 0, "every old generation is retired")
    assert not errors and outcomes and set(outcomes) == {pb.QUERY_OUTCOME_OK}
    assert app.generation.number == 7 and app.registry.totals.queries == len(outcomes)
    assert start_warms(emu) + warm_gets(emu, "gamma") == 1  # one origin, one pool, warmed once; no reload warmed it again


async def test_reload_from_the_cli_says_what_is_wrong(tmp_path: Path) -> None:
    no_admin = tmp_path / "router.yaml"
    write_config(no_admin, "http://127.0.0.1:9")
    rc, _, err = await cli("reload", "--config", str(no_admin))
    assert rc == 2 and "server.admin_listen" in err and "--admin" in err and "--pid-file" in err
    pid_file = tmp_path / "router.pid"
    pid_file.write_text("not a pid\n")
    rc, _, err = await cli("reload", "--pid-file", str(pid_file))
    assert rc == 1 and "does not hold a process id" in err
    rc, _, err = await cli("reload", "--admin", f"127.0.0.1:{free_port()}")
    assert rc == 1 and "cannot reach" in err


def test_without_a_token_only_loopback_may_reload() -> None:
    from router.admin._server import _loopback
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("127.0.0.2")
    assert not _loopback("10.0.0.7") and not _loopback("2001:db8::1") and not _loopback(None)
    assert not _loopback("not an address")
