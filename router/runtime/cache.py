"""The response cache: answers reused instead of paid for twice.

``CachingCaller`` wraps any caller of an implementation (direct, coalesced,
batched) when the skill opts in; it is chosen once at start-up, like the
other callers. A lookup goes:

    key      skill, implementation, normalized query, and the context the
             call depends on (domain, complexity band, the system prompt,
             the metadata that reaches the backend); never the trace id or
             the query id
    hit      the stored reply, at no cost (``CallResult.cached``, its age);
             no door, no backend request
    miss     one fetch per key at a time (single flight: a miss for a key
             already being fetched waits for that fetch); only an OK answer
             is stored, for the skill's ``ttl_s``

The store is a port (``CacheStore``): ``MemoryCache`` (in-process LRU with
TTL) is the default. A store shared by replicas (Redis, ``state.redis_url``)
implements the same port in an edge; it is NOT built yet (see
docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from .batcher import SingleFlight
from .calls import Caller, CallOutcome, CallRequest, CallResult, join_flight
from .ports import SkillCall, SkillReply

__all__ = ["CacheEntry", "CacheOptions", "CacheStats", "CacheStore", "CachingCaller", "MemoryCache", "cache_key",
           "normalize_query"]


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """One skill's cache settings (resolved from ``cache:`` and the skill's
    own ``cache: {enabled, ttl_s}``)."""

    enabled: bool = False
    ttl_s: float = 300.0


@dataclass(frozen=True, slots=True)
class CacheEntry:
    reply: SkillReply
    cost: float  # what the call cost when it was made (the saving of each hit)
    stored_at: float  # wall clock, unix seconds (comparable across replicas)


class CacheStore(Protocol):
    """Where cached replies live. ``get`` returns None for a missing or
    expired entry; ``put`` keeps one for ``ttl_s`` seconds."""

    async def get(self, key: str) -> CacheEntry | None: ...

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryCache:
    """In-process LRU with a TTL per entry: at most ``max_entries``; the
    least recently used goes first, an expired one is dropped when met."""

    __slots__ = ("_clock", "_entries", "evictions", "max_entries")

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CacheEntry]] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CacheEntry | None:
        got = self._entries.get(key)
        if got is None:
            return None
        expires_at, entry = got
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: CacheEntry, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._entries[key] = (self._clock() + ttl_s, entry)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    async def aclose(self) -> None:
        self._entries.clear()

    def __repr__(self) -> str:
        return f"<MemoryCache {len(self._entries)}/{self.max_entries} entries | {self.evictions} evicted>"


def normalize_query(text: str) -> str:
    """The query as the cache compares it: Unicode NFKC, runs of whitespace
    made one space, trimmed. Case is kept (it can change an answer: code,
    names)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def complexity_band(complexity: float) -> int:
    """Whole complexity: 6.2 and 6.8 ask for the same kind of answer."""
    return math.floor(complexity) if math.isfinite(complexity) else -1


def cache_key(call: SkillCall) -> str:
    """``cache:{skill}:{implementation}:{digest}``; the digest covers the
    normalized query and the context the call depends on. Never the query
    id or the trace headers: those differ on every call."""
    parts = [normalize_query(call.query), call.domain, complexity_band(call.complexity), call.system_prompt,
             sorted(call.metadata.items())]
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()
    return f"cache:{call.skill}:{call.implementation.name}:{digest[:32]}"


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0  # lookups not answered from the store (a fetch made or joined)
    stored: int = 0
    saved: float = 0.0  # US dollars the hits did not spend

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(self.hits + other.hits, self.misses + other.misses, self.stored + other.stored,
                          self.saved + other.saved)


class CachingCaller:
    """A caller that answers from the cache when it can, else through the
    caller it wraps (one fetch per key at a time)."""

    __slots__ = ("_clock", "_inner", "_options", "_store", "_wall", "flights", "implementation", "stats")

    def __init__(self, inner: Caller, store: CacheStore, options: CacheOptions, *, name: str = "",
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.implementation = inner.implementation
        self._inner = inner
        self._store = store
        self._options = options
        self._clock = clock
        self._wall = wall
        self.flights: SingleFlight[Hashable, CallResult] = SingleFlight(f"cache:{name}")
        self.stats = CacheStats()

    @property
    def inner(self) -> Caller:
        return self._inner

    async def call(self, request: CallRequest) -> CallResult:
        t0 = self._clock()
        key = cache_key(request.call)
        hit = await self._lookup(key, request, t0)
        if hit is not None:
            return hit
        self.stats.misses += 1
        request.observation.event("cache.miss", {"router.cache.key": key})
        # One fetch per key: the misses of a key being fetched wait for it.
        fr = await join_flight(self.flights, key, request, lambda r: self._fetch(key, r), self.implementation,
                               self._clock, t0)
        if isinstance(fr, CallResult):
            return fr
        # The callers that shared the fetch share its cost (as single flight does).
        return dataclasses.replace(fr.value, shared_by=fr.sharers, streamed=fr.value.streamed and fr.leader,
                                   latency_s=self._clock() - t0, cache_missed=True)

    async def _lookup(self, key: str, request: CallRequest, t0: float) -> CallResult | None:
        entry = await self._store.get(key)
        if entry is None:
            return None
        age = max(0.0, self._wall() - entry.stored_at)
        self.stats.hits += 1
        self.stats.saved += entry.cost
        request.observation.event("cache.hit", {"router.cache.key": key, "router.cache.age_ms": age * 1000})
        return CallResult(CallOutcome.OK, self.implementation, reply=entry.reply, attempts=0, cached=True,
                          cache_age_s=age, latency_s=self._clock() - t0)

    async def _fetch(self, key: str, request: CallRequest) -> CallResult:
        result = await self._inner.call(request)
        if result.ok and result.reply is not None:
            reply = result.reply
            cost = reply.cost if reply.cost is not None else self.implementation.cost_per_query
            await self._store.put(key, CacheEntry(reply, cost, self._wall()), self._options.ttl_s)
            self.stats.stored += 1
        return result

    async def aclose(self) -> None:
        await self.flights.aclose()
        await self._inner.aclose()

    def __repr__(self) -> str:
        s = self.stats
        return f"<CachingCaller {self._inner!r} [{s.hits} hits | {s.misses} misses | ttl {self._options.ttl_s:g}s]>"
