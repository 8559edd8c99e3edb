"""``python -m router.emulator --port N --config FILE``: run the emulator
until SIGINT/SIGTERM. Prints ``emulator listening on URL`` once it accepts
connections (``--port 0`` picks a free port; read it from that line)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys

from router.core.errors import ConfigError
from router.emulator._config import EmulatorConfig
from router.emulator._server import Emulator


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m router.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to bind; 0 picks a free one (default 8081)")
    parser.add_argument("--config", help="YAML or JSON file with seed, latency_scale, default and models")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--latency-scale", type=float, help="override the config's latency_scale")
    return parser.parse_args(argv)


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not on this platform
            pass
    async with Emulator(config, host=host, port=port) as emu:
        print(f"emulator listening on {emu.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        config = EmulatorConfig.from_file(args.config) if args.config else EmulatorConfig()
        overrides = {}
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.latency_scale is not None:
            overrides["latency_scale"] = args.latency_scale
        if overrides:
            config = dataclasses.replace(config, **overrides)
    except (ConfigError, ValueError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config, args.host, args.port))
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
