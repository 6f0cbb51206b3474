"""Real aiortc client peers against an in-process SFU worker, over loopback UDP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from tests.integration.hearing import WINDOW_S, silence, tone
from voxa.client.media import AudioSink, Level, SineTrack
from voxa.common.testing.wait import eventually_async, scaled
from voxa.sfu.settings import SfuSettings
from voxa.sfu.worker import RouterHandle, SfuWorker


async def stopped_rising(
    count: Callable[[], int], what: str, quiet_s: float = 0.25, timeout: float = 10.0
) -> None:
    """Wait until `count()` (packets) holds still for `quiet_s`: what was in flight when forwarding
    stopped has landed. (A video stream at 30 fps moves it every ~33 ms.)"""

    async def check() -> bool:
        before = count()
        await asyncio.sleep(quiet_s)
        return count() == before

    await eventually_async(check, timeout, what, poll=0.0)


async def stays_still(count: Callable[[], int], seconds: float) -> None:
    """Assert that `count()` does not move for `seconds` (scaled: a longer hold only makes it stricter)."""
    before = count()
    await asyncio.sleep(scaled(seconds))
    assert count() == before, (before, count())


@dataclass
class ClientPeer:
    """An aiortc client in a router: it sends a tone and records every track the SFU forwards."""

    name: str
    pc: RTCPeerConnection
    tone: SineTrack | None
    sinks: list[AudioSink] = field(default_factory=list)
    video: list[Any] = field(default_factory=list)
    offers: int = 0
    tracks: asyncio.Event = field(default_factory=asyncio.Event)
    # Signaling delivers in order; here events arrive by callback, so negotiation steps take turns.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def sink_from(self, peer: str) -> AudioSink:
        """The sink of the track forwarded from `peer` (the SFU's track ids are '<peer>:<mid>')."""
        return next(s for s in self.sinks if s.track.id.split(":")[0] == peer)

    async def hears(self, peer: str, hz: float, timeout: float = 15.0) -> Level:
        """Wait until a fresh window of `peer`'s forwarded track holds `hz`; returns that window."""
        return await tone(
            lambda: self.sink_from(peer).measure(WINDOW_S),
            hz,
            f"{self.name} hearing {peer}'s {hz:g} Hz",
            timeout,
        )

    async def hears_silence(self, peer: str, timeout: float = 15.0) -> Level:
        """Wait until a whole fresh window of `peer`'s forwarded track is silent; returns that window."""
        return await silence(
            lambda: self.sink_from(peer).measure(WINDOW_S),
            f"{self.name} hearing silence from {peer}",
            timeout,
        )


class Harness:
    def __init__(self, worker: SfuWorker) -> None:
        self.worker = worker
        self.clients: dict[str, ClientPeer] = {}
        self.events: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        worker.listeners.append(self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["type"] == "offer" and event["peer"] in self.clients:
            task = asyncio.get_running_loop().create_task(self._answer(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, event: dict[str, Any]) -> None:
        client = self.clients[event["peer"]]
        async with client.lock:
            client.offers += 1
            await client.pc.setRemoteDescription(RTCSessionDescription(event["sdp"], "offer"))
            await client.pc.setLocalDescription(await client.pc.createAnswer())
            self.worker.router(event["router"]).peer(client.name).handle_answer(
                client.pc.localDescription.sdp
            )

    async def join(
        self,
        room: RouterHandle,
        name: str,
        tone_hz: float | None = 440.0,
        *,
        video: bool = False,
        sources: dict[str, str] | None = None,
        can_stream: bool = False,
    ) -> ClientPeer:
        pc = RTCPeerConnection()
        tone = SineTrack(tone_hz) if tone_hz is not None else None
        if tone is not None:
            pc.addTrack(tone)
        else:
            pc.addTransceiver("audio", direction="recvonly")
        if video:
            pc.addTrack(VideoStreamTrack())
        client = ClientPeer(name, pc, tone)
        self.clients[name] = client

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                client.sinks.append(AudioSink(track))
            else:
                client.video.append(track)
            client.tracks.set()

        async with client.lock:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await room.add_peer(
                name, pc.localDescription.sdp, sources=sources, can_stream=can_stream
            )
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        return client

    async def close(self) -> None:
        for client in self.clients.values():
            for sink in client.sinks:
                await sink.stop()
            await client.pc.close()
        for task in list(self._tasks):
            task.cancel()


@pytest.fixture
async def sfu() -> AsyncIterator[Harness]:
    worker = SfuWorker(
        SfuSettings(secret="test", workers=1, rtc_listen_ip="127.0.0.1", rtc_remote_networks=["127.0.0.0/8"])
    )
    await worker.start()
    harness = Harness(worker)
    yield harness
    await harness.close()
    await worker.stop()
