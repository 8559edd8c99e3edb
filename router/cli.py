"""The ``skill-router`` command line.

    skill-router serve [--config PATH] [--listen HOST:PORT] [--demo]
    skill-router route "QUERY" [--domain D] [--complexity C] [--target HOST:PORT] [--json]
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


@main.command()
@click.option("--config", "config_path", type=click.Path(), help="Skills config (YAML). Default: the bundled one.")
@click.option("--listen", envvar="SKILL_ROUTER_LISTEN", show_envvar=True,
              help="HOST:PORT to listen on (default from config: 127.0.0.1:50051).")
@click.option("--demo", is_flag=True, help="Use the bundled config pointed at emulated backends started here.")
@click.option("--admin-listen", default=None,
              help='HOST:PORT of the admin endpoint (dashboard, /metrics); "" turns it off. '
                   "Default from config: 127.0.0.1:9464.")
def serve(config_path: str | None, listen: str | None, demo: bool, admin_listen: str | None) -> None:
    """Run the sidecar until SIGTERM/SIGINT."""
    from router.app import serve as run
    from router.core.errors import ConfigError

    config = _load(config_path)
    if admin_listen is not None:
        try:
            config = config.with_admin_listen(admin_listen)
        except ConfigError as exc:
            raise click.ClickException(f"bad config: {exc}") from None
    # Which of the seed's BRAIN_* variables took effect, and on what.
    log = logging.getLogger("router")
    for o in config.env_overrides:
        log.info("environment override: %s", o)
    if not config.env_overrides:
        log.info("environment overrides: none (no BRAIN_* variable set)")

    async def go() -> None:
        if demo:
            from router.demo import emulator_for, with_emulator
            async with emulator_for(config) as emu:
                click.echo(f"emulated backends on {emu.url}", err=True)
                await run(with_emulator(config, emu.url), listen)
        else:
            await run(config, listen)

    asyncio.run(go())


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
    return f


def _context(kw: dict):  # type: ignore[no-untyped-def]
    from skill_router_client import Priority, build_context
    return build_context(domain=kw["domain"], complexity=kw["complexity"], required_quality=kw["required_quality"],
                         top_k=kw["top_k"], force_skills=kw["force_skills"], exclude_skills=kw["exclude_skills"],
                         all_skills=kw["all_skills"], priority=Priority[kw["priority"].upper()])


@main.command()
@_query_options
def route(query: str, target: str, timeout: float, as_json: bool, **kw: object) -> None:
    """Show which skills would answer QUERY (no backend is called)."""
    from skill_router_client import RouterClient
    with RouterClient(target, timeout=timeout) as c:
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
    from skill_router_client import RouterClient
    with RouterClient(target, timeout=timeout) as c:
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
def stats(window_s: float | None, target: str, as_json: bool) -> None:
    """Show live per-skill load, the totals since start and the stored aggregates over a window."""
    from skill_router_client import RouterClient
    with RouterClient(target, timeout=10) as c:
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
            click.echo(f"{target}: {err.code().name}: {err.details()}", err=True)  # type: ignore[attr-defined]
            sys.exit(1)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    click.echo(f"{target}: {status}")
    sys.exit(0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1)


@main.command("check-config")
@click.argument("path", type=click.Path())
def check_config(path: str) -> None:
    """Validate a config file (and the BRAIN_* environment overrides) without starting."""
    from router.config import check_config as check
    from router.core.errors import ConfigError
    try:
        click.echo(check(path))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
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
