"""Query understanding: how well the router reads the text, and what it costs.

1. BANKING77 (``../shared/data/banking77``): each of the 77 intents is a
   skill whose ``examples`` are its training queries (10,003 in all); every
   test query (3,080) is sent as text only (no domain, no complexity) to the
   real Route RPC with ``top_k`` 3; top-1 / top-3 accuracy of the selections,
   and the share of queries found out of scope. Start-up time (build +
   fitting) and the sidecar's memory with those examples loaded.
2. RouteLLM GSM8K (``../shared/data/routellm-gsm8k``, the 12 contaminated
   prompts dropped): ROC AUC of the estimated complexity for separating the
   prompts Mixtral-8x7B fails from those it gets right, against prompt
   length alone (the baseline); the estimator is the one Route runs.
3. Route time added by understanding, at 10, 100 and 1,000 skills with 20
   synthetic examples each: the same Route request (text only) against two
   sidecars in the same process, one with understanding (local encoder,
   complexity estimate) and one without (``encoder: none``), interleaved
   rounds; plus the understanding stage alone (``understand()``), timed in
   process.

Skips a part with a message when its data is absent.

    .venv/bin/python -m bench.understanding [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench._common import (
    LOOPBACK,
    emit,
    emulator_process,
    fmt,
    json_safe,
    machine,
    md_table,
    percentile,
    quiet_logs,
    text_table,
    timestamp,
)

NAME = "understanding"
COMMAND = ".venv/bin/python -m bench.understanding"
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SKILL_COUNTS = (10, 100, 1000)
EXAMPLES_PER_SKILL = 20


def _csv_gz(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _skill(name: str, url: str, examples: Sequence[str]) -> dict[str, Any]:
    return {"priority": 1, "examples": list(examples),
            "implementations": [{"name": "impl", "backend": "openai", "url": url, "model": "m", "quality": 0.9,
                                 "cost_per_query": 0.01, "expected_latency_ms": 100}]}


def _config(skills: Mapping[str, Any], understanding: Mapping[str, Any], top_k: int | None = None) -> Any:
    from router.config import parse_config

    return parse_config({"skills": dict(skills), "understanding": dict(understanding),
                         "routing": {"top_k": top_k}, "storage": {"sqlite_path": None},
                         "server": {"grace_period_s": 0}}, "<bench>", {})


def _name(intent: str) -> str:
    """A skill name from an intent (``reverted_card_payment?`` has a '?')."""
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in intent)


# -- 1. BANKING77 ---------------------------------------------------------------------------------


async def banking(url: str, limit: int | None) -> dict[str, Any]:
    folder = DATA / "banking77"
    if not (folder / "train.csv.gz").exists():
        return {"skipped": f"no data at {folder} (see ../shared/data/README.md)"}
    train, test = _csv_gz(folder / "train.csv.gz"), _csv_gz(folder / "test.csv.gz")
    if limit is not None:
        test = random.Random(0).sample(test, limit)
    by_intent: dict[str, list[str]] = {}
    for row in train:
        by_intent.setdefault(_name(row["category"]), []).append(row["text"])
    skills = {k: _skill(k, url, v) for k, v in by_intent.items()}
    # Every test query is in scope: the default threshold (calibrated, 0.5)
    # sends some to no skill; a threshold of 0.001 shows the ranking alone.
    default = await _banking_run(skills, test, {"encoder": "local"})
    ranking = await _banking_run(skills, test, {"encoder": "local", "out_of_scope_threshold": 0.001})
    return {"skills": len(by_intent), "examples": len(train), "test_queries": len(test),
            "default": default, "no_out_of_scope": ranking}


async def _banking_run(skills: Mapping[str, Any], test: Sequence[Mapping[str, str]],
                       understanding: Mapping[str, Any]) -> dict[str, Any]:
    import psutil
    from skill_router_client import AsyncRouterClient

    from router.app import build_app

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    app = build_app(_config(skills, understanding), f"{LOOPBACK}:0")
    await app.start()
    startup_s = time.perf_counter() - t0
    rss1 = proc.memory_info().rss
    top1 = top3 = out = 0
    latencies: list[float] = []
    try:
        async with AsyncRouterClient(app.address, timeout=30) as c:
            for row in test:
                t = time.perf_counter()
                resp = await c.route(row["text"], top_k=3)
                latencies.append((time.perf_counter() - t) * 1000)
                chosen = [s.skill for s in resp.selections]
                want = _name(row["category"])
                top1 += bool(chosen) and chosen[0] == want
                top3 += want in chosen[:3]
                out += resp.signals.out_of_scope
        fit_s = app.understanding.fit_s if app.understanding is not None else 0.0
    finally:
        await app.stop(0)
    n = len(test)
    lat = sorted(latencies)
    return {"top1": top1 / n, "top3": top3 / n, "out_of_scope": out / n,
            "startup_s": startup_s, "fit_s": fit_s, "rss_added_mb": (rss1 - rss0) / 2**20,
            "route_p50_ms": percentile(lat, 0.5), "route_p99_ms": percentile(lat, 0.99)}


# -- 2. GSM8K complexity ----------------------------------------------------------------------------


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pairs = sorted(zip(scores, positive))
    n_pos = sum(positive)
    n_neg = len(pairs) - n_pos
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # average 1-based rank of the tie group
        rank_sum += mid * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def gsm8k() -> dict[str, Any]:
    from router.understanding import estimate_complexity

    folder = DATA / "routellm-gsm8k"
    if not (folder / "gsm8k.csv.gz").exists():
        return {"skipped": f"no data at {folder} (see ../shared/data/README.md)"}
    rows = _csv_gz(folder / "gsm8k.csv.gz")
    drop = set()
    contaminated = folder / "gsm8k_contaminated.jsonl"
    if contaminated.exists():
        drop = {json.loads(line)["eval_idx"] for line in contaminated.read_text().splitlines() if line.strip()}
    rows = [r for i, r in enumerate(rows) if i not in drop]
    fails = [r["mixtral"].strip().lower() != "true" for r in rows]
    est = [estimate_complexity(r["prompt"]) for r in rows]
    return {"prompts": len(rows), "mixtral_fail_rate": sum(fails) / len(rows),
            "auc_estimate": roc_auc(est, fails), "auc_length": roc_auc([len(r["prompt"]) for r in rows], fails),
            "estimate_p10_p50_p90": [percentile(sorted(est), q) for q in (0.1, 0.5, 0.9)]}


# -- 3. Route time added ----------------------------------------------------------------------------

_COMMON = ("how do i", "can you", "please", "why is my", "what about", "help with", "is it possible to",
           "i need to", "tell me about", "question on")


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    syll = ["ka", "lo", "mi", "ter", "on", "ra", "ve", "sul", "pa", "dri", "no", "ben", "ux", "tal", "fe", "gor"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syll) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def synthetic_skills(n_skills: int, per_skill: int, seed: int = 0) -> tuple[dict[str, list[str]], list[str]]:
    """Skills with topics of their own (5 topic words each from a shared
    vocabulary) and example queries mixing topic words with common phrasing;
    plus probe queries (one per skill, not among the examples)."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng, max(200, n_skills * 3))
    skills: dict[str, list[str]] = {}
    probes = []
    for i in range(n_skills):
        topic = rng.sample(vocab, 5)

        def sentence() -> str:
            return f"{rng.choice(_COMMON)} {' '.join(rng.sample(topic, 3))} {rng.choice(vocab)}"  # noqa: B023

        skills[f"skill{i:04d}"] = list(dict.fromkeys(sentence() for _ in range(per_skill)))
        probes.append(sentence())
    return skills, probes


async def added_time(url: str, n_skills: int, rounds: int, calls: int) -> dict[str, Any]:
    from skill_router_client import AsyncRouterClient

    from router.app import build_app

    examples, probes = synthetic_skills(n_skills, EXAMPLES_PER_SKILL)
    skills = {k: _skill(k, url, v) for k, v in examples.items()}
    on = build_app(_config(skills, {"encoder": "local"}, top_k=3), f"{LOOPBACK}:0")
    off_skills = {k: {kk: vv for kk, vv in v.items() if kk != "examples"} for k, v in skills.items()}
    off = build_app(_config(off_skills, {"encoder": "none", "estimate_complexity": False}, top_k=3), f"{LOOPBACK}:0")
    t0 = time.perf_counter()
    await on.start()
    startup_on = time.perf_counter() - t0
    await off.start()
    lat: dict[str, list[float]] = {"on": [], "off": []}
    stage: list[float] = []
    try:
        async with AsyncRouterClient(on.address, timeout=30) as c_on, AsyncRouterClient(off.address, timeout=30) as c_off:
            clients = {"on": c_on, "off": c_off}
            for name in clients:  # warm-up
                for q in probes[:20]:
                    await clients[name].route(q)
            for r in range(rounds):
                for name in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    c = clients[name]
                    for k in range(calls):
                        q = probes[k % len(probes)]
                        t = time.perf_counter()
                        await c.route(q)
                        lat[name].append((time.perf_counter() - t) * 1000)
        from router.core.query import make_query

        assert on.understanding is not None
        for k in range(calls * rounds):
            query = make_query(text=probes[k % len(probes)], policy=on.config.policy, known_skills=[])
            t = time.perf_counter_ns()
            await on.understanding.understand(query)
            stage.append((time.perf_counter_ns() - t) / 1000)
    finally:
        await on.stop(0)
        await off.stop(0)
    s_on, s_off, s_stage = sorted(lat["on"]), sorted(lat["off"]), sorted(stage)
    return {"skills": n_skills, "examples": sum(len(v) for v in examples.values()), "startup_s": startup_on,
            "route_p50_ms": {"on": percentile(s_on, 0.5), "off": percentile(s_off, 0.5)},
            "route_p99_ms": {"on": percentile(s_on, 0.99), "off": percentile(s_off, 0.99)},
            "added_p50_ms": percentile(s_on, 0.5) - percentile(s_off, 0.5),
            "added_p99_ms": percentile(s_on, 0.99) - percentile(s_off, 0.99),
            "stage_p50_us": percentile(s_stage, 0.5), "stage_p99_us": percentile(s_stage, 0.99),
            "calls_per_variant": len(s_on)}


async def run(quick: bool) -> dict[str, Any]:
    quiet_logs()
    rounds, calls = (2, 100) if quick else (6, 400)
    async with emulator_process({"seed": 0}) as (url, _proc):
        result: dict[str, Any] = {"gsm8k": gsm8k()}
        result["added"] = [await added_time(url, n, rounds, calls) for n in SKILL_COUNTS]
        # BANKING77 last: its 10,003 examples stay in this process's memory afterwards.
        result["banking77"] = await banking(url, 300 if quick else None)
    return json_safe({"benchmark": NAME, "command": COMMAND + (" --quick" if quick else ""), "when": timestamp(),
                      "quick": quick, "machine": machine(), "plan": {"rounds": rounds, "calls_per_round": calls},
                      **result})


# -- output ---------------------------------------------------------------------------------------


def _pct(v: Any) -> str:
    return "–" if v is None else f"{v * 100:.1f} %"


def _lines(result: Mapping[str, Any], md: bool) -> list[str]:
    table = md_table if md else text_table
    out: list[str] = []
    b = result["banking77"]
    if "skipped" in b:
        out.append(f"BANKING77 skipped: {b['skipped']}")
    else:
        d, r = b["default"], b["no_out_of_scope"]

        def both(key: str, f: Any) -> list[str]:
            return [f(d[key]), f(r[key])]

        out += [
            f"BANKING77 through Route, text only ({b['skills']} skills, {b['examples']:,} examples, "
            f"{b['test_queries']:,} test queries, top_k 3):", "",
            table(["measure", "default threshold (calibrated)", "threshold 0.001 (ranking only)"], [
                ["top-1 accuracy", *both("top1", _pct)], ["top-3 accuracy", *both("top3", _pct)],
                ["found out of scope (no skill)", *both("out_of_scope", _pct)],
                ["start-up: build + fit (s)", *both("startup_s", lambda v: fmt(v, ".1f"))],
                ["of which fitting (s)", *both("fit_s", lambda v: fmt(v, ".1f"))],
                ["memory added by start-up (MB RSS)", *both("rss_added_mb", lambda v: fmt(v, ".0f"))],
                ["Route p50 / p99, client-side (ms)",
                 *[f"{fmt(x['route_p50_ms'], '.2f')} / {fmt(x['route_p99_ms'], '.2f')}" for x in (d, r)]],
            ]), ""]
    g = result["gsm8k"]
    if "skipped" in g:
        out.append(f"GSM8K skipped: {g['skipped']}")
    else:
        out += [
            f"GSM8K complexity ({g['prompts']:,} prompts, Mixtral fails {_pct(g['mixtral_fail_rate'])}): "
            f"ROC AUC of the estimate {fmt(g['auc_estimate'], '.3f')} vs prompt length {fmt(g['auc_length'], '.3f')} "
            f"(0.5 = chance); estimate p10/p50/p90 "
            + "/".join(fmt(v, ".1f") for v in g["estimate_p10_p50_p90"]), ""]
    rows = []
    for a in result["added"]:
        rows.append([str(a["skills"]), f"{a['examples']:,}",
                     f"{fmt(a['route_p50_ms']['off'], '.3f')} → {fmt(a['route_p50_ms']['on'], '.3f')}",
                     fmt(a["added_p50_ms"], "+.3f"),
                     f"{fmt(a['route_p99_ms']['off'], '.3f')} → {fmt(a['route_p99_ms']['on'], '.3f')}",
                     fmt(a["added_p99_ms"], "+.3f"),
                     f"{fmt(a['stage_p50_us'], '.0f')} / {fmt(a['stage_p99_us'], '.0f')}",
                     fmt(a["startup_s"], ".1f")])
    out += ["Route time added by understanding (same request, text only; sidecar without → with understanding):", "",
            table(["skills", "examples", "Route p50 ms", "added p50 ms", "Route p99 ms", "added p99 ms",
                   "understand() p50 / p99 µs", "start-up s"], rows)]
    return out


def table(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    return "\n".join(_lines(result, False) + [
        f"{m['cpus']} CPUs, Python {m['python']} ({m['note']}); {result['plan']['rounds']} interleaved rounds × "
        f"{result['plan']['calls_per_round']} calls per variant" + (" — QUICK: rough figures" if result["quick"] else "")])


def markdown(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    return "\n".join([
        f"Measured {result['when']} with `{result['command']}` on {m['cpus']} CPUs ({m['note']}); Python "
        f"{m['python']}. Route times are client-side, sequential calls, {result['plan']['rounds']} interleaved "
        f"rounds × {result['plan']['calls_per_round']} calls per variant.", "", *_lines(result, True)])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke check (300 BANKING77 test queries, few calls)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    emit(asyncio.run(run(args.quick)), args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
