# syntax=docker/dockerfile:1
# Multi-stage: build a wheel with its dependencies, then run it as a non-root
# user in a slim image. The health check asks grpc.health.v1 (SERVING only
# once every backend pool is warm).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
COPY clients/python ./clients/python
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin router \
 && mkdir -p /app && chown router /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
USER router
ENV PYTHONUNBUFFERED=1
EXPOSE 50051
# Inside a container the sidecar must listen beyond loopback; the pod or
# compose network is the boundary. Beyond it, turn on server.tls (mTLS) and
# server.auth.token_env (docs/security.md); reflection is off off-loopback.
# With server.tls on, set server.health_listen (a plaintext health-only port)
# and point this check at it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
ch=grpc.insecure_channel('127.0.0.1:50051'); \
sys.exit(0 if g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=2).status==h.HealthCheckResponse.SERVING else 1)"
ENTRYPOINT ["skill-router"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
