"""The ``embeddings`` encoder: example queries and the query are embedded by
an OpenAI-compatible ``/v1/embeddings`` endpoint (the ``Embedder`` port; the
composition root hands in ``router.backends.EmbeddingsClient``, a warm pooled
client). A skill's (domain's) raw score is the cosine of the query with its
nearest example.

The examples' vectors are computed once, at start-up, and cached on disk
keyed by model and text (``<cache_dir>/<model hash>.npz``), so a restart
with the same examples sends no request for them.

Calibration: each example's nearest other example (leave one out) is an
in-scope query's best score; the threshold is their 5th percentile, the
scale puts their median at relevance 0.95 (as the local encoder does).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.core.signals import Calibration
from router.runtime.ports import Embedder

from ._local import calibrate

__all__ = ["EmbeddingsEncoder", "FittedEmbeddings", "VectorCache"]

_CHUNK = 1024


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class VectorCache:
    """Vectors by text for one model, in one ``.npz`` file; written atomically."""

    def __init__(self, directory: Path | None, model: str) -> None:
        self.path = None if directory is None else directory / (
            hashlib.sha256(model.encode()).hexdigest()[:24] + ".npz")
        self.model = model
        self._vectors: dict[str, np.ndarray] = {}
        if self.path is not None and self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    if str(data["model"]) == model:
                        self._vectors = dict(zip(data["keys"].tolist(), data["vectors"]))
            except (OSError, ValueError, KeyError):
                self._vectors = {}  # a damaged cache is rebuilt

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, text: str) -> np.ndarray | None:
        return self._vectors.get(_text_key(text))

    def put(self, text: str, vector: np.ndarray) -> None:
        self._vectors[_text_key(text)] = vector

    def save(self) -> None:
        if self.path is None or not self._vectors:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._vectors))
        vectors = np.vstack(list(self._vectors.values())).astype(np.float32)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, model=np.array(self.model), keys=keys, vectors=vectors)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True, eq=False)
class _LabelVectors:
    labels: tuple[str, ...]
    vectors: np.ndarray  # (n, d) unit rows, grouped by label
    starts: np.ndarray  # first row of each label
    calibration: Calibration | None

    def relevance(self, q: np.ndarray) -> dict[str, float]:
        best = np.maximum.reduceat(self.vectors @ q, self.starts)
        cal = self.calibration
        if cal is None:
            return {lab: min(1.0, max(0.0, float(v))) for lab, v in zip(self.labels, best)}
        z = np.clip((best - cal.threshold) / cal.scale, -40.0, 40.0)
        return dict(zip(self.labels, (1.0 / (1.0 + np.exp(-z))).tolist()))


def _unit(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=-1, keepdims=True)
    n[n == 0] = 1.0
    return (m / n).astype(np.float32)


def _label_vectors(group: Mapping[str, Sequence[str]], vec: Mapping[str, np.ndarray]) -> _LabelVectors | None:
    if not group:
        return None
    labels = tuple(group)
    rows, starts = [], []
    for lab in labels:
        starts.append(len(rows))
        rows.extend(vec[t] for t in group[lab])
    v = _unit(np.vstack(rows))
    # Leave one out: each example's nearest other example.
    best: list[float] = []
    for lo in range(0, len(v), _CHUNK):
        sims = v[lo:lo + _CHUNK] @ v.T
        for i in range(sims.shape[0]):
            sims[i, lo + i] = -np.inf
        best.extend(sims.max(axis=1).tolist())
    finite = [b for b in best if np.isfinite(b)]
    return _LabelVectors(labels, v, np.asarray(starts, dtype=np.intp), calibrate(finite))


@dataclass(frozen=True, eq=False)
class FittedEmbeddings:
    model: str
    skills: _LabelVectors | None
    domains: _LabelVectors | None
    n_examples: int
    cached: int  # examples whose vector came from the disk cache

    @property
    def method(self) -> str:
        return f"embeddings:{self.model}"

    def read(self, vector: Sequence[float]) -> tuple[dict[str, float], dict[str, float]]:
        q = _unit(np.asarray(vector, dtype=np.float32))
        skills = self.skills.relevance(q) if self.skills is not None else {}
        domains = self.domains.relevance(q) if self.domains is not None else {}
        return skills, domains


class EmbeddingsEncoder:
    def __init__(self, embedder: Embedder, *, cache_dir: Path | None, timeout_s: float = 30.0,
                 batch_size: int = 64) -> None:
        self.embedder = embedder
        self.cache_dir = cache_dir
        self.timeout_s = timeout_s
        self.batch_size = batch_size

    async def fit(self, skills: Mapping[str, Sequence[str]], domains: Mapping[str, Sequence[str]]) -> FittedEmbeddings:
        """Embed every example (those not cached), then build the fitted,
        immutable model. Raises the embedder's ``BackendError``."""
        import asyncio

        model = self.embedder.model
        cache = await asyncio.to_thread(VectorCache, self.cache_dir, model)
        texts = list(dict.fromkeys(t for g in (skills, domains) for ex in g.values() for t in ex))
        missing = [t for t in texts if cache.get(t) is None]
        for lo in range(0, len(missing), self.batch_size):
            chunk = missing[lo:lo + self.batch_size]
            for t, v in zip(chunk, await self.embedder.embed(chunk, self.timeout_s)):
                cache.put(t, np.asarray(v, dtype=np.float32))
        if missing:
            await asyncio.to_thread(cache.save)
        vec = {t: cache.get(t) for t in texts}

        def build() -> FittedEmbeddings:
            return FittedEmbeddings(model, _label_vectors(skills, vec), _label_vectors(domains, vec),  # type: ignore[arg-type]
                                    len(texts), len(texts) - len(missing))

        return await asyncio.to_thread(build)

    async def embed_query(self, text: str) -> list[float]:
        return (await self.embedder.embed([text], self.timeout_s))[0]
