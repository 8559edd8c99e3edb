"""The key of the metrics rows' ``query_hash``.

``query_hash`` groups identical queries in the store without storing their
text. Unkeyed (sha256 of the text), anyone who can read the store could
confirm a guessed query; keyed (HMAC-SHA256), only with the key:

1. ``SKILL_ROUTER_QUERY_HASH_KEY`` (any string of 16+ characters; set the
   same one on every replica sharing a PostgreSQL store), else
2. a random key generated once and kept beside the SQLite store
   (``<sqlite_path>.hashkey``, mode 0600), else
3. (PostgreSQL without the variable, or no store) a random key for this
   process: hashes then group queries only within one run; a warning says so.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

from ._types import StoreError

log = logging.getLogger("router.storage")

KEY_ENV = "SKILL_ROUTER_QUERY_HASH_KEY"
MIN_KEY_CHARS = 16
HASH_HEX_CHARS = 32


def key_file_for(sqlite_path: str) -> Path:
    return Path(f"{sqlite_path}.hashkey")


def _persisted_key(path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"storage.sqlite_path: cannot read the query-hash key {path} ({exc.strerror})") from None
    key = secrets.token_hex(32).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    except OSError as exc:
        raise StoreError(f"storage.sqlite_path: cannot write the query-hash key {path} ({exc.strerror}); "
                         f"set {KEY_ENV} or make the directory writable") from None
    log.info("generated the query-hash key %s", path)
    return key


def query_hash_key(sqlite_path: str | None, postgres_dsn: str | None, env: Mapping[str, str]) -> bytes:
    value = env.get(KEY_ENV, "")
    if value:
        if len(value) < MIN_KEY_CHARS:
            raise StoreError(f"{KEY_ENV}: must be at least {MIN_KEY_CHARS} characters (the value is not shown)")
        return value.encode()
    if sqlite_path and not postgres_dsn and sqlite_path != ":memory:":
        return _persisted_key(key_file_for(sqlite_path))
    if postgres_dsn:
        log.warning("%s is not set: query_hash values in the PostgreSQL store are keyed for this process only "
                    "(set it, the same on every replica, to group queries across restarts)", KEY_ENV)
    return secrets.token_bytes(32)


def keyed_hasher(key: bytes) -> Callable[[str], str]:
    """``text → hex HMAC-SHA256 prefix`` with ``key``."""
    def hash_query(text: str) -> str:
        return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:HASH_HEX_CHARS]
    return hash_query


def query_hasher(sqlite_path: str | None, postgres_dsn: str | None,
                 env: Mapping[str, str] | None = None) -> Callable[[str], str]:
    return keyed_hasher(query_hash_key(sqlite_path, postgres_dsn, os.environ if env is None else env))
