"""Config problems: every one names where it is (file and line, or the
environment variable), the key path and what is wrong. pydantic's errors are
translated here; nothing outside this package sees a pydantic exception."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from router.core.errors import ConfigError

from .schema import ConfigFile, FieldProblem

__all__ = ["ConfigIssue", "InvalidConfig", "format_path", "translate"]

Loc = tuple[str | int, ...]

_SECRET_KEYS = frozenset({"api_key", "apikey", "api_token", "token", "secret", "password", "authorization", "bearer"})
_PLAIN_KEY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def format_path(loc: Iterable[str | int]) -> str:
    """``("skills", "kimiK2", "implementations", 1, "quality")`` →
    ``skills.kimiK2.implementations[1].quality``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part and set(part) <= _PLAIN_KEY) or part == "":
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    source: str  # the file, or the environment variable
    path: str  # the key path, "" for the whole file
    problem: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.path}: {self.problem}" if self.path else f"{where}: {self.problem}"


class InvalidConfig(ConfigError):
    """Every problem found in one pass. ``source``, ``path``, ``problem`` and
    ``line`` are the first one's; ``issues`` holds them all."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        if not issues:
            raise ValueError("InvalidConfig needs at least one issue")
        first = issues[0]
        super().__init__(first.source, first.path, first.problem)
        self.issues = tuple(issues)
        self.line = first.line
        if len(self.issues) == 1:
            message = str(first)
        else:
            message = f"{len(self.issues)} problems in the config:\n" + "\n".join(f"  {i}" for i in self.issues)
        self.args = (message,)


# --- pydantic → (loc, problem) ---------------------------------------------


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
            continue
        origin = typing.get_origin(tp)
        if origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
}


def translate(err: ErrorDetails, root: type[BaseModel] = ConfigFile) -> tuple[Loc, str]:
    """One pydantic error → the key path it is at and a problem in plain words."""
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    secret = bool(loc) and loc[-1] == "api_key_env"
    if loc and loc[-1] == "[key]":
        loc = loc[:-1]  # a bad mapping key: the path is the key itself
    cause = ctx.get("error")
    if isinstance(cause, FieldProblem):
        return loc + cause.subpath, cause.problem
    if kind == "value_error" or kind == "assertion_error":
        msg = str(cause) if cause is not None else err["msg"]
        return loc, msg.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        if key.lower() in _SECRET_KEYS:
            return loc, (
                "a literal secret is not allowed in the config: put it in an environment variable "
                "and name that variable in api_key_env (e.g. api_key_env: OPENROUTER_API_KEY)"
            )
        model = _model_at(loc[:-1], root)
        allowed = list(model.model_fields) if model else []
        near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if near:
            return loc, f"unknown key (did you mean {near[0]!r}?)"
        return loc, "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return loc, "required key missing"
    if kind in _TYPE_WORDS:
        got = "a value (not shown)" if secret else _show(value)
        return loc, f"must be {_TYPE_WORDS[kind]}, got {got}"
    if kind == "literal_error":
        return loc, f"must be one of {ctx.get('expected', '?')}, got {_show(value)}"
    if kind == "too_short":
        return loc, f"must have at least {ctx.get('min_length')} entries, got {ctx.get('actual_length')}"
    return loc, err["msg"]
