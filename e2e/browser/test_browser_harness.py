"""The Chromium harness against a plain aiortc peer: tones both ways, renegotiation, mute without it.

Chromium's fake microphone plays a 440 Hz WAV; the Python side (aiortc) sends 660 Hz (then 880 Hz on a
second track). The page measures what it receives with a WebAudio AnalyserNode per remote track; the
Python side decodes Chromium's Opus and finds the dominant frequency with a Goertzel search.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from e2e.browser.conftest import ChromiumFactory
from e2e.browser.harness import BrowserError, ChromiumPage
from voxa.client.media import AudioSink, Level, SineTrack
from voxa.common.testing.wait import eventually_async

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BROWSER_HZ = 440.0
PYTHON_HZ = 660.0
SECOND_HZ = 880.0
TOLERANCE_HZ = 15.0
SILENCE_RMS = 0.003  # a 0.5-amplitude sine has an RMS of about 0.35


@dataclass
class PythonPeer:
    """An aiortc RTCPeerConnection that records every remote audio track in an AudioSink, by mid."""

    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    sinks: dict[str, AudioSink] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "audio":
                return
            mid = next(t.mid for t in self.pc.getTransceivers() if t.receiver.track is track)
            assert mid is not None
            self.sinks[mid] = AudioSink(track)
            self.arrived.set()

    async def answer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.pc.connectionState != "connected":
                if self.pc.connectionState in {"failed", "closed"}:
                    raise AssertionError(f"aiortc connectionState {self.pc.connectionState}")
                await asyncio.sleep(0.02)

    async def sink(self, mid: str, timeout: float = 10.0) -> AudioSink:
        async with asyncio.timeout(timeout):
            while mid not in self.sinks:
                self.arrived.clear()
                await self.arrived.wait()
        return self.sinks[mid]

    async def close(self) -> None:
        for sink in self.sinks.values():
            await sink.stop()
        await self.pc.close()


@pytest.fixture
async def python_peer(loopback_ice: list[tuple[str, int]]) -> AsyncIterator[PythonPeer]:
    peer = PythonPeer()
    yield peer
    await peer.close()


async def connect(page: ChromiumPage, peer: PythonPeer, tone: SineTrack, *, start: bool = True) -> None:
    """Chromium offers (its microphone), aiortc answers sending `tone`; both ends connected."""
    if start:
        await page.start()
    offer = await page.create_offer()
    peer.pc.addTrack(tone)
    answer = await peer.answer(offer)
    await page.set_remote("answer", answer)
    await page.wait_connected()
    await peer.wait_connected()


def by_mid(measured: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["mid"]: m for m in measured}


def assert_tone(level: Level, hz: float, what: str) -> None:
    assert level.hz is not None, f"{what}: silence ({level})"
    assert abs(level.hz - hz) <= TOLERANCE_HZ, f"{what}: {level.hz:.1f} Hz, expected {hz} ({level})"


async def test_tones_both_ways(
    chromium: ChromiumFactory, python_peer: PythonPeer, loopback_ice: list[tuple[str, int]]
) -> None:
    peers = await chromium(1, tone_hz=BROWSER_HZ)
    page = peers[0]
    await connect(page, python_peer, SineTrack(PYTHON_HZ))

    sink = await python_peer.sink("0")
    measured, heard = await asyncio.gather(page.measure(1500), sink.measure(1.5))
    remote = by_mid(measured)
    assert set(remote) == {"0"}, measured
    assert abs(remote["0"]["hz"] - PYTHON_HZ) <= TOLERANCE_HZ, measured
    assert remote["0"]["rms"] > 0.05, measured
    assert_tone(heard, BROWSER_HZ, "aiortc hears Chromium")

    stats = await page.stats()
    pair = stats["candidatePair"]
    assert pair["local"]["address"] == "127.0.0.1" and pair["remote"]["address"] == "127.0.0.1", pair
    assert stats["inbound"]["0"]["packetsReceived"] > 0 and stats["outbound"]["0"]["packetsSent"] > 0, stats
    assert stats["inbound"]["0"]["codec"] == "audio/opus", stats
    for transceiver in python_peer.pc.getTransceivers():
        for candidate in transceiver.receiver.transport.transport.iceGatherer.getLocalCandidates():
            assert candidate.ip == "127.0.0.1", candidate
    # Checks Chromium sent from its other interfaces' sockets, which aiortc ignored (see conftest).
    assert all(host != "127.0.0.1" for host, _ in loopback_ice), loopback_ice
    print("connectivity checks ignored by aiortc, from:", sorted({host for host, _ in loopback_ice}))


async def test_python_reoffer_is_rejected_by_chromium(
    chromium: ChromiumFactory, python_peer: PythonPeer
) -> None:
    """Known incompatibility, kept as a characterisation test: after answering Chromium's offer, aiortc's
    own createOffer() renumbers the RTP header extensions (its answer echoed Chromium's ids: ssrc-audio-level
    1, sdes:mid 4; its offer numbers them afresh: sdes:mid 1, ssrc-audio-level 2) and moves Opus from
    payload type 111 to 96. Chromium refuses any id change on an active m-line. A server that re-offers
    to browsers (the SFU) must keep the extension ids and payload types already negotiated.

    The call survives the rejected offer: Chromium stays stable and keeps receiving the first tone."""
    peers = await chromium(1, tone_hz=BROWSER_HZ)
    page = peers[0]
    await connect(page, python_peer, SineTrack(PYTHON_HZ))
    python_peer.pc.addTrack(SineTrack(SECOND_HZ))
    offer = await python_peer.offer()
    with pytest.raises(BrowserError, match="RTP extension ID reassignment not supported") as caught:
        await page.handle_remote_offer(offer)
    assert 'old_uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"' in str(caught.value)
    assert 'new_uri="urn:ietf:params:rtp-hdrext:sdes:mid"' in str(caught.value)

    state = await page.state()
    assert state["signalingState"] == "stable", state
    measured = by_mid(await page.measure(1000))
    assert set(measured) == {"0"} and abs(measured["0"]["hz"] - PYTHON_HZ) <= TOLERANCE_HZ, measured


async def test_page_reoffer_adds_track(chromium: ChromiumFactory, python_peer: PythonPeer) -> None:
    peers = await chromium(1, tone_hz=BROWSER_HZ)
    page = peers[0]
    await connect(page, python_peer, SineTrack(PYTHON_HZ))

    # The page adds a second microphone track and re-offers; aiortc answers with an 880 Hz track on it.
    added = await page.add_audio_track()
    offer = await page.create_offer()
    await python_peer.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    python_peer.pc.addTrack(SineTrack(SECOND_HZ))
    await python_peer.pc.setLocalDescription(await python_peer.pc.createAnswer())
    await page.set_remote("answer", python_peer.pc.localDescription.sdp)

    second = await python_peer.sink("1")
    first = python_peer.sinks["0"]
    await second.wait_frames(10)
    measured, heard_first, heard_second = await asyncio.gather(
        page.measure(1500), first.measure(1.5), second.measure(1.5)
    )
    remote = by_mid(measured)
    assert set(remote) == {"0", "1"}, measured
    assert abs(remote["0"]["hz"] - PYTHON_HZ) <= TOLERANCE_HZ, measured
    assert abs(remote["1"]["hz"] - SECOND_HZ) <= TOLERANCE_HZ, measured
    assert remote["0"]["trackId"] != remote["1"]["trackId"], measured
    # aiortc puts all its tracks in one stream (a=msid); the page reports it for each track.
    assert len(remote["0"]["streamIds"]) == 1 and remote["0"]["streamIds"] == remote["1"]["streamIds"], (
        measured
    )
    assert_tone(heard_first, BROWSER_HZ, "aiortc hears the first microphone")
    assert_tone(heard_second, BROWSER_HZ, "aiortc hears the second microphone")

    state = await page.state()
    assert state["signalingState"] == "stable", state
    assert state["counters"]["offersCreated"] == 2 and state["counters"]["remoteAnswers"] == 2, state
    assert [t["mid"] for t in state["transceivers"]] == ["0", "1"], state
    assert state["transceivers"][1]["senderTrackId"] == added["trackId"], state


async def test_mute_unmute_without_renegotiation(chromium: ChromiumFactory, python_peer: PythonPeer) -> None:
    peers = await chromium(1, tone_hz=BROWSER_HZ)
    page = peers[0]
    await connect(page, python_peer, SineTrack(PYTHON_HZ))
    sink = await python_peer.sink("0")
    assert_tone(await sink.measure(1.0), BROWSER_HZ, "before mute")
    before = await page.state()

    muted = await page.mute()
    assert muted["stoppedTrackId"] == before["transceivers"][0]["senderTrackId"], (muted, before)
    # Window after window until one lies wholly after what was in flight when the track stopped.
    windows: list[tuple[int, Level, int]] = []

    async def quiet_window() -> tuple[int, Level, int] | None:
        before = (await page.stats())["outbound"]["0"]["packetsSent"]
        level = await sink.measure(1.0)
        after = (await page.stats())["outbound"]["0"]["packetsSent"]
        windows.append((before, level, after))
        return windows[-1] if level.rms < SILENCE_RMS and level.frames == 0 and after == before else None

    sent_before, silent, sent_after = await eventually_async(
        quiet_window,
        15.0,
        lambda: (
            f"a 1 s window with nothing sent or heard after mute; last (sent, heard, sent): {windows[-1:]}"
        ),
        poll=0.0,
    )
    assert silent.rms < SILENCE_RMS, f"still hearing Chromium after mute: {silent}"
    # Chromium sends no RTP at all on a sender without a track (no comfort noise, no silence frames).
    assert sent_after == sent_before, (sent_before, sent_after)
    assert silent.frames == 0, silent
    during = await page.state()
    # The transceiver is untouched: same mid and direction, no track on the sender.
    assert during["transceivers"][0]["mid"] == "0", during
    assert during["transceivers"][0]["direction"] == "sendrecv", during
    assert during["transceivers"][0]["senderTrackId"] is None, during
    # Chromium still hears aiortc while muted.
    measured = by_mid(await page.measure(1000))
    assert abs(measured["0"]["hz"] - PYTHON_HZ) <= TOLERANCE_HZ, measured

    unmuted = await page.unmute()
    assert unmuted["trackId"] != muted["stoppedTrackId"], unmuted
    await sink.wait_frames(10)
    assert_tone(await sink.measure(1.0), BROWSER_HZ, "after unmute")

    after = await page.state()
    for key in ("negotiationNeeded", "offersCreated", "answersCreated", "remoteOffers", "remoteAnswers"):
        assert after["counters"][key] == before["counters"][key], (key, before["counters"], after["counters"])
    assert after["counters"]["replaceTrack"] == 2, after
    assert after["signalingState"] == "stable", after
    assert python_peer.pc.signalingState == "stable"


async def test_two_pages_send_their_own_tones(
    chromium: ChromiumFactory, loopback_ice: list[tuple[str, int]]
) -> None:
    """Distinct tones need distinct Chromium processes: each page is heard with its own frequency."""
    peers = await chromium(2, tone_hz=[BROWSER_HZ, PYTHON_HZ])
    remotes = [PythonPeer(), PythonPeer()]
    try:
        for page, remote in zip(peers.pages, remotes, strict=True):
            await connect(page, remote, SineTrack(SECOND_HZ))
        sinks = [await remote.sink("0") for remote in remotes]
        levels = await asyncio.gather(*(sink.measure(1.0) for sink in sinks))
        assert_tone(levels[0], BROWSER_HZ, "page 0")
        assert_tone(levels[1], PYTHON_HZ, "page 1")
    finally:
        for remote in remotes:
            await remote.close()


async def test_video(chromium: ChromiumFactory, python_peer: PythonPeer) -> None:
    """video=True: the page also sends Chromium's fake camera; aiortc decodes its frames."""
    peers = await chromium(1, tone_hz=BROWSER_HZ, video=True)
    page = peers[0]
    frames: list[VideoFrame] = []

    @python_peer.pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video":
            tasks.append(asyncio.create_task(collect(track)))

    async def collect(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, VideoFrame):
                    frames.append(frame)

    tasks: list[asyncio.Task[None]] = []
    started = await page.start()
    assert started["videoTrackId"], started
    await connect(page, python_peer, SineTrack(PYTHON_HZ), start=False)
    try:
        async with asyncio.timeout(10):
            while len(frames) < 10:
                await asyncio.sleep(0.05)
        assert (frames[-1].width, frames[-1].height) == (320, 240), frames[-1]
        stats = await page.stats()
        kinds = {entry["kind"] for entry in stats["outbound"].values() if entry.get("packetsSent")}
        assert kinds == {"audio", "video"}, stats
    finally:
        for task in tasks:
            task.cancel()
