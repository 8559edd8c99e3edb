"""Feedback: who answered each query (remembered a while), the live
measured-quality state the next query reads, and the desk that takes the
web app's ratings.

    Execute ─ QueryRecord ─▶ AnswerMemory (query_id → skills, implementations, context;
                                           bounded, expiring)
    Feedback(query_id, score, skill_scores)
        ─▶ FeedbackDesk: validate (field named) ─▶ QualityRegistry.rate per (skill, implementation)
                                                  ─▶ LiveRegistry: the skill's answer-quality factor
                                                  ─▶ sink: one FeedbackRecord per rating (the store)

Duplicates are refused (``AlreadyRated``): the first rating of a query
stands, a second Feedback for the same query id gets ALREADY_EXISTS.
Everything runs on the event loop's thread: no locks.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from router.core.errors import AlreadyRated, InvalidArgument, UnknownQuery
from router.core.quality import Evidence, Posterior, QualitySettings, complexity_band, posterior
from router.core.synthesis import QueryOutcome
from router.core.types import SkillSpec

from .observer import QueryRecord
from .registry import LiveRegistry

DEFAULT_MEMORY_TTL_S = 3600.0
DEFAULT_MEMORY_MAX = 100_000
DEFAULT_MAX_CELLS = 10_000
MAX_QUERY_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class Answered:
    """What is remembered of one answered Execute."""

    query_id: str
    at: float  # wall clock, unix seconds
    domain: str
    complexity: float
    answers: tuple[tuple[str, str], ...]  # (skill, implementation) that answered OK
    arm: str = ""  # the experiment arm the query ran in ("" when none)


class AnswerMemory:
    """query_id → ``Answered``, at most ``max_entries``, each for ``ttl_s``
    seconds (the oldest go first when full). Rated ids are kept (to refuse
    duplicates) until they expire."""

    def __init__(self, ttl_s: float = DEFAULT_MEMORY_TTL_S, max_entries: int = DEFAULT_MEMORY_MAX,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[str, Answered] = OrderedDict()
        self._rated: set[str] = set()

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, a: Answered) -> None:
        self._expire(self._clock())
        self._items[a.query_id] = a
        self._items.move_to_end(a.query_id)
        while len(self._items) > self.max_entries:
            qid, _ = self._items.popitem(last=False)
            self._rated.discard(qid)

    def remember_record(self, r: QueryRecord, arm: str = "") -> None:
        """From the pipeline's one record per Execute: answered queries only."""
        if not QueryOutcome(r.status).answered:
            return
        ok = set(r.skills_ok)
        answers = tuple((s, i) for s, i in zip(r.skills, r.implementations) if s in ok)
        if answers:
            self.remember(Answered(r.query_id, r.timestamp, r.domain, r.complexity, answers, arm or r.arm))

    def get(self, query_id: str) -> Answered | None:
        self._expire(self._clock())
        return self._items.get(query_id)

    def is_rated(self, query_id: str) -> bool:
        return query_id in self._rated

    def mark_rated(self, query_id: str) -> None:
        self._rated.add(query_id)

    def _expire(self, now: float) -> None:
        items = self._items
        while items:
            qid, a = next(iter(items.items()))
            if now - a.at <= self.ttl_s:
                break
            items.popitem(last=False)
            self._rated.discard(qid)


class QualityRegistry:
    """The live measured quality (``core.quality.QualityView``): evidence per
    (skill, implementation) and per context cell (skill, implementation,
    domain, complexity band), at most ``max_cells`` cells (beyond that only
    the implementation learns)."""

    def __init__(self, skills: Iterable[SkillSpec], settings: QualitySettings = QualitySettings(), *,
                 max_cells: int = DEFAULT_MAX_CELLS, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.max_cells = max_cells
        self._clock = clock
        self._declared = {(s.name, i.name): i.quality for s in skills for i in s.implementations}
        self._impl: dict[tuple[str, str], Evidence] = {}
        self._cell: dict[tuple[str, str, str, str], Evidence] = {}
        self.ratings = 0

    def band(self, complexity: float) -> str:
        return complexity_band(complexity, self.settings.bands)

    def implementation(self, skill: str, implementation: str, declared: float | None = None) -> Posterior:
        """The posterior of the implementation as a whole (every context)."""
        q0 = self._declared.get((skill, implementation), 0.5) if declared is None else declared
        return posterior(q0, self._impl.get((skill, implementation), Evidence()), self.settings, self._clock())

    def estimate(self, skill: str, implementation: str, declared: float, domain: str,
                 complexity: float) -> Posterior:
        now = self._clock()
        whole = posterior(declared, self._impl.get((skill, implementation), Evidence()), self.settings, now)
        band = self.band(complexity)
        cell = self._cell.get((skill, implementation, domain, band))
        if cell is None:
            return whole
        return posterior(whole.mean, cell, self.settings, now, f"{domain}/{band}")

    def rate(self, skill: str, implementation: str, domain: str, complexity: float, score: float,
             now: float | None = None) -> Posterior:
        """Add one rating; returns the implementation's new posterior."""
        now = self._clock() if now is None else now
        hl = self.settings.half_life_s
        key = (skill, implementation)
        self._impl[key] = self._impl.get(key, Evidence()).add(score, now, hl)
        ckey = (skill, implementation, domain, self.band(complexity))
        if ckey in self._cell or len(self._cell) < self.max_cells:
            self._cell[ckey] = self._cell.get(ckey, Evidence()).add(score, now, hl)
        self.ratings += 1
        return self.implementation(skill, implementation)

    def answer_factor(self, skill: str) -> float:
        """What skill scoring's success factor multiplies the transport
        success rate by: min(1, measured / declared) over the skill's rated
        implementations, weighted by their ratings (1 with no ratings)."""
        num = den = 0.0
        for (s, i), ev in self._impl.items():
            if s != skill or ev.ratings == 0:
                continue
            declared = self._declared.get((s, i), 0.5)
            p = self.implementation(s, i, declared)
            num += ev.ratings * min(1.0, p.mean / max(declared, 1e-6))
            den += ev.ratings
        return num / den if den else 1.0

    def ratings_of(self, skill: str, implementation: str) -> int:
        ev = self._impl.get((skill, implementation))
        return ev.ratings if ev else 0


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One rating, as the metrics store's ``feedback`` table keeps it."""

    query_id: str
    timestamp: float  # when the rating arrived, unix seconds
    skill: str
    implementation: str
    score: float
    domain: str
    complexity: float
    band: str
    arm: str = ""


@dataclass(frozen=True, slots=True)
class Rated:
    skill: str
    implementation: str
    score: float
    measured_quality: float  # the implementation's posterior mean after this rating
    ratings: int


@dataclass(frozen=True, slots=True)
class FeedbackReceipt:
    query_id: str
    rated: tuple[Rated, ...]
    query_score: float  # the rating of the query as a whole (mean of the skills' ratings)


def _score(field: str, value: float) -> float:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(field, f"must be between 0 and 1 (thumbs up 1, down 0), got {value:g}")
    return float(value)


class FeedbackDesk:
    """Takes ratings: validates everything first (a bad request changes
    nothing), then applies them."""

    def __init__(self, memory: AnswerMemory, quality: QualityRegistry, live: LiveRegistry | None = None,
                 sink: Callable[[list[FeedbackRecord], float], None] | None = None,
                 on_rated: Callable[[Answered, float], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.memory = memory
        self.quality = quality
        self.live = live
        self._sink = sink
        self._on_rated = on_rated
        self._clock = clock
        self.received = 0  # Feedback calls accepted
        self.score_sum = 0.0  # of their query scores

    @property
    def avg_score(self) -> float:
        return self.score_sum / self.received if self.received else 0.0

    def submit(self, query_id: str, score: float | None, skill_scores: Mapping[str, float]) -> FeedbackReceipt:
        if not query_id:
            raise InvalidArgument("query_id", "must not be empty (the query_id Execute returned)")
        if len(query_id) > MAX_QUERY_ID_CHARS:
            raise InvalidArgument("query_id", f"is {len(query_id)} characters; at most {MAX_QUERY_ID_CHARS}")
        if score is None and not skill_scores:
            raise InvalidArgument("score", "set score (0 to 1) or skill_scores")
        overall = None if score is None else _score("score", score)
        per_skill = {name: _score(f"skill_scores[{name[:64]!r}]", v) for name, v in skill_scores.items()}
        answered = self.memory.get(query_id)
        if answered is None:
            raise UnknownQuery("query_id", f"{query_id[:64]!r} is unknown or expired (answered queries are "
                                           f"remembered for {self.memory.ttl_s:g}s, at most "
                                           f"{self.memory.max_entries} of them)")
        if self.memory.is_rated(query_id):
            raise AlreadyRated("query_id", f"{query_id[:64]!r} already has feedback; the first rating stands")
        impl_of = dict(answered.answers)
        for name in per_skill:
            if name not in impl_of:
                raise InvalidArgument(f"skill_scores[{name[:64]!r}]",
                                      f"skill did not answer query {query_id[:64]!r} (answered: "
                                      f"{', '.join(impl_of) or 'none'})")
        now = self._clock()
        rated: list[Rated] = []
        rows: list[FeedbackRecord] = []
        band = self.quality.band(answered.complexity)
        for skill, impl in answered.answers:
            s = per_skill.get(skill, overall)
            if s is None:
                continue
            post = self.quality.rate(skill, impl, answered.domain, answered.complexity, s)  # its own clock
            rated.append(Rated(skill, impl, s, post.mean, post.ratings))
            rows.append(FeedbackRecord(query_id, now, skill, impl, s, answered.domain, answered.complexity, band,
                                       answered.arm))
            if self.live is not None:
                self.live.set_answer_quality(skill, self.quality.answer_factor(skill))
        self.memory.mark_rated(query_id)
        q = overall if overall is not None else sum(r.score for r in rated) / len(rated)
        self.received += 1
        self.score_sum += q
        if self._sink is not None:
            self._sink(rows, q)
        if self._on_rated is not None:
            self._on_rated(answered, q)
        return FeedbackReceipt(query_id, tuple(rated), q)
