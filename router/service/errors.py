"""The one place that maps the project's errors to gRPC status codes.

    InvalidArgument  → INVALID_ARGUMENT (+ google.rpc.BadRequest naming the field)
    UnknownSkill     → NOT_FOUND        (+ google.rpc.BadRequest)
    Overloaded       → RESOURCE_EXHAUSTED (+ google.rpc.RetryInfo)
    AllSkillsFailed  → UNAVAILABLE
    NoSkillActivated → FAILED_PRECONDITION
    ShuttingDown     → UNAVAILABLE
    DeadlineExceeded → DEADLINE_EXCEEDED
    anything else    → INTERNAL (logged with its traceback)
"""

from __future__ import annotations

import logging
import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from router.core.errors import (
    AllSkillsFailed,
    DeadlineExceeded,
    InvalidArgument,
    NoSkillActivated,
    Overloaded,
    RouterError,
    ShuttingDown,
    UnknownSkill,
)

log = logging.getLogger("router.service")

_DETAILS_KEY = "grpc-status-details-bin"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, list[any_pb2.Any]]:
    details: list[any_pb2.Any] = []
    if isinstance(exc, InvalidArgument):
        d = any_pb2.Any()
        d.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.problem)]))
        details.append(d)
        code = grpc.StatusCode.NOT_FOUND if isinstance(exc, UnknownSkill) else grpc.StatusCode.INVALID_ARGUMENT
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


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, message, details = status_for(exc)
    if code is grpc.StatusCode.INTERNAL and not isinstance(exc, RouterError):
        log.exception("unexpected error", exc_info=exc)
    trailing: tuple[tuple[str, bytes | str], ...] = ()
    if details:
        st = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
        trailing = ((_DETAILS_KEY, st.SerializeToString()),)
    await context.abort(code, message, trailing_metadata=trailing)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler so a RouterError becomes its status code."""

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def mapped(request, context):  # type: ignore[no-untyped-def]
            try:
                return await inner(request, context)
            except RouterError as exc:
                await abort_with(context, exc)
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await abort_with(context, exc)

        return grpc.unary_unary_rpc_method_handler(
            mapped, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
