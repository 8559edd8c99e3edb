"""httpx exceptions and non-2xx answers → ``router.core.errors``.

Everything httpx can raise is wrapped here, at the edge, so nothing above
``router.backends`` ever sees an httpx type::

    httpx.TimeoutException (connect, read, write, pool)  → BackendTimeout
    asyncio timeout of the whole call                    → BackendTimeout
    httpx.NetworkError, RemoteProtocolError, ProxyError,
      UnsupportedProtocol, InvalidURL, other HTTPError    → BackendConnectionError
    httpx.DecodingError, TooManyRedirects,
      LocalProtocolError                                 → BackendProtocolError
    non-2xx answer                                       → BackendStatusError
                                                           (status, message excerpt,
                                                            retry_after_s)
    2xx answer that is not JSON or not the right shape   → BackendProtocolError
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from typing import Any

import aiohttp
import httpx

from router.core.errors import (
    BackendConnectionError,
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeout,
)

_EXCERPT_CHARS = 200

Redact = Callable[[str], str]


def _same(text: str) -> str:
    return text


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def map_httpx_exceptions(where: str, redact: Redact = _same) -> Iterator[None]:
    """Re-raise any httpx exception inside the block as a ``BackendError``;
    ``where`` names the backend in the message (never the API key); the
    exception's own text goes through ``redact``."""
    try:
        yield
    except httpx.TimeoutException as exc:
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientError) and not isinstance(cause, TimeoutError):
            # The aiohttp transport reports every connection failure (refused,
            # reset, DNS) as ConnectTimeout; only a real timeout is one.
            raise BackendConnectionError(f"{where}: {_excerpt(redact(_describe(cause)))}") from exc
        raise BackendTimeout(f"{where}: timed out ({_excerpt(redact(_describe(exc)))})") from exc
    except (httpx.DecodingError, httpx.TooManyRedirects, httpx.LocalProtocolError) as exc:
        raise BackendProtocolError(f"{where}: {_excerpt(redact(_describe(exc)))}") from exc
    except httpx.HTTPError as exc:
        # NetworkError (connect/read/write/close), RemoteProtocolError,
        # ProxyError, UnsupportedProtocol and anything newer.
        raise BackendConnectionError(f"{where}: {_excerpt(redact(_describe(exc)))}") from exc
    except httpx.InvalidURL as exc:
        raise BackendConnectionError(f"{where}: invalid URL ({_excerpt(redact(str(exc)))})") from exc


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait before retrying, from ``retry-after-ms`` (OpenAI) or
    ``Retry-After`` (delta-seconds or an HTTP-date); None when absent or
    unreadable. ``now`` (unix seconds) is for HTTP-dates; default: the clock."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT_CHARS else flat[: _EXCERPT_CHARS - 1] + "…"


def error_message(response: httpx.Response, redact: Redact = _same) -> str:
    """The server's own error message when it sent one (OpenAI's
    ``{"error": {"message"}}``, ``{"error": "..."}``, ``{"detail"}``,
    ``{"message"}``), else an excerpt of the body."""
    text = response.text
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return _excerpt(redact(err["message"]))
        for candidate in (err, data.get("detail"), data.get("message")):
            if isinstance(candidate, str) and candidate:
                return _excerpt(redact(candidate))
    # Redacted whole, before the cut: a secret across the cut is still found.
    return _excerpt(redact(text)) or (response.reason_phrase or "no body")


def status_error(response: httpx.Response, where: str, redact: Redact = _same) -> BackendStatusError:
    return BackendStatusError(
        response.status_code,
        f"{where}: {error_message(response, redact)}",
        retry_after_s=parse_retry_after(response.headers),
    )


def decode_json(response: httpx.Response, where: str, redact: Redact = _same) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackendProtocolError(
            f"{where}: answer is not JSON ({_excerpt(str(exc))}); "
            f"body starts {_excerpt(redact(response.text))[:80]!r}"
        ) from exc


def protocol_error(where: str, problem: str) -> BackendProtocolError:
    return BackendProtocolError(f"{where}: {problem}")


def item_error(where: str, index: int, data: Mapping[str, Any], redact: Redact = _same) -> BackendError:
    """A per-item failure the backend reported inside a batch answer."""
    message = data.get("error")
    text = redact(message if isinstance(message, str) and message else json.dumps(message))
    status = data.get("status")
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        retry_after = data.get("retry_after_s")
        if not isinstance(retry_after, (int, float)) or isinstance(retry_after, bool) or retry_after < 0:
            retry_after = None
        return BackendStatusError(status, f"{where}: item {index}: {_excerpt(text)}", retry_after_s=retry_after)
    return BackendError(f"{where}: item {index}: {_excerpt(text)}")
