"""WebRtcServer: one UDP port per worker for every peer, served by the native data plane.

The Rust extension (sfu/dataplane/, module `voxa_dataplane`) owns the worker's media socket and does
all per-packet work: ICE-lite answers (checked against each peer's ICE password, the peer found by
the USERNAME's ufrag), SRTP, routing, rewriting, RTCP. Python keeps what is not per packet:

- `WebRtcServer` owns the native `Worker` and wakes on its eventfd, once per batch of events:
  a peer's first authenticated check (its address is known), DTLS records, consent expiry;
- `NativeTransport` is one peer's transport: its ICE credentials, aiortc's DTLS handshake over a
  pipe to the native socket (sfu/aiortc_glue.py), then the exported SRTP keys handed to the native
  side. After that no packet of the peer passes through Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
from collections.abc import Callable
from typing import Any, cast

import voxa_dataplane
from aiortc import RTCCertificate, RTCDtlsFingerprint, RTCDtlsParameters, RTCDtlsTransport

from voxa.sfu import aiortc_glue
from voxa.sfu.sdp import LocalTransport, RemoteDescription
from voxa.sfu.transport import TransportError

log = logging.getLogger("voxa.sfu.webrtc_server")

_ICE_CHARS = string.ascii_letters + string.digits + "+/"


def _ice_token(length: int) -> str:
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(length))


_MEDIA_EVENTS = frozenset(("layers", "layer"))


def _ignore_media_event(kind: str, native: int, value: object) -> None:
    del kind, native, value


class WebRtcServer:
    """A worker's single media port and the native data plane behind it."""

    def __init__(self, listen_ip: str, port: int, announced_ip: str | None, networks: list[str]) -> None:
        try:
            self.engine = voxa_dataplane.Worker(listen_ip, port)
        except OSError as exc:
            raise OSError(f"cannot bind the media port {listen_ip}:{port}: {exc}") from None
        if networks:
            self.engine.set_allowed_networks(networks)
        self.address = announced_ip or listen_ip
        self.port = self.engine.port
        self._transports: dict[int, NativeTransport] = {}
        self._reading = False
        # Events about producers and consumers rather than peers ("layers", "layer"): the worker's.
        self.on_media_event: Callable[[str, int, object], None] = _ignore_media_event

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.engine.event_fd(), self._on_events)
        self._reading = True

    def register(self, transport: NativeTransport) -> int:
        peer = self.engine.add_peer(transport.ice_ufrag, transport.ice_pwd)
        self._transports[peer] = transport
        return peer

    def unregister(self, peer: int) -> None:
        if self._transports.pop(peer, None) is not None:
            with contextlib.suppress(KeyError):
                self.engine.remove_peer(peer)

    def _on_events(self) -> None:
        for kind, peer, value in self.engine.take_events():
            if kind in _MEDIA_EVENTS:
                self.on_media_event(kind, peer, value)  # `peer` is a producer or consumer id here
                continue
            transport = self._transports.get(peer)
            if transport is None:
                continue
            if kind == "dtls":
                transport.dtls_pipe.feed(cast(bytes, value))
            elif kind == "connected":
                transport.on_ice_connected(cast(tuple[str, int], value))
            elif kind == "consent_expired":
                asyncio.get_running_loop().create_task(transport.close("ice consent expired"))

    def close(self) -> None:
        if self._reading:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.engine.event_fd())
            self._reading = False
        self.engine.close()


class _Counters:
    __slots__ = ("rx_errors", "rx_packets", "tx_packets")

    def __init__(self, rx_packets: int, tx_packets: int, rx_errors: int) -> None:
        self.rx_packets = rx_packets
        self.tx_packets = tx_packets
        self.rx_errors = rx_errors


class NativeTransport:
    """One peer's BUNDLEd transport on the worker's shared port: ICE-lite natively, DTLS by aiortc."""

    def __init__(
        self, server: WebRtcServer, certificate: RTCCertificate, *, on_closed: Callable[[str], None]
    ) -> None:
        self.server = server
        self._certificate = certificate
        self.ice_ufrag = _ice_token(8)
        self.ice_pwd = _ice_token(24)
        self.peer = server.register(self)
        self.dtls_pipe = aiortc_glue.DtlsPipe(self._send_dtls)
        self.dtls = RTCDtlsTransport(self.dtls_pipe, [certificate])  # type: ignore[arg-type]
        self._on_closed = on_closed
        self._ice_connected = asyncio.Event()
        self._start_task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.closed = False
        self.local: LocalTransport | None = None
        self.remote_address: tuple[str, int] | None = None
        self.srtp_profile = 0

    def setup(self) -> LocalTransport:
        """What goes into every SDP of this peer: the worker's port, this peer's ICE credentials."""
        fingerprint = next(f for f in self._certificate.getFingerprints() if f.algorithm == "sha-256")
        candidate = f"1 1 udp 2130706431 {self.server.address} {self.server.port} typ host generation 0"
        self.local = LocalTransport(
            ice_ufrag=self.ice_ufrag,
            ice_pwd=self.ice_pwd,
            fingerprint=(fingerprint.algorithm, fingerprint.value),
            setup="active",
            candidates=(candidate,),
            address=self.server.address,
            port=self.server.port,
            ice_lite=True,
        )
        return self.local

    def start(self, remote: RemoteDescription, timeout_s: float) -> None:
        """Wait for the peer's checks, then run DTLS; close the transport if not done in timeout_s."""
        if self._start_task is None:
            self._start_task = asyncio.create_task(self._start(remote, timeout_s), name="voxa-sfu-connect")

    def on_ice_connected(self, addr: tuple[str, int]) -> None:
        self.remote_address = addr
        self._ice_connected.set()

    async def _start(self, remote: RemoteDescription, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._ice_connected.wait()
                fingerprints = [RTCDtlsFingerprint(algorithm=a, value=v) for a, v in remote.fingerprints]
                await self.dtls.start(RTCDtlsParameters(fingerprints=fingerprints, role="auto"))
                if self.dtls.state != "connected":
                    raise TransportError("DTLS failed")
            profile, material, is_client = aiortc_glue.export_srtp_keys(self.dtls)
            self.server.engine.set_srtp(self.peer, profile, material, is_client)
            self.srtp_profile = profile
            log.debug("transport.connected", extra={"srtp_profile": f"0x{profile:04x}"})
            self.dtls.on("statechange", self._dtls_state)
            self.connected.set()
        except (TimeoutError, TransportError, ConnectionError, aiortc_glue.GlueError, KeyError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            log.info("transport.connect_failed", extra={"reason": reason})
            await self.close(reason)

    async def add_candidate(self, line: str) -> None:
        """Remote candidates need no action on an ICE-lite server (the peer's checks tell its address);
        a malformed one is still refused, as a full agent would."""
        value = line.removeprefix("a=").removeprefix("candidate:").strip()
        if not value:
            return
        parts = value.split()
        if len(parts) < 8 or parts[6] != "typ" or not parts[5].isdigit():
            raise TransportError(f"malformed ICE candidate: {value[:80]!r}")

    def _send_dtls(self, data: bytes) -> bool:
        try:
            return bool(self.server.engine.send_dtls(self.peer, data))
        except (KeyError, OSError):
            return False

    def _dtls_state(self) -> None:
        if self.dtls.state in ("closed", "failed") and not self.closed:
            asyncio.get_running_loop().create_task(self.close(f"dtls {self.dtls.state}"))

    @property
    def fast(self) -> _Counters:
        """Packet counters of this peer (the name of the Python data plane's equivalent)."""
        try:
            rx, tx, errors = self.server.engine.peer_stats(self.peer)
        except KeyError:
            return _Counters(0, 0, 0)
        return _Counters(rx, tx, errors)

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        task = self._start_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.dtls.stop()
        self.dtls_pipe.close()
        self.server.unregister(self.peer)
        self._on_closed(reason)


def native_stats(engine: Any) -> dict[str, int]:
    """The worker's data-plane counters (for metrics and the control API)."""
    return dict(engine.counters())
