"""Query understanding: signals from the text (domain, complexity, per-skill
text relevance, out of scope), the text term of the score, the config keys,
and both encoders end to end through the real server (the local one, and
the embeddings one against the emulator's /v1/embeddings).

Behaviour on small examples written for these tests; never accuracy figures
(those are in bench/understanding.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from core_fixtures import query, skill
from skill_router_client import AsyncRouterClient

from router.app import build_app
from router.config import load_config, parse_config
from router.core.errors import ConfigError
from router.core.scoring import TEXT_WEIGHT, score_skill, score_skills
from router.core.signals import Calibration, Signals, SignalSource, TextReading, apply_signals, resolve_signals
from router.core.types import ActivationRule
from router.emulator import Emulator, EmulatorConfig, ModelProfile
from router.understanding import LocalEncoder, estimate_complexity
from router.v1 import router_pb2 as pb

# --------------------------------------------------------------- the examples

# Each skill's examples share its vocabulary, as a real skill's would: with
# a handful of unrelated examples the held-out ones look no closer than an
# off-topic query, and out-of-scope detection has nothing to calibrate on.
LEGAL = [
    "Is this NDA clause enforceable?", "Is this contract clause enforceable?",
    "Is the non-compete clause in my contract legal?", "What does the indemnification clause in this contract mean?",
    "Is a verbal contract legally binding?", "Review this contract for legal liability risks",
    "What is the statute of limitations for breach of contract?", "Does this termination clause comply with employment law?",
    "Can my landlord break the lease contract legally?", "Is this liability waiver legally enforceable?",
    "Which law governs this contract clause?", "Is this arbitration clause in the contract legal?",
]
CODE = [
    "Why does my Python function raise a KeyError?", "Why does my Python code raise an IndexError?",
    "Fix the bug in this Python function", "Refactor this JavaScript function to use async await",
    "Fix the null pointer exception in this Java method", "Write a SQL query joining two tables",
    "How do I write a unit test for this Python function?", "Explain this stack trace from my Python code",
    "Why does my JavaScript code throw a TypeError?", "Optimize this slow loop in my Python code",
    "How do I debug this function in my code?", "Review this code for bugs",
]
MATH = [
    "Solve the equation 3x + 7 = 22 for x", "Solve the equation 2x - 5 = 9", "Solve for x: x squared = 49",
    "What is the derivative of x squared?", "What is the integral of 1 over x?", "Integrate x squared from 0 to 1",
    "Prove that the square root of 2 is irrational", "Compute the sum of the first 100 integers",
    "What is the probability of rolling two sixes?", "Find the eigenvalues of this matrix",
    "Simplify the fraction 84 over 126", "Solve this system of equations for x and y",
]
OFF_TOPIC = "Plan a weekend hiking trip in the Alps"

MODELS = {"legal": ModelProfile(latency_ms=1), "code": ModelProfile(latency_ms=1),
          "math": ModelProfile(latency_ms=1), "general": ModelProfile(latency_ms=1)}


def _skill(model: str, **extra: Any) -> dict[str, Any]:
    return {"priority": 1, "optimal_complexity": 5,
            "implementations": [{"name": f"{model}-impl", "backend": "openai", "url": "http://x", "model": model,
                                 "quality": 0.9, "cost_per_query": 0.01, "expected_latency_ms": 100}], **extra}


def understanding_config(url: str, **understanding: Any) -> dict[str, Any]:
    skills = {
        "legal": _skill("legal", examples=LEGAL),
        "code": _skill("code", examples=CODE),
        "math": _skill("math", examples=MATH),
        "general": _skill("general"),  # no examples, only the fallback: never chosen by rule
    }
    skills["general"]["activation"] = {"keywords": ["zzz-never"]}
    for s in skills.values():
        for impl in s["implementations"]:
            impl["url"] = url
    return {
        "skills": skills,
        "domains": {"legal": {"examples": LEGAL}, "code": {"examples": CODE}, "math": {"examples": MATH}},
        "routing": {"fallback_skill": "general", "top_k": 2},
        "understanding": understanding,
        "storage": {"sqlite_path": None},
        "server": {"grace_period_s": 1},
    }


# --------------------------------------------------------------- core: signals

def test_caller_values_win_over_the_text() -> None:
    q = query("Is this NDA clause enforceable?", domain="code", complexity=9)
    q = replace(q, domain_given=True, complexity_given=True)
    sig = resolve_signals(q, TextReading("m", {"legal": 0.9}, {"legal": 0.95}, 2.0))
    assert (sig.domain, sig.domain_source) == ("code", SignalSource.CALLER)
    assert (sig.complexity, sig.complexity_source) == (9, SignalSource.CALLER)
    assert sig.domains[0].domain == "legal"  # the inferred ranking is still reported
    assert apply_signals(q, sig) is q


def test_gaps_are_filled_from_the_text_or_the_default() -> None:
    q = query("q")  # nothing given
    sig = resolve_signals(q, TextReading("m", {"a": 0.7}, {"legal": 0.8, "code": 0.3}, 7.5))
    assert (sig.domain, sig.domain_source) == ("legal", SignalSource.INFERRED)
    assert (sig.complexity, sig.complexity_source) == (7.5, SignalSource.INFERRED)
    assert [d.domain for d in sig.domains] == ["legal", "code"]
    assert apply_signals(q, sig).domain == "legal" and apply_signals(q, sig).complexity == 7.5
    # no domain reaches the threshold, no estimate: the defaults, said so
    sig = resolve_signals(q, TextReading("m", {}, {"legal": 0.2}, None))
    assert (sig.domain, sig.domain_source) == (q.domain, SignalSource.DEFAULT)
    assert (sig.complexity, sig.complexity_source) == (q.complexity, SignalSource.DEFAULT)
    assert not sig.out_of_scope  # no skill has examples: nothing to be out of scope of


def test_out_of_scope_when_no_skill_reaches_the_threshold() -> None:
    q = query("q")
    assert resolve_signals(q, TextReading("m", {"a": 0.49, "b": 0.1}), threshold=0.5).out_of_scope
    assert not resolve_signals(q, TextReading("m", {"a": 0.51, "b": 0.1}), threshold=0.5).out_of_scope


def test_calibration_puts_relevance_one_half_at_the_threshold() -> None:
    cal = Calibration(threshold=-0.4, scale=0.1)
    assert cal.relevance(-0.4) == pytest.approx(0.5)
    assert cal.relevance(-0.2) > 0.5 > cal.relevance(-0.6)
    assert cal.relevance(1e9) == 1.0 and cal.relevance(-1e9) == 0.0


# --------------------------------------------------------------- core: the text term

def test_without_examples_the_score_is_exactly_the_seeds() -> None:
    skills = (skill("a", preferred=("legal",), optimal=6), skill("b", optimal=2))
    q = query("anything", domain="legal", complexity=5)
    plain = score_skills(skills, q, {"a": 0.8, "b": 0.4})
    sig = Signals(domain="legal", domain_source=SignalSource.CALLER, complexity=5,
                  complexity_source=SignalSource.CALLER, method="tfidf-linear")  # no skill has examples
    with_signals = score_skills(skills, q, {"a": 0.8, "b": 0.4}, signals=sig)
    assert [s.score for s in with_signals] == [s.score for s in plain]
    a = plain[0]
    assert a.score == pytest.approx((1 + 0.3 + (0.5 - 0.1)) * (0.7 + 0.3 * 0.8))
    assert a.text_term == 0.0 and a.text_relevance == 0.0


def test_text_relevance_is_a_term_of_the_sum() -> None:
    s = skill("a", optimal=5)
    q = query("q", complexity=5)
    sig = Signals(domain="general", domain_source=SignalSource.DEFAULT, complexity=5,
                  complexity_source=SignalSource.DEFAULT, relevance={"a": 0.75}, best_relevance=0.75)
    sc = score_skill(s, q, 1.0, signals=sig)
    assert sc.text_relevance == 0.75 and sc.text_term == pytest.approx(TEXT_WEIGHT * 0.75)
    assert sc.score == pytest.approx((1 + 0.5 + TEXT_WEIGHT * 0.75) * 1.0)


def test_out_of_scope_deactivates_skills_with_examples_and_activates_the_fallback() -> None:
    with_examples = skill("a")
    keyworded = replace(skill("k"), activation=ActivationRule(keywords=("invoice",)))
    without = skill("plain")
    fallback = replace(skill("fb"), activation=ActivationRule(domains=frozenset({"nowhere"})))
    sig = Signals(domain="general", domain_source=SignalSource.DEFAULT, complexity=5,
                  complexity_source=SignalSource.DEFAULT, relevance={"a": 0.2, "k": 0.1}, out_of_scope=True,
                  best_relevance=0.2, threshold=0.5, fallback_skill="fb")
    scores = {s.name: s for s in score_skills((with_examples, keyworded, without, fallback),
                                              query("my invoice is wrong"), {}, signals=sig)}
    assert not scores["a"].activated and "out of scope" in scores["a"].reason
    assert scores["k"].activated  # its keyword matched: an explicit rule stays
    assert scores["plain"].activated  # no examples: its own rule decides
    assert scores["fb"].activated  # the fallback, whatever its own rule says


# --------------------------------------------------------------- the local encoder

@pytest.fixture(scope="module")
def fitted():
    return LocalEncoder().fit({"legal": LEGAL, "code": CODE, "math": MATH}, {"legal": LEGAL, "code": CODE})


def test_request_path_features_equal_sklearns(fitted) -> None:
    texts = ["Is this NDA clause enforceable?", "Fix my Python loop!!", "ünïcode and   spaces", "zzz"]
    dense = fitted.featurizer.transform(texts).toarray()
    for text, row in zip(texts, dense):
        idx, val = fitted.featurizer.transform_one(text)
        mine = np.zeros(fitted.featurizer.n_features)
        mine[idx] = val
        assert np.allclose(mine, row, atol=1e-6), text


def test_local_encoder_ranks_the_matching_skill_first(fitted) -> None:
    for text, want in [("Is this non-disclosure clause enforceable in court?", "legal"),
                       ("Why does my Python script raise an IndexError?", "code"),
                       ("Solve 5x - 3 = 12 for x", "math")]:
        skills, domains = fitted.read(text)
        assert max(skills, key=skills.get) == want, (text, skills)
        assert skills[want] >= 0.5
    skills, _ = fitted.read(OFF_TOPIC)
    assert max(skills.values()) < 0.5, skills


def test_fit_returns_a_new_model_and_leaves_the_old_one(fitted) -> None:
    before = fitted.read("Is this NDA clause enforceable?")
    other = LocalEncoder().fit({"legal": LEGAL[:4], "code": CODE[:4]}, {})
    assert other is not fitted and other.domains is None
    assert fitted.read("Is this NDA clause enforceable?") == before


def test_one_skill_with_examples_uses_its_centroid() -> None:
    m = LocalEncoder().fit({"legal": LEGAL}, {})
    assert m.skills is not None and m.skills.kind == "centroid"
    near, _ = m.read("Is this NDA clause enforceable under the contract?")
    far, _ = m.read(OFF_TOPIC)
    assert near["legal"] > far["legal"]


def test_complexity_estimate_orders_easy_below_hard() -> None:
    easy = estimate_complexity("hi")
    hard = estimate_complexity(
        "A store sells 3 kinds of boxes. Each small box holds 12 apples, each medium box twice as many, and "
        "each large box 15 more than the medium. If Ann buys 4 small, 3 medium and 2 large boxes and gives "
        "away 25% of the apples, how many apples does she have left, and what is the average per box?")
    assert 0.0 <= easy < 3.0 < hard <= 10.0


# --------------------------------------------------------------- config

def test_examples_file_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "legal.txt").write_text("# legal examples\nIs this clause valid?\n\n  Review my   lease  \n")
    data = understanding_config("http://127.0.0.1:1")
    data["skills"]["legal"]["examples_file"] = "ex/legal.txt"
    data["domains"]["legal"] = {"examples_file": "ex/legal.txt"}
    import yaml
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path, {})
    assert cfg.skill_examples["legal"][-2:] == ("Is this clause valid?", "Review my lease")
    assert cfg.domain_examples["legal"] == ("Is this clause valid?", "Review my lease")


@pytest.mark.parametrize("content, problem", [
    (None, "file not found"),
    ("# only a comment\n\n   \n", "has no examples"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
], ids=["missing", "empty", "binary"])
def test_a_bad_examples_file_is_a_config_error_naming_the_key(tmp_path: Path, content, problem) -> None:
    f = tmp_path / "legal.txt"
    if isinstance(content, str):
        f.write_text(content)
    elif isinstance(content, bytes):
        f.write_bytes(content)
    data = understanding_config("http://127.0.0.1:1")
    data["skills"]["legal"]["examples_file"] = "legal.txt"
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "<t>", {}, base_dir=tmp_path)
    assert "skills.legal.examples_file" in str(exc.value) and problem in str(exc.value)


@pytest.mark.parametrize("edit, key, problem", [
    (lambda d: d["routing"].update(fallback_skill="nope"), "routing.fallback_skill", "names no configured skill"),
    (lambda d: d["domains"].update(tax={}), "domains.tax.examples", "needs examples or examples_file"),
    (lambda d: d["skills"]["code"].update(examples=["ok", "  "]), "skills.code.examples", "entry 1 is empty"),
    (lambda d: d.update(understanding={"encoder": "embeddings"}), "understanding.embeddings", "is required"),
    (lambda d: d.update(understanding={"encoder": "bert"}), "understanding.encoder", "local"),
    (lambda d: d.update(understanding={"out_of_scope_threshold": 1.5}), "understanding.out_of_scope_threshold",
     "greater than 0"),
], ids=["fallback", "domain-empty", "blank-example", "embeddings-missing", "encoder", "threshold"])
def test_bad_understanding_keys_name_the_key(edit, key, problem) -> None:
    data = understanding_config("http://127.0.0.1:1")
    edit(data)
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "<t>", {})
    assert key in str(exc.value) and problem in str(exc.value), str(exc.value)


# --------------------------------------------------------------- end to end: local encoder

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client_u():
    """One emulator and one sidecar (the local encoder) for this module's
    end-to-end cases."""
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        app = build_app(parse_config(understanding_config(emu.url), "<tests>", {}), "127.0.0.1:0")
        await app.start()
        try:
            async with AsyncRouterClient(app.address, timeout=10) as c:
                yield c
        finally:
            await app.stop(0)


module_loop = pytest.mark.asyncio(loop_scope="module")


@module_loop
async def test_a_legal_question_without_a_domain_goes_to_legal(client_u) -> None:
    resp = await client_u.route("Is this NDA clause enforceable under California contract law?")
    assert resp.selections[0].skill == "legal"
    s = resp.signals
    assert s.domain == "legal" and s.domain_source == pb.SIGNAL_SOURCE_INFERRED
    assert s.domains[0].domain == "legal" and s.domains[0].score >= 0.5
    assert s.complexity_source == pb.SIGNAL_SOURCE_INFERRED and 0 <= s.complexity <= 10
    assert s.method == "tfidf-linear" and not s.out_of_scope
    parts = resp.selections[0].parts
    assert parts.text_relevance >= 0.5 and parts.text_term == pytest.approx(TEXT_WEIGHT * parts.text_relevance)
    assert math.isclose(resp.selections[0].score, (1 + parts.domain_bonus + parts.complexity_fit + parts.text_term)
                        * parts.success_factor, rel_tol=1e-9)


@module_loop
async def test_an_off_topic_question_goes_to_the_fallback_only(client_u) -> None:
    resp = await client_u.route(OFF_TOPIC)
    assert resp.signals.out_of_scope and resp.signals.fallback_skill == "general"
    assert [s.skill for s in resp.selections] == ["general"]
    why = {r.skill: r.detail for r in resp.rejections}
    assert all("out of scope" in why[n] for n in ("legal", "code", "math"))


@module_loop
async def test_the_callers_domain_and_complexity_win(client_u) -> None:
    resp = await client_u.route("Is this NDA clause enforceable?", domain="math", complexity=8)
    s = resp.signals
    assert (s.domain, s.domain_source) == ("math", pb.SIGNAL_SOURCE_CALLER)
    assert (s.complexity, s.complexity_source) == (8, pb.SIGNAL_SOURCE_CALLER)
    assert s.domains[0].domain == "legal"  # what the text says is still shown


@module_loop
async def test_execute_carries_the_signals(client_u) -> None:
    resp = await client_u.execute("Why does my Python function raise a KeyError on this dict?")
    assert resp.results[0].skill == "code" and resp.results[0].status == pb.SKILL_STATUS_OK
    assert resp.signals.domain == "code" and resp.signals.domain_source == pb.SIGNAL_SOURCE_INFERRED


async def test_metrics_store_row_has_signal_sources_not_text(emulator_u, tmp_path: Path) -> None:
    data = understanding_config(emulator_u.url)
    data["storage"] = {"sqlite_path": str(tmp_path / "m.db"), "flush_interval_s": 0.05}
    app = build_app(parse_config(data, "<tests>", {}), "127.0.0.1:0")
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=10) as c:
            await c.execute("Solve the equation 2x + 3 = 11", complexity=6)
        await app.store.flush()
        rows = await app.store.recent(5)
    finally:
        await app.stop(0)
    row = rows[0]
    assert (row.domain, row.domain_source, row.complexity_source, row.signal_method) == (
        "math", "inferred", "caller", "tfidf-linear")
    assert "2x" not in repr(row)


@pytest.fixture
async def emulator_u():
    async with Emulator(EmulatorConfig(models=MODELS, seed=1)) as emu:
        yield emu


# --------------------------------------------------------------- end to end: embeddings encoder

async def test_embeddings_encoder_against_the_emulator_with_a_disk_cache(emulator_u, tmp_path: Path) -> None:
    def cfg():  # type: ignore[no-untyped-def]
        data = understanding_config(emulator_u.url, encoder="embeddings",
                                    embeddings={"url": emulator_u.url, "model": "emb-test", "cache_dir": "cache"})
        return parse_config(data, "<tests>", {}, base_dir=tmp_path)

    def embedding_requests() -> list[Any]:
        return [r for r in emulator_u.received if r.path == "/v1/embeddings"]

    app = build_app(cfg(), "127.0.0.1:0")
    await app.start()
    try:
        at_start = len(embedding_requests())
        assert at_start >= 1
        async with AsyncRouterClient(app.address, timeout=10) as c:
            resp = await c.route("Is this NDA clause in the lease agreement enforceable?")
            off = await c.route(OFF_TOPIC)
        assert resp.signals.method == "embeddings:emb-test"
        assert resp.selections[0].skill == "legal" and resp.signals.domain == "legal"
        assert off.signals.out_of_scope and [s.skill for s in off.selections] == ["general"]
        assert len(embedding_requests()) == at_start + 2  # one per query
    finally:
        await app.stop(0)
    assert list((tmp_path / "cache").glob("*.npz"))

    # A restart with the same examples embeds only the queries.
    app = build_app(cfg(), "127.0.0.1:0")
    before = len(embedding_requests())
    await app.start()
    try:
        assert len(embedding_requests()) == before
        assert app.understanding is not None and app.understanding.fitted.cached == app.understanding.fitted.n_examples
    finally:
        await app.stop(0)


async def test_embeddings_down_at_query_time_routes_on_the_rules(emulator_u, tmp_path: Path) -> None:
    data = understanding_config(emulator_u.url, encoder="embeddings",
                                embeddings={"url": emulator_u.url, "model": "emb-test", "cache_dir": None,
                                            "timeout_s": 2})
    app = build_app(parse_config(data, "<tests>", {}, base_dir=tmp_path), "127.0.0.1:0")
    await app.start()
    try:
        app.understanding.encoder.embedder._closed = True  # the endpoint's client is gone
        async with AsyncRouterClient(app.address, timeout=10) as c:
            resp = await c.route("Is this NDA clause enforceable?", domain="legal")
        assert "unavailable" in resp.signals.method
        assert not resp.signals.out_of_scope and resp.signals.domain == "legal"
    finally:
        await app.stop(0)


# --------------------------------------------------------------- the bundled config

def test_bundled_config_routes_the_nda_question_to_legal_by_text() -> None:
    cfg = load_config(None, {})
    fitted = LocalEncoder().fit(cfg.skill_examples, cfg.domain_examples)
    skills, domains = fitted.read("Is this NDA clause enforceable?")
    assert max(domains, key=domains.get) == "legal" and domains["legal"] >= 0.5
    assert max(skills, key=skills.get) == "legal"


# --------------------------------------------------------------- spans

async def test_query_span_records_signal_sources_never_the_text() -> None:
    from support.otlp_receiver import OtlpGrpcReceiver
    from test_telemetry import TRACEPARENT, by_name, drive, grpc_env, legal_plan

    from router.config import TelemetrySettings
    from router.core.signals import DomainScore
    from router.telemetry import setup_telemetry

    plan = legal_plan()
    sig = Signals(domain="legal", domain_source=SignalSource.INFERRED, complexity=6,
                  complexity_source=SignalSource.CALLER, domains=(DomainScore("legal", 0.9),),
                  relevance={"legal": 0.9}, best_relevance=0.9, method="tfidf-linear")
    async with OtlpGrpcReceiver() as rx:
        tel = setup_telemetry(TelemetrySettings(), env=grpc_env(rx))
        await drive(tel, replace(plan, signals=sig), [("traceparent", TRACEPARENT)])
        await tel.aclose()
        spans = await rx.wait_for_spans(8)
    a = by_name(spans, "router.execute").attributes
    assert a["router.signals.domain_source"] == "inferred" and a["router.signals.complexity_source"] == "caller"
    assert a["router.signals.method"] == "tfidf-linear" and a["router.signals.domains"] == ["legal"]
    assert not any(plan.query.text in str(v) for v in a.values())


async def test_embeddings_down_at_start_up_serves_without_text_signals(tmp_path: Path) -> None:
    data = understanding_config("http://127.0.0.1:9", encoder="embeddings",
                                embeddings={"url": "http://127.0.0.1:9", "model": "m", "cache_dir": None,
                                            "timeout_s": 1})
    app = build_app(parse_config(data, "<tests>", {}, base_dir=tmp_path), "127.0.0.1:0")
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=10) as c:
            resp = await c.route("Is this NDA clause enforceable?", force_skills=["legal"])
        assert resp.signals.method.startswith("none (embeddings unavailable at start-up")
        assert resp.signals.complexity_source == pb.SIGNAL_SOURCE_INFERRED  # the estimate needs no encoder
        assert resp.selections[0].skill == "legal" and not resp.signals.out_of_scope
    finally:
        await app.stop(0)


async def test_bundled_config_served_routes_the_nda_question_to_legal(emulator_u) -> None:
    cfg = load_config(None, {}).with_urls(emulator_u.url)
    cfg = replace(cfg, storage=cfg.storage.model_copy(update={"sqlite_path": None}))
    app = build_app(cfg, "127.0.0.1:0")
    await app.start()
    try:
        async with AsyncRouterClient(app.address, timeout=10) as c:
            resp = await c.route("Is this NDA clause enforceable?")
    finally:
        await app.stop(0)
    assert resp.selections[0].skill == "legal"
    assert resp.signals.domain == "legal" and resp.signals.domain_source == pb.SIGNAL_SOURCE_INFERRED
