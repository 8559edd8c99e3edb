"""router.core.scoring: the seed's relevance score, its parts, and activation."""

from __future__ import annotations

from dataclasses import replace

import pytest
from core_fixtures import query, scores_for, skill
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.scoring import (
    COMPLEXITY_FIT_MAX,
    DOMAIN_BONUS,
    SUCCESS_FLOOR,
    SUCCESS_WEIGHT,
    SkillScore,
    rank_key,
    score_skill,
    score_skills,
)
from router.core.types import ActivationRule

approx = pytest.approx


def test_constants_are_the_seeds():
    assert (DOMAIN_BONUS, COMPLEXITY_FIT_MAX, SUCCESS_FLOOR, SUCCESS_WEIGHT) == (0.3, 0.5, 0.7, 0.3)


# --------------------------------------------------------------- not activated

@pytest.mark.parametrize(
    "rule, text, domain, complexity, reason_part",
    [
        (ActivationRule(domains=frozenset({"legal"})), "q", "math", 5, "domain 'math' not in ['legal']"),
        (ActivationRule(domains=frozenset({"legal", "tax"})), "q", "general", 5, "not in ['legal', 'tax']"),
        (ActivationRule(min_complexity=3), "q", "general", 2.5, "complexity 2.5 outside [3, 10]"),
        (ActivationRule(max_complexity=6), "q", "general", 6.01, "complexity 6.01 outside [0, 6]"),
        (ActivationRule(min_complexity=2, max_complexity=4), "q", "general", 0, "outside [2, 4]"),
        (ActivationRule(keywords=("contract", "lawsuit")), "what is a tort", "general", 5, "none of the keywords"),
        # domain is checked first, then complexity, then keywords
        (ActivationRule(domains=frozenset({"legal"}), min_complexity=9, keywords=("x",)), "q", "math", 1, "domain"),
        (ActivationRule(min_complexity=9, keywords=("x",)), "q", "general", 1, "complexity"),
    ],
    ids=["domain", "domain-two", "below-min", "above-max", "below-range", "keywords", "domain-first",
         "complexity-before-keywords"],
)
def test_not_activated_scores_zero_with_reason(rule, text, domain, complexity, reason_part):
    s = skill("s", priority=2, preferred=(domain,), optimal=complexity)
    s = replace(s, activation=rule)
    sc = score_skill(s, query(text, domain=domain, complexity=complexity), 0.5)
    assert sc.activated is False
    assert reason_part in sc.reason
    assert sc.score == 0.0
    assert sc.rank_score == 0.0
    assert sc.domain_bonus == 0.0 and sc.complexity_fit == 0.0
    # the parts that do not depend on activation are still reported
    assert sc.priority_weight == approx(0.5)
    assert sc.success_rate == 0.5 and sc.success_factor == approx(0.85)


def test_activated_has_empty_reason():
    sc = score_skill(skill("s"), query(), 1.0)
    assert sc.activated is True and sc.reason == ""
    assert sc.name == "s"


# --------------------------------------------------------------- activation

@pytest.mark.parametrize(
    "rule, text, domain, complexity, expected",
    [
        (ActivationRule(), "anything", "whatever", 0, True),
        (ActivationRule(), "anything", "whatever", 10, True),
        (ActivationRule(domains=frozenset({"legal"})), "q", "legal", 5, True),
        (ActivationRule(domains=frozenset({"legal"})), "q", "math", 5, False),
        (ActivationRule(domains=frozenset()), "q", "math", 5, True),
        (ActivationRule(min_complexity=3, max_complexity=7), "q", "g", 3, True),
        (ActivationRule(min_complexity=3, max_complexity=7), "q", "g", 7, True),
        (ActivationRule(min_complexity=3, max_complexity=7), "q", "g", 2.999, False),
        (ActivationRule(min_complexity=3, max_complexity=7), "q", "g", 7.001, False),
        (ActivationRule(min_complexity=5, max_complexity=5), "q", "g", 5, True),
        (ActivationRule(keywords=("contract",)), "Review this CONTRACT please", "g", 5, True),
        (ActivationRule(keywords=("contract",)), "review this contract", "g", 5, True),
        (ActivationRule(keywords=("Contract",)), "review this contract", "g", 5, True),
        (ActivationRule(keywords=("CONTRACT",)), "Review This Contract", "g", 5, True),
        (ActivationRule(keywords=("tort", "contract")), "a TORT claim", "g", 5, True),
        (ActivationRule(keywords=("tort", "contract")), "a claim", "g", 5, False),
        (ActivationRule(keywords=("sue",)), "pursue it", "g", 5, True),  # substring match
        (ActivationRule(domains=frozenset({"legal"}), min_complexity=4, keywords=("law",)), "Law Q", "legal", 4, True),
        (ActivationRule(domains=frozenset({"legal"}), min_complexity=4, keywords=("law",)), "Law Q", "legal", 3, False),
    ],
    ids=["any", "any-max", "domain-in", "domain-out", "no-domains", "min-inclusive", "max-inclusive",
         "just-below", "just-above", "point-range", "kw-upper-query", "kw-lower", "kw-capitalised-config",
         "kw-upper-config", "kw-any-of", "kw-none", "kw-substring", "all-parts", "all-parts-one-fails"],
)
def test_activation(rule, text, domain, complexity, expected):
    s = skill("s")
    s = replace(s, activation=rule)
    assert score_skill(s, query(text, domain=domain, complexity=complexity), 1.0).activated is expected


def test_activation_uses_given_query_lower_not_text():
    s = skill("s", keywords=("contract",))
    q = query("no keyword here")
    assert score_skill(s, q, 1.0).activated is False
    assert score_skill(s, q, 1.0, query_lower="contract").activated is True


# --------------------------------------------------------------- parts

@pytest.mark.parametrize(
    "preferred, domain, bonus",
    [((), "legal", 0.0), (("legal",), "legal", 0.3), (("legal", "tax"), "tax", 0.3), (("legal",), "math", 0.0)],
    ids=["none-preferred", "preferred", "one-of-two", "other-domain"],
)
def test_domain_bonus(preferred, domain, bonus):
    sc = score_skill(skill("s", preferred=preferred, optimal=5), query(domain=domain, complexity=5), 1.0)
    assert sc.domain_bonus == approx(bonus)
    assert sc.score == approx(1.0 + bonus + 0.5)


@pytest.mark.parametrize(
    "optimal, complexity, fit",
    [
        (5, 5, 0.5), (5, 6, 0.4), (5, 4, 0.4), (5, 7, 0.3), (5, 2.5, 0.25), (8, 2, 0.0),
        (3, 7, 0.1), (5, 10, 0.0), (0, 10, 0.0), (10, 4.5, 0.0), (2, 6.5, 0.05),
    ],
    ids=["diff-0", "diff-1", "diff-1-below", "diff-2", "diff-2.5", "diff-6", "diff-4", "diff-5", "diff-10",
         "diff-5.5", "diff-4.5"],
)
def test_complexity_fit(optimal, complexity, fit):
    sc = score_skill(skill("s", optimal=optimal), query(complexity=complexity), 1.0)
    assert sc.complexity_fit == approx(fit, abs=1e-12)
    assert sc.complexity_fit >= 0.0
    assert sc.score == approx(1.0 + fit)


@pytest.mark.parametrize(
    "rate, clamped, factor",
    [(-1.0, 0.0, 0.7), (0.0, 0.0, 0.7), (0.25, 0.25, 0.775), (0.5, 0.5, 0.85), (0.9, 0.9, 0.97),
     (1.0, 1.0, 1.0), (1.5, 1.0, 1.0), (float("inf"), 1.0, 1.0), (float("-inf"), 0.0, 0.7)],
    ids=["negative", "zero", "quarter", "half", "0.9", "one", "above-one", "inf", "-inf"],
)
def test_success_factor(rate, clamped, factor):
    sc = score_skill(skill("s", optimal=5), query(complexity=5), rate)
    assert sc.success_rate == clamped
    assert sc.success_factor == approx(factor)
    assert sc.score == approx(1.5 * factor)


@pytest.mark.parametrize("priority, weight", [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25), (10, 0.1)],
                         ids=lambda v: str(v))
def test_priority_weight_and_rank(priority, weight):
    sc = score_skill(skill("s", priority=priority, optimal=5), query(complexity=5), 1.0)
    assert sc.priority_weight == approx(weight)
    assert sc.score == approx(1.5)  # priority does not change relevance
    assert sc.rank_score == approx(1.5 * weight)
    assert sc.rank_score == sc.score * sc.priority_weight


@pytest.mark.parametrize(
    "preferred, domain, optimal, complexity, rate, priority, score",
    [
        (("legal",), "legal", 8, 8, 1.0, 1, (1 + 0.3 + 0.5) * 1.0),
        (("legal",), "legal", 8, 6, 0.5, 2, (1 + 0.3 + 0.3) * 0.85),
        ((), "legal", 3, 8, 0.0, 1, (1 + 0 + 0.0) * 0.7),
        (("math",), "math", 2, 2, 0.8, 3, (1 + 0.3 + 0.5) * 0.94),
        ((), "general", 5, 1, 1.0, 2, (1 + 0 + 0.1) * 1.0),
    ],
    ids=["max", "mixed", "min", "math", "far"],
)
def test_full_formula(preferred, domain, optimal, complexity, rate, priority, score):
    sc = score_skill(skill("s", preferred=preferred, optimal=optimal, priority=priority),
                     query(domain=domain, complexity=complexity), rate)
    assert sc.score == approx(score)
    assert sc.rank_score == approx(score / priority)


# --------------------------------------------------------------- score_skills

def test_score_skills_keeps_order_and_uses_default_rate():
    skills = (skill("b"), skill("a", domains=("legal",)), skill("c"))
    out = score_skills(skills, query(domain="math"), {"c": 0.0}, default_success_rate=0.5)
    assert [s.name for s in out] == ["b", "a", "c"]
    assert [s.success_rate for s in out] == [0.5, 0.5, 0.0]
    assert [s.activated for s in out] == [True, False, True]


def test_score_skills_lowercases_query_once_for_keywords():
    out = scores_for((skill("k", keywords=("tax",)),), query("TAX question"))
    assert out[0].activated


def test_score_skills_empty():
    assert score_skills((), query(), {}) == ()


# --------------------------------------------------------------- rank_key

def _fake(name: str, priority: int, rank: float) -> SkillScore:
    return SkillScore(skill(name, priority=priority), True, "", 0.0, 0.0, 1.0, 1.0, 1 / priority, rank * priority, rank)


@pytest.mark.parametrize(
    "items, expected",
    [
        ([("a", 1, 1.0), ("b", 1, 2.0)], ["b", "a"]),
        ([("a", 2, 1.0), ("b", 1, 1.0)], ["b", "a"]),  # tie on rank → lower priority number
        ([("b", 1, 1.0), ("a", 1, 1.0)], ["a", "b"]),  # tie on rank and priority → name
        ([("z", 3, 0.9), ("y", 1, 0.9), ("x", 3, 0.9), ("w", 2, 1.0)], ["w", "y", "x", "z"]),
    ],
    ids=["by-rank", "tie-priority", "tie-name", "mixed"],
)
def test_rank_key(items, expected):
    scored = [_fake(*i) for i in items]
    assert [s.name for s in sorted(scored, key=rank_key)] == expected


# --------------------------------------------------------------- properties

_domains = st.sampled_from(["general", "legal", "math", "code"])


@settings(max_examples=300, deadline=None)
@given(
    priority=st.integers(1, 20),
    optimal=st.floats(0, 10),
    complexity=st.floats(0, 10),
    rate=st.floats(allow_nan=False),
    preferred=st.frozensets(_domains, max_size=3),
    act_domains=st.frozensets(_domains, max_size=3),
    domain=_domains,
    lo=st.floats(0, 10),
    hi=st.floats(0, 10),
)
def test_score_bounds(priority, optimal, complexity, rate, preferred, act_domains, domain, lo, hi):
    s = skill("s", priority=priority, optimal=optimal, preferred=preferred, domains=act_domains,
              min_complexity=min(lo, hi), max_complexity=max(lo, hi))
    sc = score_skill(s, query(domain=domain, complexity=complexity), rate)
    assert 0.0 <= sc.success_rate <= 1.0
    assert 0.7 <= sc.success_factor <= 1.0 + 1e-12
    assert sc.priority_weight == approx(1 / priority)
    assert sc.activated == ((not act_domains or domain in act_domains) and min(lo, hi) <= complexity <= max(lo, hi))
    if sc.activated:
        assert 0.7 - 1e-12 <= sc.score <= 1.8 + 1e-12
        assert 0.0 <= sc.complexity_fit <= 0.5
        assert sc.score == approx((1 + sc.domain_bonus + sc.complexity_fit) * sc.success_factor)
        assert sc.rank_score == approx(sc.score / priority)
    else:
        assert sc.score == 0.0 and sc.rank_score == 0.0 and sc.reason


@settings(max_examples=200, deadline=None)
@given(r1=st.floats(0, 1), r2=st.floats(0, 1))
def test_success_rate_is_monotonic(r1, r2):
    s = skill("s")
    a, b = score_skill(s, query(), r1), score_skill(s, query(), r2)
    if r1 <= r2:
        assert a.score <= b.score
    else:
        assert a.score >= b.score


def test_activation_keywords_are_normalised_to_lower_case():
    rule = ActivationRule(keywords=("Contract", "TORT", "law"))
    assert rule.keywords == ("contract", "tort", "law")
    assert rule.matches("a tort claim", "general", 5.0) == (True, "")
