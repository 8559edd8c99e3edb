"""The grpc.aio server: RouterService, grpc.health.v1 and server reflection.

Health says SERVING only after the composition root has warmed the backend
pools; on shutdown it says NOT_SERVING first, then the server stops taking
calls and gives in-flight ones a grace period.

What health means (for a Kubernetes liveness or readiness probe):

- ``""`` and ``router.v1.RouterService``: SERVING once the sidecar has
  started and warmed its pools, whether or not every backend answered: the
  sidecar itself works, and the skills whose backends did warm serve (a dead
  backend's calls fail and its breaker opens; standby skills step in). Probe
  these for liveness and readiness; NOT_SERVING only while starting and
  draining.
- ``server.health_listen`` (optional): a second, plaintext port serving
  only ``grpc.health.v1`` with the same states, for probes that cannot do
  TLS (Kubernetes' gRPC probes) when ``server.tls`` is on.
- ``router.v1.RouterService/<skill>``: per skill, SERVING when at least one
  of its implementations warmed at start-up, else NOT_SERVING. For alerts
  and dashboards, not for probes: one dead backend should not take a
  replica out of rotation.

The front door, in order: ``AuthInterceptor`` (with a token),
``CallLimiter`` (with ``max_concurrent_rpcs``), the given interceptors
(telemetry), ``ErrorMappingInterceptor``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router.core.errors import StartupError
from router.v1 import router_pb2, router_pb2_grpc

from .errors import ErrorMappingInterceptor
from .guard import AuthInterceptor, CallLimiter

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name

# gRPC core's own queue of calls the application has not picked up yet:
# a call left there longer than the unrequested time is CANCELLED, silently
# (10,000 concurrent Executes: 6,826 cancelled with core's defaults of 30 s,
# 1,000 and 3,000; bench/flood.py). Over the soft limit core refuses new
# calls at random, over the hard limit all, with RESOURCE_EXHAUSTED. Raised
# here: a queued call is served, or meets its own deadline
# (DEADLINE_EXCEEDED), or over 20,000 queued is refused by core; in the
# application CallLimiter refuses what is over max_concurrent_rpcs with
# RetryInfo. server.grpc_options overrides any of these.
DEFAULT_GRPC_OPTIONS: dict[str, int | str] = {
    "grpc.so_reuseport": 0,
    "grpc.max_receive_message_length": 4 * 1024 * 1024,
    "grpc.max_send_message_length": 16 * 1024 * 1024,
    "grpc.max_metadata_size": 16 * 1024,
    "grpc.server.max_pending_requests": 20_000,
    "grpc.server.max_pending_requests_hard_limit": 40_000,
    "grpc.server_max_unrequested_time_in_server": 600,
}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and (for mTLS) the
    CA that client certificates must chain to."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, key, client CA or None); ``StartupError``
        naming the key when a file cannot be read or is not PEM."""
        def read(key: str, path: str) -> bytes:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise StartupError(f"server.tls.{key}", f"cannot read {path!r} ({exc.strerror})") from None
            if b"-----BEGIN " not in data:
                raise StartupError(f"server.tls.{key}", f"{path!r} is not a PEM file")
            return data
        ca = read("client_ca_file", self.client_ca_file) if self.client_ca_file else None
        return read("cert_file", self.cert_file), read("key_file", self.key_file), ca

    def credentials(self) -> grpc.ServerCredentials:
        cert, key, ca = self.read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class AddressInUse(StartupError):
    """The listen address is taken (by another process, or this sidecar already running)."""


def check_listen(listen: str, key: str = "server.listen") -> None:
    """Raise ``StartupError`` (naming ``key``) when ``listen``'s host does
    not resolve or its address cannot be bound now (in use, not local)."""
    if listen.startswith("unix:"):
        return
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise StartupError(key, f"cannot resolve host {host!r} ({exc})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
        try:
            sock.bind(addr)
        except OSError as exc:
            cls = AddressInUse if exc.errno == errno.EADDRINUSE else StartupError
            raise cls(key, f"cannot bind {listen} ({exc.strerror})") from None


def is_loopback(listen: str) -> bool:
    if listen.startswith("unix:"):
        return True
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def skill_service_name(skill: str) -> str:
    return f"{SERVICE_NAME}/{skill}"


class RouterServer:
    def __init__(self, servicer: router_pb2_grpc.RouterServiceServicer, listen: str,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                 max_concurrent_rpcs: int | None = None, *,
                 redact: Callable[[str], str] | None = None,
                 tls: TlsFiles | None = None,
                 token: str | None = None,
                 reflection_enabled: bool | None = None,
                 grpc_options: Mapping[str, int | str] | None = None,
                 skills: Iterable[str] = (),
                 health_listen: str | None = None,
                 reuse_port: bool = False) -> None:
        front: list[grpc.aio.ServerInterceptor] = []
        self.auth = AuthInterceptor(token) if token else None
        if self.auth is not None:
            front.append(self.auth)
        self.limiter = CallLimiter(max_concurrent_rpcs) if max_concurrent_rpcs else None
        if self.limiter is not None:
            front.append(self.limiter)
        self.errors = ErrorMappingInterceptor(redact)
        # Several worker processes serve one port (server.workers): the
        # kernel spreads connections among them.
        options = {**DEFAULT_GRPC_OPTIONS, **({"grpc.so_reuseport": 1} if reuse_port else {}), **(grpc_options or {})}
        self.server = grpc.aio.server(
            interceptors=[*front, *interceptors, self.errors],
            options=list(options.items()),
        )
        router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.reflection = is_loopback(listen) if reflection_enabled is None else reflection_enabled
        if self.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
                self.server)
        self.skills = tuple(skills)
        if not reuse_port:  # a worker binds the port its siblings hold (the supervisor checked it)
            check_listen(listen)
        try:
            if tls is not None:
                self.port = self.server.add_secure_port(listen, tls.credentials())
            else:
                self.port = self.server.add_insecure_port(listen)
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
            raise StartupError("server.listen", f"cannot listen on {listen} ({exc})") from None
        if self.port == 0:
            raise StartupError("server.listen", f"cannot listen on {listen}")
        host = listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        # Plaintext grpc.health.v1 only, for probes that cannot speak TLS
        # (Kubernetes' gRPC probes); it shares the health states above.
        self.health_server: grpc.aio.Server | None = None
        self.health_address = ""
        if health_listen:
            check_listen(health_listen, "server.health_listen")
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            port = self.health_server.add_insecure_port(health_listen)
            if port == 0:
                raise StartupError("server.health_listen", f"cannot listen on {health_listen}")
            self.health_address = f"{health_listen.rsplit(':', 1)[0]}:{port}"

    def refused_counts(self) -> dict[str, int]:
        """Calls the front door refused since start, by reason."""
        return {"overloaded": self.limiter.refused if self.limiter else 0,
                "unauthenticated": self.auth.refused if self.auth else 0,
                "undecodable": self.errors.undecodable.count}

    async def start(self) -> None:
        for name in ("", SERVICE_NAME, *map(skill_service_name, self.skills)):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def set_skill_serving(self, skill: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(skill_service_name(skill), status)

    async def stop(self, grace_s: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(0)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()
