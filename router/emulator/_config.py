"""What the emulated backend does per model: latency, failures, tokens.

A ``ModelProfile`` describes one model; an ``EmulatorConfig`` holds the
profiles, the profile for unknown models, the seed and the time scale. Both
are frozen; the running ``Emulator`` swaps whole profiles
(``Emulator.set_profile``) so a test can make a model start failing.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from router.core.errors import ConfigError

# z-score of the 99th percentile of the standard normal distribution.
_Z99 = 2.3263478740408408

_MALFORMED_KINDS = ("invalid_json", "wrong_shape")


class InvalidProfile(ValueError):
    """A ``ModelProfile`` setting out of range; ``key`` names it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How one emulated model behaves.

    Latency is lognormal with median ``latency_ms`` and 99th percentile
    ``p99_ms``; without ``p99_ms`` (or with ``p99_ms <= latency_ms``) it is
    fixed. A batched request (``/v1/completions`` with a list prompt,
    ``/skill/batch``) takes ``batch_overhead_ms`` (None: one sampled
    single-call latency) plus ``per_item_ms`` per item. Every latency is
    multiplied by ``EmulatorConfig.latency_scale``.

    Failures are drawn per request from the emulator's seeded random source:
    ``rate_limit_rate`` answers 429 at once with ``Retry-After``;
    ``error_rate`` answers 500 after the latency (in ``/skill/batch`` it fails
    single items instead); ``malformed_rate`` answers 200 with a body that is
    not JSON (``malformed_kind="invalid_json"``) or JSON of the wrong shape
    (``"wrong_shape"``). Above ``max_concurrency`` requests in flight the
    model answers 429 at once.

    Streaming (``stream: true`` chat completions, server-sent events): the
    latency is the time to the first token; each further piece of the
    answer (a word) follows ``token_ms`` later. A whole (non-streamed) chat
    answer takes as long: latency plus ``token_ms`` per further word. ``stream_break_after``
    breaks the connection off after that many pieces (a stream that fails
    mid-way).

    Usage: ``input_tokens``/``output_tokens`` when set, else about one token
    per four characters of the prompt/answer. With prices set, ``/skill``
    answers carry a ``cost``.
    """

    latency_ms: float = 20.0
    p99_ms: float | None = None
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    malformed_rate: float = 0.0
    malformed_kind: str = "invalid_json"
    max_concurrency: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    batch_overhead_ms: float | None = None
    per_item_ms: float = 0.0
    price_per_input_token: float | None = None
    price_per_output_token: float | None = None
    token_ms: float = 0.0
    stream_break_after: int | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InvalidProfile(*problems[0])

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not self.latency_ms >= 0:
            out.append(("latency_ms", f"must be >= 0, got {self.latency_ms!r}"))
        if self.p99_ms is not None and not self.p99_ms >= 0:
            out.append(("p99_ms", f"must be >= 0, got {self.p99_ms!r}"))
        for name in ("error_rate", "rate_limit_rate", "malformed_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                out.append((name, f"must be a fraction in [0, 1], got {value!r}"))
        if not self.retry_after_s >= 0:
            out.append(("retry_after_s", f"must be >= 0, got {self.retry_after_s!r}"))
        if self.malformed_kind not in _MALFORMED_KINDS:
            out.append(("malformed_kind", f"must be one of {list(_MALFORMED_KINDS)}, got {self.malformed_kind!r}"))
        if self.max_concurrency is not None and self.max_concurrency < 1:
            out.append(("max_concurrency", f"must be >= 1, got {self.max_concurrency!r}"))
        for name in ("input_tokens", "output_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                out.append((name, f"must be >= 0, got {value!r}"))
        if self.batch_overhead_ms is not None and not self.batch_overhead_ms >= 0:
            out.append(("batch_overhead_ms", f"must be >= 0, got {self.batch_overhead_ms!r}"))
        if not self.per_item_ms >= 0:
            out.append(("per_item_ms", f"must be >= 0, got {self.per_item_ms!r}"))
        if not self.token_ms >= 0:
            out.append(("token_ms", f"must be >= 0, got {self.token_ms!r}"))
        if self.stream_break_after is not None and self.stream_break_after < 0:
            out.append(("stream_break_after", f"must be >= 0, got {self.stream_break_after!r}"))
        return out

    def sample_latency_ms(self, rng: random.Random) -> float:
        """One single-call latency in (unscaled) milliseconds."""
        median = self.latency_ms
        p99 = self.p99_ms
        if p99 is None or p99 <= median or median <= 0:
            return median
        sigma = (math.log(p99) - math.log(median)) / _Z99
        return rng.lognormvariate(math.log(median), sigma)

    def batch_latency_ms(self, rng: random.Random, items: int) -> float:
        overhead = self.sample_latency_ms(rng) if self.batch_overhead_ms is None else self.batch_overhead_ms
        return overhead + self.per_item_ms * items

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        if self.price_per_input_token is None and self.price_per_output_token is None:
            return None
        return input_tokens * (self.price_per_input_token or 0.0) + output_tokens * (self.price_per_output_token or 0.0)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """The emulator as a whole.

    ``models`` maps a model name to its profile; any other model name gets
    ``default``. ``seed`` seeds the one random source (None: unseeded).
    ``latency_scale`` multiplies every latency (0.01 makes a 2000 ms model
    answer in 20 ms). With ``api_key`` set, requests without
    ``Authorization: Bearer <api_key>`` answer 401. A query or prompt that
    contains ``fail_marker`` always fails (500, or a per-item error in a
    batch), which lets tests fail one chosen item deterministically.
    """

    models: Mapping[str, ModelProfile] = field(default_factory=lambda: MappingProxyType({}))
    default: ModelProfile = ModelProfile()
    seed: int | None = 0
    latency_scale: float = 1.0
    api_key: str | None = None
    fail_marker: str = "[emulator:fail]"

    def __post_init__(self) -> None:
        if not self.latency_scale >= 0:
            raise InvalidProfile("latency_scale", f"must be >= 0, got {self.latency_scale!r}")
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def profile(self, model: str) -> ModelProfile:
        return self.models.get(model, self.default)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<emulator config>") -> EmulatorConfig:
        """Build from plain data (a parsed YAML/JSON file)::

            seed: 7
            latency_scale: 0.01
            default: {latency_ms: 50}
            models:
              gpt-4o: {latency_ms: 2000, p99_ms: 4000, error_rate: 0.01}
              gpt-4o-mini: {latency_ms: 800, max_concurrency: 64}

        Raises ``ConfigError`` naming the key path of the first problem.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(source, "", f"expected a mapping at the top level, got {type(data).__name__}")
        known = {"models", "default", "seed", "latency_scale", "api_key", "fail_marker"}
        for key in data:
            if key not in known:
                raise ConfigError(source, str(key), f"unknown key (expected one of {sorted(known)})")
        models_data = data.get("models") or {}
        if not isinstance(models_data, Mapping):
            raise ConfigError(source, "models", "expected a mapping of model name to profile")
        models = {str(name): _profile_from(spec, source, f"models.{name}") for name, spec in models_data.items()}
        default = _profile_from(data.get("default") or {}, source, "default")
        kwargs: dict[str, Any] = {"models": models, "default": default}
        if "seed" in data:
            seed = data["seed"]
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
                raise ConfigError(source, "seed", f"expected an integer or null, got {seed!r}")
            kwargs["seed"] = seed
        if "latency_scale" in data:
            scale = data["latency_scale"]
            if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale < 0:
                raise ConfigError(source, "latency_scale", f"expected a number >= 0, got {scale!r}")
            kwargs["latency_scale"] = float(scale)
        for key in ("api_key", "fail_marker"):
            if key in data:
                value = data[key]
                if value is not None and not isinstance(value, str):
                    raise ConfigError(source, key, f"expected a string, got {value!r}")
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> EmulatorConfig:
        """Load a ``.yaml``/``.yml`` or ``.json`` file (see ``from_mapping``)."""
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from exc
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # a parse error of either format
            raise ConfigError(source, "", f"cannot parse: {exc}") from exc
        return cls.from_mapping(data or {}, source=source)


_PROFILE_FIELDS = {f.name: f for f in fields(ModelProfile)}
_INT_FIELDS = {"max_concurrency", "input_tokens", "output_tokens", "stream_break_after"}
_STR_FIELDS = {"malformed_kind"}


def _profile_from(data: Any, source: str, path: str) -> ModelProfile:
    if not isinstance(data, Mapping):
        raise ConfigError(source, path, f"expected a mapping of profile settings, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _PROFILE_FIELDS:
            raise ConfigError(source, f"{path}.{key}", f"unknown key (expected one of {sorted(_PROFILE_FIELDS)})")
        if key in _STR_FIELDS:
            if not isinstance(value, str):
                raise ConfigError(source, f"{path}.{key}", f"expected a string, got {value!r}")
        elif value is not None:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or (key in _INT_FIELDS and not isinstance(value, int)):
                kind = "an integer" if key in _INT_FIELDS else "a number"
                raise ConfigError(source, f"{path}.{key}", f"expected {kind}, got {value!r}")
        kwargs[key] = value
    try:
        return ModelProfile(**kwargs)
    except InvalidProfile as exc:
        raise ConfigError(source, f"{path}.{exc.key}", exc.problem) from exc
