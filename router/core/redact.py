"""Keeping the sidecar's secrets out of what it says.

Backend text (error bodies, exception messages) can carry a credential back:
a server that echoes the ``Authorization`` header, a proxy that quotes the
URL it was asked for. ``Redactor`` replaces, wherever such text leaves the
sidecar (a status message, ``results[].error``, a span, a log line, the
metrics store):

1. by value: every secret the sidecar holds (each ``api_key_env`` value, the
   server's own token, credentials in a URL), exactly as held;
2. by shape, as a second net for secrets it does not hold: ``Bearer …``,
   ``Basic …``, ``api_key=…``, ``Authorization: …``, OpenAI ``sk-…``, Google
   ``AIza…``, Groq ``gsk_…``, AWS ``AKIA…``/``ASIA…`` and the password of a
   ``scheme://user:password@host`` URL.

Pure: the values are handed in (the composition root reads the
environment), nothing here reads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MIN_SECRET_CHARS", "REDACTED", "Redactor", "clip", "quote_prefix"]

REDACTED = "[REDACTED]"
# A value shorter than this is not redacted by value (replacing every "a"
# or "1" in a message would make it unreadable and protects nothing).
MIN_SECRET_CHARS = 6

_SHAPES = re.compile(
    r"(?i)(bearer\s+|basic\s+|api[_-]?key[\"']?\s*[=:]\s*[\"']?|authorization[\"']?\s*[=:]\s*[\"']?(?:(?:bearer|basic|token)\s+)?"
    r"|x-api-key[\"']?\s*[=:]\s*[\"']?|password[\"']?\s*[=:]\s*[\"']?)[^\s\"',;]+"
    r"|\bsk-[A-Za-z0-9_\-]{6,}"
    r"|\bAIza[0-9A-Za-z_\-]{20,}"
    r"|\bgsk_[A-Za-z0-9]{10,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{12,}"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"
)


def _shape(m: re.Match[str]) -> str:
    prefix = m.group(1)
    if prefix:
        return prefix + REDACTED
    if m.group(0).find(":") > 0 and "://" not in m.group(0):  # URL user:password
        user = m.group(0).split(":", 1)[0]
        return f"{user}:{REDACTED}"
    return REDACTED


class Redactor:
    """Replaces secret values and secret-looking shapes in text.

    ``Redactor(["sk-live-123…", "hunter22"])(text)`` → the text with each
    value, then each shape, replaced by ``[REDACTED]``. Longer values are
    replaced first, so a secret containing another is removed whole.
    """

    __slots__ = ("_pattern", "_values")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._values = tuple(values)
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return _SHAPES.sub(_shape, text)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:  # never the values
        return f"<Redactor {len(self._values)} secret value(s) + shapes>"


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def quote_prefix(value: str, limit: int = 40) -> str:
    """A caller's input for an error message: repr of at most ``limit``
    characters, with the full length when cut (``'aaaa…' (5000 chars)``)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} chars)"
