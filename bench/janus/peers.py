"""aiortc publisher and subscriber peers for a Janus VideoRoom, on loopback only.

* `restrict_ice_to_loopback` makes aioice gather host candidates on 127.0.0.1 only, and `rtc_configuration`
  has no ICE server (aiortc would otherwise add Google's STUN server), so no peer sends a packet off the
  machine.
* `ToneTrack` is an audio track generating a sine tone (s16, 48 kHz, 20 ms frames, paced in real time);
  aiortc encodes it with Opus.
* `Publisher` joins a room as a publisher and publishes one `ToneTrack`; `Subscriber` subscribes to feeds,
  drains the decoded audio of every received track (optionally keeping it), and reports the dominant
  frequency of each track and RTP packet counts.
* `dominant_frequency` uses numpy's FFT when numpy is importable, else a Goertzel scan.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fractions
import importlib
import math
import re
import time
from collections.abc import Iterable, Sequence
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

from .client import JanusHandle, JanusSession, Joined, Subscription, VideoRoom

SAMPLE_RATE: Final = 48000
PTIME: Final = 0.020
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


class ToneTrack(MediaStreamTrack):
    """A sine tone of `frequency` Hz as s16 48 kHz audio frames of 20 ms, paced in real time."""

    kind = "audio"

    def __init__(
        self, frequency: float, *, amplitude: float = 0.3, channels: int = 1, sample_rate: int = SAMPLE_RATE
    ) -> None:
        super().__init__()
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        self.frequency = frequency
        self.amplitude = amplitude
        self.channels = channels
        self.sample_rate = sample_rate
        self.samples_per_frame = int(sample_rate * PTIME)
        self.frames_sent = 0
        self._start: float | None = None
        self._pts = 0
        self._time_base = fractions.Fraction(1, sample_rate)
        self._table = self._one_second()

    def _one_second(self) -> bytes:
        # For an integer frequency a 1 s table loops seamlessly; otherwise the phase jumps once a second,
        # which is harmless for frequency detection.
        peak = self.amplitude * 32767
        step = 2 * math.pi * self.frequency / self.sample_rate
        mono = array.array("h", (round(peak * math.sin(step * i)) for i in range(self.sample_rate)))
        if self.channels == 1:
            return mono.tobytes()
        stereo = array.array("h", bytes(4 * len(mono)))
        stereo[0::2] = mono
        stereo[1::2] = mono
        return stereo.tobytes()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            self._pts += self.samples_per_frame
            wait = self._start + self._pts / self.sample_rate - now
            if wait > 0:
                await asyncio.sleep(wait)
        layout = "mono" if self.channels == 1 else "stereo"
        frame = av.AudioFrame(format="s16", layout=layout, samples=self.samples_per_frame)
        bytes_per_frame = 2 * self.channels * self.samples_per_frame
        offset = (self._pts % self.sample_rate) * 2 * self.channels
        chunk = self._table[offset : offset + bytes_per_frame]
        if len(chunk) < bytes_per_frame:
            chunk += self._table[: bytes_per_frame - len(chunk)]
        frame.planes[0].update(chunk)
        frame.pts = self._pts
        frame.sample_rate = self.sample_rate
        frame.time_base = self._time_base
        self.frames_sent += 1
        return frame


# -- frequency analysis ---------------------------------------------------------------------------


def goertzel_power(samples: Sequence[float], sample_rate: int, frequency: float) -> float:
    """Power of `samples` at `frequency` (Goertzel algorithm)."""
    coeff = 2 * math.cos(2 * math.pi * frequency / sample_rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def _hann(samples: Sequence[float]) -> list[float]:
    n = len(samples)
    if n < 2:
        return list(samples)
    return [x * (0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1))) for i, x in enumerate(samples)]


def dominant_frequency(
    samples: Sequence[float],
    sample_rate: int = SAMPLE_RATE,
    *,
    fmin: float = 50.0,
    fmax: float = 4000.0,
    candidates: Iterable[float] | None = None,
) -> float:
    """The frequency (Hz) with the most energy in `samples`.

    With `candidates`, the best of those frequencies. Otherwise numpy's FFT (parabolic peak interpolation)
    if numpy is importable, else a Goertzel scan of [fmin, fmax] (coarse 5 Hz grid, then 0.5 Hz around
    the peak) over at most 8192 samples.
    """
    if not samples:
        raise ValueError("no samples")
    if candidates is not None:
        windowed = _hann(samples[-8192:])
        return max(candidates, key=lambda f: goertzel_power(windowed, sample_rate, f))
    try:
        np = importlib.import_module("numpy")  # optional: not a dependency of the project
    except ImportError:
        pass
    else:
        data = np.asarray(samples, dtype=np.float64) * np.hanning(len(samples))
        spectrum = np.abs(np.fft.rfft(data))
        freqs = np.fft.rfftfreq(len(data), 1 / sample_rate)
        band = (freqs >= fmin) & (freqs <= fmax)
        index = int(np.flatnonzero(band)[np.argmax(spectrum[band])])
        if 0 < index < len(spectrum) - 1:
            a, b, c = (float(v) for v in np.log(spectrum[index - 1 : index + 2] + 1e-12))
            denominator = a - 2 * b + c
            offset = 0.5 * (a - c) / denominator if denominator else 0.0
            return float(freqs[index]) + offset * sample_rate / len(data)
        return float(freqs[index])
    windowed = _hann(samples[-8192:])
    grid = [fmin + 5.0 * i for i in range(int((fmax - fmin) / 5.0) + 1)]
    coarse = max(grid, key=lambda f: goertzel_power(windowed, sample_rate, f))
    fine = [coarse - 5.0 + 0.5 * i for i in range(21)]
    return max(fine, key=lambda f: goertzel_power(windowed, sample_rate, f))


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
    """A VideoRoom publisher sending a `ToneTrack` through aiortc."""

    session: JanusSession
    room: int
    frequency: float
    display: str = ""
    channels: int = 1
    pc: RTCPeerConnection = field(default_factory=new_peer_connection)
    videoroom: VideoRoom | None = None
    joined: Joined | None = None
    track: ToneTrack | None = None
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
        self.track = ToneTrack(self.frequency, channels=self.channels)
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

    def mono(self, seconds: float | None = None) -> list[float]:
        """The last `seconds` (all if None) of the first channel, as floats in [-1, 1]."""
        data = self.samples
        if seconds is not None:
            data = data[-int(seconds * self.sample_rate) :]
        return [x / 32768.0 for x in data]

    def dominant_frequency(self, seconds: float = 0.5, **kwargs: Any) -> float:
        return dominant_frequency(self.mono(seconds), self.sample_rate, **kwargs)


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

    def frequencies(self, seconds: float = 0.5, **kwargs: Any) -> dict[str, float]:
        """Dominant frequency of each track, keyed by mid."""
        return {mid: t.dominant_frequency(seconds, **kwargs) for mid, t in self.tracks.items()}

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
    "ToneTrack",
    "check_loopback_sdp",
    "dominant_frequency",
    "goertzel_power",
    "new_peer_connection",
    "restrict_ice_to_loopback",
    "rtc_configuration",
]
