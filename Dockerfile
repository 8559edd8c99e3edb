# syntax=docker/dockerfile:1
# Multi-stage: build wheels (the client, its own distribution, and the server
# that requires it) with their dependencies, then run them as a non-root user
# in a slim image. The health check asks grpc.health.v1 (SERVING only once
# every backend pool is warm) on the port the sidecar is configured to listen
# on: `skill-router health` reads SKILL_ROUTER_LISTEN, the same variable
# `skill-router serve` listens on, so changing the port is one -e flag:
#   docker run -e SKILL_ROUTER_LISTEN=0.0.0.0:6000 -p 6000:6000 skill-router
# (without SKILL_ROUTER_LISTEN both read server.listen of SKILL_ROUTER_CONFIG.)

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY router ./router
COPY clients/python ./clients/python
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./clients/python .

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin router \
 && mkdir -p /app && chown 10001 /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
USER 10001
# Inside a container the sidecar must listen beyond loopback; the pod or
# compose network is the boundary. Beyond it, turn on server.tls (mTLS) and
# server.auth.token_env (docs/security.md); reflection is off off-loopback.
# With server.tls on, set server.health_listen (a plaintext health-only port)
# and point this check at it.
# compose network is the boundary.
ENV PYTHONUNBUFFERED=1 \
    SKILL_ROUTER_LISTEN=0.0.0.0:50051
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["skill-router", "health", "--timeout", "3"]
ENTRYPOINT ["skill-router"]
CMD ["serve"]
