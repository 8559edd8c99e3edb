"""Real sidecar processes for the scale-out tests and benchmarks:
``skill-router serve`` (with ``server.workers``) in its own process group,
and a private ``redis-server`` on a port of its own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sidecar:
    """``python -m router.cli serve`` on ``127.0.0.1:port``; ready when the
    supervisor says every worker serves (or, with one worker, when it does)."""

    def __init__(self, config: dict[str, Any], *, workers: int, directory: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers = workers
        path = directory / f"sidecar-{self.port}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.lines: list[str] = []
        env = {**os.environ, "SKILL_ROUTER_LOG_LEVEL": "INFO"}
        env.pop("SKILL_ROUTER_WORKER", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "--config", str(path), "--listen", self.address,
             "--admin-listen", ""],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, start_new_session=True, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        want = f"{self.workers} workers serving on" if self.workers > 1 else "skill-router serving on"
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            if any(want in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sidecar on {self.address} not ready:\n" + "\n".join(self.lines[-30:]))

    def worker_pids(self) -> list[int]:
        import psutil
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once (a crashed host)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group outlives its leader
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def redis_server_bin() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


class RedisServer:
    """A private, unpersisted Redis on loopback (to stop it under load)."""

    def __init__(self, port: int | None = None) -> None:
        binary = redis_server_bin()
        if binary is None:
            raise RuntimeError("redis-server not installed (scripts/services.sh installs it)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="sr-redis-")
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self._dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.monotonic() + 10
        while time.monotonic() < until:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
