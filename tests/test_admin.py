"""The admin endpoint against a real sidecar: /metrics and /api/dashboard
read the live state (checked against the Stats RPC), the token guards every
path, bad input names what is wrong, and the Grafana dashboard only asks for
metrics /metrics exposes."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from support.admin import Sidecar, admin_sidecar, until
from support.configs import config_data, make_config

from router.admin import AdminServer, History, Sample
from router.app import build_app
from router.config import parse_config
from router.core.errors import ConfigError

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sidecar(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sidecar]:
    async with admin_sidecar(tmp_path_factory.mktemp("admin")) as s:
        await s.traffic(12)
        yield s


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(got: dict, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


async def test_metrics_read_the_live_state(sidecar: Sidecar) -> None:
    text = await sidecar.get_text("/metrics")
    stats = await sidecar.client.stats()
    got = samples(text)
    assert stats.totals.queries >= 12
    assert sample(got, "skill_router_queries_total") == stats.totals.queries
    assert sample(got, "skill_router_cost_usd_total") == pytest.approx(stats.totals.cost_usd)
    assert sample(got, "skill_router_baseline_cost_usd_total") == pytest.approx(stats.totals.baseline_cost_usd)
    assert sample(got, "skill_router_cost_saved_usd") == pytest.approx(stats.totals.cost_saved_usd)
    for s in stats.skills:
        assert sample(got, "skill_router_skill_calls_total", skill=s.skill) == s.calls
        assert sample(got, "skill_router_skill_failures_total", skill=s.skill) == s.failures
        assert sample(got, "skill_router_skill_concurrency_limit", skill=s.skill) == s.concurrency_limit
        assert sample(got, "skill_router_skill_queue_depth", skill=s.skill) == s.queue_depth
        assert sample(got, "skill_router_skill_cache_hits_total", skill=s.skill) == s.cache_hits
        assert sample(got, "skill_router_skill_cache_misses_total", skill=s.skill) == s.cache_misses
        for impl in s.implementations:
            states = {st: sample(got, "skill_router_breaker_state", skill=s.skill, implementation=impl.name,
                                 state=st) for st in ("closed", "open", "half_open")}
            assert sum(states.values()) == 1
    assert sum(s.calls for s in stats.skills) > 0
    assert sample(got, "skill_router_breaker_state", skill="trm", implementation="trm-http", state="closed") == 1


async def test_metrics_speak_openmetrics_when_asked(sidecar: Sidecar) -> None:
    async with sidecar.http.get(sidecar.url + "/metrics",
                                headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).rstrip().endswith("# EOF")


async def test_dashboard_json_has_the_seeds_figures(sidecar: Sidecar) -> None:
    stats = await sidecar.client.stats()

    async def stored() -> dict | None:
        d = await sidecar.get_json("/api/dashboard?window=3600")
        return d if d["moe_metrics"]["queries"] >= stats.totals.queries else None

    d = await until(stored, "the metrics store to hold every query")
    names = [s.skill for s in stats.skills]
    assert [s["skill"] for s in d["skills"]] == names
    assert set(d["load_balancing"]["utilization"]) == set(names) == set(d["load_balancing"]["queue_depth"])
    by = {s["skill"]: s for s in d["skills"]}
    for s in stats.skills:
        assert by[s.skill]["calls"] >= s.calls  # counters only grow between the two reads
        assert by[s.skill]["concurrency_limit"] == s.concurrency_limit
    m = d["moe_metrics"]
    assert m["window_s"] == 3600 and m["store"] == "sqlite" and m["error"] is None
    assert m["avg_skills_selected"] > 0 and m["avg_cost_per_query"] > 0
    assert sum(m["skill_distribution"].values()) == pytest.approx(m["avg_skills_selected"] * m["queries"])
    assert set(m["skill_distribution"]) <= set(names)
    assert m["hourly_trends"] and sum(h["queries"] for h in m["hourly_trends"]) == m["queries"]
    assert d["totals"]["queries"] >= stats.totals.queries
    assert d["totals"]["cost_saved_usd"] == pytest.approx(d["totals"]["baseline_cost_usd"] - d["totals"]["cost_usd"])


async def test_history_gives_rates_over_time(sidecar: Sidecar) -> None:
    await sidecar.traffic(4)
    after = time.time()  # the admin server's clock

    async def sampled_after() -> dict | None:
        d = await sidecar.get_json("/api/dashboard")
        points = d["history"]["points"]
        return d if points and points[-1]["t"] > after else None

    d = await until(sampled_after, "a sample taken after the traffic")
    points = d["history"]["points"]
    assert all(a["t"] < b["t"] for a, b in itertools.pairwise(points))
    assert sum(p["queries_per_s"] for p in points) > 0
    assert points[-1]["cost_saved_usd"] == pytest.approx(d["totals"]["cost_saved_usd"], abs=0.5)
    assert set(points[-1]["calls_per_s"]) == {s["skill"] for s in d["skills"]}


async def test_breaker_opening_shows_in_metrics_and_json(sidecar: Sidecar) -> None:
    await sidecar.open_breaker("flaky")
    got = samples(await sidecar.get_text("/metrics"))
    assert sample(got, "skill_router_breaker_state", skill="flaky", implementation="broken", state="open") == 1
    assert sample(got, "skill_router_breaker_state", skill="flaky", implementation="broken", state="closed") == 0
    assert sample(got, "skill_router_breaker_opened_total", skill="flaky", implementation="broken") >= 1
    d = await sidecar.get_json("/api/dashboard")
    [flaky] = [s for s in d["skills"] if s["skill"] == "flaky"]
    assert flaky["breaker"] == "open"
    assert flaky["implementations"][0]["breaker_state"] == "open"
    assert flaky["implementations"][0]["half_open_in_s"] > 0


@pytest.mark.parametrize("window", ["soon", "0", "-5", "nan", "1e12"])
async def test_bad_window_names_the_parameter(sidecar: Sidecar, window: str) -> None:
    body = await sidecar.get_json(f"/api/dashboard?window={window}", status=400)
    assert body["error"].startswith("window: ") and repr(window) in body["error"]


async def test_page_is_one_self_contained_file(sidecar: Sidecar) -> None:
    async with sidecar.http.get(sidecar.url + "/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        page = await r.text()
    assert "api/dashboard" in page and "<canvas" in page
    # No CDN, no second file: nothing is loaded from anywhere but the page itself.
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=""", page)
    assert "://" not in page


async def test_token_guards_every_path(sidecar: Sidecar) -> None:
    token = ["s3cret"]
    admin = AdminServer("127.0.0.1:0", snapshot=sidecar.app.snapshot, window=sidecar.app.window,
                        token=lambda: token[0])
    await admin.start()
    try:
        for path in ("/", "/api/dashboard", "/metrics"):
            async with sidecar.http.get(admin.url + path) as r:
                assert r.status == 401
                assert "Authorization: Bearer" in (await r.json())["error"]
            async with sidecar.http.get(admin.url + path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with sidecar.http.get(admin.url + path, headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
            async with sidecar.http.get(admin.url + path, params={"token": "s3cret"}) as r:
                assert r.status == 200
        token[0] = "rotated"  # read per request: a new token needs no restart
        async with sidecar.http.get(admin.url + "/metrics", headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 401
        token[0] = None  # type: ignore[call-overload]
        async with sidecar.http.get(admin.url + "/metrics") as r:
            assert r.status == 200
    finally:
        await admin.stop()


async def test_grafana_dashboard_asks_only_for_exposed_metrics(sidecar: Sidecar) -> None:
    exposed = {s.name for fam in text_string_to_metric_families(await sidecar.get_text("/metrics"))
               for s in fam.samples}
    board = json.loads((GRAFANA / "dashboards" / "skill-router.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
              for v in board.get("templating", {}).get("list", []) if v.get("type") == "query"]
    assert len(exprs) >= 8
    used = {name for e in exprs for name in re.findall(r"\bskill_router_[a-z0-9_]+", e)}
    assert used and used <= exposed, sorted(used - exposed)
    # Every panel's query is about this sidecar, and every panel has a title.
    assert all(p.get("title") for p in board["panels"])
    provisioning = (GRAFANA / "provisioning").rglob("*.yaml")
    assert {p.name for p in provisioning} >= {"datasource.yaml", "dashboards.yaml"}


# --- without the shared sidecar -------------------------------------------------


async def test_admin_listen_off_or_bad(sidecar: Sidecar) -> None:
    url = "http://127.0.0.1:1"
    for off in ("", None):
        assert build_app(make_config(url, server={"admin_listen": off}), "127.0.0.1:0").admin is None
    for bad in ("nonsense", "127.0.0.1:99999", "unix:/tmp/admin.sock"):
        with pytest.raises(ConfigError) as info:
            parse_config(config_data(url, server={"admin_listen": bad}), "<tests>", {})
        assert info.value.path == "server.admin_listen", info.value
        assert "HOST:PORT" in info.value.problem


async def test_port_taken_keeps_serving_grpc(sidecar: Sidecar, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        url = sidecar.app.config.skills[0].implementations[0].url
        app = build_app(make_config(url, server={"admin_listen": f"127.0.0.1:{port}"}), "127.0.0.1:0")
        with caplog.at_level(logging.WARNING, logger="router"):
            await app.start()
        try:
            assert app.admin is None
            assert any("server.admin_listen" in r.getMessage() and str(port) in r.getMessage()
                       for r in caplog.records)
            from skill_router_client import AsyncRouterClient
            async with AsyncRouterClient(app.address, timeout=10) as c:
                assert (await c.execute("hello", domain="code", complexity=3)).text
        finally:
            await app.stop(1)


# --- the history's arithmetic ----------------------------------------------------


def _s(t: float, queries: int, calls: int, cost: float = 0.0, baseline: float = 0.0) -> Sample:
    return Sample(t, queries, 0, cost, baseline, {"a": calls}, {"a": 0})


async def test_history_rates_between_samples() -> None:
    h = History(3)
    assert h.points() == []
    h.add(_s(10, 0, 0))
    h.add(_s(12, 10, 4, cost=1.0, baseline=3.0))
    h.add(_s(12, 99, 99))  # same instant: ignored
    h.add(_s(16, 10, 12, cost=2.0, baseline=5.0))
    h.add(_s(17, 5, 12))  # a counter going back reads as no traffic, never negative
    pts = h.points()
    assert len(h) == 3 and [p["t"] for p in pts] == [16, 17]
    assert pts[0]["queries_per_s"] == 0 and pts[0]["calls_per_s"] == {"a": 2.0}
    assert pts[0]["cost_saved_usd"] == 3.0
    assert pts[1]["queries_per_s"] == 0
    with pytest.raises(ValueError, match="capacity"):
        History(1)


async def test_admin_server_names_a_bad_address() -> None:
    from router.admin import AdminError, split_listen
    assert split_listen("[::1]:9464") == ("::1", 9464)
    with pytest.raises(AdminError, match=r"server\.admin_listen"):
        split_listen("localhost")


async def test_open_pages_share_one_store_read(sidecar: Sidecar) -> None:
    now = [1000.0]
    reads: list[float] = []

    async def window(w: float):  # type: ignore[no-untyped-def]
        reads.append(w)
        return await sidecar.app.window(w)

    admin = AdminServer("127.0.0.1:0", snapshot=sidecar.app.snapshot, window=window, clock=lambda: now[0],
                        window_ttl_s=5.0)
    await admin.start()
    try:
        for _ in range(3):
            async with sidecar.http.get(admin.url + "/api/dashboard") as r:
                assert r.status == 200
        async with sidecar.http.get(admin.url + "/api/dashboard?window=3600") as r:
            assert r.status == 200
        assert reads == [86400.0, 3600.0]
        now[0] += 5.0
        async with sidecar.http.get(admin.url + "/api/dashboard") as r:
            assert (await r.json())["moe_metrics"]["store"] == "sqlite"
        assert reads == [86400.0, 3600.0, 86400.0]
    finally:
        await admin.stop()


# --- the command line -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_admin_listen_flag(sidecar: Sidecar, tmp_path: Path) -> None:
    cli = str(Path(sys.executable).with_name("skill-router"))
    proc = await asyncio.create_subprocess_exec(cli, "serve", "--admin-listen", "nonsense", "--listen", "127.0.0.1:0",
                                                stderr=asyncio.subprocess.PIPE, cwd=tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "server.admin_listen" in err.decode() and "'nonsense'" in err.decode()

    admin = f"127.0.0.1:{_free_port()}"
    proc = await asyncio.create_subprocess_exec(
        cli, "serve", "--demo", "--listen", f"127.0.0.1:{_free_port()}", "--admin-listen", admin,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd=tmp_path)
    try:
        async def scraped() -> str | None:
            try:
                async with sidecar.http.get(f"http://{admin}/metrics") as r:
                    return await r.text() if r.status == 200 else None
            except aiohttp.ClientConnectionError:
                return None
        text = await until(scraped, "the admin endpoint of `serve --admin-listen`", timeout=60)
        assert 'skill_router_skill_calls_total{skill="kimiK2"}' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
