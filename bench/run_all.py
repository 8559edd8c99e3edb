"""Run every benchmark (``make bench``) and, on request, write their figures
into ``docs/benchmarks.md``.

    .venv/bin/python -m bench.run_all [--quick] [--json] [--only NAME ...] [--write-docs [PATH]]

Each benchmark runs in a fresh interpreter (``python -m bench.<name>
--json``), one after the other, so none inherits another's warm state or
load. ``--write-docs`` replaces, for each benchmark that ran, the text
between ``<!-- bench:<name>:begin -->`` and ``<!-- bench:<name>:end -->`` in
the docs file with the benchmark's ``markdown(result)``; everything else in
the file is left as written.

A benchmark module plugs in by being listed in ``BENCHMARKS`` and providing
``main(argv)`` (``--quick``/``--json``), ``table(result) -> str`` and
``markdown(result) -> str``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# In the order of docs/benchmarks.md; a module not present is skipped.
BENCHMARKS = ("route_overhead", "route_scale", "execute_overhead", "one_skill", "startup", "flood_memory", "overload",
              "batching", "tracing_overhead", "admin_overhead", "reload_overhead", "understanding", "workers",
              "stream_cache")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
TIMEOUT_S = 900  # bench.startup at 10,000 skills and bench.flood_memory take minutes
TIMEOUTS = {"understanding": 1200}  # fits BANKING77 twice and 1,000 skills


def run_one(name: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", f"bench.{name}", "--json", *(["--quick"] if quick else [])]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, timeout=TIMEOUTS.get(name, TIMEOUT_S),
                          cwd=Path(__file__).resolve().parent.parent)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"bench.{name} exited with {proc.returncode} and printed no result")
    result = json.loads(lines[-1])
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    # A benchmark may exit non-zero over a result it judges bad (e.g. a limit
    # not held): the figures are still real, so they are kept and shown.
    result["exit_code"] = proc.returncode
    return result


def available(name: str) -> bool:
    return importlib.util.find_spec(f"bench.{name}") is not None


def write_docs(path: Path, results: dict[str, dict[str, Any]]) -> list[str]:
    """Replace each benchmark's marked block in ``path``; the names written."""
    text = path.read_text(encoding="utf-8")
    written = []
    for name, result in results.items():
        module = importlib.import_module(f"bench.{name}")
        pattern = re.compile(rf"(<!-- bench:{name}:begin -->\n)(.*?)(<!-- bench:{name}:end -->)", re.DOTALL)
        if not pattern.search(text):
            print(f"{path}: no <!-- bench:{name}:begin/end --> markers; {name} not written", file=sys.stderr)
            continue
        block = module.markdown(result).rstrip("\n") + "\n"
        text = pattern.sub(lambda m, block=block: m.group(1) + block + m.group(3), text, count=1)
        written.append(name)
    path.write_text(text, encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke check: each benchmark in a few seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object: benchmark name → result")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"run only these ({', '.join(BENCHMARKS)})")
    p.add_argument("--write-docs", nargs="?", const=str(DOCS), metavar="PATH",
                   help=f"write the figures into the marked blocks of PATH (default {DOCS.relative_to(DOCS.parents[1])})")
    args = p.parse_args(argv)
    if args.write_docs and args.quick:
        p.error("--write-docs takes full runs only: --quick figures are too rough for the docs")
    results: dict[str, dict[str, Any]] = {}
    failed = []
    for name in args.only or BENCHMARKS:
        if not available(name):
            print(f"bench.{name}: not present, skipped", file=sys.stderr)
            continue
        if not args.json:
            print(f"== bench.{name}", flush=True)
        try:
            results[name] = run_one(name, args.quick)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
            print(f"bench.{name} failed: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        if results[name]["exit_code"] != 0:
            print(f"bench.{name} exited with {results[name]['exit_code']} (its figures are kept)", file=sys.stderr)
            failed.append(name)
        if not args.json:
            print(importlib.import_module(f"bench.{name}").table(results[name]))
            print(f"({results[name]['elapsed_s']} s)\n", flush=True)
    if args.json:
        print(json.dumps(results, allow_nan=False))
    if args.write_docs and results:
        written = write_docs(Path(args.write_docs), results)
        print(f"wrote {', '.join(written) or 'nothing'} into {args.write_docs}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
