#!/usr/bin/env bash
# Start the services the tests need, on loopback: PostgreSQL for the metrics
# store's PostgreSQL tests; Redis for the shared state (limits across
# replicas and workers, issue 12); and install Chromium (headless) for the admin
# dashboard's browser test.
#
#   eval "$(scripts/services.sh)"      # exports SKILL_ROUTER_TEST_PG_DSN and SKILL_ROUTER_TEST_REDIS_URL
#   scripts/services.sh                # ... and writes it to .services.env (make test reads that)
#   scripts/services.sh stop           # stops the test cluster and Redis
#
# Installs PostgreSQL with apt-get when it is missing, then runs a private
# cluster (initdb + pg_ctl, as the postgres user) in $SKILL_ROUTER_PG_DIR on
# 127.0.0.1:$SKILL_ROUTER_PG_PORT, with a login role and a database for the
# tests. Idempotent: a second run finds the cluster running and only prints
# the DSN. Logs go to stderr; stdout is only the export line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_FILE="${SKILL_ROUTER_SERVICES_ENV:-$ROOT/.services.env}"

PG_DIR="${SKILL_ROUTER_PG_DIR:-/var/tmp/skill-router-pg}"
PG_PORT="${SKILL_ROUTER_PG_PORT:-54329}"
PG_USER="${SKILL_ROUTER_PG_USER:-skill_router}"
PG_PASSWORD="${SKILL_ROUTER_PG_PASSWORD:-skill_router}"
PG_DB="${SKILL_ROUTER_PG_DB:-skill_router_test}"
DATA="$PG_DIR/data"
SOCKET_DIR="$PG_DIR/run"
LOG="$PG_DIR/postgres.log"

REDIS_DIR="${SKILL_ROUTER_REDIS_DIR:-/var/tmp/skill-router-redis}"
REDIS_PORT="${SKILL_ROUTER_REDIS_PORT:-56379}"

say() { echo "services.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    die "need root to run: $*"; fi
}

pg_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d="$(pg_config --bindir 2>/dev/null || true)"
    if [ -x "$d/initdb" ]; then echo "$d"; return; fi
  fi
  # Debian/Ubuntu keep the server binaries per major version; take the newest.
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  for d in /usr/pgsql-*/bin /usr/local/pgsql/bin /usr/bin; do
    if [ -x "$d/initdb" ]; then echo "$d"; return; fi
  done
}

install_postgres() {
  [ -n "$(pg_bindir)" ] && return
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is not available"
  say "installing PostgreSQL (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >&2
  as_root apt-get install -y -qq --no-install-recommends postgresql >&2
  [ -n "$(pg_bindir)" ] || die "PostgreSQL installed but initdb not found"
}

# Chromium for the dashboard test (tests/test_admin_browser.py). Not fatal:
# without it that test skips and says why.
chromium_bin() {
  local b
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return; fi
  done
}

install_chromium() {
  [ -n "$(chromium_bin)" ] && return
  if ! command -v apt-get >/dev/null 2>&1; then say "Chromium missing and apt-get not available (browser test will skip)"; return; fi
  say "installing Chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  { as_root apt-get update -qq >&2 \
      && as_root apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2; } \
    || say "could not install Chromium (browser test will skip)"
}

# Redis (or Valkey) for router/state: a private, unpersisted server on
# 127.0.0.1:$REDIS_PORT, run as a daemon from $REDIS_DIR.
redis_bin() {
  local b
  for b in redis-server valkey-server; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return; fi
  done
}

install_redis() {
  [ -n "$(redis_bin)" ] && return
  command -v apt-get >/dev/null 2>&1 || die "Redis is not installed and apt-get is not available"
  say "installing Redis (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >&2
  as_root apt-get install -y -qq --no-install-recommends redis-server >&2
  [ -n "$(redis_bin)" ] || die "Redis installed but redis-server not found"
}

redis_up() {
  python3 - "$REDIS_PORT" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}

start_redis() {
  if redis_up; then say "Redis already running on 127.0.0.1:$REDIS_PORT"; return; fi
  mkdir -p "$REDIS_DIR"
  say "starting Redis on 127.0.0.1:$REDIS_PORT"
  "$(redis_bin)" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize yes \
    --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" >&2
  for _ in $(seq 1 50); do redis_up && return; sleep 0.1; done
  tail -n 30 "$REDIS_DIR/redis.log" >&2 || true
  die "Redis did not start"
}

stop_redis() {
  if [ -f "$REDIS_DIR/redis.pid" ]; then kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true; fi
}

# Run a command as the cluster's owner (initdb and postgres refuse root).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null 2>&1; then runuser -u postgres -- "$@"
    else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
  else
    "$@"
  fi
}

stop_cluster() {
  local bin; bin="$(pg_bindir)"
  if [ -n "$bin" ] && [ -f "$DATA/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
  fi
}

start_cluster() {
  local bin; bin="$(pg_bindir)"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    mkdir -p "$PG_DIR"
    chown postgres: "$PG_DIR"
  else
    mkdir -p "$PG_DIR"
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    say "initdb in $DATA"
    as_owner "$bin/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --no-locale >&2
  fi
  as_owner mkdir -p "$SOCKET_DIR"
  if as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    say "PostgreSQL already running in $DATA"
  else
    rm -f "$DATA/postmaster.pid" 2>/dev/null || true  # stale after a crash
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $SOCKET_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >&2 \
      || { tail -n 30 "$LOG" >&2 || true; die "PostgreSQL did not start"; }
  fi
  for _ in $(seq 1 60); do
    as_owner "$bin/pg_isready" -q -h "$SOCKET_DIR" -p "$PG_PORT" && break
    sleep 0.5
  done
  as_owner "$bin/pg_isready" -q -h "$SOCKET_DIR" -p "$PG_PORT" || die "PostgreSQL is not accepting connections"

  local psql=("$bin/psql" -h "$SOCKET_DIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
  if [ "$(as_owner "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != "1" ]; then
    as_owner "${psql[@]}" -c "CREATE ROLE \"$PG_USER\" LOGIN PASSWORD '$PG_PASSWORD' CREATEDB" >&2
  else
    as_owner "${psql[@]}" -c "ALTER ROLE \"$PG_USER\" LOGIN PASSWORD '$PG_PASSWORD'" >&2
  fi
  if [ "$(as_owner "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
    as_owner "${psql[@]}" -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\"" >&2
  fi
}

case "${1:-start}" in
  start)
    install_postgres
    install_redis
    install_chromium
    start_cluster
    start_redis
    dsn="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    redis_url="redis://127.0.0.1:$REDIS_PORT/0"
    printf 'SKILL_ROUTER_TEST_PG_DSN=%s\nSKILL_ROUTER_TEST_REDIS_URL=%s\n' "$dsn" "$redis_url" > "$ENV_FILE"
    say "PostgreSQL and Redis ready; DSN and URL written to $ENV_FILE"
    echo "export SKILL_ROUTER_TEST_PG_DSN='$dsn' SKILL_ROUTER_TEST_REDIS_URL='$redis_url'"
    ;;
  stop)
    stop_cluster
    stop_redis
    ;;
  dsn)
    echo "postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    ;;
  *)
    die "usage: $0 [start|stop|dsn]"
    ;;
esac
