"""What the kind suites ask of VoiceClients on the host: that they hear a tone again after something
moved under them, and which SFU pod hosts a channel (signaling's registry API, reached from the host
like any client reaches signaling, with the SFU secret read from the cluster)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from typing import Any

from e2e.kind.deployed import Stack
from voxa.client.media import Level
from voxa.client.voice import VoiceClient

TOLERANCE_HZ = 15.0
TONE_RMS = 0.01


def is_tone(level: Level, hz: float) -> bool:
    return level.hz is not None and abs(level.hz - hz) <= TOLERANCE_HZ and level.rms >= TONE_RMS


async def until_hears(client: VoiceClient, user: str, hz: float, timeout: float = 90.0) -> float:
    """Measure `user` in one-second windows until the tone `hz` is heard; returns the seconds it took.
    After a move the client's sink for `user` is a new one: each window asks for the current sink."""
    start = time.monotonic()
    last: Level | None = None
    while time.monotonic() - start < timeout:
        last = await client.measure(user, 1.0)
        if is_tone(last, hz):
            return time.monotonic() - start
    raise AssertionError(
        f"{client.channel_id}: no {hz:g} Hz from {user} within {timeout:.0f}s (last: {last})"
    )


def sfu_secret(stack: Stack) -> str:
    body: dict[str, Any] = stack.cluster.get("secret", f"{stack.name}-sfu-control", "-n", stack.namespace)
    return base64.b64decode(body["data"]["secret"]).decode()


def media_server_of(stack: Stack, channel: str) -> str | None:
    """The id (the pod name) of the SFU signaling assigned the channel to, or None."""
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
        f"{stack.base_url}/internal/servers/{stack.server_id}/channels/{channel}/media-server",
        headers={"Authorization": f"Bearer {sfu_secret(stack)}"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
        server = json.loads(resp.read()).get("media_server")
    return str(server["id"]) if server else None


async def joined(*clients: VoiceClient, timeout: float = 60.0) -> None:
    """Every client's media connected."""
    await asyncio.gather(*(c.wait_media(timeout) for c in clients))
