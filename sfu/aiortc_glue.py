"""Every use of aiortc's and aioice's private internals, in one place.

Voxa uses aiortc's public ORTC objects (RTCIceGatherer, RTCIceTransport, RTCDtlsTransport) for ICE,
DTLS and SRTP keying, but forwards media itself. Three things need internals:

- host candidates on a chosen address and port range (aioice gathers on every interface, port 0);
- the fast path: SRTP datagrams are taken straight from the UDP protocol instead of travelling
  through aioice's queue and the DTLS transport's receive loop, and are sent straight to the
  nominated pair's socket; the SRTP sessions come from the DTLS transport after its handshake;
- the ICE role.

The SFU benchmark's load peers (bench/loadgen) take the SRTP sessions and nominated pair of their
client peer connections through `client_media_path` here too, so one version pin covers every use.

These are pinned to the versions below; tests/unit/sfu/test_aiortc_glue.py fails loudly when an
upgrade moves any attribute this module reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, NamedTuple, Protocol, cast

import pylibsrtp
import voxa_dataplane
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol
from aiortc import RTCDtlsTransport, RTCIceGatherer, RTCIceTransport

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}


class GlueError(RuntimeError):
    """aiortc/aioice no longer look the way this module expects."""


def check_versions() -> None:
    """Refuse to run on versions whose internals were not verified."""
    for package, pinned in PINNED.items():
        found = version(package)
        if found != pinned:
            raise GlueError(f"{package} {found} is installed; Voxa's SFU is verified with {pinned} only")


def check_internals(gatherer: RTCIceGatherer, dtls: RTCDtlsTransport) -> None:
    """Assert every private attribute used here exists (called once per worker at start-up)."""
    conn = gatherer._connection
    for obj, names in (
        (
            conn,
            (
                "_protocols",
                "_local_candidates",
                "_local_candidates_start",
                "_local_candidates_end",
                "_nominated",
                "ice_controlling",
            ),
        ),
        (dtls, ("_rx_srtp", "_tx_srtp", "_role", "_ssl")),
    ):
        for name in names:
            if not hasattr(obj, name):
                raise GlueError(f"{type(obj).__name__}.{name} is gone: re-verify sfu/aiortc_glue.py")


def new_gatherer() -> RTCIceGatherer:
    """A gatherer that will never ask a STUN/TURN server (the SFU is reached on its own addresses)."""
    return RTCIceGatherer(iceServers=[])


async def bind_host_candidate(
    gatherer: RTCIceGatherer, listen_ip: str, min_port: int, max_port: int, *, controlling: bool = False
) -> tuple[str, int]:
    """Bind one UDP socket in [min_port, max_port] on listen_ip and make it the only host candidate.

    Returns the bound (address, port). Raises OSError when the range is exhausted.
    """
    conn: Connection = gatherer._connection
    conn.ice_controlling = controlling
    loop = asyncio.get_running_loop()
    span = max_port - min_port + 1
    start = random.randrange(span)
    last_error: OSError | None = None
    for i in range(min(span, 512)):
        port = min_port + (start + i) % span
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(conn), local_addr=(listen_ip, port)
            )
        except OSError as exc:
            last_error = exc
            continue
        break
    else:
        raise OSError(f"no free UDP port in {min_port}-{max_port}: {last_error}")
    host, bound_port = transport.get_extra_info("sockname")[:2]
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=1,
        transport="udp",
        priority=candidate_priority(1, "host"),
        host=host,
        port=bound_port,
        type="host",
    )
    conn._protocols.append(protocol)
    conn._local_candidates.append(protocol.local_candidate)
    conn._local_candidates_start = True
    conn._local_candidates_end = True
    return host, bound_port


SrtpHandler = Callable[[bytes], None]
AddressFilter = Callable[[str], bool]


def restrict_remote_addresses(gatherer: RTCIceGatherer, allowed: AddressFilter) -> None:
    """Ignore every datagram (STUN checks included) from addresses `allowed` rejects, so the SFU never
    answers, learns or sends to them (e.g. keep a test's traffic on loopback)."""
    for protocol in gatherer._connection._protocols:
        original = protocol.datagram_received

        def datagram_received(
            data: bytes | str, addr: tuple[Any, ...], original: Callable[..., None] = original
        ) -> None:
            if allowed(addr[0]):
                original(data, addr)

        protocol.datagram_received = datagram_received  # type: ignore[method-assign]


class FastPath:
    """Direct SRTP in and out of a connected ICE+DTLS pair, with no per-packet task switches.

    `on_rtp` / `on_rtcp` receive plaintext. Packets that fail SRTP authentication are counted and
    dropped. Until `attach` has run (DTLS connected), datagrams take aiortc's normal path.
    """

    __slots__ = (
        "_addr",
        "_conn",
        "_on_rtcp",
        "_on_rtp",
        "_rx",
        "_sendto",
        "_tx",
        "rx_bytes",
        "rx_errors",
        "rx_packets",
        "tx_bytes",
        "tx_errors",
        "tx_packets",
    )

    def __init__(self, ice: RTCIceTransport, on_rtp: SrtpHandler, on_rtcp: SrtpHandler) -> None:
        self._conn: Connection = ice._connection
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._rx: pylibsrtp.Session | None = None
        self._tx: pylibsrtp.Session | None = None
        self._sendto: Callable[[bytes, Any], None] | None = None
        self._addr: tuple[str, int] | None = None
        self.rx_packets = self.rx_bytes = self.rx_errors = 0
        self.tx_packets = self.tx_bytes = self.tx_errors = 0

    def attach(self, dtls: RTCDtlsTransport) -> None:
        """Take over SRTP once DTLS is connected."""
        if dtls._rx_srtp is None or dtls._tx_srtp is None:
            raise GlueError("DTLS transport has no SRTP sessions: is it connected?")
        self._rx = dtls._rx_srtp
        self._tx = dtls._tx_srtp
        self.refresh_route()
        for protocol in list(self._conn._protocols):
            self._wrap(protocol)

    def refresh_route(self) -> bool:
        """Follow the nominated candidate pair (it can change after ICE re-nomination)."""
        pair = self._conn._nominated.get(1)
        if pair is None:
            self._sendto = None
            self._addr = None
            return False
        self._sendto = pair.protocol.transport.sendto
        self._addr = pair.remote_addr
        return True

    def _wrap(self, protocol: StunProtocol) -> None:
        original = protocol.datagram_received
        handle = self._datagram

        def datagram_received(data: bytes | str, addr: tuple[Any, ...]) -> None:
            buf = cast(bytes, data)
            if 127 < buf[0] < 192:  # RTP/RTCP (RFC 7983)
                handle(buf)
            else:
                original(data, addr)

        protocol.datagram_received = datagram_received  # type: ignore[method-assign]

    def _datagram(self, data: bytes) -> None:
        rx = self._rx
        if rx is None:
            return
        self.rx_packets += 1
        self.rx_bytes += len(data)
        # RTCP packet types 192-223 sit in the second byte (RFC 5761 demultiplexing).
        if 191 < data[1] < 224:
            try:
                plain = rx.unprotect_rtcp(data)
            except pylibsrtp.Error:
                self.rx_errors += 1
                return
            self._on_rtcp(plain)
        else:
            try:
                plain = rx.unprotect(data)
            except pylibsrtp.Error:
                self.rx_errors += 1
                return
            self._on_rtp(plain)

    def send_rtp(self, plain: bytes) -> None:
        self._send(plain, False)

    def send_rtcp(self, plain: bytes) -> None:
        self._send(plain, True)

    def _send(self, plain: bytes, is_rtcp: bool) -> None:
        tx = self._tx
        sendto = self._sendto
        if tx is None or sendto is None:
            return
        try:
            data = tx.protect_rtcp(plain) if is_rtcp else tx.protect(plain)
        except pylibsrtp.Error:
            self.tx_errors += 1
            return
        sendto(data, self._addr)
        self.tx_packets += 1
        self.tx_bytes += len(data)

    def detach(self) -> None:
        self._rx = self._tx = None
        self._sendto = None


# --- the native data plane's side of DTLS (sfu/webrtc_server.py) ------------------------------------

SRTP_PROFILE_IDS = {
    b"SRTP_AES128_CM_SHA1_80": 0x0001,
    b"SRTP_AEAD_AES_128_GCM": 0x0007,
    b"SRTP_AEAD_AES_256_GCM": 0x0008,
}
"""DTLS-SRTP protection profile ids (RFC 5764 §4.1.2, RFC 7714) by OpenSSL's profile name."""


class DtlsPipe:
    """The part of an ICE transport RTCDtlsTransport uses (`role`, `_recv`, `_send`), fed by the
    native data plane: it owns the worker's one UDP port, does ICE-lite itself, and hands each DTLS
    record of a peer to that peer's pipe; records aiortc writes go back out through `send`.

    The role is "controlled" (the SFU is ICE-lite), so aiortc's "auto" DTLS role makes the SFU the
    DTLS client, as the SFU's `a=setup:active` says.
    """

    role = "controlled"

    def __init__(self, send: Callable[[bytes], bool]) -> None:
        self._send_datagram = send
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=256)

    def feed(self, data: bytes) -> None:
        """A DTLS record arrived from the peer (dropped if the handshake is not reading: a flood)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(data)

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def _recv(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            raise ConnectionError("transport closed")
        return data

    async def _send(self, data: bytes) -> None:
        if not self._send_datagram(data):
            raise ConnectionError("the peer's address is not known")


def export_srtp_keys(dtls: RTCDtlsTransport) -> tuple[int, bytes, bool]:
    """(profile id, DTLS-SRTP keying material, the SFU was the DTLS client) of a connected transport.

    The same exporter call aiortc makes in `RTCDtlsTransport._setup_srtp`, for the native SRTP
    sessions instead of aiortc's own (which then go unused).
    """
    ssl = dtls._ssl
    if ssl is None or dtls.state != "connected":
        raise GlueError("DTLS transport is not connected")
    name = ssl.get_selected_srtp_profile()
    profile = SRTP_PROFILE_IDS.get(name)
    if profile is None:
        raise GlueError(f"unsupported DTLS-SRTP profile {name!r}")
    length = voxa_dataplane.srtp_keying_material_len(profile)
    material = ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", length)
    return profile, bytes(material), dtls._role == "client"


# --- the SFU benchmark's load peers (bench/loadgen/rtc.py) -------------------------------------------


class ClientConnection(Protocol):
    """What these helpers use of an aiortc client peer connection."""

    def getTransceivers(self) -> list[Any]: ...


class ClientMediaPath(NamedTuple):
    """A connected aiortc peer connection's SRTP sessions and nominated pair, for raw SRTP load."""

    tx: pylibsrtp.Session
    rx: pylibsrtp.Session
    protocol: StunProtocol
    remote_addr: tuple[str, int]


def client_media_path(pc: ClientConnection) -> ClientMediaPath:
    """The SRTP sessions and nominated candidate pair of a connected client peer connection.

    Raises RuntimeError before DTLS/ICE are up. The load generator sends and receives raw SRTP on it
    instead of running aiortc's media pipeline.
    """
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise RuntimeError("peer connection has no transceiver")
    dtls: RTCDtlsTransport = transceivers[0].sender.transport
    if dtls._tx_srtp is None or dtls._rx_srtp is None:
        raise RuntimeError("DTLS has no SRTP sessions yet")
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None:
        raise RuntimeError("ICE has no nominated pair")
    return ClientMediaPath(dtls._tx_srtp, dtls._rx_srtp, pair.protocol, pair.remote_addr)


def stop_idle_sender_loops(pc: ClientConnection) -> None:
    """Cancel aiortc's RTP loop of senders without a track (it only sleeps 20 ms in a loop)."""
    for transceiver in pc.getTransceivers():
        task = getattr(transceiver.sender, "_RTCRtpSender__rtp_task", None)
        if isinstance(task, asyncio.Task) and getattr(transceiver.sender, "track", None) is None:
            task.cancel()
