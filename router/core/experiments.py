"""Experiments: which arm a query runs in, and when a k schedule steps down.

Assignment is sticky per user: the value of a configured metadata key is
hashed with the experiment's name (SHA-256, first 8 bytes → u in [0, 1));
u < share puts the query in the experiment, and the arm is
``floor(u / share · arms)``: the same user always lands in the same arm, and
different experiments split users independently. A query without the key is
in no experiment.

A k schedule (the seed's "start with top-5, reduce to top-3") steps from k
to k − 1 only when both have at least ``min_ratings`` ratings and the mean
rating at k − 1 is at least the mean at k minus ``margin``.

Pure: no state, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def unit_hash(experiment: str, key_value: str) -> float:
    """A stable number in [0, 1) for (experiment, user)."""
    h = hashlib.sha256(f"{experiment}\x00{key_value}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def assign_arm(experiment: str, key_value: str | None, share: float, arms: int) -> int | None:
    """The arm index of a user, or None when the user is not in the experiment."""
    if key_value is None or arms < 1 or share <= 0:
        return None
    u = unit_hash(experiment, key_value)
    if u >= share:
        return None
    return min(arms - 1, int(u / share * arms))


@dataclass(frozen=True, slots=True)
class KStep:
    k: int
    stepped: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RatingSummary:
    ratings: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.ratings if self.ratings else 0.0

    def add(self, score: float) -> RatingSummary:
        return RatingSummary(self.ratings + 1, self.total + score)


def next_k(current: int, end_k: int, at_current: RatingSummary, at_lower: RatingSummary, *,
           margin: float, min_ratings: int) -> KStep:
    """Whether a k schedule at ``current`` steps down to ``current − 1``."""
    if current <= end_k:
        return KStep(current, False, f"at the end of the schedule (k={end_k})")
    if at_current.ratings < min_ratings or at_lower.ratings < min_ratings:
        return KStep(current, False, f"waiting for {min_ratings} ratings at k={current} and k={current - 1} "
                                     f"(have {at_current.ratings} and {at_lower.ratings})")
    if at_lower.mean >= at_current.mean - margin:
        return KStep(current - 1, True, f"quality at k={current - 1} ({at_lower.mean:.3f}) within {margin:g} of "
                                        f"k={current} ({at_current.mean:.3f})")
    return KStep(current, False, f"quality at k={current - 1} ({at_lower.mean:.3f}) more than {margin:g} below "
                                 f"k={current} ({at_current.mean:.3f})")
