"""The ``skill-router`` command line.

    skill-router serve [--config PATH] [--listen HOST:PORT] [--demo] [--pid-file PATH]
    skill-router reload [--admin HOST:PORT [--token T] | --pid-file PATH]  (read the config file again)
    skill-router route "QUERY" [--domain D] [--complexity C] [--target HOST:PORT] [--json]
                               [--tls-ca CA] [--tls-cert CERT --tls-key KEY] [--token-env NAME]
    skill-router execute "QUERY" [...] [--stream]
    skill-router stats [--window 1h] [--target HOST:PORT] [--json]
    skill-router check-config PATH
    skill-router health [--target HOST:PORT]     (exit 0 when SERVING: container health checks)
    skill-router demo [--queries N] [--json]
    skill-router --version

Shell completion (click's): add one line to your shell's start-up file,
for example ``eval "$(_SKILL_ROUTER_COMPLETE=bash_source skill-router)"`` in
~/.bashrc (``zsh_source`` for ~/.zshrc, ``fish_source`` for fish).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys

import click
import grpc
from google.protobuf import json_format

DEFAULT_TARGET = "127.0.0.1:50051"


def _load(path: str | None, **kw):  # type: ignore[no-untyped-def]
    from router.config import load_config
    from router.core.errors import ConfigError
    try:
        return load_config(path or os.environ.get("SKILL_ROUTER_CONFIG"), **kw)
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None


def _rpc(fn):  # type: ignore[no-untyped-def]
    """Run a client call, turning gRPC errors into a one-line message."""
    from skill_router_client import error_details
    try:
        return fn()
    except grpc.RpcError as err:
        d = error_details(err)
        extra = f" (field {d.field})" if d.field else ""
        extra += f" (retry in {d.retry_delay_s:.2f}s)" if d.retry_delay_s is not None else ""
        raise click.ClickException(f"{d.code.name}: {d.message}{extra}") from None


def _print_json(msg) -> None:  # type: ignore[no-untyped-def]
    click.echo(json_format.MessageToJson(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class Duration(click.ParamType):
    """A duration such as 90s, 15m, 1h, 1h30m or 7d (a bare number is seconds); converts to seconds."""

    name = "duration"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip().lower()
            try:
                seconds = float(text)
            except ValueError:
                parts = _DURATION.findall(text)
                if not parts or "".join(n + u for n, u in parts) != text:
                    self.fail(f"{value!r} is not a duration (use for example 90s, 15m, 1h, 1h30m, 7d)", param, ctx)
                seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if not seconds > 0:
            self.fail(f"{value!r}: must be more than zero", param, ctx)
        return seconds


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("skill-router")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="skill-router", message="%(prog)s %(version)s")
@click.option("--log-level", default=os.environ.get("SKILL_ROUTER_LOG_LEVEL", "INFO"), show_default=True)
def main(log_level: str) -> None:
    """skill-router: route each query to the top-k skills, call them, merge the answers."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per backend request is noise at INFO; the spans carry it.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


STARTUP_EXIT_CODE = 2


def _startup_failed(lines: list[str]) -> None:
    """Start-up problems: one line each, no traceback, exit code 2."""
    from router.core.redact import Redactor
    scrub = Redactor()
    for line in lines:
        click.echo(f"error: {scrub(line)}", err=True)
    sys.exit(STARTUP_EXIT_CODE)


@main.command()
@click.option("--config", "config_path", type=click.Path(), help="Skills config (YAML). Default: the bundled one.")
@click.option("--listen", envvar="SKILL_ROUTER_LISTEN", show_envvar=True,
              help="HOST:PORT to listen on (default from config: 127.0.0.1:50051).")
@click.option("--demo", is_flag=True, help="Use the bundled config pointed at emulated backends started here.")
@click.option("--admin-listen", default=None,
              help='HOST:PORT of the admin endpoint (dashboard, /metrics); "" turns it off. '
                   "Default from config: 127.0.0.1:9464.")
@click.option("--pid-file", type=click.Path(dir_okay=False), envvar="SKILL_ROUTER_PID_FILE", show_envvar=True,
              help="Write the process id here (for `skill-router reload`); removed on exit.")
def serve(config_path: str | None, listen: str | None, demo: bool, admin_listen: str | None,
          pid_file: str | None) -> None:
    """Run the sidecar until SIGTERM/SIGINT; SIGHUP reloads the config file."""
    from router.app import Worker, gc_paused
    from router.app import serve as run
    from router.config import RouterConfig
    from router.core.errors import ConfigError, StartupError
    from router.preflight import problems
    from router.storage import StoreError
    from router.telemetry import TelemetryConfigError
    from router.workers import WORKER_ENV, notify_ready, parse_worker, resolve_listen, supervise, worker_argv

    def with_flags(config: RouterConfig) -> RouterConfig:
        # The command line's overrides hold for every generation of the config.
        return config.with_admin_listen(admin_listen) if admin_listen is not None else config

    with gc_paused():  # reading and validating 10,000 skills makes no garbage worth collecting
        config = _load(config_path)
    try:
        config = with_flags(config)
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None
    try:
        me = parse_worker(os.environ.get(WORKER_ENV))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if me is None:  # a worker skips the checks: its supervisor made them, and its siblings hold the port
        found = problems(config, os.environ, listen)
        if found:
            _startup_failed([str(p) for p in found])
        if config.server.workers > 1 and not demo:
            sys.exit(supervise(worker_argv(), config.server.workers, resolve_listen(listen or config.server.listen),
                               config.server.grace_period_s))
    worker = Worker(*me) if me is not None else Worker()
    # Which of the seed's BRAIN_* variables took effect, and on what.
    log = logging.getLogger("router")
    for o in config.env_overrides:
        log.info("environment override: %s", o)
    if not config.env_overrides:
        log.info("environment overrides: none (no BRAIN_* variable set)")
    path = config_path or os.environ.get("SKILL_ROUTER_CONFIG")

    async def go() -> None:
        from router.config import load_config
        if demo:
            from router.demo import emulator_for, with_emulator
            async with emulator_for(config) as emu:
                click.echo(f"emulated backends on {emu.url}", err=True)
                await run(with_emulator(config, emu.url), listen,
                          loader=lambda: with_emulator(with_flags(load_config(path)), emu.url))
        else:
            await run(config, listen, worker, notify_ready, loader=lambda: with_flags(load_config(path)))

    if pid_file:
        _write_pid(pid_file)
    from router.app import run as run_loop
    try:
        run_loop(go())  # on uvloop when installed (SKILL_ROUTER_UVLOOP=0: asyncio's loop)
    except StartupError as exc:
        _startup_failed([str(exc)])
    except StoreError as exc:
        key = "storage.postgres_dsn" if config.storage.postgres_dsn else "storage.sqlite_path"
        _startup_failed([str(exc) if str(exc).startswith(("storage.", "SKILL_ROUTER_")) else f"{key}: {exc}"])
    except TelemetryConfigError as exc:
        _startup_failed([f"{exc.key}: {exc.problem}"])
    except ConfigError as exc:
        _startup_failed([str(exc)])
    finally:
        if pid_file:
            _remove_pid(pid_file)

def _write_pid(path: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise click.ClickException(f"--pid-file: cannot write {path}: {exc.strerror or exc}") from None


def _remove_pid(path: str) -> None:
    try:
        with open(path, encoding="ascii") as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:  # another sidecar may have taken the file over
            os.remove(path)
    except OSError:
        pass


@main.command()
@click.option("--pid-file", type=click.Path(dir_okay=False), envvar="SKILL_ROUTER_PID_FILE", show_envvar=True,
              help="The pid file `serve --pid-file` wrote: send that process SIGHUP.")
@click.option("--admin", "admin", envvar="SKILL_ROUTER_ADMIN", show_envvar=True,
              help="HOST:PORT (or http://HOST:PORT) of the admin endpoint: POST /api/reload and print its result.")
@click.option("--token", envvar="SKILL_ROUTER_ADMIN_TOKEN", show_envvar=True,
              help="The admin endpoint's API token, when it has one.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the admin endpoint (a reload warms the new backends first).")
@click.option("--json", "as_json", is_flag=True, help="Print the admin endpoint's JSON result.")
@click.option("--config", "config_path", type=click.Path(),
              help="Without --admin or --pid-file: ask the admin endpoint at server.admin_listen of this config "
                   "(default $SKILL_ROUTER_CONFIG, else the bundled one).")
def reload(pid_file: str | None, admin: str | None, token: str | None, timeout: float, as_json: bool,
           config_path: str | None) -> None:
    """Make a running sidecar read its config file again (hot reload).

    With --admin (default: server.admin_listen of the config), asks the admin
    endpoint and waits for the result (exit 1 when the new file is bad: the
    old config keeps serving). With --pid-file, sends SIGHUP; the sidecar's
    log and `skill-router stats` say which config generation serves."""
    if pid_file and not admin:
        return _reload_signal(pid_file)
    if not admin:
        listen = _load(config_path).server.admin_listen
        if not listen:
            raise click.UsageError("the config has no admin endpoint (server.admin_listen): give --admin HOST:PORT "
                                   "or --pid-file PATH (or set SKILL_ROUTER_ADMIN / SKILL_ROUTER_PID_FILE)")
        admin = probe_target(listen)
    _reload_admin(admin, token, timeout, as_json)


def _reload_signal(pid_file: str) -> None:
    import signal
    try:
        with open(pid_file, encoding="ascii") as f:
            text = f.read().strip()
    except OSError as exc:
        raise click.ClickException(f"--pid-file: cannot read {pid_file}: {exc.strerror or exc}") from None
    if not text.isdigit() or int(text) <= 1:
        raise click.ClickException(f"--pid-file: {pid_file} does not hold a process id (got {text[:40]!r})")
    pid = int(text)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise click.ClickException(f"--pid-file: no process {pid} (from {pid_file}): is the sidecar running?") \
            from None
    except PermissionError:
        raise click.ClickException(f"--pid-file: not allowed to signal process {pid} (from {pid_file})") from None
    click.echo(f"sent SIGHUP to skill-router (pid {pid}); `skill-router stats` shows the config generation serving")


def _reload_admin(admin: str, token: str | None, timeout: float, as_json: bool) -> None:
    import urllib.error
    import urllib.request
    base = admin if admin.startswith(("http://", "https://")) else f"http://{admin}"
    req = urllib.request.Request(base.rstrip("/") + "/api/reload", data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        # No proxy: the admin endpoint is the sidecar's own, next to the caller.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"--admin: cannot reach {base}: {reason}") from None
    try:
        body = json.loads(raw)
    except ValueError:
        raise click.ClickException(f"--admin: {base} answered {status} without JSON") from None
    if as_json:
        click.echo(json.dumps(body, indent=2))
    if status != 200:
        raise click.ClickException(f"reload failed ({status}): {body.get('error', body)}")
    if not as_json:
        click.echo(f"config generation {body['generation']} serving ({body['source']}): "
                   f"added {body['added'] or '-'}, removed {body['removed'] or '-'}, changed {body['changed'] or '-'}; "
                   f"{len(body['warmed'])} backend(s) warmed, {len(body['reused'])} kept warm")
        for key, why in body.get("warm_failures", {}).items():
            click.echo(f"warning: backend {key} did not warm: {why}", err=True)
        for key in body.get("needs_restart", []):
            click.echo(f"warning: {key} changed; it takes effect on the next restart", err=True)


def _connection_options(f):  # type: ignore[no-untyped-def]
    """How to reach a sidecar with server.tls / server.auth.token_env."""
    for opt in reversed([
        click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
                     help="TLS: the CA of the sidecar's certificate (PEM)."),
        click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
                     help="mTLS: this client's certificate (PEM)."),
        click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="mTLS: this client's key (PEM)."),
        click.option("--token-env", default="SKILL_ROUTER_TOKEN", show_default=True,
                     help="Environment variable holding the bearer token (sent when set)."),
    ]):
        f = opt(f)
    return f


def _client(target: str, timeout: float, conn: dict):  # type: ignore[no-untyped-def]
    from skill_router_client import RouterClient, TlsConfig
    ca, cert, key = conn.pop("tls_ca"), conn.pop("tls_cert"), conn.pop("tls_key")
    token = os.environ.get(conn.pop("token_env") or "") or None
    if (cert is None) != (key is None):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    tls = TlsConfig(ca_file=ca, cert_file=cert, key_file=key) if (ca or cert) else None
    return RouterClient(target, timeout=timeout, tls=tls, token=token)



def _query_options(f):  # type: ignore[no-untyped-def]
    for opt in reversed([
        click.argument("query"),
        click.option("--domain", default="", help="Query domain (e.g. legal, code)."),
        click.option("--complexity", type=float, help="Complexity 0–10."),
        click.option("--quality", "required_quality", type=float, help="Required quality 0–1."),
        click.option("--top-k", type=int, help="Override k."),
        click.option("--force", "force_skills", multiple=True, help="Skill that must run (repeatable)."),
        click.option("--exclude", "exclude_skills", multiple=True, help="Skill that must not run (repeatable)."),
        click.option("--all-skills", is_flag=True, help="Run every activated skill."),
        click.option("--priority", type=click.Choice(["low", "normal", "high"]), default="normal"),
        click.option("--target", default=DEFAULT_TARGET, show_default=True),
        click.option("--timeout", type=float, default=30.0, show_default=True, help="Deadline in seconds."),
        click.option("--json", "as_json", is_flag=True, help="Print the response as JSON."),
    ]):
        f = opt(f)
    return _connection_options(f)


_CONNECTION_KEYS = ("tls_ca", "tls_cert", "tls_key", "token_env")


def _split(kw: dict) -> dict:  # type: ignore[type-arg]
    return {k: kw.pop(k) for k in _CONNECTION_KEYS}


def _context(kw: dict):  # type: ignore[no-untyped-def]
    from skill_router_client import Priority, build_context
    return build_context(domain=kw["domain"], complexity=kw["complexity"], required_quality=kw["required_quality"],
                         top_k=kw["top_k"], force_skills=kw["force_skills"], exclude_skills=kw["exclude_skills"],
                         all_skills=kw["all_skills"], priority=Priority[kw["priority"].upper()])


@main.command()
@_query_options
def route(query: str, target: str, timeout: float, as_json: bool, **kw: object) -> None:
    """Show which skills would answer QUERY (no backend is called)."""
    with _client(target, timeout, _split(kw)) as c:
        resp = _rpc(lambda: c.route(query, context=_context(kw)))
    if as_json:
        return _print_json(resp)
    from router.render import render_route
    render_route(resp)


@main.command()
@_query_options
@click.option("--stream", is_flag=True, help="Use ExecuteStream: print each skill's answer as it arrives "
              "(with --json: one event per line).")
def execute(query: str, target: str, timeout: float, as_json: bool, stream: bool, **kw: object) -> None:
    """Route QUERY, call the chosen skills and print the synthesis."""
    with _client(target, timeout, _split(kw)) as c:
        if stream:
            return _rpc(lambda: _execute_stream(c, query, _context(kw), as_json))
        resp = _rpc(lambda: c.execute(query, context=_context(kw)))
    if as_json:
        return _print_json(resp)
    from router.render import render_execute
    render_execute(resp)


def _execute_stream(client, query: str, context, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    from router.render import render_event, render_execute
    for event in client.execute_stream(query, context=context):
        if as_json:
            click.echo(json_format.MessageToJson(event, preserving_proto_field_name=True, indent=None))
        elif event.WhichOneof("event") == "done":
            render_execute(event.done)
        else:
            render_event(event)


@main.command()
@click.option("--window", "window_s", type=Duration(),
              help="Aggregates from the metrics store over this last stretch: 90s, 15m, 1h, 7d (default 24h, "
                   "at most 90d).")
@click.option("--target", default=DEFAULT_TARGET, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_connection_options
def stats(window_s: float | None, target: str, as_json: bool, **conn: object) -> None:
    """Show live per-skill load, the totals since start and the stored aggregates over a window."""
    with _client(target, 10, conn) as c:
        resp = _rpc(lambda: c.stats(window=window_s))
    if as_json:
        return _print_json(resp)
    from router.render import render_stats
    render_stats(resp)


def probe_target(listen: str) -> str:
    """The address to ask for a server listening on ``listen``: a wildcard host becomes loopback."""
    if listen.startswith("unix:"):
        return listen
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "::"):
        return f"[::1]:{port}"
    return listen


@main.command()
@click.option("--target", help="HOST:PORT to ask. Default: where `serve` listens: $SKILL_ROUTER_LISTEN, else "
                                "server.listen of --config / $SKILL_ROUTER_CONFIG / the bundled config "
                                "(a wildcard host is asked on loopback).")
@click.option("--config", "config_path", type=click.Path(), help="Config whose server.listen to ask.")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Deadline in seconds.")
def health(target: str | None, config_path: str | None, timeout: float) -> None:
    """Ask the sidecar's grpc.health.v1 service; exit 0 when SERVING, 1 otherwise (for HEALTHCHECK)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    if target is None:
        listen = os.environ.get("SKILL_ROUTER_LISTEN") or _load(config_path).server.listen
        target = probe_target(listen)
    with grpc.insecure_channel(target) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as err:
            why = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.Call) else str(err)
            click.echo(f"{target}: {why}", err=True)
            sys.exit(1)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    click.echo(f"{target}: {status}{_generation(target, timeout)}")
    sys.exit(0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1)


def _generation(target: str, timeout: float) -> str:
    """The config generation serving, as Stats says, for the health line;
    empty when Stats does not answer (the exit status never depends on it)."""
    from router.v1 import router_pb2, router_pb2_grpc
    with grpc.insecure_channel(target) as ch:
        try:
            resp = router_pb2_grpc.RouterServiceStub(ch).Stats(router_pb2.StatsRequest(), timeout=timeout)
        except grpc.RpcError:
            return ""
    return f" (config generation {resp.config_generation})" if resp.config_generation else ""


@main.command("check-config")
@click.argument("path", type=click.Path())
def check_config(path: str) -> None:
    """Validate a config file (and the BRAIN_* environment overrides) without starting."""
    from router.config import check_config as check
    from router.core.errors import ConfigError
    from router.preflight import problems
    try:
        click.echo(check(path))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    from router.service.server import AddressInUse
    found = problems(_load(path), os.environ)
    for p in found:
        # In use may be the running sidecar whose config this is: a warning.
        click.echo(f"{'warning' if isinstance(p, AddressInUse) else 'error'}: {p}", err=True)
    if any(not isinstance(p, AddressInUse) for p in found):
        sys.exit(1)


@main.command()
@click.option("--queries", "n", type=int, default=200, show_default=True, help="Queries per mode.")
@click.option("--concurrency", type=int, default=16, show_default=True)
@click.option("--config", "config_path", type=click.Path())
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object {all_skills_default, all_skills_choice, moe}.")
def demo(n: int, concurrency: int, config_path: str | None, as_json: bool) -> None:
    """Compare every activated skill at default implementations (before), every activated skill with
    implementation choice, and top-k with implementation choice, on emulated backends."""
    from router.demo import run_demo
    if n < 1:
        raise click.BadParameter("must be at least 1", param_hint="--queries")
    result = asyncio.run(run_demo(config_path, n, concurrency, progress=not as_json))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from router.render import render_demo
        render_demo(result, n)


if __name__ == "__main__":
    main()
