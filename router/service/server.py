"""The grpc.aio server: RouterService, grpc.health.v1 and server reflection.

Health says SERVING only after the composition root has warmed the backend
pools; on shutdown it says NOT_SERVING first, then the server stops taking
calls and gives in-flight ones a grace period.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router.v1 import router_pb2, router_pb2_grpc

from .errors import ErrorMappingInterceptor

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


class RouterServer:
    def __init__(self, servicer: router_pb2_grpc.RouterServiceServicer, listen: str,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                 max_concurrent_rpcs: int | None = None) -> None:
        self.server = grpc.aio.server(
            interceptors=[*interceptors, ErrorMappingInterceptor()],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[("grpc.so_reuseport", 0)],
        )
        router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        self.port = self.server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        host = listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"

    async def start(self) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace_s)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()
