"""router.core.query.make_query: validation naming the field, defaults from
the policy, normalisation."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.errors import InvalidArgument, RouterError, UnknownSkill
from router.core.query import MAX_METADATA_CHARS, MAX_METADATA_ENTRIES, MAX_QUERY_CHARS, make_query
from router.core.selection import MAX_TOP_K
from router.core.types import Priority, Query, RoutingPolicy

KNOWN = ["kimiK2", "trm", "gepa", "ace"]
POLICY = RoutingPolicy()


def mk(**kw) -> Query:
    kw.setdefault("text", "what is a tort?")
    kw.setdefault("policy", POLICY)
    kw.setdefault("known_skills", KNOWN)
    return make_query(**kw)


# --------------------------------------------------------------- errors

@pytest.mark.parametrize(
    "kw, field, problem_part",
    [
        ({"text": ""}, "query", "must not be empty"),
        ({"text": "   \n\t "}, "query", "must not be empty"),
        ({"text": "x" * (MAX_QUERY_CHARS + 1)}, "query", f"at most {MAX_QUERY_CHARS}"),
        ({"complexity": float("nan")}, "context.complexity", "between 0 and 10"),
        ({"complexity": -0.001}, "context.complexity", "got -0.001"),
        ({"complexity": 10.5}, "context.complexity", "got 10.5"),
        ({"complexity": float("inf")}, "context.complexity", "got inf"),
        ({"complexity": float("-inf")}, "context.complexity", "between 0 and 10"),
        ({"required_quality": float("nan")}, "context.required_quality", "between 0 and 1"),
        ({"required_quality": -0.1}, "context.required_quality", "got -0.1"),
        ({"required_quality": 1.01}, "context.required_quality", "got 1.01"),
        ({"top_k": 0}, "context.top_k", f"between 1 and {MAX_TOP_K}, got 0"),
        ({"top_k": -1}, "context.top_k", "got -1"),
        ({"top_k": MAX_TOP_K + 1}, "context.top_k", "got 33"),
        ({"force_skills": ["nope"]}, "context.force_skills[0]", "unknown skill 'nope'"),
        ({"force_skills": ["trm", "ace", "nope"]}, "context.force_skills[2]", "unknown skill 'nope'"),
        ({"exclude_skills": ["gepa", "Trm"]}, "context.exclude_skills[1]", "unknown skill 'Trm'"),
        ({"force_skills": ["trm", "ace"], "exclude_skills": ["ace"]}, "context.exclude_skills",
         "['ace'] also in force_skills"),
        ({"force_skills": ["trm", "ace"], "exclude_skills": ["ace", "trm"]}, "context.exclude_skills",
         "['ace', 'trm'] also in force_skills"),
        ({"metadata": {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}}, "context.metadata",
         f"at most {MAX_METADATA_ENTRIES}"),
        ({"metadata": {"user": "x" * MAX_METADATA_CHARS}}, "context.metadata['user']", "at most 4096"),
        ({"metadata": {"k" * (MAX_METADATA_CHARS + 1): ""}},
         "context.metadata['" + "k" * 40 + "'… (4097 chars)]", "at most 4096"),
        ({"metadata": {"": "v"}}, "context.metadata['']", "non-empty"),
        ({"metadata": {"k" * 129: "v"}}, "context.metadata['" + "k" * 40 + "'… (129 chars)]", "at most 128"),
        ({"domain": "d" * 129}, "context.domain", "is 129 characters; at most 128"),
        ({"force_skills": ["trm"] * 65}, "context.force_skills", "has 65 names; at most 64"),
        ({"exclude_skills": ["x" * 100_000]}, "context.exclude_skills[0]", "unknown skill '" + "x" * 40 + "'… (100000 chars)"),
    ],
    ids=["query-empty", "query-whitespace", "query-too-long", "complexity-nan", "complexity-negative",
         "complexity-above-10", "complexity-inf", "complexity-neg-inf", "quality-nan", "quality-negative",
         "quality-above-1", "top-k-0", "top-k-negative", "top-k-33", "force-unknown-0", "force-unknown-2",
         "exclude-unknown-case-sensitive", "force-exclude-overlap", "force-exclude-overlap-two",
         "metadata-too-many", "metadata-value-too-long", "metadata-key-too-long", "metadata-empty-key",
         "metadata-key-over-128", "domain-too-long", "force-too-many", "unknown-skill-quoted-short"],
)
def test_invalid_fields_are_named(kw, field, problem_part):
    with pytest.raises(InvalidArgument) as ei:
        mk(**kw)
    err = ei.value
    assert err.field == field
    assert problem_part in err.problem
    assert str(err).startswith(f"{field}: ")
    assert len(str(err)) < 1024  # a short prefix of the input, never all of it
    assert isinstance(err, RouterError)


@pytest.mark.parametrize("field", ["force_skills", "exclude_skills"])
def test_unknown_skill_is_not_found_kind(field):
    with pytest.raises(UnknownSkill) as ei:
        mk(**{field: ["ghost"]})
    assert ei.value.name == "ghost"
    assert ei.value.field == f"context.{field}[0]"
    assert "configured: kimiK2, trm, gepa, ace" in ei.value.problem


def test_first_problem_wins_in_field_order():
    with pytest.raises(InvalidArgument) as ei:
        mk(text="", complexity=float("nan"), top_k=0)
    assert ei.value.field == "query"


# --------------------------------------------------------------- accepted edges

@pytest.mark.parametrize(
    "kw",
    [
        {"text": "x" * MAX_QUERY_CHARS},
        {"text": "  padded  "},
        {"complexity": 0.0},
        {"complexity": 10.0},
        {"complexity": 7},
        {"required_quality": 0.0},
        {"required_quality": 1.0},
        {"top_k": 1},
        {"top_k": MAX_TOP_K},
        {"metadata": {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES)}},
        {"metadata": {"u": "x" * (MAX_METADATA_CHARS - 1)}},
        {"metadata": {"u": ""}},
    ],
    ids=["query-max", "query-padded", "complexity-0", "complexity-10", "complexity-int", "quality-0",
         "quality-1", "top-k-1", "top-k-32", "metadata-max-entries", "metadata-max-chars", "metadata-empty-value"],
)
def test_valid_edges_are_accepted(kw):
    q = mk(**kw)
    for k, v in kw.items():
        if k == "metadata":
            assert dict(q.metadata) == v
        elif k == "text":
            assert q.text == v  # kept as sent
        else:
            assert getattr(q, k) == v


# --------------------------------------------------------------- defaults

def test_defaults_come_from_the_policy():
    pol = RoutingPolicy(default_complexity=3.5, quality_threshold=0.9)
    q = mk(policy=pol)
    assert q.complexity == 3.5
    assert q.required_quality == 0.9
    assert q.priority is Priority.NORMAL
    assert q.top_k is None
    assert q.force_skills == () and q.exclude_skills == frozenset()
    assert q.all_skills is False
    assert dict(q.metadata) == {}
    assert q.domain == "general"


def test_explicit_values_override_the_policy():
    pol = RoutingPolicy(default_complexity=3.5, quality_threshold=0.9)
    q = mk(policy=pol, complexity=8, required_quality=0.5, priority=Priority.HIGH, top_k=4, all_skills=True)
    assert (q.complexity, q.required_quality, q.priority, q.top_k, q.all_skills) == (8, 0.5, Priority.HIGH, 4, True)


def test_zero_is_a_value_not_a_default():
    q = mk(policy=RoutingPolicy(default_complexity=5.0, quality_threshold=0.85), complexity=0.0, required_quality=0.0)
    assert q.complexity == 0.0 and q.required_quality == 0.0


@pytest.mark.parametrize(
    "domain, normalised",
    [("", "general"), ("   ", "general"), ("Legal", "legal"), ("  MATH \n", "math"), ("legal", "legal"),
     ("General", "general"), ("Code-Review", "code-review")],
    ids=["empty", "blank", "capitalised", "padded-upper", "as-is", "general-upper", "hyphen"],
)
def test_domain_normalised(domain, normalised):
    assert mk(domain=domain).domain == normalised


def test_force_skills_deduplicated_in_order():
    q = mk(force_skills=["trm", "ace", "trm", "kimiK2", "ace"])
    assert q.force_skills == ("trm", "ace", "kimiK2")


def test_exclude_skills_is_a_frozenset():
    q = mk(exclude_skills=("trm", "trm", "gepa"))
    assert q.exclude_skills == frozenset({"trm", "gepa"})


def test_force_and_exclude_accept_any_iterable():
    q = mk(force_skills=(n for n in ["trm"]), exclude_skills=iter(["ace"]))
    assert q.force_skills == ("trm",) and q.exclude_skills == frozenset({"ace"})


def test_metadata_is_a_read_only_copy():
    src = {"user": "42"}
    q = mk(metadata=src)
    src["user"] = "changed"
    assert q.metadata["user"] == "42"
    assert isinstance(q.metadata, MappingProxyType)
    with pytest.raises(TypeError):
        q.metadata["user"] = "x"  # type: ignore[index]


def test_query_is_frozen():
    q = mk()
    with pytest.raises(AttributeError):
        q.text = "other"  # type: ignore[misc]


# --------------------------------------------------------------- properties

@settings(max_examples=300, deadline=None)
@given(complexity=st.floats(allow_nan=True, allow_infinity=True),
       quality=st.floats(allow_nan=True, allow_infinity=True),
       top_k=st.none() | st.integers(-5, 40))
def test_numeric_fields_accept_exactly_their_range(complexity, quality, top_k):
    ok_c = not math.isnan(complexity) and 0 <= complexity <= 10
    ok_q = not math.isnan(quality) and 0 <= quality <= 1
    ok_k = top_k is None or 1 <= top_k <= MAX_TOP_K
    try:
        q = mk(complexity=complexity, required_quality=quality, top_k=top_k)
    except InvalidArgument as e:
        expected = ("context.complexity" if not ok_c else "context.required_quality" if not ok_q else "context.top_k")
        assert e.field == expected
        assert not (ok_c and ok_q and ok_k)
    else:
        assert ok_c and ok_q and ok_k
        assert (q.complexity, q.required_quality, q.top_k) == (complexity, quality, top_k)


@settings(max_examples=200, deadline=None)
@given(force=st.lists(st.sampled_from(KNOWN + ["x"]), max_size=5),
       exclude=st.lists(st.sampled_from(KNOWN + ["y"]), max_size=5))
def test_skill_lists_validated(force, exclude):
    try:
        q = mk(force_skills=force, exclude_skills=exclude)
    except UnknownSkill as e:
        assert e.name in ("x", "y")
        assert e.field.startswith("context.force_skills[" if "x" in force else "context.exclude_skills[")
    except InvalidArgument as e:
        assert e.field == "context.exclude_skills"
        assert set(force) & set(exclude)
    else:
        assert list(q.force_skills) == list(dict.fromkeys(force))
        assert q.exclude_skills == frozenset(exclude)
        assert not set(q.force_skills) & q.exclude_skills
