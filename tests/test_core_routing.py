"""router.core.routing.plan_route: score → select → implementation per skill,
with next-best skills stepping in, the standby list and the all-skills baseline."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from core_fixtures import KIMI_K2_IMPLS, impl, kimi_k2, names, policy, query, seed_skills, skill
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.implementations import choose_implementation
from router.core.routing import plan_route
from router.core.scoring import rank_key
from router.core.selection import RejectionReason
from router.core.types import RoutingPolicy

R = RejectionReason
approx = pytest.approx


def ladder(n: int = 6, **kw):
    """n skills whose relevance at complexity 5 falls with the index; each
    has two implementations, ``<name>-a`` (cheap, default) and ``<name>-b``."""
    out = []
    for i in range(n):
        name = f"s{9 - i}"
        out.append(skill(name, optimal=5 + i, implementations=(
            impl(f"{name}-a", quality=0.9, cost=0.01 * (i + 1)),
            impl(f"{name}-b", quality=0.95, cost=0.05),
        ), **kw))
    return tuple(out)


def down(*skill_names: str) -> dict[str, dict[str, str]]:
    """Every implementation of these ladder skills is unavailable."""
    return {n: {f"{n}-a": "circuit open", f"{n}-b": "circuit open"} for n in skill_names}


def rej(plan) -> dict[str, RejectionReason]:
    return {r.name: r.reason for r in plan.rejected}


# --------------------------------------------------------------- the happy path

def test_plan_picks_top_k_with_implementations():
    plan = plan_route(ladder(), query(complexity=5), RoutingPolicy(), {})
    assert plan.k == 3
    assert names(plan.planned) == ["s9", "s8", "s7"]
    assert [p.choice.implementation.name for p in plan.planned] == ["s9-a", "s8-a", "s7-a"]
    assert all(p.choice.meets_quality_floor for p in plan.planned)
    assert [p.skill.name for p in plan.planned] == names(plan.planned)
    assert names(plan.standby) == ["s6", "s5", "s4"]
    assert plan.moe_enabled is True
    assert plan.query.complexity == 5


def test_seed_skills_plan_uses_cheapest_kimi_implementation_meeting_floor():
    plan = plan_route(seed_skills(), query(complexity=8, domain="legal"), RoutingPolicy(), {})
    kimi = next(p for p in plan.planned if p.name == "kimiK2")
    assert kimi.choice.implementation.name == "gemini-flash"
    plan = plan_route(seed_skills(), query(complexity=8, domain="legal", required_quality=0.9), RoutingPolicy(), {})
    kimi = next(p for p in plan.planned if p.name == "kimiK2")
    assert kimi.choice.implementation.name == "nvidia-nemotron"


# --------------------------------------------------------------- no implementation → next-best

def test_chosen_without_implementation_is_replaced_by_next_best():
    plan = plan_route(ladder(), query(complexity=5), RoutingPolicy(), {}, unavailable=down("s8"))
    assert names(plan.planned) == ["s9", "s7", "s6"]  # still best first
    assert rej(plan)["s8"] is R.NO_IMPLEMENTATION
    s8 = next(r for r in plan.rejected if r.name == "s8")
    assert s8.detail == "every implementation is unavailable"
    assert "s6" not in rej(plan)  # it stepped in: no longer BELOW_TOP_K
    assert not plan.planned[-1].chosen.forced
    assert names(plan.standby) == ["s5", "s4"]


def test_step_in_candidate_without_implementation_is_skipped():
    plan = plan_route(ladder(), query(complexity=5), RoutingPolicy(), {}, unavailable=down("s9", "s6", "s5"))
    assert names(plan.planned) == ["s8", "s7", "s4"]
    assert {n: rej(plan)[n] for n in ("s9", "s6", "s5")} == {n: R.NO_IMPLEMENTATION for n in ("s9", "s6", "s5")}
    assert plan.standby == ()


def test_two_chosen_without_implementation():
    plan = plan_route(ladder(), query(complexity=5), RoutingPolicy(), {}, unavailable=down("s9", "s7"))
    assert names(plan.planned) == ["s8", "s6", "s5"]
    assert names(plan.standby) == ["s4"]


def test_nothing_left_to_step_in_gives_a_shorter_plan():
    plan = plan_route(ladder(4), query(complexity=5), RoutingPolicy(), {}, unavailable=down("s9", "s8", "s6"))
    assert names(plan.planned) == ["s7"]
    assert plan.k == 3
    assert plan.standby == ()


def test_every_skill_without_implementation():
    plan = plan_route(ladder(4), query(complexity=5), RoutingPolicy(), {}, unavailable=down("s9", "s8", "s7", "s6"))
    assert plan.planned == () and plan.standby == ()
    assert set(rej(plan).values()) == {R.NO_IMPLEMENTATION}


def test_forced_without_implementation_is_replaced():
    plan = plan_route(ladder(), query(complexity=5, force=("s4",)), RoutingPolicy(), {}, unavailable=down("s4"))
    assert rej(plan)["s4"] is R.NO_IMPLEMENTATION
    assert names(plan.planned) == ["s9", "s8", "s7"]


def test_forced_keeps_first_place():
    plan = plan_route(ladder(), query(complexity=5, force=("s4",)), RoutingPolicy(), {}, unavailable=down("s9"))
    assert names(plan.planned) == ["s4", "s8", "s7"]
    assert plan.planned[0].chosen.forced


def test_one_implementation_down_uses_the_other():
    plan = plan_route(ladder(), query(complexity=5), RoutingPolicy(), {}, unavailable={"s9": {"s9-a": "open"}})
    s9 = plan.planned[0]
    assert s9.name == "s9" and s9.choice.implementation.name == "s9-b"
    assert {r.implementation.name: r.reason for r in s9.choice.rejected} == {"s9-a": "open"}


def test_unavailable_is_per_skill():
    # an implementation name down for one skill does not affect another skill
    shared = impl("shared", quality=0.9)
    skills = (skill("a", implementations=(shared,)), skill("b", implementations=(shared,), optimal=0))
    plan = plan_route(skills, query(), RoutingPolicy(), {}, unavailable={"a": {"shared": "open"}})
    assert names(plan.planned) == ["b"]
    assert rej(plan) == {"a": R.NO_IMPLEMENTATION}


def test_all_skills_has_no_step_in():
    plan = plan_route(ladder(), query(complexity=5, all_skills=True), RoutingPolicy(), {}, unavailable=down("s9"))
    assert names(plan.planned) == ["s8", "s7", "s6", "s5", "s4"]
    assert plan.standby == ()


# --------------------------------------------------------------- quality floor

def test_strict_floor_rejects_and_next_best_steps_in():
    skills = (kimi_k2(optimal=5),) + ladder(4)
    pol = RoutingPolicy(strict_quality_floor=True)
    plan = plan_route(skills, query(complexity=5, required_quality=0.95), pol, {})
    # kimiK2 (tongyi 0.95) meets it; the ladder's -b implementations (0.95) too
    assert all(p.choice.meets_quality_floor for p in plan.planned)
    plan = plan_route(skills, query(complexity=5, required_quality=0.99), pol, {})
    assert plan.planned == ()
    assert all(r.reason in (R.NO_IMPLEMENTATION, R.BELOW_TOP_K) for r in plan.rejected)
    nr = [r for r in plan.rejected if r.reason is R.NO_IMPLEMENTATION]
    assert all(r.detail == "no implementation meets the quality floor 0.99" for r in nr)


def test_lenient_floor_keeps_skill_and_says_so():
    plan = plan_route((kimi_k2(),), query(required_quality=0.99), RoutingPolicy(), {})
    (p,) = plan.planned
    assert p.choice.implementation.name == "tongyi-deepresearch"
    assert p.choice.meets_quality_floor is False


# --------------------------------------------------------------- non-dynamic modes

@pytest.mark.parametrize(
    "pol",
    [RoutingPolicy(moe_enabled=False), RoutingPolicy(dynamic_routing_enabled=False)],
    ids=["moe-off", "dynamic-off"],
)
def test_defaults_when_dynamic_routing_is_off(pol):
    skills = (kimi_k2(default_index=1),) + ladder(2)
    plan = plan_route(skills, query(required_quality=0.85), pol, {})
    by = {p.name: p.choice for p in plan.planned}
    assert by["kimiK2"].implementation.name == "nvidia-nemotron"
    assert by["kimiK2"].reason == "default implementation (dynamic routing off)"
    assert plan.moe_enabled is pol.moe_enabled


def test_moe_off_plans_every_activated_skill_by_priority():
    skills = (skill("c", priority=3), skill("a", priority=1), skill("b", priority=2), skill("x", domains=("legal",)))
    plan = plan_route(skills, query(top_k=1), RoutingPolicy(moe_enabled=False), {})
    assert names(plan.planned) == ["a", "b", "c"]
    assert plan.k == 3 and plan.standby == ()
    assert rej(plan) == {"x": R.NOT_ACTIVATED}


# --------------------------------------------------------------- success rates

def test_success_rates_and_their_default_reach_the_scores():
    skills = (skill("a"), skill("b"))
    plan = plan_route(skills, query(top_k=1), RoutingPolicy(), {"a": 0.1})
    assert names(plan.planned) == ["b"]
    plan = plan_route(skills, query(top_k=1), RoutingPolicy(default_success_rate=0.0), {"a": 0.1})
    assert names(plan.planned) == ["a"]


# --------------------------------------------------------------- baseline

@pytest.mark.parametrize(
    "q, expected_skills",
    [
        (query(complexity=5), ["s9", "s8", "s7", "s6", "l"]),
        (query(complexity=5, exclude=("s8",)), ["s9", "s7", "s6", "l"]),
        (query(complexity=5, force=("legal",)), ["s9", "s8", "s7", "s6", "l"]),  # forced, not activated: out
        (query(complexity=5, force=("s6",)), ["s9", "s8", "s7", "s6", "l"]),  # forced and activated: in
        (query(complexity=5, top_k=1), ["s9", "s8", "s7", "s6", "l"]),  # k does not change the baseline
        (query(complexity=5, domain="legal"), ["s9", "s8", "s7", "s6", "legal", "l"]),
    ],
    ids=["plain", "excluded-out", "forced-not-activated-out", "forced-activated-in", "top-1", "legal-activated"],
)
def test_baseline_is_default_cost_over_activated_non_excluded(q, expected_skills):
    skills = ladder(4) + (
        skill("legal", domains=("legal",), cost=0.5),
        skill("dis", enabled=False, cost=0.7),
        replace(kimi_k2(default_index=2, optimal=5), name="l"),  # default gemini-flash ($0.01)
    )
    by = {s.name: s for s in skills}
    plan = plan_route(skills, q, RoutingPolicy(), {})
    assert plan.baseline_skills == len(expected_skills)
    assert plan.baseline_cost == approx(sum(by[n].default_implementation.cost_per_query for n in expected_skills))


def test_seed_baseline_is_ten_cents():
    plan = plan_route(seed_skills(), query(complexity=5), RoutingPolicy(), {})
    assert (plan.baseline_cost, plan.baseline_skills) == (approx(0.10), 4)
    # planned with the cheapest implementations that meet the floor
    assert sum(p.choice.implementation.cost_per_query for p in plan.planned) < plan.baseline_cost


def test_baseline_ignores_unavailability():
    plan = plan_route(ladder(3), query(complexity=5), RoutingPolicy(), {}, unavailable=down("s9"))
    assert plan.baseline_skills == 3
    assert plan.baseline_cost == approx(0.01 + 0.02 + 0.03)


# --------------------------------------------------------------- properties

@st.composite
def scenarios(draw):
    n = draw(st.integers(0, 8))
    skills, unavailable = [], {}
    for i in range(n):
        impls = tuple(
            impl(f"k{i}-{j}", quality=draw(st.sampled_from([0.8, 0.85, 0.9, 0.95])),
                 cost=draw(st.sampled_from([0.0, 0.01, 0.05])), optimal=draw(st.sampled_from([2.0, 5.0, 8.0])))
            for j in range(draw(st.integers(1, 3)))
        )
        s = skill(f"k{i}", priority=draw(st.integers(1, 3)), optimal=draw(st.sampled_from([2.0, 5.0, 8.0])),
                  domains=draw(st.sampled_from([(), (), ("legal",)])), enabled=draw(st.integers(0, 5)) > 0,
                  implementations=impls, default_index=draw(st.integers(0, len(impls) - 1)))
        skills.append(s)
        down_impls = {i.name: "open" for i in impls if draw(st.integers(0, 3)) == 0}
        if down_impls:
            unavailable[s.name] = down_impls
    all_names = [s.name for s in skills]
    forced = draw(st.lists(st.sampled_from(all_names), max_size=3)) if all_names else []
    excluded = (draw(st.sets(st.sampled_from(all_names), max_size=2)) if all_names else set()) - set(forced)
    q = query(domain=draw(st.sampled_from(["general", "legal"])), complexity=draw(st.sampled_from([2.0, 5.0, 8.0])),
              required_quality=draw(st.sampled_from([0.8, 0.9, 0.99])), top_k=draw(st.none() | st.integers(1, 5)),
              force=forced, exclude=excluded, all_skills=draw(st.integers(0, 5)) == 0)
    pol = RoutingPolicy(moe_enabled=draw(st.integers(0, 4)) > 0, dynamic_routing_enabled=draw(st.integers(0, 4)) > 0,
                        strict_quality_floor=draw(st.booleans()))
    rates = {s.name: draw(st.sampled_from([0.0, 0.5, 1.0])) for s in skills}
    return tuple(skills), q, pol, rates, unavailable


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_plan_laws(sc):
    skills, q, pol, rates, unavailable = sc
    plan = plan_route(skills, q, pol, rates, unavailable)
    by = {s.name: s for s in skills}
    planned = names(plan.planned)

    # every skill is planned or rejected, exactly once
    assert Counter(planned + names(plan.rejected)) == Counter(list(by))
    assert len(planned) <= plan.k

    dynamic = pol.moe_enabled and pol.dynamic_routing_enabled

    def impl_of(name):
        return choose_implementation(by[name], q, dynamic=dynamic, strict_floor=pol.strict_quality_floor,
                                     unavailable=unavailable.get(name, {})).implementation

    for p in plan.planned:
        assert p.choice.implementation is not None
        assert p.choice.implementation.name not in unavailable.get(p.name, {})
        assert by[p.name].enabled and p.name not in q.exclude_skills
    for r in plan.rejected:
        if r.reason is R.NO_IMPLEMENTATION:
            assert impl_of(r.name) is None

    # forced first, then best first
    forced = [p for p in plan.planned if p.chosen.forced]
    assert plan.planned[:len(forced)] == tuple(forced)
    rest = [p.chosen.score for p in plan.planned[len(forced):]]
    if pol.moe_enabled:
        assert rest == sorted(rest, key=rank_key)

    # standby: BELOW_TOP_K skills with an implementation, best first, all ranked below the planned
    below = [r for r in plan.rejected if r.reason is R.BELOW_TOP_K]
    assert names(plan.standby) == [r.name for r in below if impl_of(r.name) is not None]
    stand = [p.chosen.score for p in plan.standby]
    assert stand == sorted(stand, key=rank_key)
    if rest and stand:
        assert rank_key(rest[-1]) < rank_key(stand[0])
    # a BELOW_TOP_K skill with an implementation left over means nothing was missing
    if plan.standby and pol.moe_enabled and not q.all_skills:
        assert len(planned) == plan.k

    # baseline: default implementations over activated, enabled, non-excluded skills
    activated = [s for s in skills if s.enabled and s.name not in q.exclude_skills
                 and s.activation.matches(q.text.lower(), q.domain, q.complexity)[0]]
    assert plan.baseline_skills == len(activated)
    assert plan.baseline_cost == approx(sum(s.default_implementation.cost_per_query for s in activated))


def test_kimi_impls_unchanged_by_planning():
    # plan_route returns the configured ImplementationSpec objects, not copies
    plan = plan_route((kimi_k2(),), query(), policy(), {})
    assert plan.planned[0].choice.implementation in KIMI_K2_IMPLS
