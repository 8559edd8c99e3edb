"""Measured answer quality: a Beta posterior per (skill, implementation)
and per context cell (skill, implementation, domain, complexity band).

The prior is the declared quality ``q0`` with a strength ``s`` (pseudo-ratings):

    α₀ = q0 · s        β₀ = (1 − q0) · s

A rating ``r`` in [0, 1] adds ``r`` to the successes and ``1 − r`` to the
failures (thumbs up/down are 1/0; a correctness label is a rating). Old
evidence is forgotten exponentially: before a rating at time ``t`` lands,
the evidence gathered up to ``t_last`` is multiplied by
``2^−(t − t_last)/half_life``. The posterior is

    Beta(α₀ + S, β₀ + F)        mean = (α₀ + S) / (s + S + F)

A context cell's prior is its implementation's posterior mean (not the
declared quality), with the same strength: a cell with no ratings reads as
the implementation, and one with many reads as itself (partial pooling).

Pure: time is passed in, nothing here keeps state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_PRIOR_STRENGTH = 10.0
DEFAULT_HALF_LIFE_S = 7 * 24 * 3600.0
DEFAULT_BANDS = (3.5, 7.0)  # complexity < 3.5 → "low", < 7 → "mid", else "high"
BAND_NAMES = ("low", "mid", "high")


@dataclass(frozen=True, slots=True)
class QualitySettings:
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    half_life_s: float = DEFAULT_HALF_LIFE_S
    bands: tuple[float, ...] = DEFAULT_BANDS  # ascending complexity boundaries

    def __post_init__(self) -> None:
        if not self.prior_strength > 0:
            raise ValueError(f"prior_strength: must be more than 0, got {self.prior_strength!r}")
        if not self.half_life_s > 0:
            raise ValueError(f"half_life_s: must be more than 0, got {self.half_life_s!r}")
        if list(self.bands) != sorted(set(self.bands)):
            raise ValueError(f"bands: must be strictly ascending, got {self.bands!r}")


def complexity_band(complexity: float, bands: Sequence[float] = DEFAULT_BANDS) -> str:
    """The band a complexity falls in: "low", "mid", "high" for the default
    two boundaries, else "b0", "b1", … (one more than boundaries)."""
    i = 0
    while i < len(bands) and complexity >= bands[i]:
        i += 1
    if len(bands) == len(BAND_NAMES) - 1:
        return BAND_NAMES[i]
    return f"b{i}"


@dataclass(frozen=True, slots=True)
class Evidence:
    """Decayed ratings: ``good`` = Σ r, ``bad`` = Σ (1 − r), ``ratings`` the
    number received (not decayed), as of ``at`` (seconds, the caller's clock)."""

    good: float = 0.0
    bad: float = 0.0
    ratings: int = 0
    at: float = 0.0

    def decayed(self, now: float, half_life_s: float) -> Evidence:
        if self.ratings == 0 or now <= self.at:
            return self
        f = math.pow(2.0, -(now - self.at) / half_life_s)
        return Evidence(self.good * f, self.bad * f, self.ratings, now)

    def add(self, score: float, now: float, half_life_s: float) -> Evidence:
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score: must be between 0 and 1, got {score!r}")
        d = self.decayed(now, half_life_s)
        return Evidence(d.good + score, d.bad + (1.0 - score), d.ratings + 1, max(now, d.at))

    @property
    def weight(self) -> float:
        return self.good + self.bad


@dataclass(frozen=True, slots=True)
class Posterior:
    """Beta(alpha, beta) over an implementation's chance of a good answer."""

    alpha: float
    beta: float
    ratings: int = 0
    prior_mean: float = 0.0  # the prior it was built from (declared, or the implementation's for a cell)
    context: str = ""  # "" for the implementation as a whole, else "domain/band"

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """A normal approximation of the central credible interval (95 % by default)."""
        n = self.alpha + self.beta
        m = self.mean
        half = z * math.sqrt(m * (1.0 - m) / (n + 1.0))
        return max(0.0, m - half), min(1.0, m + half)


def posterior(prior_mean: float, evidence: Evidence, settings: QualitySettings, now: float,
              context: str = "") -> Posterior:
    """The posterior of ``evidence`` (decayed to ``now``) under a prior of
    mean ``prior_mean`` and the configured strength."""
    q0 = min(1.0 - 1e-6, max(1e-6, prior_mean))
    s = settings.prior_strength
    e = evidence.decayed(now, settings.half_life_s)
    return Posterior(q0 * s + e.good, (1.0 - q0) * s + e.bad, evidence.ratings, prior_mean, context)


class QualityView(Protocol):
    """What routing reads: the measured quality of one implementation of a
    skill in a query's context (implemented by the runtime's registry)."""

    def estimate(self, skill: str, implementation: str, declared: float, domain: str,
                 complexity: float) -> Posterior: ...


@dataclass(frozen=True, slots=True)
class NoFeedback:
    """A view with no ratings: every posterior is its prior."""

    settings: QualitySettings = QualitySettings()

    def estimate(self, skill: str, implementation: str, declared: float, domain: str,
                 complexity: float) -> Posterior:
        return posterior(declared, Evidence(), self.settings, 0.0)


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean of ratings and a normal-approximation 95 % confidence interval
    (0, 0, 0 when empty)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0, 0.0
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else m * (1 - m)
    half = z * math.sqrt(var / n)
    return m, max(0.0, m - half), min(1.0, m + half)
