"""The embeddings client: ``POST {url}/v1/embeddings`` on an OpenAI-compatible
server (a hosted embedding model, a local TEI, vLLM or Ollama server, the
emulator), through the same warm pooled client as the skills' backends.
It implements ``router.runtime.ports.Embedder`` for query understanding."""

from __future__ import annotations

from collections.abc import Sequence

from router.backends._base import PooledBackend
from router.backends._errors import protocol_error
from router.core.types import ImplementationSpec


class EmbeddingsClient(PooledBackend):
    kind = "embeddings"
    default_warm_path = "/v1/models"

    def __init__(self, implementation: ImplementationSpec, **options: object) -> None:
        super().__init__(implementation, **options)  # type: ignore[arg-type]
        self.model = implementation.model

    async def embed(self, texts: Sequence[str], timeout_s: float) -> list[list[float]]:
        texts = list(texts)
        if not texts:
            return []
        data = await self._post_json("/v1/embeddings", {"model": self.model, "input": texts}, None, timeout_s)
        where = self._where
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or len(items) != len(texts):
            got = len(items) if isinstance(items, list) else "no"
            raise protocol_error(where, f"answer must hold data[] with {len(texts)} embeddings, got {got}")
        out: list[list[float] | None] = [None] * len(texts)
        for pos, item in enumerate(items):
            vec = item.get("embedding") if isinstance(item, dict) else None
            index = item.get("index", pos) if isinstance(item, dict) else pos
            if not isinstance(vec, list) or not vec or not isinstance(index, int) or not 0 <= index < len(texts):
                raise protocol_error(where, f"data[{pos}] has no embedding list or a bad index")
            out[index] = [float(v) for v in vec]
        if any(v is None for v in out):
            raise protocol_error(where, "data[] does not answer every input index")
        return out  # type: ignore[return-value]
