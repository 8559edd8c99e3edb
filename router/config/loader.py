"""Read the YAML file, apply the environment, validate, build ``RouterConfig``.

Every problem becomes an ``InvalidConfig`` (a ``router.core.errors.ConfigError``)
naming the file and line (or the environment variable), the key path and what
is wrong; all problems found in one pass are listed together.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from router.core.types import ActivationRule, BackendKind, ImplementationSpec, SkillSpec

from .env import EnvOverride, env_var, parse_env
from .model import ImplementationOptions, RouterConfig, SkillOptions
from .problems import ConfigIssue, InvalidConfig, format_path, translate
from .schema import ConfigFile

__all__ = ["check_config", "default_config_path", "load_config", "parse_config"]

Loc = tuple[str | int, ...]


def default_config_path() -> Path:
    """The bundled config: the seed application's skills."""
    return Path(__file__).with_name("default.yaml")


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> RouterConfig:
    """Load and validate a config file (``None``: the bundled ``default.yaml``);
    the seed's ``BRAIN_*`` variables in ``env`` (``None``: ``os.environ``)
    override it. Raises ``ConfigError`` (an ``InvalidConfig``)."""
    file = default_config_path() if path is None else Path(path)
    source = str(file) if path is None else os.fspath(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidConfig([ConfigIssue(source, "", "file not found")]) from None
    except IsADirectoryError:
        raise InvalidConfig([ConfigIssue(source, "", "is a directory, not a config file")]) from None
    except PermissionError:
        raise InvalidConfig([ConfigIssue(source, "", "permission denied")]) from None
    except UnicodeDecodeError as exc:
        raise InvalidConfig([ConfigIssue(source, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise InvalidConfig([ConfigIssue(source, "", f"cannot be read: {exc.strerror or exc}")]) from None
    data, root = _parse_yaml(text, source)
    return _build(data, source, env, _Locator(root), file.resolve().parent)


def parse_config(data: Any, source: str = "<config>", env: Mapping[str, str] | None = None,
                 base_dir: str | os.PathLike[str] | None = None) -> RouterConfig:
    """Validate already-parsed config data (``source`` names it in errors;
    ``examples_file`` paths are relative to ``base_dir``, default the
    working directory)."""
    return _build(data, source, env, _Locator(None), Path(base_dir) if base_dir is not None else Path.cwd())


def check_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> str:
    """The human summary ``skill-router check-config PATH`` prints; raises
    ``ConfigError`` when the config is bad."""
    env = os.environ if env is None else env
    return load_config(path, env).summary(env)


# --- YAML ------------------------------------------------------------------------


# libyaml's parser when PyYAML was built with it (the wheels are): 10,000
# skills parse in about a second instead of half a minute of pure Python.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[misc, valid-type]
    """SafeLoader (libyaml's when present) that rejects a key given twice in
    one mapping (PyYAML keeps the last silently, which hides typos such as
    two ``kimiK2:`` blocks)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: SafeLoader reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (first at line {first})", key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> tuple[object, yaml.Node | None]:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        where = f" at column {mark.column + 1}" if mark is not None else ""
        what = ", ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise InvalidConfig([ConfigIssue(source, "", f"invalid YAML{where}: {what}", line)]) from None
    except yaml.YAMLError as exc:
        raise InvalidConfig([ConfigIssue(source, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    return data, root


class _Locator:
    """The line a key path starts at, from the composed YAML node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, loc: Loc) -> int | None:
        node = self.root
        line = None  # the root's line says nothing: a key missing at the top has none
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                        line, node = key_node.start_mark.line + 1, value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


# --- validation and build ---------------------------------------------------------


def _apply_env(data: dict[str, Any], overrides: list[EnvOverride]) -> tuple[dict[Loc, str], list[EnvOverride]]:
    """Write the overrides into ``data``; returns key path → variable for
    the ones written (a section that is not a mapping is left for validation
    to report), and the overrides with the skills each one reached.

    A per-skill variable (``EnvVar.per_skill``) also drops each skill's own
    value, so the default it sets applies to every skill, except in skills
    that pin the setting (``pinned: [concurrency_limit]``)."""
    applied: dict[Loc, str] = {}
    out: list[EnvOverride] = []
    for o in overrides:
        var = env_var(o.var)
        writes: list[tuple[Loc, Any]] = [(tuple(o.path.split(".")), o.value)]
        if var.enables:
            writes.append((var.enables, o.value is not None and o.value > 0))
        written = False
        for parts, value in writes:
            node: Any = data
            for part in parts[:-1]:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
                if not isinstance(node, dict):
                    break
            else:
                node[parts[-1]] = value
                applied[parts] = o.var
                written = True
        if not written:
            continue
        if var.enables:
            o = dataclasses.replace(o, also=f"{'.'.join(var.enables)} = {bool(o.value and o.value > 0)}")
        if var.per_skill:
            followed, pinned = [], []
            skills = data.get("skills")
            for name, skill in (skills.items() if isinstance(skills, dict) else ()):
                if not isinstance(skill, dict):
                    continue
                pins = skill.get("pinned")
                if isinstance(pins, list) and var.pin in pins:
                    pinned.append(str(name))
                    continue
                for key in var.per_skill:
                    node = skill
                    for part in key[:-1]:
                        node = node.get(part) if isinstance(node, dict) else None
                    if isinstance(node, dict):
                        node.pop(key[-1], None)
                followed.append(str(name))
            o = dataclasses.replace(o, skills=tuple(followed), pinned=tuple(pinned))
        out.append(o)
    return applied, out


def _build(data: Any, source: str, env: Mapping[str, str] | None, locator: _Locator, base_dir: Path) -> RouterConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidConfig([ConfigIssue(
            source, "", f"the top level must be a mapping of sections (routing, server, ..., skills), got {type(data).__name__}",
            locator.line(()),
        )])
    overrides, bad = parse_env(os.environ if env is None else env)
    issues = [ConfigIssue(var.name, var.dotted, problem) for var, problem in bad]
    data = copy.deepcopy(data)
    from_env, overrides = _apply_env(data, overrides)
    try:
        cfg = ConfigFile.model_validate(data)
    except ValidationError as exc:
        found = []
        for err in exc.errors():
            loc, problem = translate(err)
            var = from_env.get(loc)
            if var is not None:
                found.append(ConfigIssue(var, format_path(loc), problem))
            else:
                found.append(ConfigIssue(source, format_path(loc), problem, locator.line(loc)))
        # Env problems first, then the file's in line order.
        found.sort(key=lambda i: (i.line is not None, i.line or 0))
        issues += found
        cfg = None
    if issues or cfg is None:
        raise InvalidConfig(issues)
    skill_examples, domain_examples = _examples(cfg, source, locator, base_dir)
    out = _router_config(cfg, source, tuple(overrides))
    return dataclasses.replace(out, understanding=cfg.understanding, skill_examples=skill_examples,
                               domain_examples=domain_examples, base_dir=str(base_dir))


def _read_examples(path: Path) -> tuple[list[str] | None, str]:
    """(examples, problem): one example per line; blank lines and lines
    starting with '#' are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"file not found: {path}"
    except IsADirectoryError:
        return None, f"is a directory, not an examples file: {path}"
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text ({exc.reason} at byte {exc.start}): {path}"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc}): {path}"
    lines = [" ".join(line.split()) for line in text.splitlines()]
    examples = [line for line in lines if line and not line.startswith("#")]
    if not examples:
        return None, f"has no examples (one per line; blank and '#' lines are skipped): {path}"
    return examples, ""


def _examples(cfg: ConfigFile, source: str, locator: _Locator,
              base_dir: Path) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """Every skill's and domain's examples (inline first, then the file's)."""
    issues: list[ConfigIssue] = []
    out: tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]] = ({}, {})
    groups = (("skills", cfg.skills, out[0]), ("domains", cfg.domains, out[1]))
    for section, entries, into in groups:
        for name, entry in entries.items():
            examples = list(entry.examples)
            if entry.examples_file is not None:
                loc: Loc = (section, name, "examples_file")
                path = Path(entry.examples_file).expanduser()
                found, problem = _read_examples(path if path.is_absolute() else base_dir / path)
                if found is None:
                    issues.append(ConfigIssue(source, format_path(loc), problem, locator.line(loc)))
                    continue
                examples.extend(found)
            if examples:
                into[name.lower() if section == "domains" else name] = tuple(dict.fromkeys(examples))
    if issues:
        raise InvalidConfig(issues)
    return out


def _router_config(cfg: ConfigFile, source: str, overrides: tuple[EnvOverride, ...]) -> RouterConfig:
    adm, bat = cfg.admission, cfg.batching
    skills: list[SkillSpec] = []
    skill_opts: dict[str, SkillOptions] = {}
    impl_opts: dict[tuple[str, str], ImplementationOptions] = {}
    for name, s in cfg.skills.items():
        impls = []
        for i in s.implementations:
            impls.append(ImplementationSpec(
                name=i.name,
                backend=BackendKind(i.backend),
                url=i.url,
                model=i.model,
                quality=i.quality,
                cost_per_query=i.derived_cost,
                expected_latency_ms=i.expected_latency_ms,
                optimal_complexity=s.optimal_complexity if i.optimal_complexity is None else i.optimal_complexity,
                api_key_env=i.api_key_env,
                price_per_input_token=i.price_per_input_token,
                price_per_output_token=i.price_per_output_token,
                timeout_s=i.timeout_s,
                max_connections=i.max_connections,
            ))
            impl_opts[(name, i.name)] = ImplementationOptions(
                skill=name,
                implementation=i.name,
                batch=i.batch,
                expected_input_tokens=i.expected_input_tokens,
                expected_output_tokens=i.expected_output_tokens,
                cost_derived=i.cost_per_query is None,
                max_response_bytes=i.max_response_bytes,
                rpm=None if i.rate_limit is None else i.rate_limit.rpm,
                tpm=None if i.rate_limit is None else i.rate_limit.tpm,
            )
        skills.append(SkillSpec(
            name=name,
            priority=s.priority,
            activation=ActivationRule(
                domains=frozenset(s.activation.domains),
                min_complexity=s.activation.min_complexity,
                max_complexity=s.activation.max_complexity,
                keywords=tuple(s.activation.keywords),
            ),
            preferred_domains=frozenset(s.preferred_domains),
            optimal_complexity=s.optimal_complexity,
            concurrency_limit=adm.default_concurrency_limit if s.concurrency_limit is None else s.concurrency_limit,
            queue_depth=adm.default_queue_depth if s.queue_depth is None else s.queue_depth,
            implementations=tuple(impls),
            default_index=s.default_index,
            enabled=s.enabled,
            description=s.description.strip(),
            system_prompt=s.system_prompt.strip(),
        ))
        o = s.batching
        skill_opts[name] = SkillOptions(
            skill=name,
            queue_timeout_s=adm.queue_timeout_s if s.queue_timeout_s is None else s.queue_timeout_s,
            batching_enabled=bat.enabled if o.enabled is None else o.enabled,
            batch_window_ms=bat.window_ms if o.window_ms is None else o.window_ms,
            max_batch_size=bat.max_batch_size if o.max_batch_size is None else o.max_batch_size,
            concurrency_limit_set=s.concurrency_limit is not None,
            queue_depth_set=s.queue_depth is not None,
            pinned=tuple(s.pinned),
            cache_enabled=cfg.cache.enabled if s.cache.enabled is None else s.cache.enabled,
            cache_ttl_s=cfg.cache.ttl_s if s.cache.ttl_s is None else s.cache.ttl_s,
        )
    return RouterConfig(
        skills=tuple(skills),
        policy=cfg.routing.to_policy(),
        routing=cfg.routing,
        server=cfg.server,
        admission=cfg.admission,
        batching=cfg.batching,
        telemetry=cfg.telemetry,
        storage=cfg.storage,
        state=cfg.state,
        feedback=cfg.feedback,
        experiments=dict(cfg.experiments),
        source=source,
        env_overrides=overrides,
        skill_opts=skill_opts,
        implementation_opts=impl_opts,
        cache=cfg.cache,
    )
