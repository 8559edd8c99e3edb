"""The seed application's environment variables, which override the file.

Each variable maps to one key of the file; its value is parsed here (a bad
value is a problem naming the variable), then written over the file's data
before validation, so the range checks apply to it too and a range problem
also names the variable. An empty value counts as unset, as in the seed
(``parseInt(process.env.X || '3')``).

The seed has no per-skill settings: its ``BRAIN_MOE_MAX_CONCURRENT_PER_SKILL``,
``BRAIN_MAX_QUEUE_DEPTH`` and ``BRAIN_MOE_BATCHING_WINDOW_MS`` hold for every
skill. So each sets the file's default AND replaces every skill's own value
(``per_skill``), except in skills that list the setting under ``pinned``
(``pin``). ``BRAIN_MOE_BATCHING_WINDOW_MS`` also turns batching on (the seed
batches whenever the window is set); ``0`` turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ENV_VARS", "PINNABLE", "EnvOverride", "EnvVar", "env_var", "parse_env"]

Kind = Literal["bool", "int", "float", "top_k"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_DYNAMIC = {"dynamic", "auto", "none", "null"}


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    path: tuple[str, ...]
    kind: Kind
    meaning: str
    # Keys inside each skill this variable replaces (dropped, so the default it
    # sets applies), unless the skill pins ``pin``.
    per_skill: tuple[tuple[str, ...], ...] = ()
    pin: str = ""
    # A boolean key set to ``value > 0`` along with the value.
    enables: tuple[str, ...] = ()

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("BRAIN_MOE_ENABLED", ("routing", "moe_enabled"), "bool",
           "false: every activated skill runs (the seed's behaviour before MoE)"),
    EnvVar("BRAIN_MOE_TOP_K", ("routing", "top_k"), "top_k",
           "a fixed k; 'dynamic' uses the dynamic-k rule"),
    EnvVar("BRAIN_MOE_BATCHING_WINDOW_MS", ("batching", "window_ms"), "float",
           "batching window in milliseconds for every skill, and batching on (0: off)",
           per_skill=(("batching", "window_ms"), ("batching", "enabled")), pin="batching",
           enables=("batching", "enabled")),
    EnvVar("BRAIN_MOE_MAX_CONCURRENT_PER_SKILL", ("admission", "default_concurrency_limit"), "int",
           "concurrency limit of every skill",
           per_skill=(("concurrency_limit",),), pin="concurrency_limit"),
    EnvVar("BRAIN_DYNAMIC_ROUTING_ENABLED", ("routing", "dynamic_routing_enabled"), "bool",
           "false: each skill always uses its default implementation"),
    EnvVar("BRAIN_QUALITY_THRESHOLD", ("routing", "quality_threshold"), "float",
           "quality floor of a query that sets none"),
    EnvVar("BRAIN_LOAD_BALANCING_ENABLED", ("admission", "enabled"), "bool",
           "false: no per-skill admission (limits, queues, breakers)"),
    EnvVar("BRAIN_MAX_QUEUE_DEPTH", ("admission", "default_queue_depth"), "int",
           "queue depth of every skill",
           per_skill=(("queue_depth",),), pin="queue_depth"),
)

# What a skill may list under ``pinned``: the settings no variable replaces in it.
PINNABLE: tuple[str, ...] = tuple(v.pin for v in ENV_VARS if v.pin)


def env_var(name: str) -> EnvVar:
    return next(v for v in ENV_VARS if v.name == name)


@dataclass(frozen=True, slots=True)
class EnvOverride:
    """One variable that was set and applied."""

    var: str
    path: str
    raw: str
    value: Any
    # For the per-skill variables: the skills that now follow the value, and
    # the skills that pin their own.
    skills: tuple[str, ...] = ()
    pinned: tuple[str, ...] = ()
    also: str = ""  # e.g. "batching.enabled = True"

    def __str__(self) -> str:
        shown = "dynamic" if self.value is None else self.value
        text = f"{self.var}={self.raw} → {self.path} = {shown}"
        if self.also:
            text += f", {self.also}"
        var = env_var(self.var)
        if var.per_skill:
            text += f"; every skill's {var.pin}" + (f" ({', '.join(self.skills)})" if self.skills else " (no skills)")
            if self.pinned:
                text += f" except pinned {', '.join(self.pinned)}"
        return text


def _parse(kind: Kind, raw: str) -> tuple[object, str]:
    """(value, problem); problem is "" when the value parsed."""
    text = raw.strip()
    low = text.lower()
    if kind == "bool":
        if low in _TRUE:
            return True, ""
        if low in _FALSE:
            return False, ""
        return None, f"must be true/false, 1/0 or yes/no, got {raw!r}"
    if kind == "top_k" and low in _DYNAMIC:
        return None, ""
    if kind in ("int", "top_k"):
        try:
            return int(text, 10), ""
        except ValueError:
            extra = " or 'dynamic'" if kind == "top_k" else ""
            return None, f"must be an integer{extra}, got {raw!r}"
    try:
        value = float(text)
    except ValueError:
        return None, f"must be a number, got {raw!r}"
    if not math.isfinite(value):
        return None, f"must be a finite number, got {raw!r}"
    return value, ""


def parse_env(env: Mapping[str, str]) -> tuple[list[EnvOverride], list[tuple[EnvVar, str]]]:
    """The overrides the environment sets, and the variables whose value is bad
    (each with the problem)."""
    overrides: list[EnvOverride] = []
    bad: list[tuple[EnvVar, str]] = []
    for var in ENV_VARS:
        raw = env.get(var.name)
        if raw is None or not raw.strip():
            continue
        value, problem = _parse(var.kind, raw)
        if problem:
            bad.append((var, problem))
        else:
            overrides.append(EnvOverride(var.name, var.dotted, raw, value))
    return overrides, bad
