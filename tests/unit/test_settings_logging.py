"""Settings from the environment, and logs that never carry secrets."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
from pydantic import ValidationError

from voxa.common.logging import JsonFormatter
from voxa.signaling.settings import SignalingSettings


def test_comma_lists_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXA_JWT_SECRET", "x")
    monkeypatch.setenv("VOXA_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("VOXA_TURN_URIS", "turn:1.2.3.4:3478,turns:t.example:443")
    s = SignalingSettings()
    assert s.allowed_origins == ["https://a.example", "https://b.example"]
    assert s.turn_uris == ["turn:1.2.3.4:3478", "turns:t.example:443"]
    assert s.origin_allowed(None) and s.origin_allowed("https://a.example")
    assert not s.origin_allowed("https://evil.example")


def test_wildcard_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXA_JWT_SECRET", "x")
    assert SignalingSettings().origin_allowed("https://anything")


def test_auth_material_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VOXA_JWT_SECRET", "VOXA_JWT_PUBLIC_KEY_FILE", "VOXA_JWT_JWKS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="VOXA_JWT_SECRET"):
        SignalingSettings()


def test_secret_fields_are_dropped_from_logs() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("voxa.test.secrets")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("auth.failed", extra={"token": "eyJ.secret", "turn_secret": "s", "user": "alice"})
    entry = orjson.loads(stream.getvalue())
    assert entry["event"] == "auth.failed" and entry["user"] == "alice"
    assert "token" not in entry and "turn_secret" not in entry
    assert "eyJ" not in stream.getvalue()
