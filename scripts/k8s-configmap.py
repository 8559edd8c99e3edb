#!/usr/bin/env python3
"""Copy the bundled config's skills (router/config/default.yaml) into the
Kubernetes ConfigMap (deploy/kubernetes/configmap.yaml), keeping the
ConfigMap's own sections above them. tests/test_deploy.py fails when the two
differ; run this and commit the result:

    python3 scripts/k8s-configmap.py
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "router/config/default.yaml"
CONFIGMAP = REPO / "deploy/kubernetes/configmap.yaml"
INDENT = "    "  # under `data: router.yaml: |`


def main() -> None:
    skills = DEFAULT.read_text().split("\nskills:\n", 1)[1]
    head = CONFIGMAP.read_text().split(f"\n{INDENT}skills:\n", 1)[0]
    body = "\n".join((INDENT + line) if line.strip() else "" for line in skills.splitlines())
    CONFIGMAP.write_text(f"{head}\n{INDENT}skills:\n{body}\n")


if __name__ == "__main__":
    main()
