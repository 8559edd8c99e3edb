"""The local encoder: TF-IDF over word and character n-grams, and a linear
model per label set (skills, domains). No network, no model download.

Why this model: on BANKING77 (77 close intents, 10,003 examples) a linear
SVM on word 1-2-grams + character 2-5-grams (within word boundaries) reaches
about 91 % top-1 where a centroid (Rocchio) model reaches 82 %; character
n-grams make it robust to typos and inflections, and a linear model's
per-query cost is one sparse-by-dense product. scikit-learn (``TfidfVectorizer``,
``LinearSVC``) does the fitting; the request path does not call it: the
fitted vocabularies, idf weights and coefficients are copied into plain
dicts and numpy arrays, and a query costs two analyzer calls, dict look-ups
and a gather-and-dot over the query's few non-zero features.

A fitted model is immutable: ``LocalEncoder.fit`` returns a new
``FittedLocal``; nothing changes it afterwards.

Calibration (``router.core.signals``): examples are held out from fitting
(5 folds up to 3,000 examples, one 20 % fold beyond); the raw score
threshold is the 5th percentile of the held-out examples' best scores (so
about 95 % of queries like the examples are in scope) and the scale puts
their median at relevance 0.95.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from router.core.signals import Calibration

__all__ = ["FittedLabels", "FittedLocal", "LocalEncoder", "calibrate"]

IN_SCOPE_QUANTILE = 5.0  # percent of held-out in-scope examples allowed below the threshold
MEDIAN_RELEVANCE = 0.95  # relevance of the median held-out example
MAX_FOLDS = 5
FOLDS_UP_TO = 3000  # examples; beyond, one 20 % fold
SVM_C = 1.0
STOP_WORDS: str | None = None  # English stop words cost ~1 point of BANKING77 top-1


def calibrate(held_out_best: Sequence[float]) -> Calibration | None:
    """Threshold and scale from the best raw scores of held-out in-scope examples."""
    if len(held_out_best) < 2:
        return None
    arr = np.asarray(held_out_best, dtype=np.float64)
    thr = float(np.percentile(arr, IN_SCOPE_QUANTILE))
    med = float(np.percentile(arr, 50.0))
    spread = med - thr
    if not spread > 1e-6:
        spread = max(float(arr.std()), 1e-3)
    return Calibration(threshold=thr, scale=spread / math.log(MEDIAN_RELEVANCE / (1 - MEDIAN_RELEVANCE)))


class _Featurizer:
    """The fitted TF-IDF spaces, with a request-path ``transform_one`` that
    equals ``transform`` (word block and char block, each L2-normalized,
    concatenated, normalized again)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, dtype=np.float32,
                                    stop_words=STOP_WORDS)
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True,
                                    min_df=2 if len(texts) >= 200 else 1, dtype=np.float32)
        self.word.fit(texts)
        self.char.fit(texts)
        self._word_an: Callable[[str], list[str]] = self.word.build_analyzer()
        self._char_an: Callable[[str], list[str]] = self.char.build_analyzer()
        self._word_vocab: dict[str, int] = dict(self.word.vocabulary_)
        self._char_vocab: dict[str, int] = dict(self.char.vocabulary_)
        self._offset = len(self._word_vocab)
        self.n_features = self._offset + len(self._char_vocab)
        self._word_idf = self.word.idf_.astype(np.float64)
        self._char_idf = self.char.idf_.astype(np.float64)

    def transform(self, texts: Sequence[str]):  # -> scipy CSR
        from scipy.sparse import hstack
        from sklearn.preprocessing import normalize

        return normalize(hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr())

    def _block(self, grams: list[str], vocab: dict[str, int], idf: np.ndarray, offset: int) -> tuple[list[int], np.ndarray]:
        counts: dict[int, int] = {}
        for g in grams:
            j = vocab.get(g)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return [], np.zeros(0)
        idx = list(counts)
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(idx))
        val = (1.0 + np.log(tf)) * idf[idx]
        val /= np.sqrt(val @ val)
        return [i + offset for i in idx], val

    def transform_one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        wi, wv = self._block(self._word_an(text), self._word_vocab, self._word_idf, 0)
        ci, cv = self._block(self._char_an(text), self._char_vocab, self._char_idf, self._offset)
        blocks = (len(wi) > 0) + (len(ci) > 0)
        idx = np.asarray(wi + ci, dtype=np.intp)
        val = np.concatenate((wv, cv))
        if blocks == 2:
            val *= 1.0 / math.sqrt(2.0)
        return idx, val


@dataclass(frozen=True, eq=False)
class FittedLabels:
    """A linear scorer over one label set: raw = x·W + b per label."""

    labels: tuple[str, ...]
    weights_t: np.ndarray  # (n_features, n_labels), float32, C-contiguous: rows gathered per query
    bias: np.ndarray  # (n_labels,)
    calibration: Calibration | None
    kind: str  # "linear-svm" | "centroid"

    def raw(self, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
        if len(idx) == 0:
            return self.bias.copy() if self.kind == "linear-svm" else np.zeros(len(self.labels))
        return val @ self.weights_t[idx] + self.bias

    def relevance(self, idx: np.ndarray, val: np.ndarray) -> dict[str, float]:
        raw = self.raw(idx, val)
        cal = self.calibration
        if cal is None:  # nothing to calibrate on: relevance is the raw score clipped to 0-1
            return {lab: min(1.0, max(0.0, float(r))) for lab, r in zip(self.labels, raw)}
        z = np.clip((raw - cal.threshold) / cal.scale, -40.0, 40.0)
        rel = 1.0 / (1.0 + np.exp(-z))
        return dict(zip(self.labels, rel.tolist()))


def _fit_weights(x, y: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(W (labels × features), b, kind) for CSR ``x`` and label indices ``y``."""
    present = np.unique(y)
    if len(present) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            svm = LinearSVC(C=SVM_C, max_iter=2000).fit(x, y)
        coef = np.asarray(svm.coef_, dtype=np.float32)
        intercept = np.asarray(svm.intercept_, dtype=np.float32)
        if len(present) == 2:  # binary: one row, positive for classes_[1]
            coef = np.vstack([-coef[0], coef[0]])
            intercept = np.array([-intercept[0], intercept[0]], dtype=np.float32)
        w = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
        b = np.full(n_labels, -1e3, dtype=np.float32)  # a label with no training example never wins
        w[svm.classes_] = coef
        b[svm.classes_] = intercept
        return w, b, "linear-svm"
    # One label: cosine with its centroid.
    w = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
    for lab in present:
        c = np.asarray(x[y == lab].mean(axis=0)).ravel()
        n = float(np.linalg.norm(c))
        w[lab] = c / n if n > 0 else c
    return w, np.zeros(n_labels, dtype=np.float32), "centroid"


def _folds(y: np.ndarray, seed: int) -> list[np.ndarray]:
    """Held-out index sets: each label's examples spread over the folds."""
    rng = random.Random(seed)
    n_folds = MAX_FOLDS if len(y) <= FOLDS_UP_TO else 1
    fold_of = np.zeros(len(y), dtype=np.intp)
    for lab in np.unique(y):
        members = [int(i) for i in np.flatnonzero(y == lab)]
        rng.shuffle(members)
        for j, i in enumerate(members):
            fold_of[i] = j % MAX_FOLDS
    return [np.flatnonzero(fold_of == f) for f in range(n_folds)]


def _fit_labels(feat: _Featurizer, x, texts_by_label: Mapping[str, Sequence[str]], rows: Mapping[str, list[int]],
                seed: int) -> FittedLabels:
    labels = tuple(texts_by_label)
    n = sum(len(r) for r in rows.values())
    order = np.zeros(n, dtype=np.intp)
    y = np.zeros(n, dtype=np.intp)
    k = 0
    for li, lab in enumerate(labels):
        for r in rows[lab]:
            order[k], y[k] = r, li
            k += 1
    xs = x[order]
    w, b, kind = _fit_weights(xs, y, len(labels))
    # Calibrate on held-out examples of labels that keep an example in training.
    counts = np.bincount(y, minlength=len(labels))
    best: list[float] = []
    for held in _folds(y, seed):
        train = np.setdiff1d(np.arange(n), held)
        held = held[counts[y[held]] >= 2]
        if len(held) == 0 or len(np.unique(y[train])) < 1:
            continue
        fw, fb, _ = _fit_weights(xs[train], y[train], len(labels))
        best.extend(np.max(xs[held] @ fw.T + fb, axis=1).tolist())
    return FittedLabels(labels, np.ascontiguousarray(w.T), b, calibrate(best), kind)


@dataclass(frozen=True, eq=False)
class FittedLocal:
    """The fitted local encoder: immutable."""

    featurizer: _Featurizer
    skills: FittedLabels | None
    domains: FittedLabels | None
    n_examples: int

    method = "tfidf-linear"

    def read(self, text: str) -> tuple[dict[str, float], dict[str, float]]:
        """(skill relevance, domain relevance), 0-1 each."""
        idx, val = self.featurizer.transform_one(text)
        skills = self.skills.relevance(idx, val) if self.skills is not None else {}
        domains = self.domains.relevance(idx, val) if self.domains is not None else {}
        return skills, domains

    def calibration(self) -> Calibration | None:
        return self.skills.calibration if self.skills is not None else None


class LocalEncoder:
    """TF-IDF + linear SVM; ``fit`` returns a new ``FittedLocal``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, skills: Mapping[str, Sequence[str]], domains: Mapping[str, Sequence[str]]) -> FittedLocal:
        texts: list[str] = []
        skill_rows: dict[str, list[int]] = {}
        domain_rows: dict[str, list[int]] = {}
        for group, rows in ((skills, skill_rows), (domains, domain_rows)):
            for lab, examples in group.items():
                rows[lab] = list(range(len(texts), len(texts) + len(examples)))
                texts.extend(examples)
        feat = _Featurizer(texts)
        x = feat.transform(texts)
        return FittedLocal(
            feat,
            _fit_labels(feat, x, skills, skill_rows, self.seed) if skills else None,
            _fit_labels(feat, x, domains, domain_rows, self.seed + 1) if domains else None,
            len(texts),
        )
