"""The response cache in Redis: the runtime's ``CacheStore`` port
(``router.runtime.cache``) shared by every replica and worker, used when
``state.redis_url`` is set and a skill opts into the cache.

One key per entry (``<prefix>:cache:<key>``), a JSON value, and Redis' own
expiry (``PX``) as the TTL. Redis is a cache here, never a dependency of the
answer: every command is bounded by ``timeout_s``, and an error or a timeout
is a miss (``get``) or a skipped write (``put``), counted in ``errors``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.runtime.cache import CacheEntry
from router.runtime.ports import SkillReply

log = logging.getLogger("router.state")

__all__ = ["RedisCache"]


class RedisCache:
    """``CacheStore`` in Redis."""

    def __init__(self, url: str, *, key_prefix: str = "skill-router", timeout_s: float = 0.1) -> None:
        self._prefix = f"{key_prefix}:cache:"
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.errors = 0
        self._warned = False

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if not self._warned:  # one line, not one per query
            self._warned = True
            log.warning("response cache in Redis: %s failed (%s); treated as a miss from now on while it fails",
                        what, type(exc).__name__)

    async def get(self, key: str) -> CacheEntry | None:
        try:
            raw = await self._redis.get(self._prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        if raw is None:
            return None
        self._warned = False
        try:
            data = json.loads(raw)
            return CacheEntry(SkillReply(**data["reply"]), float(data["cost"]), float(data["stored_at"]))
        except (ValueError, KeyError, TypeError):
            return None  # a value this version cannot read: a miss, overwritten by the next put

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> None:
        value = json.dumps({"reply": asdict(entry.reply), "cost": entry.cost, "stored_at": entry.stored_at},
                           separators=(",", ":"))
        try:
            await self._redis.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("put", exc)

    async def aclose(self) -> None:
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"<RedisCache {self._prefix}* | errors {self.errors}>"
