"""What can be checked before serving, without serving: used by
``skill-router check-config`` (every problem found) and ``serve`` (the
first one, as one line and exit code 2, instead of a traceback later).

    the listen address resolves and can be bound      server.listen
    the TLS files are readable PEM                    server.tls.*
    the token variable is set                         server.auth.token_env
    the SQLite store's directory is writable          storage.sqlite_path
    the OTEL_* variables are usable                   OTEL_...

An unreachable PostgreSQL is found only when the store opens (``serve``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from router.config import RouterConfig
from router.core.errors import StartupError
from router.core.redact import Redactor
from router.service.server import TlsFiles, check_listen
from router.storage import QUERY_HASH_KEY_ENV
from router.telemetry import TelemetryConfigError, read_plan

_SCRUB = Redactor()


def _store(path: str) -> None:
    if path == ":memory:":
        return
    p = Path(path)
    target = p if p.exists() else p.parent if str(p.parent) else Path(".")
    if p.exists() and p.is_dir():
        raise StartupError("storage.sqlite_path", f"{path!r} is a directory")
    if not target.exists():
        raise StartupError("storage.sqlite_path", f"directory {str(p.parent)!r} does not exist")
    if not p.exists() and not target.is_dir():
        raise StartupError("storage.sqlite_path", f"{str(p.parent)!r} is not a directory")
    if not os.access(target, os.W_OK) or (p.exists() and not os.access(p.parent, os.W_OK)):
        raise StartupError("storage.sqlite_path", f"{path!r} is not writable by this user")


def problems(config: RouterConfig, env: Mapping[str, str], listen: str | None = None) -> list[StartupError]:
    found: list[StartupError] = []

    def check(fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(*args)
        except StartupError as exc:
            found.append(exc)

    check(check_listen, listen or config.server.listen)
    if config.server.health_listen:
        check(check_listen, config.server.health_listen, "server.health_listen")
    tls = config.server.tls
    if tls is not None:
        check(TlsFiles(tls.cert_file, tls.key_file, tls.client_ca_file).read)
    name = config.server.auth.token_env
    if name and not env.get(name):
        found.append(StartupError("server.auth.token_env", f"names {name}, which is not set (or empty)"))
    st = config.storage
    if st.sqlite_path and not st.postgres_dsn:
        check(_store, st.sqlite_path)
    key = env.get(QUERY_HASH_KEY_ENV, "")
    if key and len(key) < 16:
        found.append(StartupError(QUERY_HASH_KEY_ENV, "must be at least 16 characters (the value is not shown)"))
    try:
        read_plan(env)
    except TelemetryConfigError as exc:
        found.append(StartupError(exc.key, _SCRUB(exc.problem)))  # the value is not shown: it may hold a key
    return found
