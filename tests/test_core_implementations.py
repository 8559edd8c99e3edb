"""router.core.implementations: the seed's selectOptimalImplementation with a
quality floor, breaker-unavailable implementations and the non-dynamic mode."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from core_fixtures import KIMI_K2_IMPLS, impl, kimi_k2, query, skill
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.implementations import (
    COMPLEXITY_WEIGHT,
    COST_WEIGHT,
    LATENCY_WEIGHT,
    MIN_COST,
    MIN_LATENCY_MS,
    QUALITY_BONUS,
    choose_implementation,
    fit_score,
    is_supported,
)

approx = pytest.approx
TONGYI, NEMOTRON, GEMINI = KIMI_K2_IMPLS


def test_constants_are_the_seeds():
    assert (QUALITY_BONUS, COST_WEIGHT, LATENCY_WEIGHT, COMPLEXITY_WEIGHT) == (100, 10, 5, 20)


# --------------------------------------------------------------- fit_score

@pytest.mark.parametrize(
    "implementation, complexity, expected",
    [
        (GEMINI, 4, 100 + 1000 + 6.25 + 20),
        (GEMINI, 2, 100 + 1000 + 6.25 + 16),
        (GEMINI, 9, 100 + 1000 + 6.25 + 10),
        (NEMOTRON, 6, 100 + 500 + 5000 / 1500 + 20),
        (NEMOTRON, 0, 100 + 500 + 5000 / 1500 + 8),
        (TONGYI, 8, 100 + 200 + 2.5 + 20),
        (TONGYI, 2, 100 + 200 + 2.5 + 8),
        (TONGYI, 0, 100 + 200 + 2.5 + 4),
        (impl(cost=1.0, latency_ms=1000, optimal=0), 10, 100 + 10 + 5 + 0),
    ],
    ids=["gemini-c4", "gemini-c2", "gemini-c9", "nemotron-c6", "nemotron-c0", "tongyi-c8", "tongyi-c2",
         "tongyi-c0", "unit-cost-far"],
)
def test_fit_score_values(implementation, complexity, expected):
    assert fit_score(implementation, complexity) == approx(expected)


@pytest.mark.parametrize(
    "cost, latency, expected",
    [
        (0.0, 1000, 100 + 10 / MIN_COST + 5 + 20),
        (-1.0, 1000, 100 + 10 / MIN_COST + 5 + 20),
        (MIN_COST / 2, 1000, 100 + 10 / MIN_COST + 5 + 20),
        (1.0, 0.0, 100 + 10 + 5 * 1000 / MIN_LATENCY_MS + 20),
        (1.0, 0.5, 100 + 10 + 5 * 1000 / MIN_LATENCY_MS + 20),
    ],
    ids=["zero-cost", "negative-cost", "below-min-cost", "zero-latency", "sub-ms-latency"],
)
def test_fit_score_floors(cost, latency, expected):
    f = fit_score(impl(cost=cost, latency_ms=latency, optimal=5), 5)
    assert math.isfinite(f)
    assert f == approx(expected)


# --------------------------------------------------------------- is_supported

@pytest.mark.parametrize(
    "quality, floor, unavailable, ok, why",
    [
        (0.9, 0.85, {}, True, ""),
        (0.85, 0.85, {}, True, ""),
        (0.84, 0.85, {}, False, "quality 0.84 below the floor 0.85"),
        (0.99, 0.85, {"x": "circuit open"}, False, "circuit open"),
        (0.5, 0.85, {"x": "circuit open"}, False, "circuit open"),  # unavailability is reported first
        (0.9, 0.85, {"other": "circuit open"}, True, ""),
    ],
    ids=["above", "equal", "below", "unavailable", "unavailable-first", "other-unavailable"],
)
def test_is_supported(quality, floor, unavailable, ok, why):
    assert is_supported(impl("x", quality=quality), query(required_quality=floor), unavailable) == (ok, why)


# --------------------------------------------------------------- the seed's kimiK2

@pytest.mark.parametrize("complexity", [0, 2, 4, 5, 8, 10], ids=lambda c: f"c{c}")
@pytest.mark.parametrize(
    "floor, winner, candidates",
    [(0.0, "gemini-flash", 3), (0.85, "gemini-flash", 3), (0.9, "nvidia-nemotron", 2),
     (0.95, "tongyi-deepresearch", 1)],
    ids=["floor-0", "floor-0.85", "floor-0.9", "floor-0.95"],
)
def test_kimi_k2_floor_decides(floor, winner, candidates, complexity):
    # The seed's formula makes cost dominate: 1/cost·10 dwarfs the complexity
    # term (≤ 20), so the cheapest implementation that meets the floor wins at
    # every complexity (not "complex query → tongyi" as the seed's comment hopes).
    ch = choose_implementation(kimi_k2(), query(required_quality=floor, complexity=complexity))
    assert ch.implementation.name == winner
    assert ch.meets_quality_floor is True
    assert ch.fit_score == approx(fit_score(ch.implementation, complexity))
    assert ch.reason == ("only implementation meeting the quality floor" if candidates == 1
                         else f"best fit of {candidates} meeting the quality floor")
    by_name = {r.implementation.name: r for r in ch.rejected}
    assert set(by_name) | {winner} == {i.name for i in KIMI_K2_IMPLS}
    for name, r in by_name.items():
        i = next(x for x in KIMI_K2_IMPLS if x.name == name)
        if i.quality < floor:
            assert r.reason == f"quality {i.quality:g} below the floor {floor:g}" and r.fit_score == 0.0
        else:
            assert r.reason.startswith("lower fit ")
            assert r.fit_score == approx(fit_score(i, complexity))
            assert r.fit_score < ch.fit_score


def test_kimi_k2_lower_fit_rejections_are_reported_best_first():
    ch = choose_implementation(kimi_k2(), query(required_quality=0.85, complexity=8))
    assert [r.implementation.name for r in ch.rejected] == ["nvidia-nemotron", "tongyi-deepresearch"]
    assert ch.rejected[0].reason == f"lower fit {fit_score(NEMOTRON, 8):.1f} < {fit_score(GEMINI, 8):.1f}"


@pytest.mark.parametrize("complexity", [2, 8], ids=["c2", "c8"])
def test_kimi_k2_no_implementation_meets_floor_takes_highest_quality(complexity):
    ch = choose_implementation(kimi_k2(), query(required_quality=0.99, complexity=complexity))
    assert ch.implementation.name == "tongyi-deepresearch"
    assert ch.meets_quality_floor is False
    assert ch.fit_score == 0.0
    assert "no implementation meets the quality floor 0.99" in ch.reason
    assert "highest quality (0.95)" in ch.reason
    assert [r.implementation.name for r in ch.rejected] == ["nvidia-nemotron", "gemini-flash"]
    assert all("below the floor 0.99" in r.reason for r in ch.rejected)


def test_strict_floor_gives_no_implementation():
    ch = choose_implementation(kimi_k2(), query(required_quality=0.99), strict_floor=True)
    assert ch.implementation is None
    assert ch.meets_quality_floor is False
    assert ch.reason == "no implementation meets the quality floor 0.99"
    assert len(ch.rejected) == 3


def test_strict_floor_does_not_matter_when_one_meets_it():
    ch = choose_implementation(kimi_k2(), query(required_quality=0.9), strict_floor=True)
    assert ch.implementation.name == "nvidia-nemotron" and ch.meets_quality_floor


# --------------------------------------------------------------- unavailable (breaker)

@pytest.mark.parametrize(
    "floor, unavailable, winner, meets",
    [
        (0.85, {"gemini-flash": "circuit open"}, "nvidia-nemotron", True),
        (0.85, {"gemini-flash": "circuit open", "nvidia-nemotron": "circuit open"}, "tongyi-deepresearch", True),
        (0.9, {"nvidia-nemotron": "half-open probe in flight"}, "tongyi-deepresearch", True),
        (0.95, {"tongyi-deepresearch": "circuit open"}, "nvidia-nemotron", False),  # fallback: highest available
        (0.99, {"tongyi-deepresearch": "circuit open"}, "nvidia-nemotron", False),
        (0.85, {"unrelated": "circuit open"}, "gemini-flash", True),
    ],
    ids=["cheapest-open", "two-open", "probe", "floor-winner-open", "none-meets-best-open", "unrelated"],
)
def test_unavailable_are_skipped_with_reason(floor, unavailable, winner, meets):
    ch = choose_implementation(kimi_k2(), query(required_quality=floor), unavailable=unavailable)
    assert ch.implementation.name == winner
    assert ch.meets_quality_floor is meets
    assert ch.implementation.name not in unavailable
    reasons = {r.implementation.name: r.reason for r in ch.rejected}
    for name, why in unavailable.items():
        if name in reasons:
            assert reasons[name] == why


def test_every_implementation_unavailable():
    unavailable = {i.name: f"{i.name} open" for i in KIMI_K2_IMPLS}
    ch = choose_implementation(kimi_k2(), query(), unavailable=unavailable)
    assert ch.implementation is None
    assert ch.reason == "every implementation is unavailable"
    assert {r.implementation.name: r.reason for r in ch.rejected} == unavailable


def test_every_implementation_unavailable_dynamic_off():
    unavailable = {i.name: "open" for i in KIMI_K2_IMPLS}
    ch = choose_implementation(kimi_k2(), query(), dynamic=False, unavailable=unavailable)
    assert ch.implementation is None
    assert ch.reason == "every implementation is unavailable"


# --------------------------------------------------------------- dynamic off

@pytest.mark.parametrize(
    "default_index, floor, meets",
    [(0, 0.85, True), (1, 0.85, True), (2, 0.85, True), (2, 0.9, False), (0, 0.99, False)],
    ids=["tongyi", "nemotron", "gemini", "gemini-below-floor", "tongyi-below-floor"],
)
def test_dynamic_off_uses_default(default_index, floor, meets):
    s = kimi_k2(default_index=default_index)
    ch = choose_implementation(s, query(required_quality=floor, complexity=8), dynamic=False)
    assert ch.implementation is KIMI_K2_IMPLS[default_index]
    assert ch.fit_score == 0.0
    assert ch.meets_quality_floor is meets
    assert ch.reason == "default implementation (dynamic routing off)"
    assert [r.implementation.name for r in ch.rejected] == [
        i.name for k, i in enumerate(KIMI_K2_IMPLS) if k != default_index]
    assert all(r.reason == "not the default" for r in ch.rejected)


def test_dynamic_off_default_unavailable_falls_back_to_best_fit():
    ch = choose_implementation(kimi_k2(default_index=0), query(required_quality=0.85), dynamic=False,
                               unavailable={"tongyi-deepresearch": "circuit open"})
    assert ch.implementation.name == "gemini-flash"
    assert ch.meets_quality_floor


# --------------------------------------------------------------- edges

def test_single_implementation():
    s = skill("one", implementations=(impl("only", quality=0.9),))
    ch = choose_implementation(s, query(required_quality=0.85))
    assert ch.implementation.name == "only"
    assert ch.reason == "only implementation meeting the quality floor"
    assert ch.rejected == ()


def test_zero_cost_implementation_wins_and_is_finite():
    s = skill("z", implementations=(impl("paid", cost=0.01), impl("free", cost=0.0)))
    ch = choose_implementation(s, query(required_quality=0.5))
    assert ch.implementation.name == "free"
    assert math.isfinite(ch.fit_score)
    assert ch.fit_score == approx(100 + 10 / MIN_COST + 5 + 20)


def test_two_free_implementations_break_on_latency_then_order():
    s = skill("z", implementations=(impl("slow", cost=0.0, latency_ms=2000), impl("fast", cost=0.0, latency_ms=100)))
    assert choose_implementation(s, query(required_quality=0.5)).implementation.name == "fast"
    twins = skill("t", implementations=(impl("first", cost=0.0), impl("second", cost=0.0)))
    assert choose_implementation(twins, query(required_quality=0.5)).implementation.name == "first"


def test_tie_goes_to_earlier_configured():
    s = skill("t", implementations=(impl("b"), impl("a"), impl("c")))
    ch = choose_implementation(s, query(required_quality=0.5))
    assert ch.implementation.name == "b"
    assert [r.implementation.name for r in ch.rejected] == ["a", "c"]


def test_fallback_quality_tie_goes_to_earlier_configured():
    s = skill("t", implementations=(impl("x", quality=0.5), impl("y", quality=0.7), impl("z", quality=0.7)))
    ch = choose_implementation(s, query(required_quality=0.9))
    assert ch.implementation.name == "y" and not ch.meets_quality_floor


def test_complexity_breaks_cost_tie():
    s = skill("t", implementations=(impl("simple", optimal=2), impl("deep", optimal=9)))
    assert choose_implementation(s, query(complexity=8, required_quality=0.5)).implementation.name == "deep"
    assert choose_implementation(s, query(complexity=1, required_quality=0.5)).implementation.name == "simple"


# --------------------------------------------------------------- properties

_impls = st.lists(
    st.builds(
        lambda q, c, lat, o: (q, c, lat, o),
        st.sampled_from([0.5, 0.8, 0.85, 0.9, 0.95, 1.0]),
        st.sampled_from([0.0, 0.005, 0.01, 0.02, 0.05, 1.0]),
        st.sampled_from([0.0, 100.0, 800.0, 1500.0, 2000.0]),
        st.sampled_from([0.0, 4.0, 6.0, 8.0, 10.0]),
    ),
    min_size=1, max_size=5,
)


@settings(max_examples=500, deadline=None)
@given(specs=_impls, floor=st.sampled_from([0.0, 0.85, 0.9, 0.95, 0.99]), complexity=st.floats(0, 10),
       dynamic=st.booleans(), strict=st.booleans(), data=st.data())
def test_choice_laws(specs, floor, complexity, dynamic, strict, data):
    impls = tuple(impl(f"i{n}", quality=q, cost=c, latency_ms=lat, optimal=o) for n, (q, c, lat, o) in enumerate(specs))
    default_index = data.draw(st.integers(0, len(impls) - 1))
    unavailable = {i.name: "open" for i in impls if data.draw(st.integers(0, 3)) == 0}
    s = skill("s", implementations=impls, default_index=default_index)
    q = query(required_quality=floor, complexity=complexity)
    ch = choose_implementation(s, q, dynamic=dynamic, strict_floor=strict, unavailable=unavailable)

    # the chosen one and the rejected ones are every implementation, each once
    listed = [r.implementation.name for r in ch.rejected] + ([ch.implementation.name] if ch.implementation else [])
    assert Counter(listed) == Counter(i.name for i in impls)

    available = [i for i in impls if i.name not in unavailable]
    meeting = [i for i in available if i.quality >= floor]
    if ch.implementation is None:
        assert not available or (strict and not meeting and (dynamic or s.default_implementation.name in unavailable))
        return
    assert ch.implementation.name not in unavailable
    assert ch.meets_quality_floor == (ch.implementation.quality >= floor)
    if not dynamic and s.default_implementation.name not in unavailable:
        assert ch.implementation is s.default_implementation
        return
    if meeting:
        assert ch.meets_quality_floor
        best = max(fit_score(i, complexity) for i in meeting)
        assert ch.fit_score == best
        assert ch.fit_score == fit_score(ch.implementation, complexity)
        # a lower-fit or equal-fit-later one never wins
        first_best = next(i for i in meeting if fit_score(i, complexity) == best)
        assert ch.implementation is first_best
    else:
        assert not strict
        assert ch.implementation.quality == max(i.quality for i in available)
        assert not ch.meets_quality_floor


def test_dynamic_off_keeps_default_below_a_strict_floor():
    # Pinned current behaviour: with dynamic routing off the default is used
    # even when it misses a strict floor (the choice says so). See the report.
    ch = choose_implementation(kimi_k2(default_index=2), query(required_quality=0.95), dynamic=False,
                               strict_floor=True)
    assert ch.implementation.name == "gemini-flash"
    assert ch.meets_quality_floor is False


def test_fit_weights_let_complexity_pick_the_implementation_made_for_it():
    """With the seed's weights the cheapest implementation meeting the floor
    wins at every complexity; weights that favour complexity fit send a
    complex query to the implementation made for it."""
    from router.core.types import FitWeights

    kimi = kimi_k2()
    q = query(complexity=9, required_quality=0.85)
    assert choose_implementation(kimi, q).implementation.name == "gemini-flash"
    w = FitWeights(quality_bonus=100, cost=0.0, latency=0.0, complexity=20)
    assert choose_implementation(kimi, q, weights=w).implementation.name == "tongyi-deepresearch"
    assert choose_implementation(kimi, query(complexity=4, required_quality=0.85), weights=w).implementation.name == "gemini-flash"
