"""The demo: the same mixed workload through the gRPC API twice — once with
top-k routing, once with ``BRAIN_MOE_ENABLED=false`` (every activated skill,
default implementations) — against emulated backends, measured as the seed's
comparison table."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator

from router.config import RouterConfig, load_config
from router.emulator import Emulator, EmulatorConfig, ModelProfile

# The emulated backends answer in a tenth of each implementation's declared
# latency, so the demo's 2000 ms model takes 200 ms.
DEMO_LATENCY_SCALE = 0.1

_TEMPLATES = {
    "legal": ["Review this NDA clause for risks: {x}", "Is a verbal contract about {x} enforceable?"],
    "code": ["Why does my {x} function leak memory?", "Refactor this {x} handler to be async"],
    "math": ["Prove that the sum of {x} odd numbers is a square", "Integrate {x} over [0, 1]"],
    "research": ["Summarise recent work on {x}", "Compare three approaches to {x}"],
    "finance": ["Estimate the cash flow impact of {x}", "Explain the risk of {x} in a portfolio"],
    "general": ["What is {x}?", "Give me three ideas about {x}"],
}
_TOPICS = ["retrieval caching", "rate limits", "vector search", "token budgets", "a leasing deal", "gradient noise"]


def emulator_config(config: RouterConfig, *, latency_scale: float = DEMO_LATENCY_SCALE, seed: int = 7,
                    error_rate: float = 0.0) -> EmulatorConfig:
    """One emulated model per configured implementation, answering in its
    declared latency (lognormal, p99 = 2.5 × median, scaled)."""
    models = {}
    for skill in config.skills:
        for impl in skill.implementations:
            models[impl.model] = ModelProfile(latency_ms=impl.expected_latency_ms, p99_ms=impl.expected_latency_ms * 2.5,
                                              error_rate=error_rate)
    return EmulatorConfig(models=models, seed=seed, latency_scale=latency_scale)


@contextlib.asynccontextmanager
async def emulator_for(config: RouterConfig, **kw: object) -> AsyncIterator[Emulator]:
    async with Emulator(emulator_config(config, **kw)) as emu:  # type: ignore[arg-type]
        yield emu


def workload(config: RouterConfig, n: int, seed: int = 42) -> list[tuple[str, str, float]]:
    """n (query, domain, complexity) triples over the config's domains."""
    rng = random.Random(seed)
    domains = sorted({d for s in config.skills for d in (*s.activation.domains, *s.preferred_domains)} | {"general"})
    out = []
    for _ in range(n):
        domain = rng.choice(domains)
        template = rng.choice(_TEMPLATES.get(domain, _TEMPLATES["general"]))
        out.append((template.format(x=rng.choice(_TOPICS)), domain, round(rng.uniform(0, 10), 1)))
    return out


async def _run_mode(config: RouterConfig, queries: list[tuple[str, str, float]], concurrency: int,
                    label: str, progress: object | None) -> dict:
    from skill_router_client import AsyncRouterClient

    from router.app import build_app

    app = build_app(config, "127.0.0.1:0")
    await app.start()
    latencies: list[float] = []
    costs: list[float] = []
    skills: list[int] = []
    quality: list[float] = []
    failed = 0
    sem = asyncio.Semaphore(concurrency)
    task = progress.add_task(label, total=len(queries)) if progress is not None else None  # type: ignore[attr-defined]
    try:
        async with AsyncRouterClient(app.address, timeout=30) as client:
            async def one(q: tuple[str, str, float]) -> None:
                nonlocal failed
                async with sem:
                    t0 = time.perf_counter()
                    try:
                        # Text only: the sidecar infers domain and complexity.
                        resp = await client.execute(q[0])
                    except Exception:
                        failed += 1
                    else:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        costs.append(resp.cost.actual_usd)
                        skills.append(sum(1 for r in resp.results))
                        quality.append(resp.quality)
                    if task is not None:
                        progress.advance(task)  # type: ignore[attr-defined]

            t_start = time.perf_counter()
            await asyncio.gather(*(one(q) for q in queries))
            wall = time.perf_counter() - t_start
    finally:
        await app.stop(0)
    lat = sorted(latencies)
    ok = len(lat)
    return {
        "avg_ms": sum(lat) / ok if ok else 0.0,
        "p99_ms": lat[min(ok - 1, int(0.99 * ok))] if ok else 0.0,
        "cost_per_query": sum(costs) / ok if ok else 0.0,
        "throughput_qps": ok / wall if wall > 0 else 0.0,
        "skills_per_query": sum(skills) / ok if ok else 0.0,
        "quality": sum(quality) / ok if ok else 0.0,
        "queries": len(queries),
        "failed": failed,
    }


def _without_store(config: RouterConfig) -> RouterConfig:
    """The demo's two sidecars keep no metrics rows (nothing to clean up)."""
    return dataclasses.replace(config, storage=config.storage.model_copy(update={"sqlite_path": None,
                                                                                 "postgres_dsn": None}))


async def run_demo(config_path: str | None, n: int, concurrency: int = 16, *, progress: bool = True) -> dict:
    moe_cfg = _without_store(load_config(config_path))
    all_cfg = _without_store(load_config(config_path, env={**os.environ, "BRAIN_MOE_ENABLED": "false"}))
    queries = workload(moe_cfg, n)
    result: dict = {}
    async with emulator_for(moe_cfg) as emu:
        modes = [("all_skills", all_cfg.with_urls(emu.url), "all skills"), ("moe", moe_cfg.with_urls(emu.url), "top-k (MoE)")]
        if progress:
            from rich.progress import Progress
            with Progress() as bar:
                for key, cfg, label in modes:
                    result[key] = await _run_mode(cfg, queries, concurrency, label, bar)
        else:
            for key, cfg, label in modes:
                result[key] = await _run_mode(cfg, queries, concurrency, label, None)
    return {"moe": result["moe"], "all_skills": result["all_skills"]}
