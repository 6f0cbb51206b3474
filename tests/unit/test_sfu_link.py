"""Signaling's link to an SFU: a first peer waits for the link's event socket, because the SFU sends
renegotiation offers only there. A stand-in SFU (aiohttp on loopback) holds its event socket back and
records the order in which requests arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from voxa.common.ports import free_port
from voxa.signaling import media
from voxa.signaling.media import MediaError, MediaGateway
from voxa.signaling.registry import MediaRegistry
from voxa.signaling.store import MediaServer
from voxa.signaling.store.memory import MemoryStore


class StandInSfu:
    """Answers the control calls a first peer makes; its event socket opens only when `release` is set."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/events", self.events)
        app.router.add_put("/v1/routers/{router}", self.ok("router"))
        app.router.add_post("/v1/routers/{router}/peers/{peer}", self.ok("peer", sdp="answer"))
        return app

    def ok(self, name: str, **body: Any) -> Any:
        async def handler(request: web.Request) -> web.Response:
            self.seen.append(name)
            return web.json_response(body)

        return handler

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        await self.release.wait()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.seen.append("events")
        async for _ in ws:
            pass
        return ws


@pytest.fixture
async def sfu() -> AsyncIterator[tuple[StandInSfu, MediaServer]]:
    stand_in = StandInSfu()
    runner = web.AppRunner(stand_in.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield stand_in, MediaServer(id="sfu-a", server_id="g1", url=f"http://127.0.0.1:{port}")
    finally:
        stand_in.release.set()
        await runner.cleanup()


def gateway() -> MediaGateway:
    return MediaGateway(MediaRegistry(MemoryStore("r1", 30), ttl_s=30), "secret")


class Member:
    session_id = "peer-1"
    server_id = "g1"
    channel_id = "lobby"

    def on_media_event(self, event: dict[str, Any]) -> None:
        pass

    async def media_reset(self, media: MediaServer | None, reason: str) -> None:
        pass


async def test_a_first_peer_waits_for_the_event_socket(sfu: tuple[StandInSfu, MediaServer]) -> None:
    stand_in, server = sfu
    gw = gateway()
    try:
        link = gw.attach(server, Member())
        adding = asyncio.create_task(link.add_peer("g1.lobby", "peer-1", "offer"))
        await asyncio.sleep(0.5)
        assert not adding.done() and stand_in.seen == []
        stand_in.release.set()
        assert await adding == "answer"
        assert stand_in.seen == ["events", "router", "peer"]
    finally:
        await gw.close()


async def test_an_event_socket_that_never_opens_is_a_clear_error(
    sfu: tuple[StandInSfu, MediaServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in, server = sfu
    monkeypatch.setattr(media, "EVENTS_READY_TIMEOUT_S", 0.5)
    gw = gateway()
    try:
        link = gw.attach(server, Member())
        with pytest.raises(MediaError, match="media server events unreachable"):
            await link.add_peer("g1.lobby", "peer-1", "offer")
        assert "peer" not in stand_in.seen
    finally:
        await gw.close()
