"""``TextUnderstanding``: the ``router.runtime.ports.Understanding`` port.

Start-up fits the chosen encoder on the configured examples (the local one
in a worker thread, the embeddings one by awaiting the endpoint); each query
is then read once: the encoder's relevance per skill and per domain, the
complexity estimate, and ``router.core.signals.resolve_signals`` decides
(the caller's values win; out of scope against the threshold).

The fitted model is swapped in as a whole (one attribute), never changed in
place, so a query never sees half of one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from router.core.errors import BackendError
from router.core.signals import DEFAULT_OUT_OF_SCOPE_THRESHOLD, Signals, TextReading, resolve_signals
from router.core.types import Query

from ._complexity import estimate_complexity
from ._embeddings import EmbeddingsEncoder, FittedEmbeddings
from ._local import FittedLocal, LocalEncoder

log = logging.getLogger("router.understanding")

__all__ = ["TextUnderstanding"]


class TextUnderstanding:
    def __init__(
        self,
        encoder: LocalEncoder | EmbeddingsEncoder | None,
        skill_examples: Mapping[str, Sequence[str]],
        domain_examples: Mapping[str, Sequence[str]],
        *,
        threshold: float = DEFAULT_OUT_OF_SCOPE_THRESHOLD,
        fallback_skill: str = "",
        complexity: bool = True,
    ) -> None:
        self.encoder = encoder
        self.skill_examples = MappingProxyType({k: tuple(v) for k, v in skill_examples.items() if v})
        self.domain_examples = MappingProxyType({k: tuple(v) for k, v in domain_examples.items() if v})
        self.threshold = threshold
        self.fallback_skill = fallback_skill
        self.complexity = complexity
        self.fitted: FittedLocal | FittedEmbeddings | None = None
        self.fit_s = 0.0
        self.start_error = ""  # why the encoder could not be fitted at start-up

    @property
    def method(self) -> str:
        if self.fitted is not None:
            return self.fitted.method
        if self.start_error:
            return f"none ({self.start_error})"
        return "complexity-estimate" if self.complexity else "none"

    @property
    def has_examples(self) -> bool:
        return bool(self.skill_examples or self.domain_examples)

    async def start(self) -> None:
        if self.encoder is None or not self.has_examples:
            return
        t0 = time.perf_counter()
        if isinstance(self.encoder, LocalEncoder):
            fitted: FittedLocal | FittedEmbeddings = await asyncio.to_thread(
                self.encoder.fit, self.skill_examples, self.domain_examples)
        else:
            try:
                # Warm the pool first, so the first query finds an open
                # connection even when every example vector is cached. Some
                # servers (TEI) have no /v1/models: only the fit decides.
                await self.encoder.embedder.warm()
            except BackendError as exc:
                log.warning("query understanding: embeddings endpoint did not warm: %s", exc)
            try:
                fitted = await self.encoder.fit(self.skill_examples, self.domain_examples)
            except BackendError as exc:
                # Like a backend that does not warm: logged, not fatal. The
                # router serves on the callers' values and the rules, and
                # every response's signals.method says why.
                self.start_error = f"embeddings unavailable at start-up: {type(exc).__name__}"
                log.error("query understanding: cannot embed the examples (%s); serving without text signals", exc)
                return
        self.fit_s = time.perf_counter() - t0
        self.fitted = fitted
        log.info("query understanding: %s fitted on %d examples (%d skills, %d domains) in %.2fs",
                 fitted.method, fitted.n_examples, len(self.skill_examples), len(self.domain_examples), self.fit_s)

    async def understand(self, query: Query) -> Signals:
        fitted = self.fitted
        skills: Mapping[str, float] = {}
        domains: Mapping[str, float] = {}
        method = self.method
        if isinstance(fitted, FittedLocal):
            skills, domains = fitted.read(query.text)
        elif isinstance(fitted, FittedEmbeddings):
            assert isinstance(self.encoder, EmbeddingsEncoder)
            try:
                skills, domains = fitted.read(await self.encoder.embed_query(query.text))
            except BackendError as exc:
                # The query is still routed, on the caller's values and the
                # rules; the method says why the text was not read.
                method = f"{fitted.method} (unavailable: {type(exc).__name__})"
        complexity = None
        if self.complexity and not query.complexity_given:
            complexity = estimate_complexity(query.text)
        reading = TextReading(method, skills, domains, complexity)
        return resolve_signals(query, reading, threshold=self.threshold, domain_threshold=self.threshold,
                               fallback_skill=self.fallback_skill)

    async def aclose(self) -> None:
        closer = getattr(getattr(self.encoder, "embedder", None), "aclose", None)
        if closer is not None:
            await closer()

    def __repr__(self) -> str:
        return (f"<TextUnderstanding {self.method} [{len(self.skill_examples)} skills | "
                f"{len(self.domain_examples)} domains | threshold {self.threshold:g}]>")
