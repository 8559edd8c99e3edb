"""Validate a request's fields into a core ``Query``. Every problem names the
field it is in, the way the service reports it (INVALID_ARGUMENT), and
quotes at most a short prefix of what the caller sent.

Every caller-controlled string and list is bounded (docs/security.md):

    query                      1..100,000 characters
    context.domain             at most 128 characters
    context.force_skills,
    context.exclude_skills     at most 64 names each, each at most 128 characters
    context.metadata           at most 64 entries; key 1..128 characters,
                               key + value at most 4,096 characters
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from .errors import InvalidArgument, UnknownSkill
from .redact import quote_prefix
from .selection import MAX_TOP_K
from .types import Priority, Query, RoutingPolicy

MAX_QUERY_CHARS = 100_000
MAX_DOMAIN_CHARS = 128
MAX_SKILL_LIST = 64
MAX_SKILL_NAME_CHARS = 128
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_CHARS = 4096
MAX_COST_WEIGHT = 100.0


def _unit(field: str, value: float, lo: float, hi: float) -> float:
    if math.isnan(value) or not (lo <= value <= hi):
        raise InvalidArgument(field, f"must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def _skills(field: str, names: Iterable[str], known: list[str]) -> tuple[str, ...]:
    names = list(names)
    if len(names) > MAX_SKILL_LIST:
        raise InvalidArgument(field, f"has {len(names)} names; at most {MAX_SKILL_LIST}")
    out = []
    for i, name in enumerate(names):
        if name not in known:
            raise UnknownSkill(f"{field}[{i}]", name, known)
        out.append(name)
    return tuple(dict.fromkeys(out))


def make_query(
    *,
    text: str,
    policy: RoutingPolicy,
    known_skills: list[str],
    domain: str = "",
    complexity: float | None = None,
    required_quality: float | None = None,
    priority: Priority | None = None,
    top_k: int | None = None,
    force_skills: Iterable[str] = (),
    exclude_skills: Iterable[str] = (),
    all_skills: bool = False,
    metadata: Mapping[str, str] | None = None,
    cost_weight: float | None = None,
) -> Query:
    if not text.strip():
        raise InvalidArgument("query", "must not be empty")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgument("query", f"is {len(text)} characters; at most {MAX_QUERY_CHARS}")
    if len(domain) > MAX_DOMAIN_CHARS:
        raise InvalidArgument("context.domain", f"is {len(domain)} characters; at most {MAX_DOMAIN_CHARS}")
    c = policy.default_complexity if complexity is None else _unit("context.complexity", complexity, 0.0, 10.0)
    q = policy.quality_threshold if required_quality is None else _unit("context.required_quality", required_quality, 0.0, 1.0)
    if top_k is not None and not (1 <= top_k <= MAX_TOP_K):
        raise InvalidArgument("context.top_k", f"must be between 1 and {MAX_TOP_K}, got {top_k}")
    forced = _skills("context.force_skills", force_skills, known_skills)
    excluded = _skills("context.exclude_skills", exclude_skills, known_skills)
    both = set(forced) & set(excluded)
    if both:
        raise InvalidArgument("context.exclude_skills", f"{sorted(both)} also in force_skills")
    meta = dict(metadata or {})
    if len(meta) > MAX_METADATA_ENTRIES:
        raise InvalidArgument("context.metadata", f"has {len(meta)} entries; at most {MAX_METADATA_ENTRIES}")
    for key, value in meta.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS or len(key) + len(value) > MAX_METADATA_CHARS:
            raise InvalidArgument(
                f"context.metadata[{quote_prefix(key)}]",
                f"key must be non-empty and at most {MAX_METADATA_KEY_CHARS} characters, and key+value at most "
                f"{MAX_METADATA_CHARS} characters (got {len(key)}+{len(value)})")
    return Query(
        text=text,
        domain=(domain.strip().lower() or "general"),
        complexity=c,
        required_quality=q,
        priority=priority or Priority.NORMAL,
        top_k=top_k,
        force_skills=forced,
        exclude_skills=frozenset(excluded),
        all_skills=all_skills,
        metadata=MappingProxyType(meta),
        domain_given=bool(domain.strip()),
        complexity_given=complexity is not None,
        cost_weight=None if cost_weight is None else _unit("context.cost_weight", cost_weight, 0.0, MAX_COST_WEIGHT),
    )
