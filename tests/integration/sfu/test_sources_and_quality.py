"""Track sources and the stream right, the `tracks` event, and the quality control call (adaptive stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection, VideoStreamTrack

from voxa.common.testing.wait import eventually_async
from voxa.sfu.control import create_app

from .conftest import Harness, stays_still, stopped_rising

AUTH = {"Authorization": "Bearer test"}


@pytest.fixture
async def api(sfu: Harness) -> AsyncIterator[TestClient[Any, Any]]:
    client = TestClient(TestServer(create_app(sfu.worker)))
    await client.start_server()
    yield client
    await client.close()


def tracks_of(sfu: Harness, peer: str) -> list[dict[str, Any]]:
    """The last `tracks` event about `peer`."""
    tracks: list[dict[str, Any]] = [e for e in sfu.events if e["type"] == "tracks" and e["peer"] == peer][-1][
        "tracks"
    ]
    return tracks


def forwarding(producer: Any) -> bool:
    """(A function, so that mypy does not narrow the property across a state change.)"""
    return bool(producer.forwarding)


async def test_screen_share_needs_the_stream_right(sfu: Harness, api: TestClient[Any, Any]) -> None:
    room = sfu.worker.create_router("r")
    alice = await sfu.join(room, "alice", video=True, sources={"1": "screen"})
    bob = await sfu.join(room, "bob", 660.0)
    screen = room.peer("alice").producers["1"]
    assert screen.source == "screen" and not forwarding(screen)
    assert tracks_of(sfu, "alice") == [
        {"track": "alice:0", "mid": "0", "kind": "audio", "source": "microphone", "layers": []}
    ]
    response = await api.put("/v1/routers/r/peers/alice/state", json={"can_stream": True}, headers=AUTH)
    assert response.status == 200 and (await response.json())["can_stream"] is True
    assert forwarding(screen)
    assert {t["track"]: t["source"] for t in tracks_of(sfu, "alice")} == {
        "alice:0": "microphone",
        "alice:1": "screen",
    }
    # The screen reaches bob once allowed.
    consumer = next(c for c in room.peer("bob").consumers.values() if c.producer is screen)
    await eventually_async(lambda: consumer.stats.packets > 5, 20.0)
    # The client's own mute is its microphone's; the screen keeps going.
    room.peer("alice").set_muted(muted=True)
    assert forwarding(screen) and not forwarding(room.peer("alice").producers["0"])
    del alice, bob


@pytest.mark.parametrize(
    ("sources", "reason"),
    [
        ({"0": "camera"}, "cannot be the source of audio"),
        ({"7": "screen"}, "no m-section '7'"),
        ({"0": "webcam"}, "invalid body"),
    ],
)
async def test_bad_sources_are_refused(
    sfu: Harness, api: TestClient[Any, Any], sources: dict[str, str], reason: str
) -> None:
    sfu.worker.create_router("r")
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "sources": sources}
    response = await api.post("/v1/routers/r/peers/carol", json=body, headers=AUTH)
    assert response.status == 400
    assert reason in (await response.text())
    assert "carol" not in sfu.worker.router("r").peers
    await pc.close()


async def test_quality_pauses_a_hidden_tile_and_validates(sfu: Harness, api: TestClient[Any, Any]) -> None:
    room = sfu.worker.create_router("r")
    await sfu.join(room, "alice", video=True)
    await sfu.join(room, "bob", 660.0)
    consumer = next(c for c in room.peer("bob").consumers.values() if c.producer.id == "alice:1")
    await eventually_async(lambda: consumer.stats.packets > 5, 20.0)
    url = "/v1/routers/r/peers/bob/consumers/alice:1/quality"

    response = await api.put(url, json={"max_width": 320, "max_height": 180, "paused": False}, headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert {k: body[k] for k in ("track", "max_width", "max_height", "paused")} == {
        "track": "alice:1",
        "max_width": 320,
        "max_height": 180,
        "paused": False,
    }
    response = await api.put(url, json={"max_width": None, "max_height": None, "paused": True}, headers=AUTH)
    assert response.status == 200 and (await response.json())["paused"] is True
    await stopped_rising(lambda: consumer.stats.packets, "the paused tile's packets to stop")
    before = consumer.stats.packets
    await stays_still(lambda: consumer.stats.packets, 1.0)  # a hidden tile gets nothing
    response = await api.put(url, json={"paused": False}, headers=AUTH)
    assert response.status == 200
    await eventually_async(lambda: consumer.stats.packets > before + 5, 20.0)  # from a keyframe again

    for path, body, status in [
        ("/v1/routers/r/peers/bob/consumers/nobody:9/quality", {"max_width": 320}, 404),
        ("/v1/routers/r/peers/zed/consumers/alice:1/quality", {"max_width": 320}, 404),
        (url, {"max_width": -5}, 400),
        (url, {"max_width": "320"}, 400),
        (url, {"paused": "yes"}, 400),
        (url, {"max_width": 320, "colour": "blue"}, 400),
    ]:
        response = await api.put(path, json=body, headers=AUTH)
        assert response.status == status, (path, body, await response.text())
        assert "error" in await response.json()
