from __future__ import annotations

import datetime
import enum
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

from .v1 import router_pb2 as pb
from .v1 import router_pb2_grpc as pb_grpc

Metadata = Sequence[tuple[str, str]]


class Priority(enum.IntEnum):
    LOW = pb.PRIORITY_LOW
    NORMAL = pb.PRIORITY_NORMAL
    HIGH = pb.PRIORITY_HIGH


def build_context(
    *,
    domain: str = "",
    complexity: float | None = None,
    required_quality: float | None = None,
    priority: Priority | int = 0,
    top_k: int | None = None,
    force_skills: Iterable[str] = (),
    exclude_skills: Iterable[str] = (),
    all_skills: bool = False,
    metadata: Mapping[str, str] | None = None,
    cost_weight: float | None = None,
) -> pb.QueryContext:
    ctx = pb.QueryContext(domain=domain, priority=int(priority), force_skills=list(force_skills),
                          exclude_skills=list(exclude_skills), all_skills=all_skills, metadata=dict(metadata or {}))
    if complexity is not None:
        ctx.complexity = complexity
    if required_quality is not None:
        ctx.required_quality = required_quality
    if top_k is not None:
        ctx.top_k = top_k
    if cost_weight is not None:
        ctx.cost_weight = cost_weight
    return ctx


@dataclass(frozen=True)
class ErrorDetails:
    """What the sidecar attached to an error status."""

    code: grpc.StatusCode
    message: str
    field: str | None = None  # the request field at fault (INVALID_ARGUMENT, NOT_FOUND)
    retry_delay_s: float | None = None  # when to retry (RESOURCE_EXHAUSTED)


def error_details(err: grpc.RpcError) -> ErrorDetails:
    code = err.code()  # type: ignore[attr-defined]
    message = err.details() or ""  # type: ignore[attr-defined]
    field = None
    delay = None
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        st = status_pb2.Status.FromString(value)
        for any_ in st.details:
            if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                any_.Unpack(br)
                if br.field_violations:
                    field = br.field_violations[0].field
            elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                ri = error_details_pb2.RetryInfo()
                any_.Unpack(ri)
                delay = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
    return ErrorDetails(code, message, field, delay)


def stats_request(window: float | datetime.timedelta | None = None) -> pb.StatsRequest:
    """A StatsRequest for the aggregates of the last ``window`` (seconds or a timedelta; None: the sidecar's 24 h)."""
    req = pb.StatsRequest()
    if window is None:
        return req
    seconds = window.total_seconds() if isinstance(window, datetime.timedelta) else float(window)
    if not seconds > 0:
        raise ValueError(f"window: must be a positive duration, got {window!r}")
    req.window.FromTimedelta(datetime.timedelta(seconds=seconds))
    return req


def feedback_request(query_id: str, score: float | None = None,
                     skill_scores: Mapping[str, float] | None = None) -> pb.FeedbackRequest:
    """A FeedbackRequest: ``score`` 0 to 1 for the whole answer (thumbs up 1,
    down 0), ``skill_scores`` per skill that answered."""
    req = pb.FeedbackRequest(query_id=query_id, skill_scores=dict(skill_scores or {}))
    if score is not None:
        req.score = float(score)
    return req


def _stats_req(request: pb.StatsRequest | None, window: float | datetime.timedelta | None) -> pb.StatsRequest:
    if request is not None and window is not None:
        raise TypeError("pass either request= or window=, not both")
    return request if request is not None else stats_request(window)


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the sidecar (``server.tls``). PEM file paths:

    ``ca_file``     the CA that signed the sidecar's certificate (None: the system's roots)
    ``cert_file``,
    ``key_file``    this client's certificate and key, for mTLS (``server.tls.client_ca_file``)
    ``server_name`` the name to check the sidecar's certificate against when
                    it differs from the target's host
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TlsConfig: cert_file and key_file go together (mTLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(root_certificates=read(self.ca_file), private_key=read(self.key_file),
                                            certificate_chain=read(self.cert_file))

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _auth(token: str | None) -> Metadata:
    """The ``authorization: Bearer`` metadata for ``server.auth.token_env``."""
    if token is None:
        return ()
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("token must be a non-empty single line")
    return (("authorization", f"Bearer {token}"),)


def _ctx(context: pb.QueryContext | None, kw: dict) -> pb.QueryContext:
    if context is not None and kw:
        raise TypeError("pass either context= or context keyword arguments, not both")
    return context if context is not None else build_context(**kw)


class AsyncRouterClient:
    """grpc.aio client. Use as ``async with`` or call ``close()``.

    ``tls`` (a ``TlsConfig``) for a sidecar with ``server.tls``; ``token``
    for one with ``server.auth.token_env`` (sent as ``authorization: Bearer``
    with every call)."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float | None = 30.0,
                 metadata: Metadata = (), channel: grpc.aio.Channel | None = None,
                 tls: TlsConfig | None = None, token: str | None = None) -> None:
        if channel is None:
            channel = (grpc.aio.secure_channel(target, tls.credentials(), options=tls.options()) if tls
                       else grpc.aio.insecure_channel(target))
        self._channel = channel
        self._stub = pb_grpc.RouterServiceStub(self._channel)
        self.timeout = timeout
        self.metadata = tuple(metadata) + tuple(_auth(token))

    async def __aenter__(self) -> AsyncRouterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        import asyncio
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    def _opts(self, timeout: float | None, metadata: Metadata) -> dict:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self.metadata + tuple(metadata)}

    async def route(self, query: str, *, context: pb.QueryContext | None = None, timeout: float | None = None,
                    metadata: Metadata = (), explain_all: bool = False, **context_kw: object) -> pb.RouteResponse:
        req = pb.RouteRequest(query=query, context=_ctx(context, context_kw), explain_all=explain_all)
        return await self._stub.Route(req, **self._opts(timeout, metadata))

    async def execute(self, query: str, *, context: pb.QueryContext | None = None, timeout: float | None = None,
                      metadata: Metadata = (), explain_all: bool = False, **context_kw: object) -> pb.ExecuteResponse:
        req = pb.ExecuteRequest(query=query, context=_ctx(context, context_kw), explain_all=explain_all)
        return await self._stub.Execute(req, **self._opts(timeout, metadata))

    async def execute_stream(self, query: str, *, context: pb.QueryContext | None = None,
                             timeout: float | None = None, metadata: Metadata = (), explain_all: bool = False,
                             **context_kw: object) -> AsyncIterator[pb.ExecuteEvent]:
        """ExecuteStream's events as they come: ``routed`` first, then
        ``delta`` / ``skill_result`` / ``shed`` per skill, ``done`` last
        (what ``execute`` would have returned). Leaving the loop early (or
        cancelling) cancels the call: the sidecar cancels its backend
        requests. Errors raise ``grpc.RpcError`` as for ``execute``."""
        req = pb.ExecuteRequest(query=query, context=_ctx(context, context_kw), explain_all=explain_all)
        call = self._stub.ExecuteStream(req, **self._opts(timeout, metadata))
        try:
            async for event in call:
                yield event
        finally:
            call.cancel()  # no-op once the stream has ended

    async def stats(self, *, window: float | datetime.timedelta | None = None, timeout: float | None = None,
                    metadata: Metadata = (), request: pb.StatsRequest | None = None) -> pb.StatsResponse:
        """Live load, totals since start, and the stored aggregates of the last ``window`` (seconds or timedelta)."""
        return await self._stub.Stats(_stats_req(request, window), **self._opts(timeout, metadata))

    async def feedback(self, query_id: str, score: float | None = None, *,
                       skill_scores: Mapping[str, float] | None = None, timeout: float | None = None,
                       metadata: Metadata = ()) -> pb.FeedbackResponse:
        """Rate the answer to an executed query (once per query: a second rating is ALREADY_EXISTS)."""
        return await self._stub.Feedback(feedback_request(query_id, score, skill_scores),
                                         **self._opts(timeout, metadata))


class RouterClient:
    """Blocking client with the same methods (and ``tls``, ``token``) as ``AsyncRouterClient``."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float | None = 30.0,
                 metadata: Metadata = (), channel: grpc.Channel | None = None,
                 tls: TlsConfig | None = None, token: str | None = None) -> None:
        if channel is None:
            channel = (grpc.secure_channel(target, tls.credentials(), options=tls.options()) if tls
                       else grpc.insecure_channel(target))
        self._channel = channel
        self._stub = pb_grpc.RouterServiceStub(self._channel)
        self.timeout = timeout
        self.metadata = tuple(metadata) + tuple(_auth(token))

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def _opts(self, timeout: float | None, metadata: Metadata) -> dict:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self.metadata + tuple(metadata)}

    def route(self, query: str, *, context: pb.QueryContext | None = None, timeout: float | None = None,
              metadata: Metadata = (), explain_all: bool = False, **context_kw: object) -> pb.RouteResponse:
        return self._stub.Route(pb.RouteRequest(query=query, context=_ctx(context, context_kw),
                                                explain_all=explain_all),
                                **self._opts(timeout, metadata))

    def execute(self, query: str, *, context: pb.QueryContext | None = None, timeout: float | None = None,
                metadata: Metadata = (), explain_all: bool = False, **context_kw: object) -> pb.ExecuteResponse:
        return self._stub.Execute(pb.ExecuteRequest(query=query, context=_ctx(context, context_kw),
                                                    explain_all=explain_all),
                                  **self._opts(timeout, metadata))

    def execute_stream(self, query: str, *, context: pb.QueryContext | None = None, timeout: float | None = None,
                       metadata: Metadata = (), explain_all: bool = False,
                       **context_kw: object) -> Iterator[pb.ExecuteEvent]:
        """ExecuteStream's events, blocking; see ``AsyncRouterClient.execute_stream``.
        Closing the iterator early cancels the call."""
        req = pb.ExecuteRequest(query=query, context=_ctx(context, context_kw), explain_all=explain_all)
        call = self._stub.ExecuteStream(req, **self._opts(timeout, metadata))
        try:
            yield from call
        finally:
            call.cancel()

    def stats(self, *, window: float | datetime.timedelta | None = None, timeout: float | None = None,
              metadata: Metadata = (), request: pb.StatsRequest | None = None) -> pb.StatsResponse:
        """Live load, totals since start, and the stored aggregates of the last ``window`` (seconds or timedelta)."""
        return self._stub.Stats(_stats_req(request, window), **self._opts(timeout, metadata))

    def feedback(self, query_id: str, score: float | None = None, *, skill_scores: Mapping[str, float] | None = None,
                 timeout: float | None = None, metadata: Metadata = ()) -> pb.FeedbackResponse:
        """Rate the answer to an executed query (once per query: a second rating is ALREADY_EXISTS)."""
        return self._stub.Feedback(feedback_request(query_id, score, skill_scores), **self._opts(timeout, metadata))
