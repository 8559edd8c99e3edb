"""``server.workers: N``: N processes serving one port, supervised here.

The parent (``skill-router serve`` with ``server.workers`` > 1) starts N
workers, each ``skill-router serve`` again with ``SKILL_ROUTER_WORKER=i/N``
and the resolved ``--listen``; each has its own event loop, pools and
gRPC server bound with ``SO_REUSEPORT`` (the kernel spreads connections
among them). The parent

- waits until every worker says it is SERVING (one byte on its own pipe),
  then logs one line;
- restarts a worker that dies (backoff from 0.5 s to 10 s when one keeps
  dying); a worker that fails at start-up (exit code 2: bad config, port
  taken) stops them all and the parent exits 2 with its message;
- on SIGTERM or SIGINT forwards SIGTERM to every worker (each drains its
  in-flight calls for ``server.grace_period_s``) and waits for them,
  killing what is left ``grace + 10 s`` later.

Limits never multiply by N (see ``router.app.skill_settings``). Worker 0
alone serves the admin endpoint and ``server.health_listen``.

Standard library only: the parent imports nothing of the sidecar.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["WORKER_ENV", "parse_worker", "resolve_listen", "supervise"]

WORKER_ENV = "SKILL_ROUTER_WORKER"  # "i/N" in a worker
READY_FD_ENV = "SKILL_ROUTER_READY_FD"
STARTUP_EXIT_CODE = 2

log = logging.getLogger("router.workers")


def parse_worker(value: str | None) -> tuple[int, int] | None:
    """``"i/N"`` → (i, N); None when not a worker."""
    if not value:
        return None
    i, _, n = value.partition("/")
    index, count = int(i), int(n)
    if not 0 <= index < count:
        raise ValueError(f"{WORKER_ENV}={value!r}: index out of range")
    return index, count


def resolve_listen(listen: str) -> str:
    """A port of 0 becomes a free port now, so that every worker binds the
    same one."""
    if listen.startswith("unix:"):
        return listen
    host, _, port = listen.rpartition(":")
    if port != "0":
        return listen
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return f"{host}:{s.getsockname()[1]}"


def notify_ready() -> None:
    """In a worker: tell the supervisor this worker is SERVING."""
    fd = os.environ.get(READY_FD_ENV)
    if not fd:
        return
    try:
        os.write(int(fd), b"r")
        os.close(int(fd))
    except OSError:
        pass


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready: bool = False
    ever_ready: bool = False
    started_at: float = 0.0
    backoff_s: float = 0.5
    restart_at: float | None = None
    restarts: int = 0
    pending: list[int] = field(default_factory=list)


def supervise(argv: Sequence[str], workers: int, listen: str, grace_s: float,
              env: dict[str, str] | None = None) -> int:
    """Run ``workers`` copies of ``argv`` (a ``serve`` command line without
    ``--listen``) on ``listen`` until SIGTERM/SIGINT; the exit code."""
    base_env = dict(os.environ if env is None else env)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    ws = [_Worker(i) for i in range(workers)]

    def start(w: _Worker) -> None:
        r, wr = os.pipe()
        e = {**base_env, WORKER_ENV: f"{w.index}/{workers}", READY_FD_ENV: str(wr)}
        w.proc = subprocess.Popen([*argv, "--listen", listen], env=e, pass_fds=(wr,))
        os.close(wr)
        w.ready_fd, w.ready, w.started_at, w.restart_at = r, False, time.monotonic(), None

    def close_fd(w: _Worker) -> None:
        if w.ready_fd is not None:
            os.close(w.ready_fd)
            w.ready_fd = None

    code = 0
    all_ready_said = False
    try:
        for w in ws:
            start(w)
        while not stopping:
            fds = [w.ready_fd for w in ws if w.ready_fd is not None and not w.ready]
            try:
                readable, _, _ = select.select(fds, [], [], 0.2)
            except InterruptedError:
                readable = []
            for w in ws:
                if w.ready_fd in readable:
                    if os.read(w.ready_fd, 1):
                        if w.restarts and all_ready_said:
                            log.info("worker %d serving again (pid %d)", w.index, w.proc.pid if w.proc else -1)
                        w.ready = w.ever_ready = True
                    close_fd(w)
            if not all_ready_said and all(w.ready for w in ws):
                all_ready_said = True
                log.info("%d workers serving on %s (pids %s)", workers, listen,
                         ", ".join(str(w.proc.pid) for w in ws if w.proc))
            now = time.monotonic()
            for w in ws:
                if w.proc is None:
                    if w.restart_at is not None and now >= w.restart_at and not stopping:
                        start(w)
                    continue
                rc = w.proc.poll()
                if rc is None:
                    continue
                close_fd(w)
                pid, w.proc = w.proc.pid, None
                if rc == STARTUP_EXIT_CODE and not w.ever_ready:
                    log.error("worker %d failed to start (exit code %d); stopping", w.index, rc)
                    stopping, code = True, STARTUP_EXIT_CODE
                    break
                # One that ran a while starts again at once; one that keeps dying waits longer each time.
                w.backoff_s = 0.5 if now - w.started_at > 30 else min(10.0, w.backoff_s * 2)
                w.restart_at = now + (0.0 if w.restarts == 0 and now - w.started_at > 30 else w.backoff_s)
                w.restarts += 1
                log.warning("worker %d (pid %d) exited with code %s: died; restarting it in %.1fs", w.index, pid,
                            rc, w.restart_at - now)
    finally:
        live = [w for w in ws if w.proc is not None and w.proc.poll() is None]
        for w in live:
            assert w.proc is not None
            w.proc.send_signal(signal.SIGTERM)
        if live:
            log.info("stopping %d workers (draining up to %.1fs)", len(live), grace_s)
        until = time.monotonic() + grace_s + 10.0
        for w in live:
            assert w.proc is not None
            try:
                w.proc.wait(max(0.1, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in time; killing it", w.index)
                w.proc.kill()
                w.proc.wait()
        for w in ws:
            close_fd(w)
        for s, h in old.items():
            signal.signal(s, h)
    return code


def worker_argv() -> list[str]:
    """This process's ``serve`` command line, to start a worker with."""
    return [sys.executable, "-m", "router.cli", *sys.argv[1:]]
