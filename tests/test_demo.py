"""The demo's emulated backends tell the truth: every implementation,
``http`` ones included, answers as its own profile with its declared
latency (not the emulator's default)."""

from __future__ import annotations

from urllib.parse import urlsplit

from skill_router_client import AsyncRouterClient

from router.app import build_app
from router.config import load_config
from router.demo import emulated_model, emulator_config, emulator_for, with_emulator


def test_every_implementation_has_its_own_profile_at_its_declared_latency() -> None:
    config = load_config(None, env={})
    emu_cfg = emulator_config(config, latency_scale=0.1)
    demo = with_emulator(config, "http://127.0.0.1:9")
    http = 0
    for skill, demo_skill in zip(config.skills, demo.skills):
        for impl, demo_impl in zip(skill.implementations, demo_skill.implementations):
            profile = emu_cfg.models[emulated_model(skill, impl)]
            assert profile.latency_ms == impl.expected_latency_ms, (skill.name, impl.name)
            if impl.backend == "http":
                http += 1
                assert not impl.model  # why the URL has to carry it
                assert urlsplit(demo_impl.url).path == f"/models/{skill.name}.{impl.name}"
            else:
                assert demo_impl.url == "http://127.0.0.1:9"
    assert http == 4  # the bundled config's four http implementations
    assert emu_cfg.latency_scale == 0.1


async def test_http_skills_answer_as_their_own_profiles_through_the_sidecar() -> None:
    config = load_config(None, env={})
    async with emulator_for(config) as emu:
        app = build_app(with_emulator(config, emu.url), "127.0.0.1:0")
        await app.start()
        try:
            async with AsyncRouterClient(app.address, timeout=30) as c:
                resp = await c.execute("Compare three approaches to retrieval caching", domain="research",
                                       complexity=9, all_skills=True)
        finally:
            await app.stop(0)
        ran = {(r.skill, r.implementation) for r in resp.results}
        assert {"trm", "gepa", "ace"} & {s for s, _ in ran}
        stats = emu.stats()
        for skill, impl in ran:
            spec = next(i for i in config.skill(skill).implementations if i.name == impl)
            assert stats[emulated_model(config.skill(skill), spec)].requests >= 1, (skill, impl)
        assert "default" not in stats  # nothing fell back to the emulator's default profile
