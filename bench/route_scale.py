"""Route's selection time and response size at 10, 100, 1,000 and 10,000 skills.

    .venv/bin/python -m bench.route_scale [--quick] [--json]

What is measured is the pipeline's ``route`` (score → top-k → implementation
per chosen skill, and the response's rejection list), in process, through
``router.testing.make_pipeline`` (no socket: the RPC's own cost is
``bench.route_overhead``'s subject), and the size of the RouteResponse built
from it. Skills are spread over domains (50 skills a domain, each restricted
to its domain, as a large deployment configures them), two implementations
each; queries pick a domain at random.

Variants, in the same run:
- ``bounded``: the default (rejections up to 20, the rest counted);
- ``explain_all``: every rejection spelled out (what every Route cost before
  issue 8);
- ``no_domains``: the worst case, every skill activated by every query (no
  index can help: every skill is scored), bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bench._common import fmt, machine, md_table, percentile, text_table, timestamp
from router.core.types import ActivationRule, ImplementationSpec, Query, SkillSpec
from router.service.convert import plan_parts
from router.testing import FakeBackend, make_pipeline
from router.v1 import router_pb2 as pb

SIZES = (10, 100, 1_000, 10_000)
PER_DOMAIN = 50


def skills_for(n: int, *, domains: bool) -> list[SkillSpec]:
    out = []
    for i in range(n):
        impls = tuple(ImplementationSpec(name=f"i{j}", backend="openai", url="http://127.0.0.1:9", model=f"m{j}",
                                         quality=0.85 + 0.05 * j, cost_per_query=0.01 * (j + 1),
                                         expected_latency_ms=500 + 500 * j, optimal_complexity=4 + 3 * j)
                      for j in range(2))
        d = f"d{i // PER_DOMAIN}"
        out.append(SkillSpec(name=f"s{i:05d}", priority=1 + i % 3,
                             activation=ActivationRule(domains=frozenset({d}) if domains else frozenset()),
                             preferred_domains=frozenset({d}), optimal_complexity=float(i % 10),
                             concurrency_limit=5, queue_depth=10, implementations=impls))
    return out


async def measure(n: int, variant: str, samples: int, rng: random.Random) -> dict[str, Any]:
    skills = skills_for(n, domains=variant != "no_domains")
    backends = {(s.name, i.name): FakeBackend(i) for s in skills for i in s.implementations}
    p = make_pipeline(skills, backends)
    n_domains = max(1, n // PER_DOMAIN)
    explain = variant == "explain_all"
    queries = [Query(text="a question", domain=f"d{rng.randrange(n_domains)}", complexity=float(rng.randrange(11)))
               for _ in range(samples)]
    for q in queries[: max(5, samples // 10)]:  # warm-up
        await p.route(q, explain_all=explain)
    times_us: list[float] = []
    sizes: list[int] = []
    gc.collect()
    for q in queries:
        t0 = time.perf_counter_ns()
        out = await p.route(q, explain_all=explain)
        times_us.append((time.perf_counter_ns() - t0) / 1000)
        sel, rej = plan_parts(out.plan)
        sizes.append(pb.RouteResponse(query_id=out.query_id, selections=sel, rejections=rej, k=out.plan.k,
                                      rejections_omitted=out.plan.rejections_omitted).ByteSize())
    times_us.sort()
    return {"skills": n, "variant": variant, "samples": samples, "p50_us": percentile(times_us, 0.5),
            "p99_us": percentile(times_us, 0.99), "mean_us": sum(times_us) / len(times_us),
            "response_bytes": sum(sizes) / len(sizes), "per_skill_us": percentile(times_us, 0.5) / n}


def run(quick: bool) -> dict[str, Any]:
    rng = random.Random(7)
    rows = []
    for n in SIZES:
        samples = (50 if quick else 400) if n <= 1_000 else (10 if quick else 60)
        for variant in ("bounded", "explain_all", "no_domains"):
            row = asyncio.run(measure(n, variant, samples, rng))
            rows.append(row)
            print(f"  {n:>6} skills  {variant:<11}  p50 {row['p50_us']:9.1f} µs  p99 {row['p99_us']:9.1f} µs  "
                  f"{row['response_bytes']:9.0f} B", flush=True)
    return {"benchmark": "route_scale", "when": timestamp(), "quick": quick, "machine": machine(), "rows": rows}


def _by(result: Mapping[str, Any]) -> dict[tuple[int, str], Mapping[str, Any]]:
    return {(r["skills"], r["variant"]): r for r in result["rows"]}


def _rows(result: Mapping[str, Any]) -> list[list[str]]:
    by = _by(result)
    out = []
    for n in SIZES:
        b, e, w = by[(n, "bounded")], by[(n, "explain_all")], by[(n, "no_domains")]
        out.append([f"{n:,}", fmt(b["p50_us"], ".0f"), fmt(b["p99_us"], ".0f"), fmt(b["response_bytes"], ",.0f"),
                    fmt(e["p50_us"], ".0f"), fmt(e["response_bytes"], ",.0f"), fmt(e["p50_us"] / b["p50_us"], ".1f"),
                    fmt(w["p50_us"], ".0f"), fmt(w["p99_us"], ".0f")])
    return out


HEADERS = ["skills", "p50 µs", "p99 µs", "bytes", "explain-all p50 µs", "explain-all bytes", "explain-all ×",
           "every skill activated p50 µs", "p99 µs"]


def table(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    return (text_table(HEADERS, _rows(result))
            + f"\n{m['cpus']} CPUs, Python {m['python']} ({m['note']})"
            + (" — QUICK: rough figures" if result["quick"] else ""))


def markdown(result: Mapping[str, Any]) -> str:
    return (md_table(HEADERS, _rows(result))
            + f"\n\n_{result['when']}, `python -m bench.route_scale`; in process, no socket; "
              f"{'QUICK, rough' if result['quick'] else 'full run'}._")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args.quick)
    print(json.dumps(result) if args.json else table(result))
    return result


if __name__ == "__main__":
    main()
