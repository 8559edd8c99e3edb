"""The one place that maps the project's errors to gRPC status codes.

    InvalidArgument  → INVALID_ARGUMENT (+ google.rpc.BadRequest naming the field)
    UnknownSkill     → NOT_FOUND        (+ google.rpc.BadRequest)
    UnknownQuery     → NOT_FOUND        (+ google.rpc.BadRequest)
    AlreadyRated     → ALREADY_EXISTS   (+ google.rpc.BadRequest)
    Overloaded       → RESOURCE_EXHAUSTED (+ google.rpc.RetryInfo)
    AllSkillsFailed  → UNAVAILABLE
    NoSkillActivated → FAILED_PRECONDITION
    ShuttingDown     → UNAVAILABLE
    DeadlineExceeded → DEADLINE_EXCEEDED
    a request that cannot be decoded → INVALID_ARGUMENT (one log line per minute at most)
    anything else    → INTERNAL (logged with its traceback)

Every status message and detail is the final net against leaks and
overflows: it goes through the sidecar's ``Redactor`` (secrets by value and
shape) and is cut to ``MAX_STATUS_MESSAGE_CHARS`` (a detail's field and
description likewise), far under gRPC's trailer limit (8 KiB by default;
over it the caller sees RESOURCE_EXHAUSTED "Stream removed" instead).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from router.core.errors import (
    AllSkillsFailed,
    AlreadyRated,
    DeadlineExceeded,
    InvalidArgument,
    NoSkillActivated,
    Overloaded,
    RouterError,
    ShuttingDown,
    UnknownQuery,
    UnknownSkill,
)
from router.core.redact import clip

log = logging.getLogger("router.service")

_DETAILS_KEY = "grpc-status-details-bin"

MAX_STATUS_MESSAGE_CHARS = 512
MAX_FIELD_CHARS = 128
MAX_DESCRIPTION_CHARS = 256

Redact = Callable[[str], str]


def _same(text: str) -> str:
    return text


def status_for(exc: BaseException, redact: Redact = _same) -> tuple[grpc.StatusCode, str, list[any_pb2.Any]]:
    """The status code, message (redacted, bounded) and details of ``exc``."""
    code, message, details = _status_for(exc, redact)
    return code, clip(redact(message), MAX_STATUS_MESSAGE_CHARS), details


def _status_for(exc: BaseException, redact: Redact) -> tuple[grpc.StatusCode, str, list[any_pb2.Any]]:
    details: list[any_pb2.Any] = []
    if isinstance(exc, InvalidArgument):
        d = any_pb2.Any()
        d.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=clip(redact(exc.field), MAX_FIELD_CHARS),
                description=clip(redact(exc.problem), MAX_DESCRIPTION_CHARS))]))
        details.append(d)
        code = (grpc.StatusCode.NOT_FOUND if isinstance(exc, UnknownSkill | UnknownQuery)
                else grpc.StatusCode.ALREADY_EXISTS if isinstance(exc, AlreadyRated)
                else grpc.StatusCode.INVALID_ARGUMENT)
        return code, str(exc), details
    if isinstance(exc, Overloaded):
        seconds = max(0.0, exc.retry_after_s)
        frac, whole = math.modf(seconds)
        d = any_pb2.Any()
        d.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(whole), nanos=int(frac * 1e9))))
        details.append(d)
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), details
    if isinstance(exc, (AllSkillsFailed, ShuttingDown)):
        return grpc.StatusCode.UNAVAILABLE, str(exc), details
    if isinstance(exc, NoSkillActivated):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc), details
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc), details
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}", details


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, redact: Redact = _same) -> None:
    code, message, details = status_for(exc, redact)
    if code is grpc.StatusCode.INTERNAL and not isinstance(exc, RouterError):
        log.error("unexpected error: %s", redact(clip(str(exc), 2000)), exc_info=exc)
    trailing: tuple[tuple[str, bytes | str], ...] = ()
    if details:
        st = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
        trailing = ((_DETAILS_KEY, st.SerializeToString()),)
    await context.abort(code, message, trailing_metadata=trailing)


class RateLimitedLog:
    """At most one log line per ``interval_s``, saying how many were folded in."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._next = 0.0
        self._folded = 0
        self.count = 0

    def warning(self, message: str, *args: Any) -> None:
        self.count += 1
        now = self._clock()
        if now < self._next:
            self._folded += 1
            return
        folded, self._folded = self._folded, 0
        self._next = now + self._interval
        suffix = f" ({folded} more since the last such line)" if folded else ""
        self._log.warning(message + suffix, *args)


class Undecodable:
    """What the lenient deserializer hands on when the bytes are not the message."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns ``Undecodable`` instead of raising
    (grpc would answer UNKNOWN and log a traceback per request)."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, invalid UTF-8, recursion depth, ...
            return Undecodable(type(exc).__name__)

    return decode


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler so a RouterError becomes its status
    code, and a request that cannot be decoded INVALID_ARGUMENT."""

    def __init__(self, redact: Redact | None = None) -> None:
        self._redact = redact or _same
        self.undecodable = RateLimitedLog(log)

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        redact = self._redact
        undecodable = self.undecodable
        method = handler_call_details.method

        async def mapped(request, context):  # type: ignore[no-untyped-def]
            if isinstance(request, Undecodable):
                undecodable.warning("undecodable request to %s (%s)", method, request.problem)
                await abort_with(context, InvalidArgument("request", f"cannot be decoded ({request.problem})"))
            try:
                return await inner(request, context)
            except RouterError as exc:
                await abort_with(context, exc, redact)
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await abort_with(context, exc, redact)

        return grpc.unary_unary_rpc_method_handler(
            mapped, request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer)
