"""The pipeline's ``Observer`` in OpenTelemetry spans and metrics.

One query is one INTERNAL span ``router.<rpc>`` (a child of whatever span is
current when the query starts: the RPC's SERVER span) with these children:

    router.select                 after the fact, from the pipeline's timestamps
      └ router.choose_implementation
    <operation> <model>           one CLIENT span per skill execution (GenAI conventions)
    router.synthesize             after the fact

Skill executions run in their own tasks, so every child is parented
explicitly on the query span rather than on the ambient context.

A batched backend request carries the skill calls of several queries (of
several traces), so it is a trace of its own: a CLIENT span linked to each
query's skill span; each skill span has a ``batch.joined`` event naming it.

Never recorded: API keys, request metadata, answers; the query text only with
``record_query_text``. Error messages are scrubbed of bearer tokens and keys.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer

from router.core.errors import RouterError
from router.core.redact import Redactor
from router.core.routing import PlannedSkill, RoutePlan
from router.core.selection import RejectionReason
from router.core.synthesis import SkillOutcome, Synthesis
from router.core.types import BackendKind, ImplementationSpec
from router.runtime.observer import QueryRecord

from ._metrics import Instruments

# Attribute names. GenAI ones from the OpenTelemetry GenAI semantic conventions.
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

QUERY_TEXT = "router.query.text"
STANDBY_ON_SPAN = 5  # next-best skills named on the router.select span
_MAX_ERROR_CHARS = 256
_MAX_STACK_CHARS = 8192
_INACTIVE = (RejectionReason.NOT_ACTIVATED, RejectionReason.DISABLED, RejectionReason.EXCLUDED)

_SHAPES = Redactor()  # the shape-based net; values come from the observer's ``redact``


def scrub(text: str, limit: int = _MAX_ERROR_CHARS, *, keep_tail: bool = False,
          redact: Callable[[str], str] | None = None) -> str:
    """An error message fit for a span: no credentials (the sidecar's secrets
    by value through ``redact``, then key shapes), bounded length."""
    cleaned = _SHAPES(redact(text) if redact is not None else text)
    if len(cleaned) <= limit:
        return cleaned
    return "…" + cleaned[-(limit - 1):] if keep_tail else cleaned[: limit - 1] + "…"


def record_exception(span: trace.Span, exc: BaseException, redact: Callable[[str], str] | None = None) -> None:
    """``Span.record_exception`` with the message and the stack trace scrubbed."""
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    span.add_event("exception", {
        "exception.type": type(exc).__qualname__,
        "exception.message": scrub(str(exc), redact=redact),
        "exception.stacktrace": scrub(stack, _MAX_STACK_CHARS, keep_tail=True, redact=redact),
    })


def operation_of(backend: str) -> str:
    """OpenAI-compatible backends are chat completions; an HTTP skill is an
    agent the router invokes."""
    return "chat" if backend == BackendKind.OPENAI else "invoke_agent"


def _server_of(url: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        return parts.hostname or "", port
    except ValueError:
        return "", None


class OtelObserver:
    """Implements ``router.runtime.observer.Observer``."""

    __slots__ = ("_m", "_max_text", "_propagator", "_record_text", "_redact", "_tracer")

    def __init__(self, tracer: Tracer, instruments: Instruments, propagator: TextMapPropagator, *,
                 record_query_text: bool = False, max_query_text_chars: int = 2048,
                 redact: Callable[[str], str] | None = None) -> None:
        self._redact = redact
        self._tracer = tracer
        self._m = instruments
        self._propagator = propagator
        self._record_text = record_query_text
        self._max_text = max_query_text_chars

    def start_query(self, rpc: str, query_id: str) -> QueryObservationSpan:
        span = self._tracer.start_span(
            f"router.{rpc}", kind=SpanKind.INTERNAL,
            attributes={"router.rpc": rpc, "router.query.id": query_id},
        )
        return QueryObservationSpan(self, span, rpc)

    def batch(self, skill: str, implementation: ImplementationSpec, batch_id: str, size: int,
              first_wait_s: float, tags: Sequence[Any]) -> BatchSpan:
        """One backend request carrying ``size`` queries' calls; ``tags``
        are their ``SkillObservation``s, linked from the batch span."""
        return BatchSpan(self, skill, implementation, batch_id, size, first_wait_s, tags)


class QueryObservationSpan:
    __slots__ = ("_ctx", "_done", "_o", "_offset_ns", "_rpc", "_span", "_start_mono")

    def __init__(self, observer: OtelObserver, span: trace.Span, rpc: str) -> None:
        self._o = observer
        self._span = span
        self._ctx = trace.set_span_in_context(span)
        self._rpc = rpc
        # The pipeline measures with the monotonic clock; spans need epoch time.
        # Taken per query so a wall-clock step affects at most the queries in flight.
        self._start_mono = time.monotonic_ns()
        self._offset_ns = time.time_ns() - self._start_mono
        self._done = False

    def __repr__(self) -> str:
        return f"<QueryObservation {self._rpc} trace={self.trace_id or '-'}{' done' if self._done else ''}>"

    @property
    def trace_id(self) -> str:
        sc = self._span.get_span_context()
        return format(sc.trace_id, "032x") if sc.is_valid else ""

    @property
    def span_id(self) -> str:
        sc = self._span.get_span_context()
        return format(sc.span_id, "016x") if sc.is_valid else ""

    # ---- selection ---------------------------------------------------------

    def selection(self, plan: RoutePlan, start_ns: int, end_ns: int) -> None:
        self._o._m.selection_duration.record(max(0, end_ns - start_ns) / 1e9, {"router.rpc": self._rpc})
        span = self._span
        if not span.is_recording():
            return
        q = plan.query
        span.set_attributes({
            "router.query.domain": q.domain,
            "router.query.complexity": q.complexity,
            "router.query.priority": q.priority.name.lower(),
            "router.selection.k": plan.k,
        })
        sig = plan.signals
        if sig is not None:  # where each signal came from; never the text
            span.set_attributes({
                "router.signals.method": sig.method,
                "router.signals.domain_source": sig.domain_source.value,
                "router.signals.complexity_source": sig.complexity_source.value,
                "router.signals.out_of_scope": sig.out_of_scope,
                "router.signals.best_relevance": sig.best_relevance,
                "router.signals.domains": [d.domain for d in sig.domains],
            })
        if self._o._record_text:
            span.set_attribute(QUERY_TEXT, q.text[: self._o._max_text])

        planned = plan.planned
        activated = len(planned) + sum(1 for r in plan.rejected if r.reason not in _INACTIVE)
        start, end = start_ns + self._offset_ns, end_ns + self._offset_ns
        tracer = self._o._tracer
        sel = tracer.start_span("router.select", context=self._ctx, start_time=start, attributes={
            "router.selection.k": plan.k,
            "router.selection.candidates": len(planned) + len(plan.rejected),
            "router.selection.activated": activated,
            "router.selection.chosen": [p.name for p in planned],
            "router.selection.scores": [p.chosen.score.score for p in planned],
            "router.selection.rank_scores": [p.chosen.score.rank_score for p in planned],
            "router.selection.forced": [p.name for p in planned if p.chosen.forced],
            # The next-best few, not the whole reserve: no implementation is
            # chosen for them here (that happens only if one steps in).
            "router.selection.standby": plan.next_best(STANDBY_ON_SPAN),
            "router.moe_enabled": plan.moe_enabled,
            "router.baseline_cost_usd": plan.baseline_cost,
            "router.baseline_skills": plan.baseline_skills,
            "router.selection.rejected": [f"{r.name}: {r.reason.value}" for r in plan.rejected],
        })
        # Lists, not one event per skill: each attribute and event costs the
        # SDK's validation on the event loop (bench/tracing_overhead). The
        # details are in the Route/Execute response.
        impl = tracer.start_span("router.choose_implementation", context=trace.set_span_in_context(sel),
                                 start_time=start, attributes={
                                     "router.implementations": [
                                         f"{p.name}={p.choice.implementation.name}" for p in planned
                                         if p.choice.implementation is not None],
                                     "router.implementation.reasons": [p.choice.reason for p in planned],
                                     "router.implementation.meets_quality_floor": [
                                         p.choice.meets_quality_floor for p in planned],
                                 })
        impl.end(end_time=end)
        sel.end(end_time=end)

    # ---- skills ------------------------------------------------------------

    def skill_call(self, planned: PlannedSkill) -> SkillCallSpan:
        return SkillCallSpan(self, planned)

    # ---- synthesis ---------------------------------------------------------

    def synthesis(self, synthesis: Synthesis, start_ns: int, end_ns: int) -> None:
        if not self._span.is_recording():
            return
        ledger = synthesis.ledger
        span = self._o._tracer.start_span(
            "router.synthesize", context=self._ctx, start_time=start_ns + self._offset_ns, attributes={
                "router.synthesis.quality": synthesis.quality,
                "router.synthesis.weights": list(synthesis.weights),
                "router.synthesis.answered": synthesis.any_ok,
                "router.cost_usd": ledger.actual,
                "router.baseline_cost_usd": ledger.baseline,
                "router.cost_saved_usd": ledger.saved,
                "router.baseline_skills": ledger.baseline_skills,
            })
        span.end(end_time=end_ns + self._offset_ns)

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self._span.add_event(name, attributes)

    # ---- the end -----------------------------------------------------------

    def finish(self, record: QueryRecord | None, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        m = self._o._m
        span = self._span
        if record is not None:
            status = record.status
            total_s = record.total_time_ms / 1000.0
        else:
            status = "ok" if error is None else _error_type(error)
            total_s = (time.monotonic_ns() - self._start_mono) / 1e9
        attrs = {"router.rpc": self._rpc, "router.status": status}
        m.queries.add(1, attrs)
        m.query_duration.record(total_s, attrs)
        if record is not None and record.rpc == "execute":
            m.cost_saved.add(record.cost_saved, {"router.rpc": self._rpc})
        if span.is_recording():
            if record is not None:
                span.set_attributes({
                    "router.status": record.status,
                    "router.query.hash": record.query_hash,
                    "router.skills.considered": record.skills_considered,
                    "router.skills.selected": record.skills_selected,
                    "router.skills": list(record.skills),
                    "router.skills.ok": list(record.skills_ok),
                    "router.top_skill": record.top_skill,
                    "router.top_skill_score": record.top_skill_score,
                    "router.selection_time_ms": record.selection_time_ms,
                    "router.execution_time_ms": record.execution_time_ms,
                    "router.total_time_ms": record.total_time_ms,
                    "router.cost_usd": record.total_cost,
                    "router.cost_saved_usd": record.cost_saved,
                    "router.baseline_cost_usd": record.baseline_cost,
                    "router.max_utilization": record.max_utilization,
                    "router.avg_queue_depth": record.avg_queue_depth,
                })
                if record.quality_score is not None:
                    span.set_attribute("router.quality", record.quality_score)
            if error is not None:
                span.set_attribute(ERROR_TYPE, _error_type(error))
                span.set_status(Status(StatusCode.ERROR, scrub(str(error), redact=self._o._redact)))
                if not isinstance(error, (RouterError, asyncio.CancelledError)):
                    record_exception(span, error, self._o._redact)
            elif record is not None and record.status not in ("ok", "partial"):
                span.set_attribute(ERROR_TYPE, record.status)
                span.set_status(Status(StatusCode.ERROR, record.status))
        span.end()


def _error_type(error: BaseException) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return type(error).__name__


class SkillCallSpan:
    """One skill execution: a CLIENT span, live from ``__enter__`` to
    ``finish`` (or the end of the ``with`` block)."""

    __slots__ = ("_attrs", "_done", "_headers", "_planned", "_q", "_span", "_start_mono")

    def __init__(self, query: QueryObservationSpan, planned: PlannedSkill) -> None:
        self._q = query
        self._planned = planned
        self._span: trace.Span = trace.INVALID_SPAN
        self._headers: dict[str, str] = {}
        self._done = False
        self._start_mono = 0
        impl = planned.choice.implementation
        backend = impl.backend if impl is not None else ""
        self._attrs = {
            GEN_AI_OPERATION: operation_of(backend),
            GEN_AI_PROVIDER: backend or "unknown",
            GEN_AI_REQUEST_MODEL: impl.model if impl is not None else "",
        }

    def __repr__(self) -> str:
        return f"<SkillObservation {self._planned.name}{' done' if self._done else ''}>"

    def __enter__(self) -> Self:
        planned = self._planned
        impl = planned.choice.implementation
        attrs: dict[str, Any] = dict(self._attrs)
        attrs["router.skill"] = planned.name
        attrs["router.implementation"] = impl.name if impl is not None else ""
        attrs["router.skill.score"] = planned.chosen.score.score
        if attrs[GEN_AI_OPERATION] == "invoke_agent":
            attrs[GEN_AI_AGENT_NAME] = planned.name
        if impl is not None:
            host, port = _server_of(impl.url)
            if host:
                attrs[SERVER_ADDRESS] = host
            if port:
                attrs[SERVER_PORT] = port
        name = f"{attrs[GEN_AI_OPERATION]} {attrs[GEN_AI_REQUEST_MODEL]}".rstrip()
        q = self._q
        self._span = q._o._tracer.start_span(name, context=q._ctx, kind=SpanKind.CLIENT, attributes=attrs)
        self._start_mono = time.monotonic_ns()
        if self._span.get_span_context().is_valid:
            q._o._propagator.inject(self._headers, context=trace.set_span_in_context(self._span, q._ctx))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._done:
            return
        self._done = True
        error_type = "" if exc is None else _error_type(exc)
        m = self._q._o._m
        impl = self._planned.choice.implementation
        status = "cancelled" if error_type == "cancelled" else ("error" if exc is not None else "unknown")
        attrs = {"router.skill": self._planned.name, "router.implementation": impl.name if impl else "",
                 "router.status": status}
        m.skill_calls.add(1, attrs)
        span = self._span
        if exc is not None and span.is_recording():
            span.set_attribute(ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, scrub(str(exc), redact=self._q._o._redact) or error_type))
        span.end()

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def span_context(self) -> trace.SpanContext:
        return self._span.get_span_context()

    @property
    def trace_id(self) -> str:
        sc = self._span.get_span_context()
        return format(sc.trace_id, "032x") if sc.is_valid else ""

    @property
    def span_id(self) -> str:
        sc = self._span.get_span_context()
        return format(sc.span_id, "016x") if sc.is_valid else ""

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self._span.add_event(name, attributes)

    def finish(self, outcome: SkillOutcome, *, queue_wait_ms: float = 0.0, attempts: int = 1) -> None:
        if self._done:
            return
        self._done = True
        m = self._q._o._m
        status = outcome.status.value
        metric_attrs: dict[str, Any] = {"router.skill": outcome.skill, "router.implementation": outcome.implementation,
                                        "router.status": status}
        if outcome.cached:  # answered from the response cache: no model was called
            metric_attrs["router.cache.hit"] = True
        seconds = (outcome.latency_ms / 1000.0 if outcome.latency_ms > 0
                   else (time.monotonic_ns() - self._start_mono) / 1e9)
        m.skill_calls.add(1, metric_attrs)
        m.skill_duration.record(seconds, metric_attrs)
        if outcome.cost:
            m.cost.add(outcome.cost, {"router.skill": outcome.skill, "router.implementation": outcome.implementation})
        genai = dict(self._attrs)
        if outcome.model:
            genai[GEN_AI_RESPONSE_MODEL] = outcome.model
        if not outcome.ok:
            genai[ERROR_TYPE] = status
        if not outcome.cached:
            m.genai_duration.record(seconds, genai)
        if (outcome.input_tokens or outcome.output_tokens) and not outcome.cached:
            token_attrs = {k: v for k, v in genai.items() if k != ERROR_TYPE}
            m.genai_tokens.record(outcome.input_tokens, {**token_attrs, GEN_AI_TOKEN_TYPE: "input"})
            m.genai_tokens.record(outcome.output_tokens, {**token_attrs, GEN_AI_TOKEN_TYPE: "output"})

        span = self._span
        if span.is_recording():
            attrs: dict[str, Any] = {
                GEN_AI_INPUT_TOKENS: outcome.input_tokens,
                GEN_AI_OUTPUT_TOKENS: outcome.output_tokens,
                "router.cost_usd": outcome.cost,
                "router.queue_wait_ms": queue_wait_ms,
                "router.latency_ms": outcome.latency_ms,
                "router.attempts": attempts,
                "router.status": status,
                "router.quality": outcome.quality,
            }
            if outcome.model:
                attrs[GEN_AI_RESPONSE_MODEL] = outcome.model
            if outcome.batch_size > 1:
                attrs["router.batch.size"] = outcome.batch_size
            if outcome.shared_by > 1:
                attrs["router.shared_by"] = outcome.shared_by  # identical calls in flight that shared one request
            if outcome.stepped_in_for:
                attrs["router.stepped_in_for"] = outcome.stepped_in_for
                attrs["router.step_in.reason"] = outcome.step_in_reason
            if outcome.cached:  # answered from the response cache: no backend request
                attrs["router.cache.hit"] = True
                attrs["router.cache.age_ms"] = outcome.cache_age_ms
                attrs["router.cache.saved_usd"] = outcome.cache_saved
            span.set_attributes(attrs)
            if not outcome.ok:
                span.set_attribute(ERROR_TYPE, status)
                span.set_status(Status(StatusCode.ERROR, scrub(outcome.error, redact=self._q._o._redact) or status))
        span.end()


class BatchSpan:
    """One batched backend request: a CLIENT span of its own trace, linked
    to the skill span of every query it carries; current for its block."""

    __slots__ = ("_metric_attrs", "_o", "_size", "_span", "_token_cm")

    def __init__(self, observer: OtelObserver, skill: str, impl: ImplementationSpec, batch_id: str, size: int,
                 first_wait_s: float, tags: Sequence[Any]) -> None:
        self._o = observer
        self._size = size
        op = operation_of(impl.backend)
        attrs: dict[str, Any] = {
            GEN_AI_OPERATION: op,
            GEN_AI_PROVIDER: impl.backend or "unknown",
            GEN_AI_REQUEST_MODEL: impl.model,
            "router.skill": skill,
            "router.implementation": impl.name,
            "router.batch.id": batch_id,
            "router.batch.size": size,
            "router.batch.first_wait_ms": first_wait_s * 1000.0,
        }
        host, port = _server_of(impl.url)
        if host:
            attrs[SERVER_ADDRESS] = host
        if port:
            attrs[SERVER_PORT] = port
        links = []
        for tag in tags:
            sc = getattr(tag, "span_context", None)
            if isinstance(sc, trace.SpanContext) and sc.is_valid:
                links.append(Link(sc))
        self._metric_attrs = {"router.skill": skill, "router.implementation": impl.name}
        self._span = observer._tracer.start_span(
            f"{op} {impl.model} batch".strip(), context=Context(), kind=SpanKind.CLIENT,
            attributes=attrs, links=links)
        self._token_cm: Any = None

    def __repr__(self) -> str:
        return f"<BatchSpan {self._metric_attrs['router.skill']} size={self._size}>"

    def __enter__(self) -> Self:
        self._token_cm = trace.use_span(self._span, end_on_exit=False, record_exception=False,
                                        set_status_on_exception=False)
        self._token_cm.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token_cm is not None:
            self._token_cm.__exit__(None, None, None)
        self._o._m.batch_size.record(self._size, self._metric_attrs)
        span = self._span
        if exc is not None and span.is_recording():
            error_type = _error_type(exc)
            span.set_attribute(ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, scrub(str(exc), redact=self._o._redact) or error_type))
        span.end()

    @property
    def span_context(self) -> trace.SpanContext:
        return self._span.get_span_context()

    def event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        self._span.add_event(name, attributes)
