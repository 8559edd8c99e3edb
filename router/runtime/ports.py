"""The ports the runtime calls out through. Edges implement them
(``router.backends`` for HTTP, ``router.telemetry`` for observation); the
runtime never imports an edge library."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router.core.errors import BackendError
from router.core.signals import Signals
from router.core.types import ImplementationSpec, Query


@dataclass(frozen=True, slots=True)
class SkillCall:
    """One call to one implementation of one skill."""

    query_id: str
    skill: str
    implementation: ImplementationSpec
    query: str
    domain: str
    complexity: float
    system_prompt: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Propagation headers (W3C traceparent/tracestate) for the backend call.
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SkillReply:
    """A backend's answer. ``cost`` is None when the backend cannot price it
    (the declared cost per query is used then)."""

    output: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    model: str = ""


# Told each piece of an answer as the backend streams it (a token delta).
DeltaSink = Callable[[str], None]


class Backend(Protocol):
    """A warm, pooled client for one implementation's backend."""

    implementation: ImplementationSpec

    async def warm(self) -> None:
        """Open the pool's connections; raise if the backend is unreachable."""

    async def call(self, call: SkillCall, timeout_s: float) -> SkillReply:
        """One call. Raises a ``router.core.errors.BackendError`` on failure."""

    async def call_batch(self, calls: Sequence[SkillCall], timeout_s: float) -> list[SkillReply | BackendError]:
        """Several calls in one backend request, one result per call, in
        order. Backends that cannot batch raise NotImplementedError."""

    @property
    def supports_batch(self) -> bool: ...

    @property
    def supports_stream(self) -> bool:
        """Whether ``call_stream`` streams (``openai``); else it is not called."""

    async def call_stream(self, call: SkillCall, timeout_s: float, on_delta: DeltaSink) -> SkillReply:
        """One call whose answer is streamed: ``on_delta`` gets each piece
        as it arrives, the whole reply is returned at the end. A stream that
        breaks mid-way raises a ``BackendError`` like any failed call."""

    async def aclose(self) -> None: ...


class BackendFactory(Protocol):
    def __call__(self, implementation: ImplementationSpec) -> Backend: ...


class Understanding(Protocol):
    """Query understanding (``router.understanding``): the signals a query is
    routed on, read from its text where the caller left a gap. Called once
    per query before planning; never blocks the event loop."""

    method: str

    async def start(self) -> None:
        """Fit the encoder on the configured examples (at start-up, before serving)."""

    async def understand(self, query: Query) -> Signals: ...

    async def aclose(self) -> None: ...


class Embedder(Protocol):
    """An OpenAI-compatible ``/v1/embeddings`` endpoint behind a warm pooled
    client (``router.backends.EmbeddingsClient``)."""

    model: str

    async def warm(self) -> None:
        """Open the pool's connections; raise if the endpoint is unreachable."""

    async def embed(self, texts: Sequence[str], timeout_s: float) -> list[list[float]]:
        """One vector per text, in order. Raises a ``BackendError`` on failure."""

    async def aclose(self) -> None: ...
