"""The ``skill-router`` command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skill_router_client import AsyncRouterClient

from router.config import default_config_path

CLI = str(Path(sys.executable).parent / "skill-router")


async def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_check_config_accepts_the_bundled_config() -> None:
    rc, out, err = await run("check-config", str(default_config_path()))
    assert rc == 0, err
    for skill in ("trm", "gepa", "ace", "kimiK2"):
        assert skill in out
    assert "tongyi-deepresearch" in out and "gemini-flash" in out


async def test_check_config_names_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "router.yaml"
    bad.write_text("routing:\n  top_kk: 3\nskills:\n  s:\n    implementations:\n"
                   "      - {name: a, backend: openai, url: 'http://127.0.0.1:1', quality: 1.5,\n"
                   "         cost_per_query: 0.01, expected_latency_ms: 100}\n")
    rc, out, err = await run("check-config", str(bad))
    assert rc == 1
    assert f"{bad}:2: routing.top_kk: unknown key" in err
    assert "skills.s.implementations[0].quality" in err and "1.5" in err


async def test_check_config_names_a_bad_environment_variable() -> None:
    rc, _, err = await run("check-config", str(default_config_path()), env={"BRAIN_MOE_TOP_K": "three"})
    assert rc == 1 and "BRAIN_MOE_TOP_K" in err


async def test_route_execute_stats_against_a_running_sidecar(app) -> None:
    target = ("--target", app.address)
    rc, out, err = await run("route", "Why does my parser leak?", "--domain", "code", "--complexity", "3",
                             "--json", *target)
    assert rc == 0, err
    body = json.loads(out)
    assert body["k"] == 3 and body["selections"] and body["query_id"]
    rc, out, err = await run("execute", "Why does my parser leak?", "--domain", "code", "--complexity", "3",
                             "--json", *target)
    assert rc == 0, err
    body = json.loads(out)
    assert body["text"] and float(body["cost"]["baseline_usd"]) >= float(body["cost"]["actual_usd"])
    rc, out, err = await run("execute", "Why does my parser leak?", "--domain", "code", *target)
    assert rc == 0 and "cost $" in out and "### " in out, err
    rc, out, err = await run("execute", "Why does my parser leak?", "--domain", "code", "--stream", *target)
    assert rc == 0 and "routed:" in out and "cost $" in out and "### " in out, err
    rc, out, err = await run("execute", "Why does my parser leak?", "--domain", "code", "--stream", "--json",
                             *target)
    assert rc == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert "routed" in events[0] and "done" in events[-1] and events[-1]["done"]["text"]
    rc, out, err = await run("stats", *target)
    assert rc == 0 and "live load" in out and "queries 4" in out, err
    assert "limits: in-process (one process)" in out


async def test_cli_reports_bad_input_with_the_field(app) -> None:
    rc, _, err = await run("route", "q", "--complexity", "11", "--target", app.address)
    assert rc == 1 and "INVALID_ARGUMENT" in err and "context.complexity" in err


async def test_demo_prints_the_comparison_as_json() -> None:
    rc, out, err = await run("demo", "--queries", "30", "--concurrency", "8", "--json", timeout=300)
    assert rc == 0, err
    result = json.loads(out)
    assert list(result) == ["all_skills_default", "all_skills_choice", "moe"]
    keys = {"avg_ms", "p99_ms", "cost_per_query", "throughput_qps", "skills_per_query", "quality",
            "utilization", "peak_utilization", "peak_queue_depth", "utilization_by_skill"}
    for mode in result.values():
        assert keys <= set(mode) and mode["failed"] == 0 and mode["queries"] == 30
        # Admission holds every skill at its limit.
        assert 0 <= mode["utilization"] <= mode["peak_utilization"] <= 1
        assert mode["utilization_by_skill"] and all(0 <= u <= 1 for u in mode["utilization_by_skill"].values())
    before, choice, moe = result["all_skills_default"], result["all_skills_choice"], result["moe"]
    # Utilization is sampled from Stats while the queries run: a loaded machine
    # can miss a fast mode's busy moments, never all three.
    assert max(m["peak_utilization"] for m in result.values()) > 0
    # Both all-skills columns run every activated skill (less any shed); only the implementations differ.
    assert min(before["skills_per_query"], choice["skills_per_query"]) >= moe["skills_per_query"]
    assert before["cost_per_query"] > choice["cost_per_query"] >= moe["cost_per_query"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sigterm_drains_in_flight_calls_and_exits_cleanly(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    proc = await asyncio.create_subprocess_exec(
        CLI, "serve", "--demo", "--listen", address, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            health = health_pb2_grpc.HealthStub(ch)

            async def serving() -> None:
                while True:
                    try:
                        r = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        if r.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                    except grpc.aio.AioRpcError:
                        pass
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(serving(), 60)
            watch = health.Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            async with AsyncRouterClient(address, timeout=30) as client:
                # Catch a call in flight (the demo's backends take tens of ms).
                for _ in range(50):
                    call = asyncio.create_task(client.execute("in flight", domain="research", complexity=9))
                    while not call.done():
                        stats = await client.stats()
                        if sum(s.in_flight for s in stats.skills):
                            break
                    if not call.done():
                        break
                    await call
                else:
                    pytest.fail("never saw a call in flight")
                proc.send_signal(signal.SIGTERM)
                assert (await asyncio.wait_for(watch.read(), 10)).status == \
                    health_pb2.HealthCheckResponse.NOT_SERVING
                resp = await asyncio.wait_for(call, 30)  # the in-flight call finishes
                assert resp.text
        rc = await asyncio.wait_for(proc.wait(), 30)
        assert rc == 0
        log = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
        assert "shutting down" in log
        assert "event loop: uvloop" in log  # the default when installed (it is a dependency)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_logs_the_environment_overrides_and_applies_them() -> None:
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "BRAIN_MOE_MAX_CONCURRENT_PER_SKILL": "4", "BRAIN_MOE_BATCHING_WINDOW_MS": "20",
           "BRAIN_MOE_TOP_K": "", "SKILL_ROUTER_UVLOOP": "0"}
    proc = await asyncio.create_subprocess_exec(
        CLI, "serve", "--demo", "--listen", address, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    lines: list[str] = []
    try:
        while not any("serving on" in ln for ln in lines):
            line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
            assert line, "".join(lines)
            lines.append(line.decode())
        log = "".join(lines)
        assert "environment override: BRAIN_MOE_MAX_CONCURRENT_PER_SKILL=4 → admission.default_concurrency_limit = 4; " \
               "every skill's concurrency_limit (" in log and "except pinned kimiK2" in log, log
        assert "environment override: BRAIN_MOE_BATCHING_WINDOW_MS=20 → batching.window_ms = 20.0, " \
               "batching.enabled = True" in log, log
        assert "BRAIN_MOE_TOP_K" not in log  # empty counts as unset
        assert "event loop: asyncio" in log  # SKILL_ROUTER_UVLOOP=0: asyncio's own loop
        async with AsyncRouterClient(address, timeout=10) as c:
            limits = {s.skill: s.concurrency_limit for s in (await c.stats()).skills}
        assert limits["kimiK2"] == 5 and {v for k, v in limits.items() if k != "kimiK2"} == {4}
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def test_serve_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "router.yaml"
    bad.write_text("skills:\n  s:\n    priority: 0\n    implementations: []\n")
    rc, _, err = await run("serve", "--config", str(bad), "--listen", "127.0.0.1:0", timeout=60)
    assert rc == 1
    assert str(bad) in err and "skills.s.priority" in err and "skills.s.implementations" in err


async def test_version_names_the_installed_package() -> None:
    from importlib.metadata import version
    rc, out, err = await run("--version")
    assert rc == 0, err
    assert out.strip() == f"skill-router {version('skill-router')}"


async def test_stats_window_reads_the_store_over_that_stretch(emulator, tmp_path: Path) -> None:
    from support.configs import make_config

    from router.app import build_app
    config = make_config(emulator.url, storage={"sqlite_path": str(tmp_path / "m.sqlite3"),
                                                "flush_interval_s": 0.05})
    app = build_app(config, "127.0.0.1:0")
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=10) as c:
            await c.execute("Why does my parser leak?", domain="code", complexity=3)
            for _ in range(200):  # the store flushes every 50 ms
                if (await c.stats(window=3600)).window.queries:
                    break
                await asyncio.sleep(0.05)
        rc, out, err = await run("stats", "--window", "1h", "--json", "--target", app.address)
        assert rc == 0, err
        w = json.loads(out)["window"]
        assert w["available"] and int(w["queries"]) == 1
        since = datetime.fromisoformat(w["since"].replace("Z", "+00:00"))
        until = datetime.fromisoformat(w["until"].replace("Z", "+00:00"))
        assert until - since == timedelta(hours=1)
        rc, out, err = await run("stats", "--window", "1h30m", "--target", app.address)
        assert rc == 0 and "last 1.5 h" in out and "queries 1" in out, err
        rc, _, err = await run("stats", "--window", "an hour", "--target", app.address)
        assert rc == 2 and "--window" in err and "'an hour' is not a duration" in err
        rc, _, err = await run("stats", "--window", "91d", "--target", app.address)
        assert rc == 1 and "INVALID_ARGUMENT" in err and "(field window)" in err
    finally:
        await app.stop(1)


def test_the_event_loop_is_uvloop_unless_turned_off() -> None:
    import uvloop

    from router.app import loop_factory

    assert loop_factory({}) is uvloop.new_event_loop
    for off in ("0", "false", "No", " off "):
        assert loop_factory({"SKILL_ROUTER_UVLOOP": off}) is None, off
    assert loop_factory({"SKILL_ROUTER_UVLOOP": "1"}) is uvloop.new_event_loop


def test_start_up_pauses_the_gc_and_freezes_what_it_built() -> None:
    import gc

    from router.app import gc_paused

    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    try:
        with gc_paused():
            assert not gc.isenabled()
            built = [[i] for i in range(1000)]
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(built)
    finally:
        gc.unfreeze()
