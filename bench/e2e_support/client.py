"""The measuring voice client of bench/e2e.py: a Phoenix socket plus one aiortc peer connection sending
a tone, negotiating with the SFU through signaling as docs/protocol.md describes (polite peer: it
offers once per peer connection, answers every SFU offer, and starts over on `media_reset`).

Every negotiation is an `Attempt` that records `time.monotonic()` marks of its steps. The first remote
audio packet is taken from the RTP receive path: `RTCDtlsTransport._handle_rtp_data` (called with every
SRTP packet once decrypted, before it is routed to a receiver) is wrapped once per process, and the
first packet whose SSRC is not one of the peer's own senders' is the mark ``first_packet``.

`install_loopback_ice()` must run before any peer connection is created: aioice's only host candidate
becomes 127.0.0.1 (it leaves loopback out by default) and checks from other addresses are dropped, so
no traffic leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aioice.ice
from aioice.ice import StunProtocol
from aioice.stun import Message
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport

from voxa.client.phoenix import ClientChannel, PhoenixClient

SAMPLE_RATE: Final = 48_000
FRAME_SAMPLES: Final = 960  # 20 ms
HEARTBEAT_S: Final = 20.0
LOOPBACK: Final = frozenset({"127.0.0.1"})

# --- loopback ICE -------------------------------------------------------------------------------------
_ice_installed = False


def install_loopback_ice() -> None:
    """Keep every aioice agent of this process on loopback (the conftest.py `loopback_ice` patch)."""
    global _ice_installed  # noqa: PLW0603
    if _ice_installed:
        return
    receive = aioice.ice.Connection.request_received

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    def loopback_requests(
        self: aioice.ice.Connection, message: Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        if addr[0] in LOOPBACK:
            receive(self, message, addr, protocol)

    aioice.ice.get_host_addresses = loopback_only
    setattr(aioice.ice.Connection, "request_received", loopback_requests)  # noqa: B010
    _ice_installed = True


# --- RTP hook ------------------------------------------------------------------------------------------
RtpSink = Callable[[bytes], None]
_rtp_sinks: weakref.WeakKeyDictionary[RTCDtlsTransport, RtpSink] = weakref.WeakKeyDictionary()
_rtp_hooked = False


def install_rtp_hook() -> None:
    """Wrap RTCDtlsTransport._handle_rtp_data (private aiortc API, fine in a benchmark) once: transports
    registered in `_rtp_sinks` see every decrypted RTP packet first."""
    global _rtp_hooked  # noqa: PLW0603
    if _rtp_hooked:
        return
    original = RTCDtlsTransport._handle_rtp_data

    async def handle_rtp_data(self: RTCDtlsTransport, data: bytes, arrival_time_ms: int) -> None:
        sink = _rtp_sinks.get(self)
        if sink is not None:
            sink(data)
        await original(self, data, arrival_time_ms)

    setattr(RTCDtlsTransport, "_handle_rtp_data", handle_rtp_data)  # noqa: B010
    _rtp_hooked = True


# --- SDP -----------------------------------------------------------------------------------------------
def ssrc_streams(sdp: str) -> dict[int, str]:
    """SSRC -> msid stream id (the sender's session_id) of every m-section of an SDP."""
    out: dict[int, str] = {}
    for section in sdp.split("\nm=")[1:]:
        stream: str | None = None
        ssrcs: list[int] = []
        for raw in section.splitlines():
            line = raw.strip()
            if line.startswith("a=msid:"):
                stream = line[len("a=msid:") :].split(" ", 1)[0]
            elif line.startswith("a=ssrc:"):
                with contextlib.suppress(ValueError):
                    ssrcs.append(int(line[len("a=ssrc:") :].split(" ", 1)[0]))
        if stream is not None:
            for ssrc in ssrcs:
                out[ssrc] = stream
    return out


# --- client --------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    """One peer connection's negotiation: `cause` is "join" or "reset"; marks are monotonic seconds."""

    cause: str
    marks: dict[str, float] = field(default_factory=dict)
    first_ssrc: int | None = None
    first_from: str | None = None
    packets: int = 0
    errors: list[str] = field(default_factory=list)

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, time.monotonic() if at is None else at)


class BenchClient:
    """One participant: `start()` connects, joins `topic` and negotiates; every later `media_reset`
    closes the peer connection and negotiates a new one (a new Attempt)."""

    def __init__(
        self,
        ws_url: str,
        token: str,
        topic: str,
        label: str,
        track: Callable[[float], MediaStreamTrack],
        hz: float,
    ) -> None:
        self.ws_url = ws_url
        self.token = token
        self.topic = topic
        self.label = label
        self.make_track = track
        self.hz = hz
        self.phx: PhoenixClient | None = None
        self.channel: ClientChannel | None = None
        self.join_reply: dict[str, Any] = {}
        self.session_id: str | None = None
        self.attempts: list[Attempt] = []
        self.pc: RTCPeerConnection | None = None
        self.remote_ssrcs: dict[int, str] = {}
        self.audio_event = asyncio.Event()  # set when the current attempt got its first packet
        self.failed: str | None = None
        self._pending_offer: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def current(self) -> Attempt:
        return self.attempts[-1]

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Socket open -> join -> offer pushed. Marks of the first Attempt start at the socket open."""
        attempt = Attempt("join")
        attempt.mark("start")
        self.attempts.append(attempt)
        try:
            self.phx = PhoenixClient(self.ws_url, self.token)
            await self.phx.connect()
            attempt.mark("ws_open")
            self.channel, self.join_reply = await self.phx.join(self.topic)
            attempt.mark("join_reply")
            self.session_id = str(self.join_reply.get("session_id"))
            self._spawn(self._events())
            self._spawn(self._heartbeat())
            await self._negotiate(attempt)
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            attempt.errors.append(self.failed)
            raise

    async def _negotiate(self, attempt: Attempt) -> None:
        assert self.channel is not None
        async with self._lock:
            if self.pc is not None:
                old, self.pc = self.pc, None
                await old.close()
                attempt.mark("old_pc_closed")
            self.audio_event.clear()
            self._pending_offer = None
            self.remote_ssrcs = {}
            pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTrack(self.make_track(self.hz))
            pc.on("track", lambda track: self._spawn(self._drain(track)))

            @pc.on("iceconnectionstatechange")
            def ice_state() -> None:
                if pc.iceConnectionState in ("connected", "completed"):
                    attempt.mark("ice_connected")

            @pc.on("connectionstatechange")
            def conn_state() -> None:
                if pc.connectionState == "connected":
                    attempt.mark("dtls_connected")

            await pc.setLocalDescription(await pc.createOffer())
            self._watch(pc, attempt)
            attempt.mark("offer_created")
            offer = pc.localDescription.sdp
        reply = await self.channel.push("sdp", {"type": "offer", "sdp": offer}, timeout=15.0)
        attempt.mark("offer_acked")
        if reply.get("ignored"):
            attempt.errors.append("offer ignored (glare)")

    def _watch(self, pc: RTCPeerConnection, attempt: Attempt) -> None:
        """Register the pc's DTLS transports with the RTP hook (again after each description: bundling
        and new m-sections may bring new transports)."""
        own: set[int] = set()
        for sender in pc.getSenders():
            own.update((getattr(sender, "_ssrc", -1), getattr(sender, "_rtx_ssrc", -1)))

        def on_rtp(data: bytes) -> None:
            if len(data) < 12 or self.pc is not pc:
                return
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc in own:
                return
            attempt.packets += 1
            if "first_packet" not in attempt.marks:
                attempt.mark("first_packet")
                attempt.first_ssrc = ssrc
                attempt.first_from = self.remote_ssrcs.get(ssrc)
                self.audio_event.set()

        for transceiver in pc.getTransceivers():
            transport = transceiver.receiver.transport
            if transport is not None:
                _rtp_sinks[transport] = on_rtp

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Consume a remote track so aiortc's frame queue does not grow."""
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                await track.recv()

    async def _heartbeat(self) -> None:
        assert self.phx is not None
        while not self._closed:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(Exception):
                await self.phx.heartbeat()

    async def _events(self) -> None:
        assert self.channel is not None
        while not self._closed:
            name, payload = await self.channel.events.get()
            try:
                if name == "sdp":
                    await self._on_sdp(payload)
                elif name == "media_reset":
                    attempt = Attempt("reset")
                    attempt.mark("reset")
                    attempt.marks["start"] = attempt.marks["reset"]
                    self.attempts.append(attempt)
                    await self._negotiate(attempt)
                elif name in ("phx_close", "phx_error"):
                    self.failed = f"channel {name}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.current.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    async def _on_sdp(self, payload: dict[str, Any]) -> None:
        assert self.channel is not None
        kind, sdp = payload.get("type"), str(payload.get("sdp", ""))
        attempt = self.current
        answer: str | None = None
        async with self._lock:
            pc = self.pc
            if pc is None:
                return
            if kind == "answer":
                attempt.mark("answer_received")
                await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
                self.remote_ssrcs.update(ssrc_streams(sdp))
                self._watch(pc, attempt)
                attempt.mark("answer_applied")
                pending, self._pending_offer = self._pending_offer, None
                if pending is not None:
                    answer = await self._answer(pc, attempt, str(pending.get("sdp", "")))
            elif kind == "offer":
                attempt.mark("sfu_offer_received")
                if pc.signalingState == "have-local-offer":
                    # Our offer's answer is on its way (the SFU answered it before offering): keep this
                    # offer until then; aiortc has no rollback.
                    self._pending_offer = payload
                    return
                answer = await self._answer(pc, attempt, sdp)
        if answer is not None:
            await self.channel.push("sdp", {"type": "answer", "sdp": answer}, timeout=15.0)
            attempt.mark("sfu_offer_answered")

    async def _answer(self, pc: RTCPeerConnection, attempt: Attempt, sdp: str) -> str:
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        self.remote_ssrcs.update(ssrc_streams(sdp))
        await pc.setLocalDescription(await pc.createAnswer())
        self._watch(pc, attempt)
        return str(pc.localDescription.sdp)

    def first_packet_from_room_peer(self, room: Sequence[BenchClient]) -> bool:
        """Whether the first packet of the join's peer connection carried the SSRC the SFU announced
        for another client of this channel (its msid stream id is that client's session_id)."""
        first = self.attempts[0].first_from if self.attempts else None
        peers = {c.session_id for c in room if c is not self and c.topic == self.topic}
        return first is not None and first in peers

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
            self.pc = None
        if self.phx is not None:
            with contextlib.suppress(Exception):
                await self.phx.close()
