"""``SharedState`` in Redis: one Lua script per admission decision (one
round trip): expire the skill's dead leases, take a slot under the limit
summed over every process, take a request (and its expected tokens) under
the implementation's provider rate limit (a sliding window log, exact over
any minute), or take nothing and say why.

- Leases: a sorted set per skill, member = lease id, score = expiry (Redis
  server time, so replicas' clocks do not matter). A crashed process's
  slots come back when its leases expire (``state.lease_s``).
- Releases are pipelined: those settled in one loop turn go in one round
  trip, off the call's path (``Pass.settle`` stays synchronous).
- Keys carry a hash tag per skill (``{prefix:skill}``): one script's keys
  live in one Redis Cluster slot.
- Redis down or slow: every command is bounded by ``timeout_s``; the first
  failure switches to the in-process fallback (this process's share of the
  limits), says so in the log and in ``status()``, and a background task
  reconnects with exponential backoff. No query waits on a Redis that is
  known to be down.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from router.core.admission import RejectReason
from router.core.ratelimit import WINDOW_S
from router.runtime.shared import Ask, Denied, Grant, LocalState, StateStatus

__all__ = ["RedisState", "RedisStateSettings"]

log = logging.getLogger("router.state")

# KEYS: slots (zset), rate log (zset), rate tokens (string)
# ARGV: limit (-1: none), lease_s, lease id, rpm (-1), tpm (-1), tokens, window_s
# Returns {code, detail number, retry_after (string)}: code 1 granted,
# 0 slots taken, -1 rpm spent, -2 tpm spent.
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local lease_s = tonumber(ARGV[2])
local held = 0
if limit >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  held = redis.call('ZCARD', KEYS[1])
  if held >= limit then
    return {0, held, '0.05'}
  end
end
local rpm = tonumber(ARGV[4])
local tpm = tonumber(ARGV[5])
local tokens = tonumber(ARGV[6])
local win = tonumber(ARGV[7])
if rpm >= 0 or tpm >= 0 then
  local edge = now - win
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', edge)
  if #old > 0 then
    local freed = 0
    for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', edge)
    if freed > 0 then redis.call('DECRBY', KEYS[3], freed) end
  end
  local n = redis.call('ZCARD', KEYS[2])
  if rpm >= 0 and n >= rpm then
    if rpm == 0 then return {-1, n, tostring(win)} end
    local e = redis.call('ZRANGE', KEYS[2], n - rpm, n - rpm, 'WITHSCORES')
    return {-1, n, tostring(tonumber(e[2]) + win - now)}
  end
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tpm >= 0 and used + tokens > tpm then
    if tokens > tpm then return {-2, used, tostring(win)} end
    local need = used + tokens - tpm
    local freed = 0
    local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #all, 2 do
      freed = freed + tonumber(string.match(all[i], ':(%d+)$'))
      if freed >= need then return {-2, used, tostring(tonumber(all[i + 1]) + win - now)} end
    end
    return {-2, used, tostring(win)}
  end
  redis.call('ZADD', KEYS[2], now, ARGV[3] .. ':' .. tokens)
  redis.call('INCRBY', KEYS[3], tokens)
  local keep = math.ceil(win * 1000) + 1000
  redis.call('PEXPIRE', KEYS[2], keep)
  redis.call('PEXPIRE', KEYS[3], keep)
end
if limit >= 0 then
  redis.call('ZADD', KEYS[1], now + lease_s, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease_s * 1000) + 1000)
end
return {1, held + 1, '0'}
"""


# KEYS: the breakers hash. ARGV: field, open_for_s, reason.
OPEN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], ARGV[1], tostring(now + tonumber(ARGV[2])) .. '|' .. ARGV[3])
return 1
"""

# KEYS: the breakers hash. Returns {field, seconds left, reason, ...}; drops the expired.
OPEN_BREAKERS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sep = string.find(v, '|', 1, true)
  local untl = tonumber(string.sub(v, 1, sep - 1))
  if untl <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i])
    table.insert(out, tostring(untl - now))
    table.insert(out, string.sub(v, sep + 1))
  end
end
return out
"""


# KEYS: the windows hash. ARGV: owner, ttl_s, then (skill, successes, calls) triples.
# Returns {skill, successes, calls, ...} summed over the other live owners; drops the expired.
WINDOWS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local owner = ARGV[1]
local untl = now + tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i] .. '|' .. owner, ARGV[i + 1] .. '|' .. ARGV[i + 2] .. '|' .. untl)
end
local all = redis.call('HGETALL', KEYS[1])
local succ, calls, order = {}, {}, {}
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  local sep = string.find(f, '|', 1, true)
  local skill, who = string.sub(f, 1, sep - 1), string.sub(f, sep + 1)
  local a = string.find(v, '|', 1, true)
  local b = string.find(v, '|', a + 1, true)
  if tonumber(string.sub(v, b + 1)) <= now then
    redis.call('HDEL', KEYS[1], f)
  elseif who ~= owner then
    if succ[skill] == nil then succ[skill] = 0; calls[skill] = 0; table.insert(order, skill) end
    succ[skill] = succ[skill] + tonumber(string.sub(v, 1, a - 1))
    calls[skill] = calls[skill] + tonumber(string.sub(v, a + 1, b - 1))
  end
end
local out = {}
for _, skill in ipairs(order) do
  table.insert(out, skill); table.insert(out, succ[skill]); table.insert(out, calls[skill])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000) + 1000)
return out
"""


# KEYS: slots keys; ARGV: (lease_s, lease) per key. Pushes each
# still-present lease's expiry to now + lease_s (XX: a lease already expired
# and removed is not brought back).
RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local renewed = 0
for i = 1, #KEYS do
  local lease_s = tonumber(ARGV[2 * i - 1])
  renewed = renewed + redis.call('ZADD', KEYS[i], 'XX', 'CH', now + lease_s, ARGV[2 * i])
  redis.call('PEXPIRE', KEYS[i], math.ceil(lease_s * 1000) + 1000)
end
return renewed
"""


@dataclass(frozen=True, slots=True)
class RedisStateSettings:
    url: str
    key_prefix: str = "skill-router"
    timeout_s: float = 0.1  # every command; past it the fallback decides
    reconnect_min_s: float = 0.25
    reconnect_max_s: float = 5.0
    worker: int = 0
    workers: int = 1


def _shown(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


class RedisState:
    """The shared state in Redis, with ``LocalState`` as the fallback."""

    def __init__(self, settings: RedisStateSettings, *,
                 on_change: Callable[[StateStatus], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.url = _shown(settings.url)
        self._redis = aioredis.Redis.from_url(
            settings.url, socket_timeout=settings.timeout_s, socket_connect_timeout=settings.timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0, decode_responses=True)
        self._admit = self._redis.register_script(ADMIT_LUA)
        self._open = self._redis.register_script(OPEN_LUA)
        self._open_breakers = self._redis.register_script(OPEN_BREAKERS_LUA)
        self._windows = self._redis.register_script(WINDOWS_LUA)
        self._renew = self._redis.register_script(RENEW_LUA)
        # Leases held now: lease → (slots key, lease_s, when taken or last renewed).
        self._held: dict[str, tuple[str, float, float]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._clock = clock
        self.renewed = 0
        self._windows_key = f"{{{settings.key_prefix}}}:windows"
        self._breakers_key = f"{{{settings.key_prefix}}}:breakers"
        self._background: set[asyncio.Task[object]] = set()
        self._fallback = LocalState(worker=settings.worker, workers=settings.workers, clock=clock)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._ids = itertools.count(1)
        self._connected = True
        self._detail = ""
        self._fallbacks = 0
        self._reconnects = 0
        self._reconnector: asyncio.Task[None] | None = None
        self._releases: list[tuple[str, str]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self.on_change = on_change
        self._keys: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._closed = False

    # ---- keys ----------------------------------------------------------------

    def _keys_for(self, ask: Ask) -> tuple[str, str, str]:
        k = self._keys.get((ask.skill, ask.implementation))
        if k is None:
            tag = f"{{{self.settings.key_prefix}:{ask.skill}}}"
            k = self._keys[(ask.skill, ask.implementation)] = (
                f"{tag}:slots", f"{tag}:rate:{ask.implementation}", f"{tag}:tokens:{ask.implementation}")
        return k

    # ---- the port ------------------------------------------------------------

    async def admit(self, ask: Ask) -> Grant | Denied:
        if not self._connected:
            self._fallbacks += 1
            return self._fallback.admit_now(ask)
        lease = f"{self._owner}:{next(self._ids)}"
        r = ask.rate
        args = (-1 if ask.limit is None else ask.limit, ask.lease_s, lease,
                -1 if r.rpm is None else r.rpm, -1 if r.tpm is None else r.tpm, ask.tokens, WINDOW_S)
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                code, n, retry_after = await self._admit(keys=self._keys_for(ask), args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
            self._fallbacks += 1
            return self._fallback.admit_now(ask)
        code = int(code)
        if code == 1:
            if ask.limit is None:
                return Grant()
            self._held[lease] = (self._keys_for(ask)[0], ask.lease_s, self._clock())
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())
            return Grant(lease)
        wait = max(0.0, float(retry_after))
        if code == 0:
            return Denied(RejectReason.SHARED_LIMIT,
                          f"{ask.skill}: {n} of {ask.limit} slots in use across every replica and worker", wait)
        what = "rpm" if code == -1 else "tpm"
        value = r.rpm if code == -1 else r.tpm
        return Denied(RejectReason.RATE_LIMITED,
                      f"{ask.skill}/{ask.implementation}: {what} {value} spent (shared)", wait)

    def release(self, ask: Ask, grant: Grant) -> None:
        if not grant.lease:
            return
        if grant.lease.startswith("local:"):
            self._fallback.release(ask, grant)
            return
        self._held.pop(grant.lease, None)
        self._releases.append((self._keys_for(ask)[0], grant.lease))
        if len(self._releases) == 1:  # the first of this loop turn schedules the flush
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let this turn's other settles join the pipeline
        batch, self._releases = self._releases, []
        if not batch or not self._connected:
            return  # the leases expire
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                pipe = self._redis.pipeline(transaction=False)
                for key, lease in batch:
                    pipe.zrem(key, lease)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)

    async def _renew_leases(self) -> None:
        """A call may outlast its lease (retries, a slow backend): every
        lease held for a third of its time is pushed back to a full lease,
        all in one round trip. A process that dies stops renewing, so its
        leases expire ``lease_s`` after their last renewal at the latest."""
        while self._held and not self._closed:
            step = min(ls for _, ls, _ in self._held.values()) / 3
            await asyncio.sleep(step)
            now = self._clock()
            due = [(lease, key, ls) for lease, (key, ls, at) in self._held.items() if now - at >= ls / 3]
            if not due or not self._connected:
                continue
            flat: list[object] = []
            for (lease, _, ls) in due:
                flat += [ls, lease]
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    n = await self._renew(keys=[key for _, key, _ in due], args=flat)
            except (RedisError, OSError, TimeoutError) as exc:
                self._went_down(exc)
                continue
            self.renewed += int(n)
            for lease, key, ls in due:
                if lease in self._held:
                    self._held[lease] = (key, ls, now)

    # ---- breakers --------------------------------------------------------------

    def breaker_opened(self, skill: str, implementation: str, open_for_s: float, reason: str) -> None:
        self._soon(self._open(keys=(self._breakers_key,), args=(f"{skill}/{implementation}", open_for_s, reason[:200])))

    def breaker_closed(self, skill: str, implementation: str) -> None:
        self._soon(self._redis.hdel(self._breakers_key, f"{skill}/{implementation}"))

    async def open_breakers(self) -> dict[tuple[str, str], tuple[float, str]]:
        if not self._connected:
            return {}
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                flat = await self._open_breakers(keys=(self._breakers_key,))
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
            return {}
        out = {}
        for i in range(0, len(flat), 3):
            skill, _, impl = flat[i].partition("/")
            out[(skill, impl)] = (float(flat[i + 1]), flat[i + 2])
        return out

    async def exchange_windows(self, mine: Mapping[str, tuple[int, int]],
                               ttl_s: float) -> dict[str, tuple[int, int]]:
        if not self._connected:
            return {}
        args: list[object] = [self._owner, ttl_s]
        for skill, (succ, calls) in mine.items():
            args += [skill, succ, calls]
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                flat = await self._windows(keys=(self._windows_key,), args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
            return {}
        return {flat[i]: (int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)}

    def _soon(self, aw: Coroutine[Any, Any, object]) -> None:
        """Run one command off the caller's path, bounded like every other."""
        async def run() -> None:
            if not self._connected:
                return
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    await aw
            except (RedisError, OSError, TimeoutError) as exc:
                self._went_down(exc)
        if not self._connected:
            aw.close()  # never awaited: known to be down
            return
        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def status(self) -> StateStatus:
        return StateStatus("redis", self._connected, self._detail, self._fallbacks, self._reconnects,
                           self.settings.worker, self.settings.workers)

    async def start(self) -> None:
        """Load the script; an unreachable Redis is not fatal (the fallback
        serves and the reconnector keeps trying)."""
        try:
            async with asyncio.timeout(max(1.0, self.settings.timeout_s)):
                await self._redis.ping()
                await self._redis.script_load(ADMIT_LUA)
            log.info("shared state: Redis at %s", self.url)
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)

    async def aclose(self) -> None:
        self._closed = True
        if self._flushing or self._background:
            await asyncio.gather(*self._flushing, *self._background, return_exceptions=True)
        for task in (self._reconnector, self._renewer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._redis.aclose()

    # ---- down and up ---------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self._connected:
            return
        self._connected = False
        self._detail = detail
        log.warning("shared state: Redis at %s unreachable (%s); serving on local limits (this worker's share) "
                    "until it is back", self.url, detail)
        self._changed()
        if not self._closed and (self._reconnector is None or self._reconnector.done()):
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self.settings.reconnect_min_s
        while not self._closed:
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            try:
                async with asyncio.timeout(max(self.settings.timeout_s, 0.5)):
                    await self._redis.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                self._detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                delay = min(self.settings.reconnect_max_s, delay * 2)
                continue
            self._connected = True
            self._detail = ""
            self._reconnects += 1
            log.info("shared state: Redis at %s reachable again; limits shared again", self.url)
            self._changed()
            return

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.status())
            except Exception:  # a listener never breaks admission
                log.exception("shared state: status listener failed")
