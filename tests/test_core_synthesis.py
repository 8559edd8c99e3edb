"""router.core.synthesis: weights, the merged text, quality and the cost ledger."""

from __future__ import annotations

import math

import pytest
from core_fixtures import SEED_DEFAULT_COSTS, seed_skills, skill
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.synthesis import CostLedger, SkillOutcome, Status, baseline_cost, synthesize, weights_of

approx = pytest.approx


def out(name: str, score: float, status: Status = Status.OK, *, cost: float = 0.0, quality: float = 0.9,
        output: str | None = None, error: str = "") -> SkillOutcome:
    return SkillOutcome(
        skill=name, implementation=f"{name}-impl", model=f"{name}-model", score=score, status=status,
        output=f"answer from {name}" if output is None else output, error=error, cost=cost, quality=quality,
    )


# --------------------------------------------------------------- weights

@pytest.mark.parametrize(
    "scores, expected",
    [
        ([], ()),
        ([2.0], (1.0,)),
        ([1.0, 1.0], (0.5, 0.5)),
        ([3.0, 1.0], (0.75, 0.25)),
        ([1.8, 1.2, 0.0], (0.6, 0.4, 0.0)),
        ([0.0, 0.0], (0.5, 0.5)),
        ([0.0], (1.0,)),
        ([1.5, 1.4, 1.3, 1.2, 1.1], tuple(x / 6.5 for x in (1.5, 1.4, 1.3, 1.2, 1.1))),
    ],
    ids=["empty", "one", "equal", "3-1", "with-zero", "all-zero", "one-zero", "five"],
)
def test_weights_are_shares_of_scores(scores, expected):
    w = weights_of(scores)
    assert w == approx(expected)
    if scores:
        assert sum(w) == approx(1.0)


# --------------------------------------------------------------- text

def test_text_lists_successes_heaviest_first_with_weights():
    outcomes = [out("light", 1.0), out("heavy", 3.0)]
    s = synthesize(outcomes, baseline=0.0, baseline_skills=0)
    assert s.weights == approx((0.25, 0.75))  # in the outcomes' order
    assert s.text == "### heavy (weight: 0.75)\nanswer from heavy\n\n### light (weight: 0.25)\nanswer from light"
    assert s.any_ok


def test_equal_weights_keep_outcome_order():
    s = synthesize([out("b", 1.0), out("a", 1.0), out("c", 1.0)], 0.0, 0)
    assert [line.split()[1] for line in s.text.splitlines() if line.startswith("###")] == ["b", "a", "c"]


@pytest.mark.parametrize("status", [Status.FAILED, Status.TIMED_OUT], ids=["failed", "timed-out"])
def test_failed_skills_excluded_from_text_but_keep_weights(status):
    outcomes = [out("good", 1.0, quality=0.8), out("bad", 3.0, status, output="", error="boom", quality=0.99)]
    s = synthesize(outcomes, 0.0, 0)
    assert s.weights == approx((0.25, 0.75))  # the failed skill's share is not redistributed
    assert "bad" not in s.text and "boom" not in s.text
    assert s.text == "### good (weight: 0.25)\nanswer from good"
    assert s.quality == approx(0.8)  # the failed one's declared quality does not count


def test_failed_output_is_ignored_even_if_set():
    s = synthesize([out("x", 1.0, Status.FAILED, output="partial")], 0.0, 0)
    assert s.text == "" and not s.any_ok


def test_all_failed():
    s = synthesize([out("a", 1.0, Status.FAILED), out("b", 2.0, Status.TIMED_OUT)], 0.1, 2)
    assert s.text == ""
    assert not s.any_ok
    assert s.quality == 0.0
    assert s.weights == approx((1 / 3, 2 / 3))


def test_no_outcomes():
    s = synthesize([], 0.1, 4)
    assert s.text == "" and s.weights == () and s.quality == 0.0
    assert s.ledger.actual == 0.0 and s.ledger.saved == approx(0.1) and s.ledger.saved_fraction == approx(1.0)


def test_empty_output_still_counts_as_an_answer():
    s = synthesize([out("quiet", 1.0, output="")], 0.0, 0)
    assert s.text == "### quiet (weight: 1.00)\n"
    assert s.any_ok


# --------------------------------------------------------------- quality

@pytest.mark.parametrize(
    "outcomes, quality",
    [
        ([out("a", 1.0, quality=0.9)], 0.9),
        ([out("a", 3.0, quality=0.9), out("b", 1.0, quality=0.5)], 0.75 * 0.9 + 0.25 * 0.5),
        ([out("a", 1.0, quality=0.9), out("b", 1.0, quality=0.5)], 0.7),
        ([out("a", 3.0, quality=0.9), out("b", 1.0, quality=0.5), out("c", 4.0, Status.FAILED, quality=1.0)],
         0.75 * 0.9 + 0.25 * 0.5),
        ([out("a", 1.0, quality=0.95), out("b", 2.0, Status.TIMED_OUT, quality=0.1)], 0.95),
        ([out("a", 0.0, quality=0.8), out("b", 2.0, quality=0.6)], 0.6),
        # only zero-score skills (forced, not activated) answered: plain mean, not 0
        ([out("a", 0.0, quality=0.8), out("b", 2.0, Status.FAILED, quality=0.6)], 0.8),
        ([out("a", 0.0, quality=0.8), out("c", 0.0, quality=0.6), out("b", 2.0, Status.FAILED)], 0.7),
        ([out("a", 0.0, quality=0.8), out("c", 0.0, quality=0.6)], 0.7),
    ],
    ids=["one", "weighted", "equal", "failed-excluded", "timed-out-excluded", "zero-weight-ok",
         "only-zero-weight-ok", "two-zero-weight-ok", "all-zero-scores"],
)
def test_quality_is_weighted_mean_over_successful(outcomes, quality):
    assert synthesize(outcomes, 0.0, 0).quality == approx(quality)


# --------------------------------------------------------------- ledger

@pytest.mark.parametrize(
    "actual, baseline, saved, fraction",
    [
        (0.025, 0.10, 0.075, 0.75),
        (0.10, 0.10, 0.0, 0.0),
        (0.0, 0.10, 0.10, 1.0),
        (0.12, 0.10, -0.02, -0.2),  # dearer than the baseline (forced or dynamic choice)
        (0.0, 0.0, 0.0, 0.0),
        (0.05, 0.0, -0.05, 0.0),  # zero baseline: no fraction
    ],
    ids=["seed", "same", "free", "dearer", "zero-zero", "zero-baseline"],
)
def test_ledger(actual, baseline, saved, fraction):
    led = CostLedger(actual, baseline, 4)
    assert led.saved == approx(saved)
    assert led.saved_fraction == approx(fraction)
    assert math.isfinite(led.saved_fraction)


def test_actual_cost_sums_every_outcome_including_failed():
    s = synthesize([out("a", 1, cost=0.01), out("b", 1, Status.FAILED, cost=0.005), out("c", 1, cost=0.0)], 0.1, 4)
    assert s.ledger.actual == approx(0.015)
    assert s.ledger.baseline == 0.1 and s.ledger.baseline_skills == 4


def test_seed_cost_example():
    # Before: all 4 skills fire with their defaults: $0.05 + $0.02 + $0.02 + $0.01 = $0.10.
    base, n = baseline_cost(seed_skills())
    assert (base, n) == (approx(0.10), 4)
    assert base == approx(sum(SEED_DEFAULT_COSTS.values()))
    # After: top-3 with optimal implementations: $0.01 + $0.01 + $0.005 = $0.025, 75% saved.
    outcomes = [out("kimiK2", 1.8, cost=0.01), out("gepa", 1.2, cost=0.01), out("trm", 1.0, cost=0.005)]
    s = synthesize(outcomes, base, n)
    assert s.ledger.actual == approx(0.025)
    assert s.ledger.saved == approx(0.075)
    assert s.ledger.saved_fraction == approx(0.75)


@pytest.mark.parametrize(
    "skills, base, count",
    [
        ((), 0.0, 0),
        ((skill("a", cost=0.02),), 0.02, 1),
        ((skill("a", cost=0.02), skill("b", cost=0.0)), 0.02, 2),
    ],
    ids=["none", "one", "free-one"],
)
def test_baseline_cost(skills, base, count):
    assert baseline_cost(skills) == (approx(base), count)


def test_baseline_uses_the_default_implementation():
    from core_fixtures import KIMI_K2_IMPLS, kimi_k2

    for idx, i in enumerate(KIMI_K2_IMPLS):
        assert baseline_cost([kimi_k2(default_index=idx)]) == (approx(i.cost_per_query), 1)


def test_baseline_accepts_a_generator():
    assert baseline_cost(s for s in seed_skills()) == (approx(0.10), 4)


# --------------------------------------------------------------- properties

_outcome = st.builds(
    out,
    st.text("abc", min_size=1, max_size=3),
    st.floats(0, 5),
    st.sampled_from(list(Status)),
    cost=st.floats(0, 1),
    quality=st.floats(0, 1),
)


@settings(max_examples=400, deadline=None)
@given(outcomes=st.lists(_outcome, max_size=6), baseline=st.floats(0, 2))
def test_synthesis_laws(outcomes, baseline):
    s = synthesize(outcomes, baseline, len(outcomes))
    assert len(s.weights) == len(outcomes)
    assert all(w >= 0 for w in s.weights)
    if outcomes:
        assert sum(s.weights) == approx(1.0)
    ok = [o for o in outcomes if o.ok]
    assert s.any_ok == bool(ok)
    assert s.text.count("### ") == len(ok)
    if ok:
        qs = [o.quality for o in ok]
        assert min(qs) - 1e-9 <= s.quality <= max(qs) + 1e-9
    else:
        assert s.quality == 0.0
    assert s.ledger.actual == approx(sum(o.cost for o in outcomes))
    assert s.ledger.saved == approx(baseline - s.ledger.actual)
    if baseline > 0:
        assert s.ledger.saved_fraction == approx(s.ledger.saved / baseline)
    else:
        assert s.ledger.saved_fraction == 0.0
    # weights in the text are non-increasing
    shown = [float(line.rsplit("weight: ", 1)[1].rstrip(")")) for line in s.text.splitlines()
             if line.startswith("### ") and "(weight: " in line]
    assert shown == sorted(shown, reverse=True)
