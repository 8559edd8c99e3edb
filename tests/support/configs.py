"""The integration tests' skills config and emulated models."""

from __future__ import annotations

import copy
from typing import Any

from router.config import RouterConfig, parse_config
from router.emulator import ModelProfile

# The integration tests' skills: the seed's four (kimiK2 with its three
# implementations), plus a skill whose backend always fails and one that
# never answers in time. URLs are filled in with the emulator's address.
SKILLS: dict[str, Any] = {
    "kimiK2": {
        "priority": 1, "preferred_domains": ["research"], "optimal_complexity": 7, "concurrency_limit": 5,
        "implementations": [
            {"name": "tongyi-deepresearch", "backend": "openai", "url": "http://x", "model": "tongyi",
             "quality": 0.95, "cost_per_query": 0.05, "expected_latency_ms": 2000, "optimal_complexity": 8},
            {"name": "nvidia-nemotron", "backend": "openai", "url": "http://x", "model": "nemotron",
             "quality": 0.90, "cost_per_query": 0.02, "expected_latency_ms": 1500, "optimal_complexity": 6},
            {"name": "gemini-flash", "backend": "openai", "url": "http://x", "model": "gemini",
             "quality": 0.85, "cost_per_query": 0.01, "expected_latency_ms": 800, "optimal_complexity": 4},
        ],
    },
    "trm": {
        "priority": 2, "optimal_complexity": 3, "concurrency_limit": 10,
        "implementations": [{"name": "trm-http", "backend": "http", "url": "http://x", "model": "trm",
                             "quality": 0.9, "cost_per_query": 0.02, "expected_latency_ms": 300}],
    },
    "gepa": {
        "priority": 3, "optimal_complexity": 9, "concurrency_limit": 3,
        "activation": {"min_complexity": 5},
        "implementations": [{"name": "gepa-large", "backend": "openai", "url": "http://x", "model": "gepa",
                             "quality": 0.95, "cost_per_query": 0.02, "expected_latency_ms": 1500}],
    },
    "ace": {
        "priority": 2, "preferred_domains": ["code"], "optimal_complexity": 5, "concurrency_limit": 8,
        "activation": {"domains": ["code", "general", "research"]},
        "implementations": [{"name": "ace-http", "backend": "http", "url": "http://x", "model": "ace",
                             "quality": 0.88, "cost_per_query": 0.01, "expected_latency_ms": 500}],
    },
    "legal": {
        "priority": 1, "preferred_domains": ["legal"], "optimal_complexity": 6,
        "activation": {"domains": ["legal"]},
        "implementations": [{"name": "legal-llm", "backend": "openai", "url": "http://x", "model": "legal",
                             "quality": 0.9, "cost_per_query": 0.03, "expected_latency_ms": 900}],
    },
    "flaky": {
        "priority": 5, "optimal_complexity": 5,
        "activation": {"keywords": ["flaky"]},
        "implementations": [{"name": "broken", "backend": "openai", "url": "http://x", "model": "broken",
                             "quality": 0.9, "cost_per_query": 0.01, "expected_latency_ms": 100}],
    },
    "slow": {
        "priority": 5, "optimal_complexity": 5,
        "activation": {"keywords": ["slow"]},
        "implementations": [{"name": "glacial", "backend": "openai", "url": "http://x", "model": "glacial",
                             "quality": 0.9, "cost_per_query": 0.01, "expected_latency_ms": 100}],
    },
}

MODELS = {
    "tongyi": ModelProfile(latency_ms=8), "nemotron": ModelProfile(latency_ms=6), "gemini": ModelProfile(latency_ms=4),
    "trm": ModelProfile(latency_ms=3), "gepa": ModelProfile(latency_ms=6), "ace": ModelProfile(latency_ms=4),
    "legal": ModelProfile(latency_ms=5),
    "broken": ModelProfile(latency_ms=1, error_rate=1.0),
    "glacial": ModelProfile(latency_ms=60_000),
}


def config_data(url: str, **sections: Any) -> dict[str, Any]:
    skills = copy.deepcopy(SKILLS)
    for skill in skills.values():
        for impl in skill["implementations"]:
            impl["url"] = url
    data: dict[str, Any] = {"skills": skills, "storage": {"sqlite_path": None}, "server": {"grace_period_s": 5, "admin_listen": None}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return data


def make_config(url: str, env: dict[str, str] | None = None, **sections: Any) -> RouterConfig:
    return parse_config(config_data(url, **sections), "<tests>", env or {})


