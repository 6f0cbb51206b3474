"""What a restarted operator keeps for signaling while the gateway cannot say (read back from the
children it rendered before), with a stub in place of the API."""

from __future__ import annotations

import base64
from typing import Any, cast

from tests.unit.operator.conftest import voiceserver as base_voiceserver
from voxa.operator.kube import KubeClient
from voxa.operator.models import VoiceServer
from voxa.operator.render import signaling
from voxa.operator.render.signaling import TurnInputs
from voxa.operator.turn import rendered_turn


class StubKube:
    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects

    async def get(self, path: str) -> dict[str, Any] | None:
        return next((body for suffix, body in self.objects.items() if path.endswith(suffix)), None)


def voiceserver() -> VoiceServer:
    return base_voiceserver({"stunnerGatewayRef": {"name": "edge"}})


def as_stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the API returns for an applied manifest (stringData becomes base64 data)."""
    stored = dict(manifest)
    if "stringData" in stored:
        data = stored.pop("stringData")
        stored["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return stored


async def test_the_settings_signaling_runs_with_are_read_back() -> None:
    vs = voiceserver()
    turn = TurnInputs(uris=("turn:203.0.113.9:3479?transport=udp",), ttl_s=600, secret="s2", revision="b@7")
    kube = StubKube(
        {
            "/secrets/lobby-turn": as_stored(signaling.turn_secret(vs, turn)),
            "/configmaps/lobby-signaling": as_stored(signaling.config_map(vs, turn)),
        }
    )
    assert await rendered_turn(cast(KubeClient, kube), vs) == turn


async def test_nothing_to_read_back_when_signaling_had_no_turn_settings() -> None:
    vs = voiceserver()
    kube = StubKube({"/configmaps/lobby-signaling": as_stored(signaling.config_map(vs, None))})
    assert await rendered_turn(cast(KubeClient, kube), vs) is None
