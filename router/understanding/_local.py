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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from router.core.signals import Calibration

# scikit-learn is imported where a model is fitted (about 1.5 s of CPU at
# import): a process that fits nothing never loads it.

__all__ = ["FittedLabels", "FittedLocal", "LocalEncoder", "calibrate"]

IN_SCOPE_QUANTILE = 5.0  # percent of held-out in-scope examples allowed below the threshold
MEDIAN_RELEVANCE = 0.95  # relevance of the median held-out example
MAX_FOLDS = 5
FOLDS_UP_TO = 3000  # examples; beyond, one 20 % fold
SVM_C = 1.0
CHAR_NGRAMS = (2, 5)
# A one-vs-rest linear SVM costs about (labels × examples) to fit: BANKING77's
# 77 × 10,003 takes a few seconds, 1,000 skills × 20,000 examples two minutes
# and a dense 1,000 × 58,000 weight matrix. Beyond this many label-example
# pairs the centroid model is fitted instead (linear in the examples, sparse
# weights; about 82 % instead of 91 % top-1 on BANKING77).
SVM_MAX_PAIRS = 2_000_000
STOP_WORDS: str | None = None  # English stop words cost ~1 point of BANKING77 top-1


_HALF_SQRT2 = 1.0 / math.sqrt(2.0)


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
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, dtype=np.float32,
                                    stop_words=STOP_WORDS)
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, sublinear_tf=True, lowercase=True,
                                    min_df=2 if len(texts) >= 200 else 1, dtype=np.float32)
        self.word.fit(texts)
        self.char.fit(texts)
        self._word_an: Callable[[str], list[str]] = self.word.build_analyzer()
        # Feature index in the concatenated space, by n-gram.
        self._word_vocab: dict[str, int] = {g: int(j) for g, j in self.word.vocabulary_.items()}
        offset = len(self._word_vocab)
        self._char_vocab: dict[str, int] = {g: int(j) + offset for g, j in self.char.vocabulary_.items()}
        self.n_features = offset + len(self._char_vocab)
        self._idf = np.concatenate((self.word.idf_, self.char.idf_)).astype(np.float64)

    def transform(self, texts: Sequence[str]):  # -> scipy CSR
        from scipy.sparse import hstack
        from sklearn.preprocessing import normalize

        return normalize(hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr())

    def transform_one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The query's non-zero features (indices, values), as ``transform``
        computes them: sublinear tf × idf per block, each block L2-normalized,
        both scaled by 1/√2 when both are non-empty."""
        parts = []
        for vocab, grams in ((self._word_vocab, self._word_an(text)), (self._char_vocab, char_wb_ngrams(text))):
            counts = Counter(grams)
            n = len(counts)
            ids = np.fromiter(map(vocab.get, counts, repeat(-1, n)), dtype=np.intp, count=n)
            tf = np.fromiter(counts.values(), dtype=np.float64, count=n)
            known = ids >= 0
            if known.any():
                ids, tf = ids[known], tf[known]
                val = (np.log(tf) + 1.0) * self._idf[ids]
                val *= 1.0 / math.sqrt(val @ val)
                parts.append((ids, val))
        if not parts:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        if len(parts) == 1:
            return parts[0]
        (wi, wv), (ci, cv) = parts
        return np.concatenate((wi, ci)), np.concatenate((wv, cv)) * _HALF_SQRT2


def char_wb_ngrams(text: str, lo: int = CHAR_NGRAMS[0], hi: int = CHAR_NGRAMS[1]) -> list[str]:
    """scikit-learn's ``char_wb`` analyzer (lowercased), about twice as fast:
    n-grams of each whitespace-separated word padded with one space; a word
    no longer than n gives itself once and stops."""
    out: list[str] = []
    for w in text.lower().split():
        w = f" {w} "
        size = len(w)
        for n in range(lo, hi + 1):
            if size <= n:
                out.append(w)
                break
            out.extend([w[i:i + n] for i in range(size - n + 1)])
    return out


@dataclass(frozen=True, eq=False)
class FittedLabels:
    """A linear scorer over one label set: raw = x·W + b per label."""

    labels: tuple[str, ...]
    # (n_features, n_labels): rows gathered per query. Dense float32 for the
    # SVM; scipy CSR for the centroid model (centroids are sparse).
    weights_t: Any
    bias: np.ndarray  # (n_labels,)
    calibration: Calibration | None
    kind: str  # "linear-svm" | "centroid"

    def raw(self, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
        if len(idx) == 0:
            return self.bias.astype(np.float64)
        if isinstance(self.weights_t, np.ndarray):
            return val @ self.weights_t[idx] + self.bias
        return self.weights_t[idx].T @ val + self.bias

    def relevance(self, idx: np.ndarray, val: np.ndarray) -> dict[str, float]:
        raw = self.raw(idx, val)
        cal = self.calibration
        if cal is None:  # nothing to calibrate on: relevance is the raw score clipped to 0-1
            return dict(zip(self.labels, np.clip(raw, 0.0, 1.0).tolist()))
        z = np.clip((raw - cal.threshold) * (1.0 / cal.scale), -40.0, 40.0)
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
        return dict(zip(self.labels, z.tolist()))


def _centroids(x, y: np.ndarray, n_labels: int):  # -> scipy CSR (labels × features), unit rows
    from scipy.sparse import csr_matrix
    from sklearn.preprocessing import normalize

    onehot = csr_matrix((np.ones(len(y), dtype=np.float32), (y, np.arange(len(y)))), shape=(n_labels, len(y)))
    return normalize(onehot @ x).astype(np.float32).tocsr()


def _fit_weights(x, y: np.ndarray, n_labels: int, svm: bool = True) -> tuple[Any, np.ndarray, str]:
    """(W (labels × features), b, kind) for CSR ``x`` and label indices ``y``."""
    present = np.unique(y)
    if svm and len(present) >= 2:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

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
    # One label, or too many pairs for the SVM: cosine with each centroid.
    return _centroids(x, y, n_labels), np.zeros(n_labels, dtype=np.float32), "centroid"


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
    svm = len(labels) * n <= SVM_MAX_PAIRS
    w, b, kind = _fit_weights(xs, y, len(labels), svm)
    # Calibrate on held-out examples of labels that keep an example in training.
    counts = np.bincount(y, minlength=len(labels))
    best: list[float] = []
    for held in _folds(y, seed):
        train = np.setdiff1d(np.arange(n), held)
        held = held[counts[y[held]] >= 2]
        if len(held) == 0 or len(np.unique(y[train])) < 1:
            continue
        fw, fb, _ = _fit_weights(xs[train], y[train], len(labels), svm)
        scores = xs[held] @ fw.T
        scores = scores.toarray() if hasattr(scores, "toarray") else np.asarray(scores)
        best.extend(np.max(scores + fb, axis=1).tolist())
    wt = np.ascontiguousarray(w.T) if isinstance(w, np.ndarray) else w.T.tocsr()
    return FittedLabels(labels, wt, b, calibrate(best), kind)


@dataclass(frozen=True, eq=False)
class FittedLocal:
    """The fitted local encoder: immutable."""

    featurizer: _Featurizer
    skills: FittedLabels | None
    domains: FittedLabels | None
    n_examples: int

    @property
    def method(self) -> str:
        kind = self.skills.kind if self.skills is not None else (self.domains.kind if self.domains else "linear-svm")
        return "tfidf-linear" if kind == "linear-svm" else "tfidf-centroid"

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
