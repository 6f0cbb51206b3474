"""aiortc publisher and subscriber peers for a Janus VideoRoom, on loopback only.

* `restrict_ice_to_loopback` makes aioice gather host candidates on 127.0.0.1 only, and `rtc_configuration`
  has no ICE server (aiortc would otherwise add Google's STUN server), so no peer sends a packet off the
  machine.
* `Publisher` joins a room as a publisher and publishes one tone (`voxa.client.media.SineTrack`, the
  tone Voxa's own benchmarks send); `Subscriber` subscribes to feeds, drains the decoded audio of every
  received track (optionally keeping it), and reports the dominant frequency of each track (the shared
  `voxa.client.media.dominant_frequency`) and RTP packet counts.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Final

import aioice.ice
import av
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.sdp import candidate_from_sdp

from voxa.client.media import SineTrack, dominant_frequency

from .client import JanusHandle, JanusSession, Joined, Subscription, VideoRoom

SAMPLE_RATE: Final = 48000
LOOPBACK: Final = "127.0.0.1"
_original_get_host_addresses = aioice.ice.get_host_addresses


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [LOOPBACK] if use_ipv4 else []


def restrict_ice_to_loopback(enabled: bool = True) -> None:
    """Make aioice (hence aiortc) gather host candidates on 127.0.0.1 only (or undo it)."""
    aioice.ice.get_host_addresses = _loopback_host_addresses if enabled else _original_get_host_addresses


def rtc_configuration() -> RTCConfiguration:
    """No ICE servers: an empty list, since ``None`` makes aiortc use stun.l.google.com."""
    return RTCConfiguration(iceServers=[])


_CANDIDATE_ADDRESS = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", re.MULTILINE)


class NonLoopbackCandidateError(ConnectionError):
    """The remote SDP announces an ICE candidate that is not on 127.0.0.0/8."""


def check_loopback_sdp(sdp: str) -> list[str]:
    """Return the candidate addresses of `sdp`; raise unless every one of them is a 127.x address.

    Called on Janus's SDP before aiortc sees it, so that no connectivity check is ever sent elsewhere.
    """
    addresses = _CANDIDATE_ADDRESS.findall(sdp)
    others = sorted({a for a in addresses if not a.startswith("127.")})
    if others:
        raise NonLoopbackCandidateError(f"Janus announced non-loopback ICE candidates {others}")
    return addresses


def new_peer_connection() -> RTCPeerConnection:
    restrict_ice_to_loopback()
    return RTCPeerConnection(rtc_configuration())


# -- peers ----------------------------------------------------------------------------------------


async def _apply_trickle(pc: RTCPeerConnection, handle: JanusHandle) -> None:
    """Feed candidates Janus trickles (it normally does not: half-trickle puts them in the SDP)."""
    while True:
        event = await handle.events.get()
        if event.janus != "trickle":
            continue
        cand: dict[str, Any] = event.raw.get("candidate") or {}
        if cand.get("completed") or not cand.get("candidate"):
            continue
        candidate = candidate_from_sdp(str(cand["candidate"]).removeprefix("candidate:"))
        if not candidate.ip.startswith("127."):
            raise NonLoopbackCandidateError(f"Janus trickled a non-loopback candidate {candidate.ip}")
        candidate.sdpMid = cand.get("sdpMid")
        candidate.sdpMLineIndex = cand.get("sdpMLineIndex")
        await pc.addIceCandidate(candidate)


async def _wait_connected(pc: RTCPeerConnection, handle: JanusHandle, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"PeerConnection {pc.connectionState}")
            await asyncio.sleep(0.02)
        await handle.webrtcup.wait()


@dataclass
class Publisher:
    """A VideoRoom publisher sending a tone through aiortc."""

    session: JanusSession
    room: int
    frequency: float
    display: str = ""
    pc: RTCPeerConnection = field(default_factory=new_peer_connection)
    videoroom: VideoRoom | None = None
    joined: Joined | None = None
    track: SineTrack | None = None
    sender: RTCRtpSender | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def feed_id(self) -> int:
        if self.joined is None:
            raise RuntimeError("not joined")
        return self.joined.id

    async def start(self, *, timeout: float = 15.0, request: str = "publish") -> None:
        """Join, publish the tone and wait until ICE/DTLS are up on both sides (``webrtcup``)."""
        self.videoroom = await VideoRoom.attach(self.session)
        self.joined = await self.videoroom.join_publisher(
            self.room, self.display or f"tone-{self.frequency:g}"
        )
        self.track = SineTrack(self.frequency, amplitude=0.3)
        self.sender = self.pc.addTransceiver(self.track, direction="sendonly").sender
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer_sdp = await self.videoroom.publish(
            self.pc.localDescription.sdp, request=request, audiocodec="opus"
        )
        check_loopback_sdp(answer_sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        self._tasks.append(asyncio.create_task(_apply_trickle(self.pc, self.videoroom.handle)))
        await _wait_connected(self.pc, self.videoroom.handle, timeout)

    async def packets_sent(self) -> int:
        stats = await self.pc.getStats()
        return sum(int(getattr(s, "packetsSent", 0)) for s in stats.values() if s.type == "outbound-rtp")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
        if self.videoroom is not None:
            with contextlib.suppress(Exception):
                await self.videoroom.handle.detach()


@dataclass
class ReceivedTrack:
    """Audio received on one subscription stream (one mid)."""

    mid: str
    feed_id: int | None
    frames: int = 0
    samples: array.array[int] = field(default_factory=lambda: array.array("h"))
    sample_rate: int = SAMPLE_RATE

    def dominant_frequency(self, seconds: float = 0.5) -> float | None:
        """The dominant frequency of the last `seconds` of the first channel (None: silence)."""
        return dominant_frequency(self.samples[-int(seconds * self.sample_rate) :], self.sample_rate)


@dataclass
class Subscriber:
    """A VideoRoom subscriber receiving `feeds` through aiortc (decoded to PCM by aiortc).

    With `keep_seconds` > 0, the last `keep_seconds` of the first channel of each track are kept for
    analysis; with 0 the frames are only counted (the decode cost in aiortc is paid either way).
    """

    session: JanusSession
    room: int
    feeds: list[int]
    keep_seconds: float = 2.0
    pc: RTCPeerConnection = field(default_factory=new_peer_connection)
    videoroom: VideoRoom | None = None
    subscription: Subscription | None = None
    tracks: dict[str, ReceivedTrack] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, *, timeout: float = 15.0) -> None:
        """Subscribe, answer Janus's offer, send ``start`` and wait until the media path is up."""
        self.videoroom = await VideoRoom.attach(self.session)
        self.subscription = await self.videoroom.join_subscriber(self.room, self.feeds)
        feed_of_mid = self.subscription.feed_of_mid()

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            mid = next((t.mid for t in self.pc.getTransceivers() if t.receiver.track is track), None)
            key = mid or track.id
            received = ReceivedTrack(key, feed_of_mid.get(key))
            self.tracks[key] = received
            self._tasks.append(asyncio.create_task(self._drain(track, received)))

        check_loopback_sdp(self.subscription.offer_sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(self.subscription.offer_sdp, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.videoroom.start(self.pc.localDescription.sdp)
        self._tasks.append(asyncio.create_task(_apply_trickle(self.pc, self.videoroom.handle)))
        await _wait_connected(self.pc, self.videoroom.handle, timeout)

    async def _drain(self, track: MediaStreamTrack, received: ReceivedTrack) -> None:
        keep = int(self.keep_seconds * SAMPLE_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            received.frames += 1
            if keep <= 0 or not isinstance(frame, av.AudioFrame):
                continue
            received.sample_rate = frame.sample_rate
            pcm = array.array("h", bytes(frame.planes[0]))
            channels = len(frame.layout.channels)
            if frame.format.is_planar or channels == 1:
                pcm = pcm[: frame.samples]
            else:
                pcm = pcm[: frame.samples * channels : channels]
            received.samples.extend(pcm)
            if len(received.samples) > 2 * keep:
                del received.samples[: len(received.samples) - keep]

    async def wait_frames(self, frames: int, *, timeout: float = 10.0) -> None:
        """Wait until every expected track has received at least `frames` decoded frames."""
        async with asyncio.timeout(timeout):
            while len(self.tracks) < len(self.feeds) or any(t.frames < frames for t in self.tracks.values()):
                await asyncio.sleep(0.05)

    def frequencies(self, seconds: float = 0.5) -> dict[str, float | None]:
        """Dominant frequency of each track, keyed by mid."""
        return {mid: t.dominant_frequency(seconds) for mid, t in self.tracks.items()}

    async def packets_received(self) -> int:
        """RTP packets received so far on all tracks (aiortc's inbound-rtp stats)."""
        stats = await self.pc.getStats()
        return sum(int(getattr(s, "packetsReceived", 0)) for s in stats.values() if s.type == "inbound-rtp")

    def frames_received(self) -> int:
        return sum(t.frames for t in self.tracks.values())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
        if self.videoroom is not None:
            with contextlib.suppress(Exception):
                await self.videoroom.handle.detach()


__all__ = [
    "NonLoopbackCandidateError",
    "Publisher",
    "ReceivedTrack",
    "Subscriber",
    "check_loopback_sdp",
    "new_peer_connection",
    "restrict_ice_to_loopback",
    "rtc_configuration",
]
