"""One caller per implementation, chosen once at start-up from the config:

    DirectCaller     one backend request per call, through the door
    CoalescedCaller  identical calls in flight share one (single flight)
    BatchedCaller    calls wait a short window and go as one backend request
                     (one door, one permit, for the whole batch)

Each takes one ``CallRequest`` and returns one frozen ``CallResult``: the
reply or what went wrong (a ``CallOutcome``), with attempts, queue wait,
batch size and how many callers shared it. A caller never raises for a
backend's failure, a refusal or the caller's own deadline: those are
values. The orchestrator awaits ``caller.call(request)`` and never knows
which strategy answered (Ray Serve's ``@serve.batch``: the caller awaits
one item).

Timeouts are classified where they happen: an attempt bounded by the
implementation's own ``timeout_s`` that runs out is TIMED_OUT (the backend's
fault, its breaker counts it); one bounded by the caller's deadline is
DEADLINE (nobody's fault, no breaker counts it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from router.core.batching import BatchKeyMode, batch_key, should_batch
from router.core.breaker import Transition, is_breaker_failure
from router.core.errors import (
    BackendError,
    BackendTimeout,
    CallerDeadline,
    DeadlineExceeded,
    RouterError,
    ShuttingDown,
)
from router.core.retry import RetryDecision, RetryPolicy
from router.core.types import ImplementationSpec, Priority

from .admit import Door, Pass, Refusal, Settle
from .batcher import Batch, Batcher, BatcherGroup, BatcherStats, FlightResult, SingleFlight
from .observer import Observer, SkillObservation
from .ports import Backend, DeltaSink, SkillCall, SkillReply
from .retry import RetryResult, call_with_retries

__all__ = [
    "BatchedCaller",
    "BatchingOptions",
    "CallOutcome",
    "CallRequest",
    "CallResult",
    "Caller",
    "CoalescedCaller",
    "DirectCaller",
]

T = TypeVar("T")


class CallOutcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"  # error status, bad answer, connection error
    TIMED_OUT = "timed_out"  # the implementation's own timeout passed
    DEADLINE = "deadline"  # the caller's deadline cut it short
    REFUSED = "refused"  # the door said no (``refusal`` says why)


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    enabled: bool = False
    window_s: float = 0.1
    max_batch_size: int = 16
    key: BatchKeyMode = BatchKeyMode.IMPLEMENTATION
    priority_bypass: bool = True


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One skill call of one query."""

    call: SkillCall
    priority: Priority
    deadline_at: float  # the caller's deadline, on the pipeline's clock
    observation: SkillObservation  # the query's skill span: events go there
    skill_set: tuple[str, ...] = ()  # the query's chosen skills (the seed's batch key)
    # Set when the caller wants the answer as it arrives (ExecuteStream): a
    # backend that streams is called with ``call_stream``; the attempt number
    # comes with each delta (a retry starts the answer over).
    on_delta: Callable[[str, int], None] | None = None


@dataclass(frozen=True, slots=True)
class CallResult:
    outcome: CallOutcome
    implementation: ImplementationSpec
    reply: SkillReply | None = None
    error: str = ""
    refusal: Refusal | None = None
    attempts: int = 0
    queue_wait_s: float = 0.0
    batch_size: int = 1
    shared_by: int = 1
    latency_s: float = 0.0
    cached: bool = False  # answered from the response cache (no backend request)
    cache_missed: bool = False  # looked up in the cache, not there: fetched
    cache_age_s: float = 0.0
    streamed: bool = False  # the reply came as a stream of deltas

    @property
    def ok(self) -> bool:
        return self.outcome is CallOutcome.OK


class Caller(Protocol):
    implementation: ImplementationSpec

    async def call(self, request: CallRequest) -> CallResult: ...

    async def aclose(self) -> None: ...


def _outcome_of(error: BaseException | None) -> CallOutcome:
    if error is None:
        return CallOutcome.OK
    if isinstance(error, CallerDeadline | DeadlineExceeded):
        return CallOutcome.DEADLINE
    if isinstance(error, BackendTimeout):
        return CallOutcome.TIMED_OUT
    return CallOutcome.FAILED


def _settlement(error: BaseException | None) -> Settle:
    if error is None:
        return Settle.SUCCESS
    return Settle.FAILURE if is_breaker_failure(error) else Settle.IGNORED


def _refused(impl: ImplementationSpec, refusal: Refusal, latency_s: float = 0.0) -> CallResult:
    return CallResult(CallOutcome.REFUSED, impl, error=f"shed: {refusal}", refusal=refusal, latency_s=latency_s)


def report_transition(events: Any, transition: Transition | None) -> None:
    """A breaker transition the call caused, on the call's own span."""
    if transition is not None and events is not None:
        events.event("breaker.transition", {
            "router.breaker": transition.breaker, "router.breaker.from": str(transition.from_state),
            "router.breaker.to": str(transition.to_state), "router.breaker.reason": transition.reason})


class _Expired(Exception):
    """This caller's own deadline passed while it waited for a shared call."""


async def _within(remaining_s: float, shared: Awaitable[T]) -> T:
    """Wait for a shared call (a batch, a single flight) no longer than
    this caller's own deadline. Leaving does not stop the shared call: it
    goes on for the callers still waiting."""
    bound = asyncio.timeout(max(0.0, remaining_s))
    try:
        async with bound:
            return await shared
    except TimeoutError:
        if bound.expired():
            raise _Expired from None
        raise


class Sender:
    """The attempts of one backend request under a pass: each attempt's
    timeout, retries inside the deadline spending the skill's retry budget,
    and the classification of timeouts."""

    __slots__ = ("_clock", "_door", "_impl", "_retry", "_rng")

    def __init__(self, impl: ImplementationSpec, door: Door, retry: RetryPolicy, rng: random.Random,
                 clock: Callable[[], float]) -> None:
        self._impl = impl
        self._door = door
        self._retry = retry
        self._rng = rng
        self._clock = clock

    async def send(self, send: Callable[[float], Awaitable[T]], deadline_at: float, events: Any) -> RetryResult[T]:
        impl, clock = self._impl, self._clock

        async def attempt(n: int) -> T:
            left = deadline_at - clock()
            if left <= 0:
                raise CallerDeadline(f"the deadline passed before attempt {n}")
            cut = left < impl.timeout_s  # the caller's deadline, not the implementation's timeout, bounds it
            t = left if cut else impl.timeout_s
            try:
                return await asyncio.wait_for(send(t), t)
            except TimeoutError:
                why = f"no answer within {t * 1000:.0f} ms"
                raise (CallerDeadline(f"{why} (the caller's deadline)") if cut else BackendTimeout(why)) from None
            except BackendTimeout as exc:
                if cut:
                    raise CallerDeadline(f"{exc} (the caller's deadline)") from None
                raise

        def on_retry(n: int, err: BackendError, decision: RetryDecision) -> None:
            if events is not None:
                events.event("retry", {"router.retry.attempt": n, "router.retry.delay_ms": (decision.delay_s or 0) * 1000,
                                       "error.type": type(err).__name__, "router.retry.reason": decision.reason})

        return await call_with_retries(attempt, policy=self._retry, rng=self._rng, clock=clock,
                                       deadline_at=deadline_at, budget=self._door.budget, on_retry=on_retry)


def _settle(got: Pass, sent: RetryResult[Any], events: Any) -> None:
    report_transition(events, got.settle(_settlement(sent.error), str(sent.error or "")))


class DirectCaller:
    """One backend request per call, through the door."""

    __slots__ = ("_backend", "_clock", "_door", "_sender", "implementation")

    def __init__(self, implementation: ImplementationSpec, door: Door, backend: Backend, sender: Sender,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.implementation = implementation
        self._door = door
        self._backend = backend
        self._sender = sender
        self._clock = clock

    async def call(self, request: CallRequest) -> CallResult:
        t0 = self._clock()
        got = await self._door.enter(request.priority, request.deadline_at)
        if isinstance(got, Refusal):
            return _refused(self.implementation, got, self._clock() - t0)
        backend, on_delta = self._backend, request.on_delta
        streamed = on_delta is not None and backend.supports_stream
        with got:
            if streamed:
                assert on_delta is not None
                attempt = 0

                def send(t: float) -> Awaitable[SkillReply]:
                    nonlocal attempt
                    attempt += 1
                    n = attempt
                    sink: DeltaSink = lambda d: on_delta(d, n)  # noqa: E731
                    return backend.call_stream(request.call, t, sink)
            else:
                def send(t: float) -> Awaitable[SkillReply]:
                    return backend.call(request.call, t)
            sent = await self._sender.send(send, request.deadline_at, request.observation)
            _settle(got, sent, request.observation)
        return CallResult(_outcome_of(sent.error), self.implementation, reply=sent.value,
                          error=str(sent.error or ""), attempts=sent.attempts, queue_wait_s=got.queue_wait_s,
                          latency_s=self._clock() - t0, streamed=streamed)

    async def aclose(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<DirectCaller {self._door!r}>"


async def join_flight(flights: SingleFlight[Hashable, CallResult], key: Hashable, request: CallRequest,
                      fetch: Callable[[CallRequest], Awaitable[CallResult]], impl: ImplementationSpec,
                      clock: Callable[[], float], t0: float) -> FlightResult[CallResult] | CallResult:
    """Start the shared call of ``key`` or join the one in flight. The
    shared call is not bound to its first caller's deadline (it may serve
    later ones) but to the implementation's timeout; each caller waits no
    longer than its own deadline, and the call is cancelled when every
    caller has gone. A caller that could not wait gets its CallResult."""
    shared = dataclasses.replace(request, deadline_at=max(request.deadline_at, t0 + impl.timeout_s))
    try:
        return await _within(request.deadline_at - t0, flights.run_detailed(key, lambda: fetch(shared)))
    except _Expired:
        return CallResult(CallOutcome.DEADLINE, impl, error="no answer before the caller's deadline",
                          latency_s=clock() - t0)
    except ShuttingDown as exc:
        return CallResult(CallOutcome.FAILED, impl, error=str(exc), latency_s=clock() - t0)


def flight_key(call: SkillCall) -> Hashable:
    """Calls that would send the same request: same query, context and
    metadata (metadata reaches ``http`` backends, so it must match)."""
    return (call.query, call.domain, round(call.complexity, 1), call.system_prompt,
            tuple(sorted(call.metadata.items())))


class CoalescedCaller:
    """Identical calls in flight share one backend request (single flight);
    each caller waits no longer than its own deadline, and the shared
    request is not bound to its first caller's deadline."""

    __slots__ = ("_clock", "_direct", "flights", "implementation")

    def __init__(self, direct: DirectCaller, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.implementation = direct.implementation
        self._direct = direct
        self._clock = clock
        self.flights: SingleFlight[Hashable, CallResult] = SingleFlight(name)

    async def call(self, request: CallRequest) -> CallResult:
        t0 = self._clock()
        # A shared call answers whole: its deltas would reach one caller only.
        fr = await join_flight(self.flights, flight_key(request.call), dataclasses.replace(request, on_delta=None),
                               self._direct.call, self.implementation, self._clock, t0)
        if isinstance(fr, CallResult):
            return fr
        return dataclasses.replace(fr.value, shared_by=fr.sharers, latency_s=self._clock() - t0)

    async def aclose(self) -> None:
        await self.flights.aclose()

    def __repr__(self) -> str:
        return f"<CoalescedCaller {self._direct!r} {self.flights!r}>"


class BatchedCaller:
    """Calls wait up to a short window and go to the backend as one batch:
    one door, one permit, one request for the whole batch; each caller gets
    its own item's result no later than its own deadline. A high-priority
    call skips the window (``priority_bypass``)."""

    __slots__ = ("_backend", "_clock", "_direct", "_door", "_gate_idle", "_observer", "_options", "_sender",
                 "_skill", "batchers", "implementation")

    def __init__(self, skill: str, direct: DirectCaller, door: Door, backend: Backend, sender: Sender,
                 options: BatchingOptions, observer: Observer, clock: Callable[[], float] = time.monotonic) -> None:
        self.implementation = direct.implementation
        self._skill = skill
        self._direct = direct
        self._door = door
        self._backend = backend
        self._sender = sender
        self._options = options
        self._observer = observer
        self._clock = clock
        gate = door.gate
        self._gate_idle = lambda: gate.in_flight == 0 and gate.queued == 0
        self.batchers: BatcherGroup[CallRequest, CallResult] = BatcherGroup(self._make, name=skill)

    def _make(self, key: Hashable) -> Batcher[CallRequest, CallResult]:
        impl = self.implementation
        return Batcher(self._send, window_s=self._options.window_s, max_batch_size=self._options.max_batch_size,
                       clock=self._clock, is_idle=self._gate_idle, expected_latency_s=impl.expected_latency_ms / 1000.0,
                       name=f"{self._skill}/{impl.name}")

    async def call(self, request: CallRequest) -> CallResult:
        o = self._options
        if not should_batch(request.priority, enabled=True, supports_batch=True,
                            priority_bypass=o.priority_bypass)[0]:
            return await self._direct.call(request)
        impl = self.implementation
        t0 = self._clock()
        # An item needs no slot of its own (the batch takes one as it goes),
        # only a breaker that lets calls through.
        refusal = self._door.check(request.priority, request.deadline_at, queues=False)
        if refusal is not None:
            return _refused(impl, refusal)
        c = request.call
        key = batch_key(o.key, self._skill, impl.name, c.domain, request.skill_set, c.complexity)
        remaining = request.deadline_at - t0
        try:
            item = await _within(remaining, self.batchers.submit(key, request, tag=request.observation,
                                                                 deadline_s=remaining))
        except (_Expired, DeadlineExceeded):
            return CallResult(CallOutcome.DEADLINE, impl, error="no answer before the caller's deadline",
                              latency_s=self._clock() - t0)
        except ShuttingDown as exc:
            return CallResult(CallOutcome.FAILED, impl, error=str(exc), latency_s=self._clock() - t0)
        except RouterError as exc:  # a send that raised (a bug in a backend's batch parsing): fail the items
            return CallResult(_outcome_of(exc), impl, error=str(exc), latency_s=self._clock() - t0)
        request.observation.event("batch.joined", {"router.batch.id": item.batch_id,
                                                   "router.batch.size": item.batch_size,
                                                   "router.batch.wait_ms": item.wait_s * 1000})
        return dataclasses.replace(item.value, batch_size=item.batch_size, latency_s=self._clock() - t0)

    async def _send(self, batch: Batch[CallRequest]) -> Sequence[CallResult]:
        """One batch = one backend request = one pass through the door."""
        impl, n = self.implementation, batch.size
        priority = max(i.priority for i in batch.items)
        # The batch serves its callers up to the latest deadline among them;
        # each caller stops waiting at its own (``_within``).
        deadline = max(i.deadline_at for i in batch.items)
        calls = [i.call for i in batch.items]
        with self._observer.batch(self._skill, impl, batch.batch_id, n, batch.first_wait_s, batch.tags) as span:
            got = await self._door.enter(priority, deadline)
            if isinstance(got, Refusal):
                return [_refused(impl, got)] * n
            with got:
                sent = await self._sender.send(lambda t: self._backend.call_batch(calls, t), deadline, span)
                _settle(got, sent, span)
        common = {"attempts": sent.attempts, "queue_wait_s": got.queue_wait_s}
        if sent.error is not None:
            return [CallResult(_outcome_of(sent.error), impl, error=str(sent.error), **common)] * n
        replies: Sequence[SkillReply | BackendError] = sent.value or ()
        return [CallResult(CallOutcome.OK, impl, reply=r, **common) if isinstance(r, SkillReply)
                else CallResult(_outcome_of(r), impl, error=str(r), **common) for r in replies]

    def stats(self) -> Mapping[str, BatcherStats]:
        return self.batchers.stats()

    async def aclose(self) -> None:
        await self.batchers.aclose()
        await self._direct.aclose()

    def __repr__(self) -> str:
        return f"<BatchedCaller {self._door!r} {self.batchers!r}>"
