"""The config: the bundled default, the seed's environment overrides, every
kind of bad file, and the copies the CLI makes (with_urls, with_overrides)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from router.config import (
    ENV_VARS,
    AdmissionSettings,
    BatchingSettings,
    CacheSettings,
    FeedbackSettings,
    InvalidConfig,
    RouterConfig,
    ServerSettings,
    StorageSettings,
    TelemetrySettings,
    check_config,
    default_config_path,
    load_config,
    parse_config,
)
from router.core.errors import ConfigError
from router.core.scoring import score_skills
from router.core.selection import choose_k
from router.core.types import DynamicKRule, Query, RoutingPolicy


@pytest.fixture(scope="module")
def default() -> RouterConfig:
    return load_config(env={})


def write(tmp_path: Path, text: str, name: str = "router.yaml") -> Path:
    path = tmp_path / name
    path.write_text(y(text) if text.startswith("\n") else text, encoding="utf-8")
    return path


def y(text: str) -> str:
    """A YAML literal written indented in the test, as the file holds it."""
    return textwrap.dedent(text).lstrip("\n")


IMPL = '{name: %s, backend: openai, url: "https://openrouter.ai/api", model: m/x, quality: 0.9, cost_per_query: 0.01, expected_latency_ms: 100}'

# Four lines: a valid config with one skill, kimiK2.
MINIMAL = y(f"""
    skills:
      kimiK2:
        implementations:
          - {IMPL % "a"}
    """)


def pre(sections: str) -> str:
    """Global sections first (from line 1), then MINIMAL."""
    return y(sections) + MINIMAL


def skill_extra(*lines: str) -> str:
    """MINIMAL with more keys of skill kimiK2 (from line 5)."""
    return MINIMAL + "".join(f"    {line}\n" for line in lines)


# --- the bundled default -------------------------------------------------------------


def test_default_config_path_is_bundled() -> None:
    path = default_config_path()
    assert path.name == "default.yaml" and path.is_file()
    assert load_config(env={}).source == str(path)


def test_default_sections_equal_the_documented_defaults(default: RouterConfig) -> None:
    # default.yaml spells out every global default; they must agree with the schema.
    assert default.policy == RoutingPolicy()
    assert default.routing.success_window == 50
    assert default.server == ServerSettings()
    assert default.admission == AdmissionSettings()
    assert default.batching == BatchingSettings()
    assert default.telemetry == TelemetrySettings()
    assert default.storage == StorageSettings()
    assert default.cache == CacheSettings()
    assert default.feedback == FeedbackSettings() and default.experiments == {}
    assert default.env_overrides == ()


@pytest.mark.parametrize(
    ("skill", "limit", "default_impl", "cost"),
    [
        ("trm", 10, "trm-local", 0.01),
        ("gepa", 3, "gepa-reflective", 0.02),
        ("ace", 8, "ace-playbook", 0.02),
        ("kimiK2", 5, "tongyi-deepresearch", 0.05),
    ],
)
def test_default_has_the_seed_skills(default: RouterConfig, skill: str, limit: int, default_impl: str, cost: float) -> None:
    s = default.skill(skill)
    assert s.concurrency_limit == limit
    assert s.default_implementation.name == default_impl
    assert s.default_implementation.cost_per_query == pytest.approx(cost)


def test_seed_skills_cost_the_seeds_ten_cents(default: RouterConfig) -> None:
    total = sum(default.skill(n).default_implementation.cost_per_query for n in ("trm", "gepa", "ace", "kimiK2"))
    assert total == pytest.approx(0.10)


@pytest.mark.parametrize(
    ("name", "quality", "cost", "latency", "optimal"),
    [
        ("tongyi-deepresearch", 0.95, 0.05, 2000, 8),
        ("nvidia-nemotron", 0.90, 0.02, 1500, 6),
        ("gemini-flash", 0.85, 0.01, 800, 4),
    ],
)
def test_kimik2_implementations_are_the_seeds(
    default: RouterConfig, name: str, quality: float, cost: float, latency: float, optimal: float
) -> None:
    impl = {i.name: i for i in default.skill("kimiK2").implementations}[name]
    assert (impl.quality, impl.cost_per_query, impl.expected_latency_ms, impl.optimal_complexity) == (
        quality, cost, latency, optimal,
    )
    assert impl.backend == "openai"
    assert impl.url == "https://openrouter.ai/api"
    assert impl.api_key_env == "OPENROUTER_API_KEY"
    assert "/" in impl.model


def test_default_skills_differ_in_priority_and_activation(default: RouterConfig) -> None:
    assert len(default.skills) >= 7
    assert len({s.priority for s in default.skills}) >= 3
    assert any(s.activation.domains for s in default.skills)
    assert any(s.activation.keywords for s in default.skills)
    assert any(s.activation.min_complexity > 0 or s.activation.max_complexity < 10 for s in default.skills)
    # Every default implementation meets the default quality floor.
    assert all(s.default_implementation.quality >= default.policy.quality_threshold for s in default.skills)


@pytest.mark.parametrize(
    ("domain", "complexity", "text"),
    [
        ("general", 7, "plan a product launch"),
        ("code", 4, "fix this failing test"),
        ("math", 6, "solve the integral"),
        ("legal", 5, "review this contract clause"),
        ("finance", 5, "latest price of gold"),
    ],
)
def test_default_top_k_leaves_skills_out(default: RouterConfig, domain: str, complexity: float, text: str) -> None:
    # With "many skills" the gate has to choose: more skills activate than k.
    query = Query(text=text, domain=domain, complexity=complexity)
    activated = [s for s in score_skills(default.skills, query, {}) if s.activated]
    assert len(activated) > choose_k(query, default.policy)


def test_default_normalises_domains_and_keywords(tmp_path: Path) -> None:
    text = skill_extra('activation: {domains: [Code, " LEGAL "], keywords: [Latest]}', "preferred_domains: [Code]")
    s = load_config(write(tmp_path, text), env={}).skill("kimiK2")
    assert s.activation.domains == frozenset({"code", "legal"})
    assert s.activation.keywords == ("latest",)
    assert s.preferred_domains == frozenset({"code"})


def test_options_beyond_the_core_types(default: RouterConfig) -> None:
    assert default.skill_options("ace").batch_window_ms == 50
    assert default.skill_options("trm").batch_window_ms == default.batching.window_ms
    assert default.skill_options("gepa").queue_timeout_s == 10
    assert default.skill_options("kimiK2").queue_timeout_s == default.admission.queue_timeout_s
    assert default.skill_options("search").concurrency_limit_set is False
    assert default.implementation_options("trm", "trm-local").batch == "http_batch"
    assert default.implementation_options("kimiK2", "gemini-flash").can_batch is False
    devstral = default.implementation_options("code", "devstral-small")
    assert devstral.cost_derived
    cost = {i.name: i for i in default.skill("code").implementations}["devstral-small"].cost_per_query
    assert cost == pytest.approx(1500 * 1e-7 + 800 * 3e-7)
    with pytest.raises(KeyError, match="unknown skill"):
        default.skill_options("nope")
    with pytest.raises(KeyError, match="no implementation"):
        default.implementation_options("kimiK2", "nope")


def test_config_is_frozen(default: RouterConfig) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.source = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        default.admission.enabled = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        default.skill_opts["x"] = None  # type: ignore[index]


# --- environment overrides ---------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "get", "expected"),
    [
        ("BRAIN_MOE_ENABLED", "false", lambda c: c.policy.moe_enabled, False),
        ("BRAIN_MOE_ENABLED", "0", lambda c: c.policy.moe_enabled, False),
        ("BRAIN_MOE_ENABLED", "No", lambda c: c.policy.moe_enabled, False),
        ("BRAIN_MOE_ENABLED", "YES", lambda c: c.policy.moe_enabled, True),
        ("BRAIN_MOE_TOP_K", "3", lambda c: c.policy.top_k, 3),
        ("BRAIN_MOE_TOP_K", "dynamic", lambda c: c.policy.top_k, None),
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "25", lambda c: c.batching.window_ms, 25.0),
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "25", lambda c: c.skill_options("trm").batch_window_ms, 25.0),
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "25", lambda c: c.skill_options("ace").batch_window_ms, 25.0),  # every skill's
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "25", lambda c: c.batching.enabled, True),  # setting a window turns it on
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "25", lambda c: c.skill_options("kimiK2").batching_enabled, True),
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "0", lambda c: c.skill_options("ace").batching_enabled, False),
        ("BRAIN_MOE_MAX_CONCURRENT_PER_SKILL", "7", lambda c: c.admission.default_concurrency_limit, 7),
        ("BRAIN_MOE_MAX_CONCURRENT_PER_SKILL", "7", lambda c: c.skill("search").concurrency_limit, 7),
        ("BRAIN_MOE_MAX_CONCURRENT_PER_SKILL", "7", lambda c: c.skill("gepa").concurrency_limit, 7),  # every skill's
        ("BRAIN_MOE_MAX_CONCURRENT_PER_SKILL", "7", lambda c: c.skill("kimiK2").concurrency_limit, 5),  # pinned
        ("BRAIN_DYNAMIC_ROUTING_ENABLED", "false", lambda c: c.policy.dynamic_routing_enabled, False),
        ("BRAIN_QUALITY_THRESHOLD", "0.9", lambda c: c.policy.quality_threshold, 0.9),
        ("BRAIN_LOAD_BALANCING_ENABLED", "False", lambda c: c.admission.enabled, False),
        ("BRAIN_MAX_QUEUE_DEPTH", "5", lambda c: c.admission.default_queue_depth, 5),
        ("BRAIN_MAX_QUEUE_DEPTH", "5", lambda c: c.skill("search").queue_depth, 5),
        ("BRAIN_MAX_QUEUE_DEPTH", "5", lambda c: c.skill("kimiK2").queue_depth, 5),  # every skill's (not pinned)
        ("BRAIN_MAX_QUEUE_DEPTH", "0", lambda c: c.skill("search").queue_depth, 0),
    ],
)
def test_env_overrides_the_file(var: str, value: str, get, expected) -> None:
    cfg = load_config(env={var: value})
    assert get(cfg) == expected
    assert [o.var for o in cfg.env_overrides] == [var]
    assert var in check_config(None, env={var: value})


def test_per_skill_variables_reach_every_skill_but_the_pinned(tmp_path: Path) -> None:
    env = {"BRAIN_MOE_MAX_CONCURRENT_PER_SKILL": "4", "BRAIN_MAX_QUEUE_DEPTH": "6", "BRAIN_MOE_BATCHING_WINDOW_MS": "30"}
    cfg = load_config(env=env)
    names = cfg.skill_names
    assert {s.name: s.concurrency_limit for s in cfg.skills} == {n: (5 if n == "kimiK2" else 4) for n in names}
    assert {s.queue_depth for s in cfg.skills} == {6}
    assert {(o.batching_enabled, o.batch_window_ms) for o in cfg.skill_opts.values()} == {(True, 30.0)}
    by_var = {o.var: o for o in cfg.env_overrides}
    conc = by_var["BRAIN_MOE_MAX_CONCURRENT_PER_SKILL"]
    assert conc.pinned == ("kimiK2",) and set(conc.skills) == set(names) - {"kimiK2"}
    assert by_var["BRAIN_MAX_QUEUE_DEPTH"].skills == names and by_var["BRAIN_MAX_QUEUE_DEPTH"].pinned == ()
    assert str(by_var["BRAIN_MOE_BATCHING_WINDOW_MS"]).startswith(
        "BRAIN_MOE_BATCHING_WINDOW_MS=30 → batching.window_ms = 30.0, batching.enabled = True; every skill's batching (")
    assert str(conc).endswith("except pinned kimiK2")
    assert cfg.skill_options("kimiK2").pinned == ("concurrency_limit",)
    assert "pinned concurrency_limit" in check_config(None, env=env)
    # Without the variables, every skill keeps its own.
    plain = load_config(env={})
    assert plain.skill("gepa").concurrency_limit == 3 and plain.skill_options("ace").batch_window_ms == 50.0


def test_a_file_pins_what_the_variables_must_leave_alone(tmp_path: Path) -> None:
    data = yaml.safe_load(default_config_path().read_text())
    data["skills"]["gepa"]["pinned"] = ["concurrency_limit", "queue_depth"]
    data["skills"]["ace"]["pinned"] = ["batching"]
    f = tmp_path / "router.yaml"
    f.write_text(yaml.safe_dump(data))
    cfg = load_config(f, env={"BRAIN_MOE_MAX_CONCURRENT_PER_SKILL": "9", "BRAIN_MAX_QUEUE_DEPTH": "2",
                              "BRAIN_MOE_BATCHING_WINDOW_MS": "80"})
    assert (cfg.skill("gepa").concurrency_limit, cfg.skill("gepa").queue_depth) == (3, 10)
    assert cfg.skill("trm").concurrency_limit == 9 and cfg.skill("trm").queue_depth == 2
    ace = cfg.skill_options("ace")
    assert ace.batch_window_ms == 50.0 and ace.batching_enabled  # its window, batching now on globally
    assert cfg.skill_options("trm").batch_window_ms == 80.0


@pytest.mark.parametrize(
    ("pinned", "needle"),
    [
        (["queue_depth"], "skills.trm.pinned[0]: pins queue_depth but the skill sets no queue_depth of its own"),
        (["concurrency_limit", "concurrency_limit"], "skills.trm.pinned[1]: concurrency_limit is pinned twice"),
        (["limit"], "skills.trm.pinned[0]"),
    ],
)
def test_a_bad_pin_names_its_path(tmp_path: Path, pinned: list[str], needle: str) -> None:
    data = yaml.safe_load(default_config_path().read_text())
    data["skills"]["trm"]["pinned"] = pinned
    f = tmp_path / "router.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(f, env={})
    assert needle in str(info.value)


def test_every_env_var_is_tested() -> None:
    assert {v.name for v in ENV_VARS} == {
        "BRAIN_MOE_ENABLED", "BRAIN_MOE_TOP_K", "BRAIN_MOE_BATCHING_WINDOW_MS",
        "BRAIN_MOE_MAX_CONCURRENT_PER_SKILL", "BRAIN_DYNAMIC_ROUTING_ENABLED",
        "BRAIN_QUALITY_THRESHOLD", "BRAIN_LOAD_BALANCING_ENABLED", "BRAIN_MAX_QUEUE_DEPTH",
    }


def test_empty_env_value_counts_as_unset() -> None:
    cfg = load_config(env={"BRAIN_MOE_TOP_K": "", "BRAIN_MOE_ENABLED": "  "})
    assert cfg.policy.top_k is None and cfg.policy.moe_enabled and cfg.env_overrides == ()


def test_env_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAIN_MOE_TOP_K", "4")
    assert load_config().policy.top_k == 4


@pytest.mark.parametrize(
    ("var", "value", "problem"),
    [
        ("BRAIN_MOE_ENABLED", "maybe", "must be true/false"),
        ("BRAIN_MOE_TOP_K", "three", "must be an integer or 'dynamic'"),
        ("BRAIN_MOE_TOP_K", "2.5", "must be an integer"),
        ("BRAIN_MOE_TOP_K", "0", "must be between 1 and 32, got 0"),
        ("BRAIN_MOE_TOP_K", "99", "must be between 1 and 32, got 99"),
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "fast", "must be a number"),
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "nan", "must be a finite number"),
        ("BRAIN_MOE_BATCHING_WINDOW_MS", "-5", "must be at least 0, got -5"),
        ("BRAIN_MOE_MAX_CONCURRENT_PER_SKILL", "ten", "must be an integer"),
        ("BRAIN_MOE_MAX_CONCURRENT_PER_SKILL", "0", "must be at least 1, got 0"),
        ("BRAIN_DYNAMIC_ROUTING_ENABLED", "2", "must be true/false"),
        ("BRAIN_QUALITY_THRESHOLD", "high", "must be a number"),
        ("BRAIN_QUALITY_THRESHOLD", "1.5", "must be between 0 and 1, got 1.5"),
        ("BRAIN_LOAD_BALANCING_ENABLED", "enabled", "must be true/false"),
        ("BRAIN_MAX_QUEUE_DEPTH", "-1", "must be at least 0, got -1"),
    ],
)
def test_bad_env_value_names_the_variable(var: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={var: value})
    err = info.value
    assert err.source == var
    assert problem in err.problem
    assert str(err).startswith(f"{var}: ")


# --- bad files ----------------------------------------------------------------------


BAD_FILES = [
    # (id, file text, key path, problem fragment, line)
    ("wrong type", pre("""
        routing:
          top_k: three
        """), "routing.top_k", "must be an integer, got 'three'", 2),
    ("bool is not an int", skill_extra('priority: true'), "skills.kimiK2.priority", "must be an integer, got true", 5),
    ("string is not a bool", pre("""
        routing:
          moe_enabled: "yes"
        """), "routing.moe_enabled", "must be true or false", 2),
    ("out of range", f"""
        skills:
          kimiK2:
            implementations:
              - {IMPL % "a"}
              - {{name: b, backend: openai, url: "https://x.example", model: m, quality: 1.5, cost_per_query: 0.01, expected_latency_ms: 1}}
        """, "skills.kimiK2.implementations[1].quality", "must be between 0 and 1, got 1.5", 5),
    ("negative cost", """
        skills:
          kimiK2:
            implementations:
              - {name: b, backend: http, url: "http://127.0.0.1:1/x", quality: 0.5, cost_per_query: -1, expected_latency_ms: 1}
        """, "skills.kimiK2.implementations[0].cost_per_query", "must be at least 0, got -1", 4),
    ("unknown key typo", pre("""
        routing:
          quality_treshold: 0.9
        """), "routing.quality_treshold", "unknown key (did you mean 'quality_threshold'?)", 2),
    ("unknown section", pre("""
        rooting: {}
        """), "rooting", "did you mean 'routing'", 1),
    ("unknown implementation key", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5, latency_ms: 3}
        """, "skills.kimiK2.implementations[0].latency_ms", "unknown key", 4),
    ("duplicate implementation", f"""
        skills:
          kimiK2:
            implementations:
              - {IMPL % "a"}
              - {IMPL % "b"}
              - {IMPL % "a"}
        """, "skills.kimiK2.implementations[2].name", "duplicate implementation name 'a' (also implementations[0])", 6),
    ("bad default_implementation", skill_extra('default_implementation: gemini'), "skills.kimiK2.default_implementation", "'gemini' names no implementation of this skill (have: a)", 5),
    ("no implementations", """
        skills:
          kimiK2:
            implementations: []
        """, "skills.kimiK2.implementations", "must have at least 1 entries", 3),
    ("missing required key", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "http://h/x", cost_per_query: 0.1, expected_latency_ms: 5}
        """, "skills.kimiK2.implementations[0].quality", "required key missing", 4),
    ("bad backend", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: grpc, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5}
        """, "skills.kimiK2.implementations[0].backend", "must be one of 'openai' or 'http', got 'grpc'", 4),
    ("bad url", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "ftp://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5}
        """, "skills.kimiK2.implementations[0].url", "must be an http:// or https:// URL", 4),
    ("openai needs a model", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: openai, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5}
        """, "skills.kimiK2.implementations[0].model", "is required for the openai backend", 4),
    ("batch mode needs its backend", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5, batch: openai_completions}
        """, "skills.kimiK2.implementations[0].batch", "needs backend 'openai'", 4),
    ("no cost", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "http://h/x", quality: 0.9, price_per_input_token: 0.000001, expected_latency_ms: 5}
        """, "skills.kimiK2.implementations[0].cost_per_query", "missing: price_per_output_token, expected_input_tokens", 4),
    ("literal api key", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5, api_key: sk-or-v1-0123456789abcdef}
        """, "skills.kimiK2.implementations[0].api_key", "a literal secret is not allowed", 4),
    ("key in api_key_env", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5, api_key_env: sk-or-v1-0123456789abcdef}
        """, "skills.kimiK2.implementations[0].api_key_env", "not the key itself", 4),
    ("key-like api_key_env", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5, api_key_env: AKIAIOSFODNN7EXAMPLE}
        """, "skills.kimiK2.implementations[0].api_key_env", "not the key itself", 4),
    ("activation range reversed", skill_extra('activation: {min_complexity: 8, max_complexity: 3}'), "skills.kimiK2.activation.max_complexity", "must be at least min_complexity (8), got 3", 5),
    ("complexity out of range", skill_extra('optimal_complexity: 11'), "skills.kimiK2.optimal_complexity", "must be between 0 and 10, got 11", 5),
    ("priority zero", skill_extra('priority: 0'), "skills.kimiK2.priority", "must be at least 1, got 0", 5),
    ("domains not a list", skill_extra('preferred_domains: code'), "skills.kimiK2.preferred_domains", "must be a list, got 'code'", 5),
    ("bad skill name", """
        skills:
          "kimi K2":
            implementations:
              - {name: a, backend: http, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5}
        """, "skills['kimi K2']", "skill name 'kimi K2' must start with a letter", 2),
    ("no skills", """
        routing: {}
        """, "skills", "at least one skill must be configured", None),
    ("every skill disabled", skill_extra('enabled: false'), "skills", "every skill is disabled", 1),
    ("dynamic k shrinking", pre("""
        routing:
          dynamic_k: {threshold: 7, high_k: 2, low_k: 3}
        """), "routing.dynamic_k.high_k", "must be at least low_k (3)", 2),
    ("breaker min_calls beyond window", pre("""
        admission:
          breaker: {window: 5, min_calls: 10}
        """), "admission.breaker.min_calls", "must be at most window (5), got 10", 2),
    ("bad algorithm", pre("""
        admission:
          adaptive_limit: {algorithm: vegas}
        """), "admission.adaptive_limit.algorithm", "must be one of 'aimd' or 'gradient2', got 'vegas'", 2),
    ("bad batching key", pre("""
        batching:
          key: domain
        """), "batching.key", "must be one of 'implementation' or 'seed'", 2),
    ("bad listen address", pre("""
        server:
          listen: localhost
        """), "server.listen", "must be HOST:PORT", 2),
    ("deadline zero", pre("""
        server:
          default_deadline_s: 0
        """), "server.default_deadline_s", "must be greater than 0, got 0", 2),
    ("storage buffer smaller than a batch", pre("""
        storage: {batch_size: 500, buffer_size: 100}
        """), "storage.buffer_size", "must be at least batch_size (500)", 1),
    ("infinite timeout", """
        skills:
          kimiK2:
            implementations:
              - {name: a, backend: http, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5, timeout_s: .inf}
        """, "skills.kimiK2.implementations[0].timeout_s", "must be a finite number", 4),
    ("section not a mapping", pre("""
        routing: 5
        """), "routing", "must be a mapping", 1),
]


@pytest.mark.parametrize(("text", "path", "problem", "line"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_file_names_the_key(tmp_path: Path, text: str, path: str, problem: str, line: int | None) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(file, env={})
    err = info.value
    assert isinstance(err, InvalidConfig)
    assert len(err.issues) == 1, str(err)
    assert err.source == str(file)
    assert err.path == path
    assert problem in err.problem
    assert err.line == line
    where = f"{file}:{line}" if line else str(file)
    assert str(err) == f"{where}: {path}: {err.problem}"


def test_secrets_are_never_echoed(tmp_path: Path) -> None:
    secret = "sk-or-v1-0123456789abcdef"
    for key in ("api_key", "api_key_env", "token"):
        file = write(tmp_path, f"""
            skills:
              kimiK2:
                implementations:
                  - {{name: a, backend: http, url: "http://h/x", quality: 0.9, cost_per_query: 0.1, expected_latency_ms: 5, {key}: {secret}}}
            """)
        with pytest.raises(ConfigError) as info:
            load_config(file, env={})
        assert secret not in str(info.value)
        assert info.value.__cause__ is None and info.value.__context__ is None


def test_all_problems_listed_first_one_kept(tmp_path: Path) -> None:
    file = write(tmp_path, f"""
        routing:
          top_kk: 3
          quality_threshold: 1.5
        skills:
          kimiK2:
            priority: high
            implementations:
              - {IMPL % "a"}
        """)
    with pytest.raises(ConfigError) as info:
        load_config(file, env={"BRAIN_MOE_ENABLED": "perhaps"})
    err = info.value
    assert [(i.source, i.path, i.line) for i in err.issues] == [
        ("BRAIN_MOE_ENABLED", "routing.moe_enabled", None),
        (str(file), "routing.top_kk", 2),
        (str(file), "routing.quality_threshold", 3),
        (str(file), "skills.kimiK2.priority", 6),
    ]
    assert (err.source, err.path) == ("BRAIN_MOE_ENABLED", "routing.moe_enabled")
    assert "must be true/false" in err.problem
    lines = str(err).splitlines()
    assert lines[0] == "4 problems in the config:"
    assert lines[2] == f"  {file}:2: routing.top_kk: unknown key (did you mean 'top_k'?)"


def test_env_range_problem_names_the_variable_even_with_file_problems(tmp_path: Path) -> None:
    file = write(tmp_path, pre("""
        routing:
          quality_threshold: 0.5
          top_k: 0
        """))
    with pytest.raises(ConfigError) as info:
        load_config(file, env={"BRAIN_QUALITY_THRESHOLD": "7"})
    assert [(i.source, i.path) for i in info.value.issues] == [
        ("BRAIN_QUALITY_THRESHOLD", "routing.quality_threshold"),
        (str(file), "routing.top_k"),
    ]


@pytest.mark.parametrize(
    ("text", "problem", "line"),
    [
        ("routing:\n  top_k: 3\n server: {}\n", "invalid YAML at column", 3),
        ("skills:\n  a: [1, 2\n", "invalid YAML at column", 3),
        ("routing: {}\nrouting: {}\n", "duplicate key 'routing' (first at line 1)", 2),
        ("skills:\n  a: {}\n  b: {}\n  a: {}\n", "duplicate key 'a' (first at line 2)", 4),
        ("--- {}\n--- {}\n", "expected a single document", 2),
        ("- routing\n- skills\n", "the top level must be a mapping", None),
        ("", "at least one skill must be configured", None),
    ],
    ids=["indentation", "unclosed list", "duplicate section", "duplicate skill", "two documents", "top-level list", "empty"],
)
def test_yaml_problems_give_file_and_line(tmp_path: Path, text: str, problem: str, line: int | None) -> None:
    file = tmp_path / "router.yaml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file, env={})
    assert info.value.source == str(file)
    assert problem in info.value.problem
    assert info.value.line == line
    if line:
        assert str(info.value).startswith(f"{file}:{line}: ")


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "absent.yaml", "file not found"),
        (lambda d: d, "is a directory"),
        (lambda d: (d / "latin1.yaml").write_bytes(b"skills: \xff\n") and d / "latin1.yaml", "not UTF-8"),
    ],
    ids=["missing", "directory", "not utf-8"],
)
def test_unreadable_file(tmp_path: Path, make, problem: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.source == str(path)
    assert problem in info.value.problem


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"routing": {"top_k": 0}}, source="inline", env={})
    assert (info.value.source, info.value.path) == ("inline", "routing.top_k")
    assert info.value.line is None
    cfg = parse_config(
        {"skills": {"s": {"implementations": [{"name": "a", "backend": "http", "url": "http://h/x", "quality": 0.9,
                                                "cost_per_query": 0.1, "expected_latency_ms": 5}]}}},
        source="inline", env={},
    )
    assert cfg.source == "inline" and cfg.skill_names == ("s",)
    # Defaults from the admission section; the implementation inherits the skill's optimal complexity.
    s = cfg.skill("s")
    assert (s.concurrency_limit, s.queue_depth, s.priority) == (10, 50, 1)
    assert s.default_implementation.optimal_complexity == s.optimal_complexity == 5


def test_parse_config_does_not_mutate_its_input() -> None:
    data = {"skills": {"s": {"implementations": [{"name": "a", "backend": "http", "url": "http://h/x", "quality": 0.9,
                                                   "cost_per_query": 0.1, "expected_latency_ms": 5}]}}}
    parse_config(data, env={"BRAIN_MOE_TOP_K": "4"})
    assert "routing" not in data


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "routing:\nadmission:\n  breaker:\n" + MINIMAL), env={})
    assert cfg.policy == RoutingPolicy() and cfg.admission == AdmissionSettings()


# --- copies ---------------------------------------------------------------------------


def test_with_urls_points_every_implementation_at_one_url(default: RouterConfig) -> None:
    demo = default.with_urls("http://127.0.0.1:8765")
    urls = {i.url for s in demo.skills for i in s.implementations}
    assert urls == {"http://127.0.0.1:8765"}
    assert demo.skill_names == default.skill_names
    # API keys are not sent to the other server; everything else is kept,
    # and the original is untouched.
    k2, demo_k2 = default.skill("kimiK2"), demo.skill("kimiK2")
    assert all(i.api_key_env is None for s in demo.skills for i in s.implementations)
    assert k2.default_implementation.api_key_env == "OPENROUTER_API_KEY"
    assert [dataclasses.replace(i, url="", api_key_env=None) for i in k2.implementations] == [
        dataclasses.replace(i, url="") for i in demo_k2.implementations
    ]
    assert k2.default_implementation.url == "https://openrouter.ai/api"
    assert demo.policy == default.policy and demo.skill_options("ace") == default.skill_options("ace")


def test_with_urls_rejects_a_bad_url(default: RouterConfig) -> None:
    with pytest.raises(ConfigError) as info:
        default.with_urls("127.0.0.1:8765")
    assert (info.value.source, info.value.path) == ("with_urls", "url")


@pytest.mark.parametrize(
    ("fields", "get", "expected"),
    [
        ({"moe_enabled": False}, lambda c: c.policy.moe_enabled, False),
        ({"top_k": 4}, lambda c: c.policy.top_k, 4),
        ({"top_k": None}, lambda c: c.policy.top_k, None),
        ({"dynamic_routing_enabled": False}, lambda c: c.policy.dynamic_routing_enabled, False),
        ({"quality_threshold": 0.9}, lambda c: c.policy.quality_threshold, 0.9),
        ({"dynamic_k": DynamicKRule(5, 6, 2)}, lambda c: c.policy.dynamic_k, DynamicKRule(5, 6, 2)),
        ({"dynamic_k": {"threshold": 5}}, lambda c: c.policy.dynamic_k, DynamicKRule(5, 5, 3)),
        ({"success_window": 10}, lambda c: c.routing.success_window, 10),
    ],
)
def test_with_overrides(default: RouterConfig, fields: dict, get, expected) -> None:
    changed = default.with_overrides(**fields)
    assert get(changed) == expected
    assert changed.routing.to_policy() == changed.policy
    assert default.policy == RoutingPolicy()  # the original is untouched
    assert changed.skills == default.skills


@pytest.mark.parametrize(
    ("fields", "path", "problem"),
    [
        ({"top_k": 0}, "routing.top_k", "must be between 1 and 32"),
        ({"quality_threshold": 2}, "routing.quality_threshold", "must be between 0 and 1"),
        ({"moe_enabled": "no"}, "routing.moe_enabled", "must be true or false"),
        ({"topk": 3}, "routing.topk", "did you mean 'top_k'"),
    ],
)
def test_with_overrides_validates(default: RouterConfig, fields: dict, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        default.with_overrides(**fields)
    assert (info.value.source, info.value.path) == ("with_overrides", path)
    assert problem in info.value.problem


# --- check-config -----------------------------------------------------------------------


def test_check_config_summary() -> None:
    text = check_config(default_config_path(), env={"OPENROUTER_API_KEY": "sk-or-v1-topsecret", "BRAIN_MOE_TOP_K": "4"})
    for part in ("kimiK2", "tongyi-deepresearch", "gemini-flash", "limit 5", "fixed k = 4",
                 "BRAIN_MOE_TOP_K=4 → routing.top_k = 4", "$OPENROUTER_API_KEY (set)", "$0.2100"):
        assert part in text, part
    assert "topsecret" not in text
    assert "dynamic k: complexity > 7 → 5, else 3" in check_config(None, env={})
    assert "(NOT SET)" in check_config(None, env={})


def test_check_config_raises_on_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        check_config(write(tmp_path, "routing: {top_k: 0}\n" + MINIMAL), env={})
