"""The edge that calls skill backends over HTTP with httpx.

One warm, pooled keep-alive ``httpx.AsyncClient`` per implementation;
``OpenAIBackend`` for OpenAI-compatible servers (kind ``openai``),
``HttpBackend`` for the web app's own skill endpoints (kind ``http``; the
JSON contract is in ``router.backends._http``). Every httpx exception and
non-2xx answer becomes a ``router.core.errors.BackendError`` here (see
``router.backends._errors``). No retries: a later stage owns them.
"""

from router.backends._base import PooledBackend
from router.backends._embeddings import EmbeddingsClient
from router.backends._errors import map_httpx_exceptions, parse_retry_after
from router.backends._http import HttpBackend
from router.backends._openai import OpenAIBackend, render_prompt
from router.backends._pool import BackendPool, build_backend

__all__ = [
    "BackendPool",
    "EmbeddingsClient",
    "HttpBackend",
    "OpenAIBackend",
    "PooledBackend",
    "build_backend",
    "map_httpx_exceptions",
    "parse_retry_after",
    "render_prompt",
]
