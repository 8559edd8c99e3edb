"""The demo: the same mixed workload through the gRPC API three times, against
emulated backends, measured as the seed's comparison table:

- ``all_skills_default``: every activated skill at its default implementation
  (``BRAIN_MOE_ENABLED=false``, ``BRAIN_DYNAMIC_ROUTING_ENABLED=false``), the
  seed's "before";
- ``all_skills_choice``: every activated skill (the request's ``all_skills``),
  each at the implementation chosen for the query;
- ``moe``: top-k skills, implementation choice (the bundled config).

So the table separates what top-k saves from what cheaper implementations
save. Skill utilization (in-flight / limit, the seed's ``getUtilization``) is
sampled from the Stats RPC while the queries run."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from router.config import RouterConfig, load_config
from router.core.types import BackendKind, ImplementationSpec, SkillSpec
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

if TYPE_CHECKING:
    from rich.progress import Progress


# The modes, in the table's order: (key, column title, extra environment, all_skills on each request).
MODES: tuple[tuple[str, str, dict[str, str], bool], ...] = (
    ("all_skills_default", "all skills, default impl. (before)",
     {"BRAIN_MOE_ENABLED": "false", "BRAIN_DYNAMIC_ROUTING_ENABLED": "false"}, False),
    ("all_skills_choice", "all skills, impl. choice", {}, True),
    ("moe", "top-k, impl. choice (MoE)", {}, False),
)
STATS_INTERVAL_S = 0.1


def emulated_model(skill: SkillSpec, impl: ImplementationSpec) -> str:
    """The emulator profile an implementation answers as: its model, or
    ``skill.implementation`` for an ``http`` one (which names no model)."""
    return impl.model or f"{skill.name}.{impl.name}"


def emulator_config(config: RouterConfig, *, latency_scale: float = DEMO_LATENCY_SCALE, seed: int = 7,
                    error_rate: float = 0.0) -> EmulatorConfig:
    """One emulated model per configured implementation (``http`` ones
    included), answering in its declared latency (lognormal, p99 = 2.5 ×
    median, scaled)."""
    models = {}
    for skill in config.skills:
        for impl in skill.implementations:
            models[emulated_model(skill, impl)] = ModelProfile(
                latency_ms=impl.expected_latency_ms, p99_ms=impl.expected_latency_ms * 2.5, error_rate=error_rate)
    return EmulatorConfig(models=models, seed=seed, latency_scale=latency_scale)


def with_emulator(config: RouterConfig, url: str) -> RouterConfig:
    """``config.with_urls(url)``, with every ``http`` implementation at
    ``{url}/models/{its profile}`` so it answers in its own declared latency
    (an ``http`` request names no model; without this all of them shared the
    emulator's default profile)."""
    cfg = config.with_urls(url)
    skills = tuple(
        dataclasses.replace(s, implementations=tuple(
            dataclasses.replace(i, url=f"{url}/models/{urllib.parse.quote(emulated_model(s, i), safe='')}")
            if i.backend is BackendKind.HTTP else i
            for i in s.implementations))
        for s in cfg.skills
    )
    return dataclasses.replace(cfg, skills=skills)


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


def _utilization(samples: list[dict[str, tuple[float, int]]], used: set[str]) -> dict:
    """The seed's utilization figures from Stats samples: the mean over time
    of the mean utilization of the skills that took calls, its peak for any
    one skill, and the deepest queue seen."""
    means = [sum(s[k][0] for k in used) / len(used) for s in samples if used]
    by_skill = {k: sum(s[k][0] for s in samples) / len(samples) for k in sorted(used)} if samples else {}
    return {
        "utilization": sum(means) / len(means) if means else 0.0,
        "peak_utilization": max((v[0] for s in samples for v in s.values()), default=0.0),
        "peak_queue_depth": max((v[1] for s in samples for v in s.values()), default=0),
        "utilization_by_skill": by_skill,
    }


async def _run_mode(config: RouterConfig, queries: list[tuple[str, str, float]], concurrency: int,
                    label: str, progress: Progress | None, *, all_skills: bool = False) -> dict:
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
    task = progress.add_task(label, total=len(queries)) if progress is not None else None
    try:
        async with AsyncRouterClient(app.address, timeout=30) as client:
            async def one(q: tuple[str, str, float]) -> None:
                nonlocal failed
                async with sem:
                    t0 = time.perf_counter()
                    try:
                        # Text only: the sidecar infers domain and complexity.
                        resp = await client.execute(q[0], all_skills=all_skills)
                    except Exception:
                        failed += 1
                    else:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        costs.append(resp.cost.actual_usd)
                        skills.append(sum(1 for r in resp.results))
                        quality.append(resp.quality)
                    if task is not None:
                        progress.advance(task)

            samples: list[dict[str, tuple[float, int]]] = []

            async def sample() -> None:
                while True:
                    st = await client.stats(timeout=10)
                    samples.append({s.skill: (s.utilization, s.queue_depth) for s in st.skills})
                    await asyncio.sleep(STATS_INTERVAL_S)

            sampler = asyncio.create_task(sample())
            t_start = time.perf_counter()
            try:
                await asyncio.gather(*(one(q) for q in queries))
            finally:
                wall = time.perf_counter() - t_start
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            used = {s.skill for s in (await client.stats(timeout=10)).skills if s.calls}
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
        **_utilization(samples, used),
    }


def _without_store(config: RouterConfig) -> RouterConfig:
    """The demo's two sidecars keep no metrics rows (nothing to clean up)."""
    return dataclasses.replace(config, storage=config.storage.model_copy(update={"sqlite_path": None,
                                                                                 "postgres_dsn": None}))


async def run_demo(config_path: str | None, n: int, concurrency: int = 16, *, progress: bool = True) -> dict:
    """{mode key: figures} for the three MODES, in order."""
    configs = {key: _without_store(load_config(config_path, env={**os.environ, **env})) for key, _, env, _ in MODES}
    queries = workload(configs["moe"], n)
    result: dict = {}
    async with emulator_for(configs["moe"]) as emu:
        bar_cm = contextlib.nullcontext(None)
        if progress:
            from rich.progress import Progress
            bar_cm = Progress()  # type: ignore[assignment]
        with bar_cm as bar:
            for key, label, _, all_skills in MODES:
                result[key] = await _run_mode(with_emulator(configs[key], emu.url), queries, concurrency, label, bar,
                                              all_skills=all_skills)
    return result
