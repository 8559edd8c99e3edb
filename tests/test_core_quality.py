"""Measured quality, the expected_quality implementation policy and the
experiments' pure parts (router.core.quality, .implementations,
.experiments): no socket, no clock (time is passed in)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.core.experiments import RatingSummary, assign_arm, next_k
from router.core.implementations import Learned, choose_implementation, no_feedback
from router.core.quality import Evidence, QualitySettings, complexity_band, posterior
from router.core.routing import plan_route
from router.core.types import ActivationRule, ImplementationSpec, Query, RoutingPolicy, SkillSpec
from router.runtime.feedback import QualityRegistry

DAY = 86400.0


def impl(name: str, quality: float, cost: float) -> ImplementationSpec:
    return ImplementationSpec(name, "openai", "http://x", name, quality, cost, 500.0, 5.0)


CHEAP, STRONG = impl("cheap", 0.80, 0.001), impl("strong", 0.90, 0.03)
SKILL = SkillSpec("math", 1, ActivationRule(), frozenset(), 5.0, 10, 10, (CHEAP, STRONG))
Q = Query("what is 2+2", required_quality=0.0)


# ---- the posterior ------------------------------------------------------------------

def test_without_ratings_the_posterior_is_the_declared_quality() -> None:
    p = posterior(0.8, Evidence(), QualitySettings(prior_strength=10), 0.0)
    assert p.mean == pytest.approx(0.8) and p.ratings == 0


def test_ratings_move_the_posterior_their_way_and_the_prior_strength_resists() -> None:
    s = QualitySettings(prior_strength=10, half_life_s=DAY)
    good = bad = Evidence()
    for t in range(10):
        good = good.add(1.0, t, s.half_life_s)
        bad = bad.add(0.0, t, s.half_life_s)
    assert posterior(0.8, good, s, 10).mean > 0.8 > posterior(0.8, bad, s, 10).mean
    # 10 zeros against a prior of 10 pseudo-ratings at 0.8: about halfway down
    assert posterior(0.8, bad, s, 10).mean == pytest.approx(0.4, abs=0.01)
    strong = QualitySettings(prior_strength=1000, half_life_s=DAY)
    assert posterior(0.8, bad, strong, 10).mean > 0.79


def test_old_evidence_is_forgotten_by_half_life() -> None:
    s = QualitySettings(prior_strength=10, half_life_s=DAY)
    ev = Evidence()
    for _ in range(40):
        ev = ev.add(0.0, 0.0, s.half_life_s)
    fresh = posterior(0.8, ev, s, 0.0).mean
    after_a_day = posterior(0.8, ev, s, DAY)
    assert after_a_day.alpha + after_a_day.beta == pytest.approx(10 + 20)  # 40 ratings weigh 20 after one half-life
    assert fresh < after_a_day.mean < posterior(0.8, ev, s, 30 * DAY).mean < 0.8 + 1e-9
    assert after_a_day.ratings == 40  # the count is not decayed


def test_out_of_range_ratings_are_refused() -> None:
    with pytest.raises(ValueError, match="score"):
        Evidence().add(1.5, 0.0, DAY)


def test_complexity_bands() -> None:
    assert [complexity_band(c) for c in (0, 3.4, 3.5, 6.9, 7, 10)] == ["low", "low", "mid", "mid", "high", "high"]
    assert complexity_band(5, (2.0, 4.0, 6.0)) == "b2"


def test_a_context_cell_learns_apart_from_its_implementation() -> None:
    reg = QualityRegistry([SKILL], QualitySettings(prior_strength=10), clock=lambda: 0.0)
    for _ in range(30):
        reg.rate("math", "cheap", "general", 9.0, 0.0, 0.0)  # hard queries: wrong
        reg.rate("math", "cheap", "general", 1.0, 1.0, 0.0)  # easy queries: right
    easy = reg.estimate("math", "cheap", 0.8, "general", 1.0)
    hard = reg.estimate("math", "cheap", 0.8, "general", 9.0)
    assert easy.mean > 0.8 > hard.mean and easy.context == "general/low" and hard.context == "general/high"
    unseen = reg.estimate("math", "cheap", 0.8, "legal", 5.0)  # no cell: the implementation as a whole
    assert unseen.context == "" and unseen.ratings == 60


# ---- expected_quality --------------------------------------------------------------

def choose(reg: QualityRegistry | None, query: Query = Q, *, cost_weight: float = 0.5, exploration: float = 0.0,
           seed: int = 1) -> str:
    learned = (no_feedback(seed, cost_weight, exploration) if reg is None
               else Learned(reg, random.Random(seed), cost_weight, exploration))
    ch = choose_implementation(SKILL, query, learned=learned)
    assert ch.implementation is not None
    return ch.implementation.name


def test_the_cost_knob_trades_quality_for_cost() -> None:
    assert choose(None, cost_weight=0.0) == "strong"  # quality only
    assert choose(None, cost_weight=0.05) == "strong"  # 0.80 − 0.05·0.033 < 0.90 − 0.05
    assert choose(None, cost_weight=0.2) == "cheap"  # 0.80 − 0.2·0.033 > 0.90 − 0.2
    assert choose(None, Query("q", required_quality=0.0, cost_weight=0.0), cost_weight=5.0) == "strong"  # per request


def test_the_floor_applies_to_expected_quality() -> None:
    assert choose(None, Query("q", required_quality=0.85), cost_weight=10.0) == "strong"
    reg = QualityRegistry([SKILL], QualitySettings(prior_strength=10), clock=lambda: 0.0)
    for _ in range(50):
        reg.rate("math", "cheap", "general", 5.0, 1.0, 0.0)
    assert choose(reg, Query("q", required_quality=0.85), cost_weight=10.0) == "cheap"  # measured 0.97 meets it


def test_an_implementation_rated_zero_stops_being_chosen() -> None:
    reg = QualityRegistry([SKILL], QualitySettings(prior_strength=10), clock=lambda: 0.0)
    assert choose(reg, cost_weight=0.5) == "cheap"
    for _ in range(20):
        reg.rate("math", "cheap", "general", 5.0, 0.0, 0.0)
    rng_picks = Counter(choose(reg, cost_weight=0.5, exploration=0.1, seed=s) for s in range(200))
    assert rng_picks["strong"] > 190


def test_exploration_lets_an_unchosen_implementation_prove_itself() -> None:
    # strong is never chosen greedily at this cost weight; Thompson samples
    # pick it sometimes, and ratings of 1 then make it the greedy choice.
    reg = QualityRegistry([SKILL], QualitySettings(prior_strength=4), clock=lambda: 0.0)
    rng = random.Random(7)
    learned = Learned(reg, rng, cost_weight=0.12, exploration=0.2)
    picks = Counter()
    for _ in range(400):
        name = choose_implementation(SKILL, Q, learned=learned).implementation.name  # type: ignore[union-attr]
        picks[name] += 1
        reg.rate("math", name, "general", 5.0, 1.0 if name == "strong" else 0.5, 0.0)
    assert picks["strong"] > picks["cheap"]
    assert Learned(reg, random.Random(1), 0.12, 0.0) and choose(reg, cost_weight=0.12) == "strong"


def test_the_seed_policy_ignores_measured_quality() -> None:
    reg = QualityRegistry([SKILL], QualitySettings(), clock=lambda: 0.0)
    for _ in range(50):
        reg.rate("math", "cheap", "general", 5.0, 0.0, 0.0)
    learned = Learned(reg, random.Random(0), 0.5, 0.1)
    seed, eq = RoutingPolicy(quality_threshold=0.0), RoutingPolicy(quality_threshold=0.0,
                                                                   implementation_policy="expected_quality")
    a = plan_route((SKILL,), Q, seed, {}, learned=learned).planned[0].choice
    b = plan_route((SKILL,), Q, seed, {}).planned[0].choice
    assert a == b and a.implementation is CHEAP  # exact: the fit score
    c = plan_route((SKILL,), Q, eq, {}, learned=learned).planned[0].choice
    assert c.implementation is STRONG and "expected quality" in c.reason


# ---- experiments ---------------------------------------------------------------------

def test_assignment_is_sticky_and_splits_at_the_share() -> None:
    users = [f"user-{i}" for i in range(4000)]
    first = [assign_arm("exp", u, 0.5, 2) for u in users]
    assert first == [assign_arm("exp", u, 0.5, 2) for u in users]  # sticky
    counts = Counter(first)
    assert abs(counts[None] - 2000) < 150 and abs(counts[0] - counts[1]) < 150
    other = [assign_arm("other", u, 0.5, 2) for u in users]
    assert sum(a == b for a, b in zip(first, other)) < 0.7 * len(users)  # experiments split independently
    assert assign_arm("exp", None, 1.0, 2) is None


def test_a_k_schedule_steps_down_only_while_quality_holds() -> None:
    def summary(n: int, mean: float) -> RatingSummary:
        return RatingSummary(n, n * mean)
    assert next_k(5, 3, summary(10, 0.9), summary(10, 0.9), margin=0.02, min_ratings=50).k == 5  # too few
    assert next_k(5, 3, summary(60, 0.9), summary(60, 0.89), margin=0.02, min_ratings=50).k == 4
    held = next_k(5, 3, summary(60, 0.9), summary(60, 0.80), margin=0.02, min_ratings=50)
    assert held.k == 5 and "below" in held.reason
    assert next_k(3, 3, summary(60, 0.9), summary(60, 0.95), margin=0.02, min_ratings=50).k == 3
