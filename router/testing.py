"""Fakes for tests, shipped with the package so users can test against them
too (like httpx's ``MockTransport``): a clock that only moves when told, a
scripted ``Backend``, and a pipeline wired from core types without a
socket.

::

    clock = FakeClock()
    backend = FakeBackend(impl, [reply("hi"), fail(503), hang()])
    pipeline = make_pipeline([skill], {("search", impl.name): backend}, clock=clock)
    out = await pipeline.execute(Query("q"), timeout_s=1.0)
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from router.core.breaker import BreakerConfig
from router.core.errors import BackendConnectionError, BackendError, BackendStatusError
from router.core.retry import RetryPolicy
from router.core.routing import SkillIndex
from router.core.types import ImplementationSpec, RoutingPolicy, SkillSpec
from router.runtime.cache import CacheOptions, CacheStore
from router.runtime.calls import BatchingOptions
from router.runtime.observer import Observer, QueryRecord
from router.runtime.pipeline import Pipeline
from router.runtime.ports import Backend, SkillCall, SkillReply
from router.runtime.registry import LiveRegistry
from router.runtime.skills import SkillRuntime, SkillSettings, build_gate

__all__ = [
    "FakeBackend",
    "FakeClock",
    "ListSink",
    "Step",
    "fail",
    "hang",
    "make_pipeline",
    "refuse_connection",
    "reply",
]


class FakeClock:
    """A monotonic clock that stands still until ``advance``: breakers'
    cooldowns, retry budgets and deadlines read it (asyncio's own timers
    still run on real time)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back")
        self.now += seconds

    def __repr__(self) -> str:
        return f"<FakeClock {self.now:.3f}>"


@dataclass(frozen=True, slots=True)
class Step:
    """What a ``FakeBackend`` does for one call: wait ``delay_s`` (real
    time), then answer ``output`` or raise ``error``; ``hang`` waits until
    the caller gives up."""

    output: str | None = None
    error: BackendError | None = None
    delay_s: float = 0.0
    hang: bool = False
    cost: float | None = None


def reply(output: str = "ok", *, delay_s: float = 0.0, cost: float | None = None) -> Step:
    return Step(output=output, delay_s=delay_s, cost=cost)


def fail(status: int = 500, message: str = "scripted failure", *, delay_s: float = 0.0) -> Step:
    return Step(error=BackendStatusError(status, message), delay_s=delay_s)


def refuse_connection() -> Step:
    return Step(error=BackendConnectionError("scripted: connection refused"))


def hang() -> Step:
    return Step(hang=True)


class FakeBackend:
    """A ``Backend`` that plays a script, one step per call (the last step
    repeats), and records what it was asked."""

    def __init__(self, implementation: ImplementationSpec, script: Iterable[Step] | Step = (), *,
                 batch: bool = False, stream: bool = False) -> None:
        self.implementation = implementation
        self._stream = stream  # call_stream hands out the answer word by word
        steps = [script] if isinstance(script, Step) else list(script)
        self._script: deque[Step] = deque(steps or [reply(f"{implementation.name} answers")])
        self._batch = batch
        self.calls: list[SkillCall] = []
        self.batches: list[list[SkillCall]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    def script(self, *steps: Step) -> None:
        """Replace the rest of the script."""
        self._script = deque(steps)

    def _next(self) -> Step:
        return self._script.popleft() if len(self._script) > 1 else self._script[0]

    async def _play(self, step: Step) -> SkillReply:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if step.hang:
                await asyncio.Event().wait()
            if step.delay_s:
                await asyncio.sleep(step.delay_s)
            if step.error is not None:
                raise step.error
            return SkillReply(output=step.output or "", cost=step.cost, model=self.implementation.model)
        finally:
            self.in_flight -= 1

    @property
    def supports_batch(self) -> bool:
        return self._batch

    async def warm(self) -> None:
        pass

    async def call(self, call: SkillCall, timeout_s: float) -> SkillReply:
        self.calls.append(call)
        return await self._play(self._next())

    @property
    def supports_stream(self) -> bool:
        return self._stream

    async def call_stream(self, call: SkillCall, timeout_s: float, on_delta: Callable[[str], None]) -> SkillReply:
        self.calls.append(call)
        got = await self._play(self._next())
        for i, word in enumerate(got.output.split(" ")):
            on_delta(word if i == 0 else " " + word)
        return got

    async def call_batch(self, calls: Sequence[SkillCall], timeout_s: float) -> list[SkillReply | BackendError]:
        if not self._batch:
            raise NotImplementedError(f"{self.implementation.name} does not batch")
        self.batches.append(list(calls))
        self.calls.extend(calls)
        base = await self._play(self._next())
        return [SkillReply(output=f"{base.output} [{c.query}]", cost=base.cost, model=base.model) for c in calls]

    async def aclose(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeBackend {self.implementation.name} [{len(self.calls)} calls | in-flight {self.in_flight}]>"


class ListSink:
    """A ``RecordSink`` that keeps every record."""

    def __init__(self) -> None:
        self.records: list[QueryRecord] = []

    def submit(self, record: QueryRecord) -> None:
        self.records.append(record)


class _Backends:
    def __init__(self, backends: Mapping[tuple[str, str], Backend]) -> None:
        self._backends = backends

    def get(self, skill: str, implementation: str) -> Backend:
        return self._backends[(skill, implementation)]


def make_pipeline(
    skills: Sequence[SkillSpec],
    backends: Mapping[tuple[str, str], Backend],
    *,
    policy: RoutingPolicy = RoutingPolicy(),
    clock: Callable[[], float] | None = None,
    breaker: BreakerConfig = BreakerConfig(),
    retry: RetryPolicy = RetryPolicy(max_attempts=1),
    batching: BatchingOptions = BatchingOptions(),
    queue_timeout_s: float = 5.0,
    observer: Observer | None = None,
    sink: ListSink | None = None,
    seed: int = 0,
    cache: CacheStore | None = None,
    cache_options: CacheOptions = CacheOptions(enabled=True),
) -> Pipeline:
    """A pipeline over ``skills`` whose calls go to ``backends`` (keyed by
    (skill, implementation)), with a ``ListSink`` unless one is given; with
    ``cache``, every skill answers through it (``cache_options``)."""
    clock = clock or FakeClock()
    rng = random.Random(seed)
    registry = LiveRegistry([s.name for s in skills], default_success_rate=policy.default_success_rate)
    lookup = _Backends(backends)
    runtimes = {}
    for s in skills:
        settings = SkillSettings(spec=s, concurrency_limit=s.concurrency_limit, queue_depth=s.queue_depth,
                                 queue_timeout_s=queue_timeout_s, breaker=breaker, retry=retry, batching=batching,
                                 batchable=frozenset(i.name for i in s.implementations
                                                     if getattr(backends[(s.name, i.name)], "supports_batch", False)),
                                 cache=cache_options)
        runtimes[s.name] = SkillRuntime(settings, build_gate(settings, clock), lookup, observer=observer,
                                        on_transition=registry.breaker_moved, clock=clock, rng=rng, cache=cache)
    return Pipeline(SkillIndex(skills), policy, runtimes, registry, observer=observer,
                    sink=sink if sink is not None else ListSink(), clock=clock)
