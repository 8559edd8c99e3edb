"""Learning from feedback on RouteLLM's GSM8K outcomes: accuracy against the
share of strong calls, APGR and CPT(50 %).

    .venv/bin/python -m bench.feedback_replay [--quick] [--json] [--plot docs/feedback_replay.png]

One skill ``math`` with two implementations on emulated backends (loopback):
``mixtral`` (declared quality 0.70, $0.0006 a query) and ``gpt4`` (declared
0.90, $0.03), ``routing.implementation_policy: expected_quality``. The
1,307 uncontaminated prompts of ``../shared/data/routellm-gsm8k`` (read at
run time, never copied) go through the real sidecar's Execute in a seeded
random order, one at a time; after each, Feedback reports 1 or 0: whether
the implementation that answered got that prompt right (from the CSV). The
cost knob ``context.cost_weight`` is swept; each knob value is a fresh
sidecar (learning starts from the declared qualities).

Scored over the second half of the stream (after learning), as RouteLLM
scores its routers: the share of GPT-4 calls and the accuracy they give;
PGR = (accuracy − weak) / (strong − weak) with weak/strong the accuracy of
Mixtral/GPT-4 alone on the same prompts; APGR the area under PGR against
the share of GPT-4 calls (random mix = 0.5); CPT(50 %) the smallest share
of GPT-4 calls with PGR ≥ 0.5 (random = 50 %).

Variants, in the same run:
- ``off``: no Feedback, no exploration (declared quality only);
- ``on, no context``: Feedback, no complexity given (every prompt in one
  context cell: learns which implementation is better on average);
- ``on, complexity``: Feedback, and the caller sends ``context.complexity``
  from a text heuristic (words / 10, capped at 10) with ten complexity bands;
  the quality is learned per (implementation, domain, band). Issue 10's query
  understanding is not merged here; this heuristic stands in for it.

The ``band oracle`` line is what the same bands could give at best: each
band sent to the implementation by its true (second-half) accuracies.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import machine, quiet_logs, timestamp

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm-gsm8k"
KNOBS = (0.0, 0.05, 0.08, 0.1, 0.12, 0.13, 0.14, 0.15, 0.16, 0.18, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0)
QUICK_KNOBS = (0.0, 0.1, 0.15, 0.2, 0.3, 1.0)
BANDS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
WEAK, STRONG = "mixtral", "gpt4"


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    weak: bool
    strong: bool

    @property
    def complexity(self) -> float:
        return min(10.0, len(self.text.split()) / 10.0)


def load(data: Path = DATA) -> list[Prompt]:
    contaminated = {json.loads(line)["eval_prompt"] for line in (data / "gsm8k_contaminated.jsonl").open()}
    with gzip.open(data / "gsm8k.csv.gz", "rt", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["prompt"] not in contaminated]
    return [Prompt(r["prompt"], r["mixtral"] == "True", r["gpt4"] == "True") for r in rows]


def config(url: str, knob: float, *, learning: bool, seed: int) -> dict[str, Any]:
    def impl(name: str, quality: float, cost: float) -> dict[str, Any]:
        return {"name": name, "backend": "openai", "url": url, "model": name, "quality": quality,
                "cost_per_query": cost, "expected_latency_ms": 1000, "optimal_complexity": 5}
    return {
        "skills": {"math": {"priority": 1, "optimal_complexity": 5, "concurrency_limit": 8,
                            "implementations": [impl(WEAK, 0.70, 0.0006), impl(STRONG, 0.90, 0.03)]}},
        "routing": {"implementation_policy": "expected_quality", "cost_weight": knob, "quality_threshold": 0.0,
                    "exploration": 0.1 if learning else 0.0},
        "feedback": {"seed": seed, "prior_strength": 10, "complexity_bands": BANDS, "memory_max_entries": 4000},
        "storage": {"sqlite_path": None},
        "server": {"grace_period_s": 1, "admin_listen": None},
    }


async def replay(prompts: Sequence[Prompt], url: str, knob: float, *, learning: bool, context: bool,
                 seed: int) -> list[tuple[bool, bool]]:
    """(GPT-4 answered, answer correct) per prompt, in stream order."""
    from skill_router_client import AsyncRouterClient, build_context

    from router.app import build_app
    from router.config import parse_config

    app = build_app(parse_config(config(url, knob, learning=learning, seed=seed), "<feedback_replay>", {}),
                    "127.0.0.1:0")
    await app.start()
    out = []
    try:
        async with AsyncRouterClient(app.address, timeout=30) as c:
            for p in prompts:
                ctx = build_context(domain="math", complexity=p.complexity if context else None,
                                    required_quality=0.0)
                r = await c.execute(p.text, context=ctx)
                strong = r.results[0].implementation == STRONG
                correct = p.strong if strong else p.weak
                if learning:
                    await c.feedback(r.query_id, 1.0 if correct else 0.0)
                out.append((strong, correct))
    finally:
        await app.stop(1)
    return out


def pgr_curve(points: Sequence[tuple[float, float]], weak: float, strong: float) -> list[tuple[float, float]]:
    """(share of strong calls, PGR), from (share, accuracy), with the two
    endpoints (all weak, all strong), ascending in share; points at the same
    share averaged."""
    by: dict[float, list[float]] = {0.0: [weak], 1.0: [strong]}
    for share, acc in points:
        by.setdefault(round(share, 6), []).append(acc)
    gap = strong - weak
    return [(s, (sum(v) / len(v) - weak) / gap) for s, v in sorted(by.items())]


def apgr(curve: Sequence[tuple[float, float]]) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(curve))


def cpt(curve: Sequence[tuple[float, float]], target: float = 0.5) -> float:
    """The smallest share of strong calls at which the (interpolated) PGR reaches ``target``."""
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if y0 >= target:
            return x0
        if y1 >= target:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return 1.0


def oracle(half: Sequence[Prompt]) -> list[tuple[float, float]]:
    """Bands sent to GPT-4 best gain per call first: the best the bands allow."""
    bands: dict[int, list[Prompt]] = {}
    for p in half:
        bands.setdefault(sum(p.complexity >= b for b in BANDS), []).append(p)
    order = sorted(bands.values(), key=lambda ps: -(sum(p.strong for p in ps) - sum(p.weak for p in ps)) / len(ps))
    n = len(half)
    acc = sum(p.weak for p in half)
    share = 0
    pts = [(0.0, acc / n)]
    for ps in order:
        acc += sum(p.strong for p in ps) - sum(p.weak for p in ps)
        share += len(ps)
        pts.append((share / n, acc / n))
    return pts


async def run(knobs: Sequence[float], seed: int) -> dict[str, Any]:
    from router.emulator import Emulator, EmulatorConfig, ModelProfile

    quiet_logs()
    prompts = load()
    random.Random(seed).shuffle(prompts)
    half = prompts[len(prompts) // 2:]
    weak = sum(p.weak for p in half) / len(half)
    strong = sum(p.strong for p in half) / len(half)
    variants = {"off": dict(learning=False, context=False), "on, no context": dict(learning=True, context=False),
                "on, complexity": dict(learning=True, context=True)}
    result: dict[str, Any] = {"benchmark": "feedback_replay", "when": timestamp(), "machine": machine(),
                              "prompts": len(prompts), "scored": len(half), "seed": seed,
                              "weak_accuracy": weak, "strong_accuracy": strong, "variants": {}}
    models = {WEAK: ModelProfile(latency_ms=1), STRONG: ModelProfile(latency_ms=1)}
    async with Emulator(EmulatorConfig(models=models, seed=seed)) as emu:
        for name, kw in variants.items():
            points = []
            for knob in knobs:
                res = await replay(prompts, emu.url, knob, seed=seed, **kw)
                second = res[len(prompts) // 2:]
                share = sum(s for s, _ in second) / len(second)
                acc = sum(c for _, c in second) / len(second)
                points.append({"cost_weight": knob, "strong_share": share, "accuracy": acc})
            curve = pgr_curve([(p["strong_share"], p["accuracy"]) for p in points], weak, strong)
            result["variants"][name] = {"points": points, "apgr": apgr(curve), "cpt50": cpt(curve),
                                        "curve": curve}
    oc = pgr_curve(oracle(half), weak, strong)
    result["band_oracle"] = {"apgr": apgr(oc), "cpt50": cpt(oc), "curve": oc}
    return result


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    weak, strong = result["weak_accuracy"], result["strong_accuracy"]
    ax.plot([0, 100], [weak * 100, strong * 100], "k:", label="random mix (APGR 0.5)")
    oc = result["band_oracle"]["curve"]
    ax.plot([x * 100 for x, _ in oc], [(weak + y * (strong - weak)) * 100 for _, y in oc], "--", color="grey",
            label=f"band oracle (APGR {result['band_oracle']['apgr']:.2f})")
    for name, v in result["variants"].items():
        pts = sorted((p["strong_share"] * 100, p["accuracy"] * 100) for p in v["points"])
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", ms=3, label=f"learning {name} (APGR {v['apgr']:.2f})")
    ax.set_xlabel("GPT-4 calls (% of queries, second half of the stream)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"GSM8K replay: {result['scored']} scored prompts, sweep of context.cost_weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(result: dict[str, Any]) -> str:
    lines = [f"prompts {result['prompts']} (scored: second half, {result['scored']}); "
             f"Mixtral alone {result['weak_accuracy']:.3f}, GPT-4 alone {result['strong_accuracy']:.3f}", "",
             "| learning | APGR | CPT(50 %) | points (cost_weight: GPT-4 share → accuracy) |",
             "|---|---|---|---|"]
    for name, v in result["variants"].items():
        pts = "; ".join(f"{p['cost_weight']:g}: {p['strong_share']:.0%} → {p['accuracy']:.3f}" for p in v["points"])
        lines.append(f"| {name} | {v['apgr']:.3f} | {v['cpt50']:.1%} | {pts} |")
    o = result["band_oracle"]
    lines.append(f"| band oracle (best the 10 bands allow) | {o['apgr']:.3f} | {o['cpt50']:.1%} | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"knobs {QUICK_KNOBS} instead of {KNOBS}")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", default="", help="write the accuracy-vs-GPT-4-share plot (PNG) here")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: the routellm-gsm8k data is not there (see /work/shared/data/README.md)")
    result = asyncio.run(run(QUICK_KNOBS if args.quick else KNOBS, args.seed))
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=1) if args.json else report(result))


if __name__ == "__main__":
    main()
