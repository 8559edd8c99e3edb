"""The pure pieces of the edge hardening: the Redactor, input quoting, URL
credentials in the config, and the loopback test that decides reflection."""

from __future__ import annotations

import pytest

from router.config import parse_config
from router.core.errors import ConfigError
from router.core.redact import REDACTED, Redactor, clip, quote_prefix
from router.service.server import is_loopback


def test_values_are_redacted_longest_first_and_short_values_ignored() -> None:
    r = Redactor(["abcdef-secret", "abcdef-secret-longer", "short"])
    assert r("key abcdef-secret-longer and abcdef-secret") == f"key {REDACTED} and {REDACTED}"
    assert r("short stays") == "short stays"  # under MIN_SECRET_CHARS: would make text unreadable
    assert "abcdef" not in repr(r)


@pytest.mark.parametrize("text,leak", [
    ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
    ("api_key=zzz123zzz", "zzz123zzz"),
    ('{"x-api-key": "k-998877"}', "k-998877"),
    ("key AIzaSyA1234567890abcdefghijklmnopqrstu here", "AIzaSyA1234567890abcdefghijklmnopqrstu"),
    ("gsk_abcdefghijklmnopqrstuvwxyz0123", "gsk_abcdefghijklmnopqrstuvwxyz0123"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("sk-proj-abcdef123456", "sk-proj-abcdef123456"),
    ("postgresql://router:pw-123@db:5432/x", "pw-123"),
    ("host=db password=hunter22 user=x", "hunter22"),
])
def test_shapes_are_redacted_without_knowing_the_value(text: str, leak: str) -> None:
    out = Redactor()(text)
    assert leak not in out and REDACTED in out


def test_url_user_is_kept_and_its_password_redacted() -> None:
    assert Redactor()("GET http://alice:pw-9@host/x") == f"GET http://alice:{REDACTED}@host/x"


def test_quote_prefix_and_clip_bound_what_is_echoed() -> None:
    assert quote_prefix("abc") == "'abc'"
    assert quote_prefix("x" * 1000) == "'" + "x" * 40 + "'… (1000 chars)"
    assert clip("x" * 600, 512) == "x" * 511 + "…"


def _config(url: str) -> dict:
    return {"storage": {"sqlite_path": None}, "skills": {"s": {"implementations": [
        {"name": "a", "backend": "http", "url": url, "quality": 0.9, "cost_per_query": 0.01,
         "expected_latency_ms": 10}]}}}


def test_a_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(_config("https://svc:pa55w0rd-x@api.example.com/v1"), "<t>", {})
    text = str(ei.value)
    assert "pa55w0rd-x" not in text and "svc" not in text
    assert "must not contain credentials" in text and "https://api.example.com/v1" in text


@pytest.mark.parametrize("listen,loopback", [
    ("127.0.0.1:50051", True), ("[::1]:50051", True), ("localhost:1", True), ("unix:/tmp/s", True),
    ("0.0.0.0:50051", False), ("[::]:50051", False), ("10.0.0.5:50051", False), ("router.internal:1", False),
])
def test_reflection_defaults_to_on_only_on_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback
