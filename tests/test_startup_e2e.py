"""Start-up and shutdown at the edges (issue 9), as an operator meets them:
``skill-router serve`` and ``check-config`` run as subprocesses; a problem
found when serving starts is one line naming the key or variable, exit
code 2, never a traceback. And the exporters' flush at shutdown is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest
import yaml
from support.configs import make_config
from test_cli import run

from router.app import build_app

PASSWORD = "pw-Hunter2-secret"


def _config(tmp_path: Path, name: str, **sections: object) -> Path:
    data = {"skills": {"s": {"implementations": [
        {"name": "a", "backend": "openai", "url": "http://127.0.0.1:9", "model": "m", "quality": 0.9,
         "cost_per_query": 0.01, "expected_latency_ms": 100}]}},
        "storage": {"sqlite_path": None}, "server": {"grace_period_s": 1}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}  # type: ignore[dict-item]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _one_clean_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line and " WARNING " not in line]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


async def test_a_backend_url_with_a_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = _config(tmp_path, "pw.yaml")
    path.write_text(path.read_text().replace("http://127.0.0.1:9", f"http://user:{PASSWORD}@127.0.0.1:9"))
    (rc1, out1, err1), (rc2, out2, err2) = await asyncio.gather(
        run("check-config", str(path)), run("serve", "--config", str(path), "--listen", "127.0.0.1:0"))
    for rc, out, err in ((rc1, out1, err1), (rc2, out2, err2)):
        assert rc == 1, err
        assert PASSWORD not in out + err and "Traceback" not in err
        assert "skills.s.implementations[0].url" in err and "must not contain credentials" in err


async def test_serve_start_up_errors_are_one_line_naming_the_key_with_exit_code_2(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = f"127.0.0.1:{blocker.getsockname()[1]}"
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    plain = _config(tmp_path, "plain.yaml")
    cases = [
        (("--listen", taken), {}, plain, "server.listen"),
        (("--listen", "no-such-host.invalid:50051"), {}, plain, "server.listen"),
        (("--listen", "127.0.0.1:0"), {"OTEL_TRACES_SAMPLER": "bogus"}, plain, "OTEL_TRACES_SAMPLER"),
        (("--listen", "127.0.0.1:0"), {}, _config(tmp_path, "sqlite.yaml",
                                                  storage={"sqlite_path": str(not_a_dir / "m.db")}),
         "storage.sqlite_path"),
        (("--listen", "127.0.0.1:0"), {}, _config(tmp_path, "pg.yaml", storage={
            "postgres_dsn": f"postgresql://router:{PASSWORD}@127.0.0.1:1/metrics?connect_timeout=2"}),
         "storage.postgres_dsn"),
        (("--listen", "127.0.0.1:0"), {}, _config(tmp_path, "token.yaml", server={"auth": {"token_env": "EDGE_UNSET"}}),
         "server.auth.token_env"),
    ]
    try:
        results = await asyncio.gather(*(
            run("serve", "--config", str(cfg), *args, env=env, timeout=90) for args, env, cfg, _ in cases))
    finally:
        blocker.close()
    for (_, _, _, key), (rc, out, err) in zip(cases, results):
        assert rc == 2, (key, rc, err)
        line = _one_clean_line(err)
        assert line.startswith(f"error: {key}"), (key, line)
        assert PASSWORD not in out + err


async def test_check_config_finds_an_unwritable_store_and_an_unresolvable_address(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    path = _config(tmp_path, "bad.yaml", storage={"sqlite_path": str(not_a_dir / "m.db")},
                   server={"listen": "no-such-host.invalid:50051"})
    rc, out, err = await run("check-config", str(path))
    assert rc == 1 and "Traceback" not in err
    assert "error: server.listen: cannot resolve host 'no-such-host.invalid'" in err
    assert "error: storage.sqlite_path:" in err


class _Blackhole:
    """A TCP server that accepts and never answers: an OTLP collector that hangs."""

    async def __aenter__(self) -> str:
        self._writers: list[asyncio.StreamWriter] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            await reader.read()  # until the client gives up

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        for w in self._writers:
            w.close()
        self._server.close()


async def test_exporters_give_up_within_the_grace_and_say_so_once(emulator, caplog: pytest.LogCaptureFixture) -> None:
    async with _Blackhole() as endpoint:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
               "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_EXPORTER_OTLP_TIMEOUT": "30000"}
        app = build_app(make_config(emulator.url), "127.0.0.1:0", env=env)
        await app.start()
        from skill_router_client import AsyncRouterClient
        async with AsyncRouterClient(app.address, timeout=10) as c:
            await c.execute("explain vector search", domain="research", complexity=6)
        with caplog.at_level(logging.WARNING, logger="router.telemetry"):
            await asyncio.wait_for(app.stop(0.5), 60)
        assert app.telemetry.gave_up
        said = [r for r in caplog.records if "did not flush" in r.getMessage()]
        assert len(said) == 1 and "giving up" in said[0].getMessage()
