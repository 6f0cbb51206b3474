"""Builders for VoiceServer objects as the API server would hand them to the operator."""

from __future__ import annotations

from typing import Any

import pytest

from voxa.operator.models import VoiceServer


def voiceserver(spec: dict[str, Any] | None = None, **meta: Any) -> VoiceServer:
    base_spec: dict[str, Any] = {
        "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}},
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
    }
    base_spec.update(spec or {})
    metadata = {"name": "lobby", "namespace": "games", "uid": "uid-1", "generation": 3, **meta}
    return VoiceServer.model_validate({"metadata": metadata, "spec": base_spec})


@pytest.fixture
def vs() -> VoiceServer:
    return voiceserver()
