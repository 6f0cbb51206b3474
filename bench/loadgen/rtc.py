"""aiortc peer connections reduced to ICE + DTLS keying, with media as raw SRTP on the nominated pair.

After a `RTCPeerConnection` is connected, `FastLink` takes its (BUNDLEd) DTLS transport's SRTP sessions
and the nominated ICE pair's socket: publishers send ``tx.protect(rtp)`` with ``sendto`` to the remote
address; subscribers replace the socket protocol's ``datagram_received`` with a function that handles
RTP (and RTCP) itself and passes STUN and DTLS on to aiortc. aiortc's sender loop (which only
idles without a track) is cancelled, so no Python-level media pipeline runs for these peers.

Peer connections are loopback only: the Janus harness's `new_peer_connection` gathers host candidates on
127.0.0.1 and uses no STUN server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from aiortc.sdp import SessionDescription
from janus.peers import new_peer_connection

from loadgen.media import ExtensionIds
from voxa.sfu import aiortc_glue

MID_URI: Final = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI: Final = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI: Final = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
RID_URI: Final = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RCVBUF_BYTES: Final = 2 * 1024 * 1024

__all__ = [
    "FastLink",
    "Negotiated",
    "negotiated",
    "new_peer_connection",
    "prefer_vp8",
    "simulcast_offer",
    "wait_connected",
]


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What one m-section of an answer settled: payload type and header extension ids."""

    pt: int
    ext: ExtensionIds


def negotiated(sdp: str, mid: str, codec: str) -> Negotiated:
    """The payload type of `codec` and the extension ids in m-section `mid` of `sdp`."""
    description = SessionDescription.parse(sdp)
    for media in description.media:
        if media.rtp.muxId != mid:
            continue
        pts = [c.payloadType for c in media.rtp.codecs if c.mimeType.split("/")[-1].lower() == codec.lower()]
        if not pts or pts[0] is None:
            raise ValueError(f"m-section {mid!r} did not negotiate {codec}")
        ids = {e.uri: e.id for e in media.rtp.headerExtensions}
        return Negotiated(
            pts[0],
            ExtensionIds(
                mid=mid,
                mid_id=ids.get(MID_URI, 0),
                audio_level_id=ids.get(AUDIO_LEVEL_URI, 0),
                abs_send_time_id=ids.get(ABS_SEND_TIME_URI, 0),
                rid_id=ids.get(RID_URI, 0),
            ),
        )
    raise ValueError(f"no m-section {mid!r} in the answer")


def simulcast_offer(sdp: str, rids: Sequence[str]) -> str:
    """aiortc's offer with its video section in Chromium's rid-based simulcast form.

    aiortc cannot send simulcast: its offer's video m-section is rewritten to what Chromium offers for
    a three-encoding sender (`a=rid:<rid> send` per layer, `a=simulcast:send q;h;f` lowest first, the
    rtp-stream-id extension, no `a=ssrc` lines: the SFU learns each layer's SSRC from the rid in its
    packets). The extension id is one no other extmap of the (BUNDLEd) offer uses."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    used = {
        int(line.split(":", 1)[1].split()[0].split("/")[0]) for line in lines if line.startswith("a=extmap:")
    }
    rid_id = next(i for i in range(1, 15) if i not in used)
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        if line:
            sections[-1].append(line)
    out: list[str] = []
    for section in sections:
        video = bool(section) and section[0].startswith("m=video")
        for line in section:
            if video and line.startswith(("a=ssrc:", "a=ssrc-group:")):
                continue
            out.append(line)
            if video and line.startswith("a=mid:"):
                out.append(f"a=extmap:{rid_id} {RID_URI}")
        if video:
            out.extend(f"a=rid:{rid} send" for rid in rids)
            out.append(f"a=simulcast:send {';'.join(rids)}")
    return "\r\n".join(out) + "\r\n"


def prefer_vp8(transceiver: RTCRtpTransceiver) -> None:
    """Offer VP8 only (no RTX, no H.264): the smallest SDP both servers accept."""
    caps = RTCRtpSender.getCapabilities("video")
    transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() == "video/vp8"])


async def wait_connected(pc: RTCPeerConnection, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"peer connection {pc.connectionState}")
            await asyncio.sleep(0.02)


DatagramHandler = Callable[[Any, Any], None]
# (unprotect, aiortc's datagram_received) -> the socket's new datagram_received
HandlerFactory = Callable[[Callable[[bytes], bytes], DatagramHandler], DatagramHandler]


class FastLink:
    """Raw SRTP in and out of a connected peer connection's nominated candidate pair."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        path = aiortc_glue.client_media_path(pc)  # aiortc internals live in the SFU's one glue module
        self.tx: pylibsrtp.Session = path.tx
        self.rx: pylibsrtp.Session = path.rx
        self.protocol: StunProtocol = path.protocol
        transport = self.protocol.transport
        self.sendto: Callable[[bytes, Any], None] = transport.sendto
        self.is_closing: Callable[[], bool] = transport.is_closing
        self.addr: tuple[str, int] = path.remote_addr
        self._original: DatagramHandler | None = None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        aiortc_glue.stop_idle_sender_loops(pc)

    def protect(self, packet: bytes) -> bytes:
        return self.tx.protect(packet)

    def hook(self, make_handler: HandlerFactory) -> None:
        """Take over the socket's datagrams: `make_handler(unprotect, original)` returns the function that
        receives every datagram (RTP: unprotect and handle it; the rest: `original`, i.e. aiortc)."""
        if self._original is not None:
            return
        original = self.protocol.datagram_received
        self._original = original
        handler = make_handler(self.rx.unprotect, original)
        self.protocol.datagram_received = handler  # type: ignore[method-assign, assignment]

    def unhook(self) -> None:
        if self._original is not None:
            self.protocol.datagram_received = self._original  # type: ignore[method-assign, assignment]
            self._original = None
