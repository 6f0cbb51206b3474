"""Video through signaling against a stand-in SFU (aiohttp on loopback that records the control calls
and sends events on its event socket): the `stream` permission on screen-share sources, `sources` in
the add-peer and sdp bodies, `video_quality` validated and relayed, the SFU's `publish_layers` pushed
to its publisher and its `tracks` in presence (docs/protocol.md, "Video")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from conftest import SFU_SECRET
from tests.integration.conftest import AppFactory, AppServer, token
from voxa.client.phoenix import ClientChannel, PhoenixClient, PushError
from voxa.common.ports import free_port
from voxa.common.testing.wait import scaled

TOPIC = "voice:g1:lobby"
ROUTER = "g1.lobby"


class StandInSfu:
    """Answers every control call signaling makes and keeps what it was sent; `emit` sends an event."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.tracks: set[str] = set()
        """Producer ids the quality endpoint knows (others: 404, as the SFU answers)."""
        self.sockets: list[web.WebSocketResponse] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/events", self.events)
        app.router.add_route("*", "/v1/{tail:.*}", self.control)
        return app

    async def control(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read()) if request.can_read_body else {}
        self.calls.append((request.method, request.path, body))
        path = request.path
        if path.endswith("/quality"):
            track = path.split("/")[-2]
            if track not in self.tracks:
                return web.json_response({"error": f"no consumer of {track}"}, status=404)
            return web.json_response({})
        if request.method == "POST" and path.count("/") == 5:  # /v1/routers/{r}/peers/{p}
            return web.json_response({"sdp": "v=0 answer to the first offer"})
        if path.endswith("/sdp"):
            return web.json_response({"sdp": "v=0 answer"} if body.get("type") == "offer" else {})
        return web.json_response({})

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        async for _ in ws:
            pass
        return ws

    async def emit(self, event: dict[str, Any]) -> None:
        for ws in self.sockets:
            await ws.send_str(orjson.dumps(event).decode())

    def bodies(self, method: str, suffix: str) -> list[dict[str, Any]]:
        return [body for m, path, body in self.calls if m == method and path.endswith(suffix)]


@pytest.fixture
async def sfu() -> AsyncIterator[tuple[StandInSfu, str]]:
    stand_in = StandInSfu()
    runner = web.AppRunner(stand_in.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield stand_in, f"http://127.0.0.1:{port}"
    finally:
        for ws in stand_in.sockets:
            await ws.close()
        await runner.cleanup()


@pytest.fixture
async def app(app_factory: AppFactory, sfu: tuple[StandInSfu, str]) -> AppServer:
    server = await app_factory()
    body = {"id": "sfu-a", "server_id": "g1", "url": sfu[1], "capacity": 100, "load": {}}
    auth = {"Authorization": f"Bearer {SFU_SECRET}"}
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{server.http}/internal/servers/g1/media-servers/sfu-a", json=body, headers=auth) as r,
    ):
        assert r.status == 200, await r.text()
    return server


async def join(app: AppServer, user: str, grant: str) -> tuple[PhoenixClient, ClientChannel, str]:
    client = PhoenixClient(app.ws, token(user, grant=grant))
    await client.connect()
    channel, reply = await client.join(TOPIC)
    assert reply["media_server"] == "sfu-a"
    return client, channel, reply["session_id"]


OFFER = "v=0 a client offer"


async def test_screen_share_needs_the_stream_permission(app: AppServer, sfu: tuple[StandInSfu, str]) -> None:
    stand_in, _ = sfu
    client, channel, session = await join(app, "bob", "connect,speak,video")
    screen = {"0": "microphone", "1": "camera", "2": "screen"}
    for sources in (screen, {"0": "microphone", "3": "screen_audio"}):
        with pytest.raises(PushError, match="missing permission 'stream'"):
            await channel.push("sdp", {"type": "offer", "sdp": OFFER, "sources": sources})
    assert not stand_in.bodies("POST", f"/peers/{session}"), "a refused offer must not reach the SFU"
    # A camera is `video`'s business: accepted, its sources and the rights reach the SFU.
    assert (
        await channel.push(
            "sdp", {"type": "offer", "sdp": OFFER, "sources": {"0": "microphone", "1": "camera"}}
        )
        == {}
    )
    assert (await channel.wait_event("sdp"))["sdp"] == "v=0 answer to the first offer"
    [peer] = stand_in.bodies("POST", f"/peers/{session}")
    assert peer["sources"] == {"0": "microphone", "1": "camera"}
    assert peer["can_stream"] is False and peer["can_video"] is True and peer["can_speak"] is True
    # A later offer adding a screen share is refused too, whatever the first one was.
    with pytest.raises(PushError, match="missing permission 'stream'"):
        await channel.push("sdp", {"type": "offer", "sdp": OFFER, "sources": {"2": "screen"}})
    assert not stand_in.bodies("POST", "/sdp")
    for bad, reason in (
        ("camera", "sources must be an object"),
        ({"1": "webcam"}, "source of mid 1 must be one of camera, microphone, screen, screen_audio"),
        ({"": "camera"}, "sources keys must be m-section ids"),
    ):
        with pytest.raises(PushError, match=reason):
            await channel.push("sdp", {"type": "offer", "sdp": OFFER, "sources": bad})
    await client.close()


async def test_sources_reach_the_sfu_merged_across_offers(
    app: AppServer, sfu: tuple[StandInSfu, str]
) -> None:
    stand_in, _ = sfu
    client, channel, session = await join(app, "alice", "connect,speak,video,stream")
    await channel.push("sdp", {"type": "offer", "sdp": OFFER, "sources": {"0": "microphone", "1": "camera"}})
    [peer] = stand_in.bodies("POST", f"/peers/{session}")
    assert peer["can_stream"] is True and peer["sources"] == {"0": "microphone", "1": "camera"}
    await channel.push(
        "sdp", {"type": "offer", "sdp": OFFER, "sources": {"2": "screen", "3": "screen_audio"}}
    )
    # No sources at all in a renegotiation: the SFU still gets every m-section's source.
    await channel.push("sdp", {"type": "offer", "sdp": OFFER})
    await channel.push("sdp", {"type": "answer", "sdp": "v=0 an answer", "sources": {"9": "screen"}})
    offers = [b for b in stand_in.bodies("POST", "/sdp") if b["type"] == "offer"]
    merged = {"0": "microphone", "1": "camera", "2": "screen", "3": "screen_audio"}
    assert [o["sources"] for o in offers] == [merged, merged]
    [answer] = [b for b in stand_in.bodies("POST", "/sdp") if b["type"] == "answer"]
    assert "sources" not in answer  # an answer sends nothing new: sources belong to offers
    await client.close()


async def test_video_quality_is_validated_and_relayed(app: AppServer, sfu: tuple[StandInSfu, str]) -> None:
    stand_in, _ = sfu
    client, channel, session = await join(app, "alice", "connect,speak,video")
    track = "OtherSession1:1"
    with pytest.raises(PushError, match="unknown track"):  # no peer on the SFU yet
        await channel.push("video_quality", {"track": track, "max_width": 320, "max_height": 180})
    await channel.push("sdp", {"type": "offer", "sdp": OFFER})
    for bad, reason in (
        ({"max_width": 320}, "video_quality needs a track id"),
        ({"track": "a/b", "max_width": 320}, "video_quality needs a track id"),
        ({"track": track, "max_width": -1}, "max_width must be a non-negative integer or null"),
        ({"track": track, "max_height": 1.5}, "max_height must be a non-negative integer or null"),
        ({"track": track, "max_width": True}, "max_width must be a non-negative integer or null"),
        ({"track": track, "max_width": "320"}, "max_width must be a non-negative integer or null"),
        ({"track": track, "paused": "yes"}, "paused must be a boolean"),
    ):
        with pytest.raises(PushError, match=reason):
            await channel.push("video_quality", bad)
    assert not stand_in.bodies("PUT", "/quality")
    with pytest.raises(PushError, match="unknown track"):  # the SFU's 404
        await channel.push("video_quality", {"track": track, "max_width": 320, "max_height": 180})
    stand_in.tracks.add(track)
    assert await channel.push("video_quality", {"track": track, "max_width": 320, "max_height": 180}) == {}
    assert await channel.push("video_quality", {"track": track, "paused": True}) == {}
    assert (
        await channel.push(
            "video_quality", {"track": track, "max_width": None, "max_height": None, "paused": False}
        )
        == {}
    )
    calls = [(p, b) for m, p, b in stand_in.calls if m == "PUT" and p.endswith("/quality")]
    path = f"/v1/routers/{ROUTER}/peers/{session}/consumers/{track}/quality"
    assert calls[-3:] == [
        (path, {"max_width": 320, "max_height": 180, "paused": False}),
        (path, {"max_width": None, "max_height": None, "paused": True}),
        (path, {"max_width": None, "max_height": None, "paused": False}),
    ]
    await client.close()


async def test_publish_layers_and_tracks_from_the_sfu(app: AppServer, sfu: tuple[StandInSfu, str]) -> None:
    stand_in, _ = sfu
    alice, alice_ch, alice_session = await join(app, "alice", "connect,speak,video,stream")
    bob, bob_ch, bob_session = await join(app, "bob", "connect,speak")
    await alice_ch.wait_presence(lambda m: "bob" in m)
    assert alice_ch.members()["alice"]["tracks"] == [] and alice_ch.members()["alice"]["streaming"] is False
    await alice_ch.push("sdp", {"type": "offer", "sdp": OFFER, "sources": {"0": "microphone", "1": "camera"}})

    active = {"q": True, "h": False, "f": False}
    await stand_in.emit(
        {"type": "publish_layers", "router": ROUTER, "peer": alice_session, "mid": "1", "active": active}
    )
    assert await alice_ch.wait_event("publish_layers") == {"mid": "1", "active": active}

    tracks = [
        {"track": f"{alice_session}:0", "mid": "0", "kind": "audio", "source": "microphone", "layers": []},
        {
            "track": f"{alice_session}:1",
            "mid": "1",
            "kind": "video",
            "source": "camera",
            "layers": ["q", "h", "f"],
        },
        {"track": f"{alice_session}:2", "mid": "2", "kind": "video", "source": "screen", "layers": []},
    ]
    await stand_in.emit({"type": "tracks", "router": ROUTER, "peer": alice_session, "tracks": tracks})
    members = await bob_ch.wait_presence(lambda m: m["alice"]["streaming"])
    assert members["alice"]["tracks"] == [
        {k: t[k] for k in ("track", "kind", "source", "layers")} for t in tracks
    ]
    assert members["bob"]["tracks"] == [] and members["bob"]["streaming"] is False
    # The screen share stops: presence says so; the camera stays.
    await stand_in.emit({"type": "tracks", "router": ROUTER, "peer": alice_session, "tracks": tracks[:2]})
    members = await bob_ch.wait_presence(lambda m: not m["alice"]["streaming"])
    assert [t["source"] for t in members["alice"]["tracks"]] == ["microphone", "camera"]
    # Nothing about Alice reaches Bob's socket but presence: publish_layers is for its publisher only.
    await asyncio.sleep(scaled(0.2))  # a negative check: time for a stray publish_layers to arrive
    assert all(name != "publish_layers" for name, _ in list(bob_ch.events._queue))  # type: ignore[attr-defined]
    del bob_session
    await alice.close()
    await bob.close()
