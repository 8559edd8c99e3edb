"""The Python client as an app installs it: its own distribution
(clients/python), alone in a fresh virtual environment, called from an app
that has a `router` package of its own, against the real sidecar."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What `pip install skill-router-client` may bring: the client and its three
# dependencies (grpcio's own typing_extensions). The server's 50-odd are out.
ALLOWED = {"skill-router-client", "grpcio", "protobuf", "googleapis-common-protos", "typing-extensions"}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-pkg")
    # Build from a copy so the checkout gets no build/ or egg-info.
    src = root / "src"
    shutil.copytree(REPO / "clients/python", src,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin/python"
    # The test venv's pip installs into the fresh interpreter (no ensurepip);
    # grpcio/protobuf come from pip's cache or PyPI, never from this venv.
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                           "--disable-pip-version-check", str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return python


def test_installs_alone_with_three_dependencies(fresh_python: Path) -> None:
    out = subprocess.run(
        [str(fresh_python), "-I", "-c",  # -I: not the checkout on sys.path
         "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"],
        capture_output=True, text=True, check=True).stdout
    names = {_norm(n) for n in json.loads(out)} - {"pip", "setuptools", "wheel"}
    assert "skill-router-client" in names
    assert names <= ALLOWED, f"unexpected dependencies: {sorted(names - ALLOWED)}"
    assert "skill-router" not in names


APP = '''
import asyncio, json, sys
import router                     # the app's own package, not the sidecar's
assert router.APP_ROUTES == ["/", "/chat"], router.__file__
import grpc
import skill_router_client as src
from skill_router_client import AsyncRouterClient, RouterClient, error_details, pb

target = sys.argv[1]
out = {"router_file": router.__file__, "client_file": src.__file__,
       "router_modules": sorted(m for m in sys.modules if m == "router" or m.startswith("router."))}
with RouterClient(target, timeout=10) as c:
    r = c.route("Why does my parser leak?", domain="code", complexity=3)
    out["route"] = [s.skill for s in r.selections]
    try:
        c.route("q", complexity=11)
    except grpc.RpcError as err:
        d = error_details(err)
        out["error"] = [d.code.name, d.field]
    out["stats_skills"] = len(c.stats(window=3600).skills)

async def main():
    async with AsyncRouterClient(target, timeout=10) as c:
        e = await c.execute("Why does my parser leak?", domain="code", complexity=3, priority=pb.PRIORITY_HIGH)
        out["execute"] = {"text": bool(e.text), "results": [x.skill for x in e.results],
                          "ok": all(x.status == pb.SKILL_STATUS_OK for x in e.results),
                          "saved": e.cost.saved_usd, "baseline": e.cost.baseline_usd}

asyncio.run(main())
print(json.dumps(out))
'''


async def test_an_app_with_its_own_router_package_calls_the_sidecar(fresh_python: Path, app, tmp_path: Path) -> None:
    appdir = tmp_path / "webapp"
    (appdir / "router").mkdir(parents=True)
    (appdir / "router/__init__.py").write_text('APP_ROUTES = ["/", "/chat"]\n')
    (appdir / "main.py").write_text(textwrap.dedent(APP))
    proc = await asyncio.create_subprocess_exec(
        str(fresh_python), "main.py", app.address, cwd=appdir,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()[-4000:]
    out = json.loads(stdout)
    assert Path(out["router_file"]).parent == appdir / "router"
    assert out["router_modules"] == ["router"]  # the client loaded nothing under the app's name
    assert str(fresh_python.parents[1]) in out["client_file"]  # the installed copy, not the checkout
    assert 1 <= len(out["route"]) <= 3
    assert out["error"] == ["INVALID_ARGUMENT", "context.complexity"]
    assert out["stats_skills"] > 0
    ex = out["execute"]
    assert ex["text"] and ex["ok"] and ex["results"] and ex["baseline"] >= ex["saved"] >= 0
