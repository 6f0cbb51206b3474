"""WebRtcTransport: one peer's BUNDLEd ICE + DTLS-SRTP transport, built from aiortc's ORTC objects.

aiortc does ICE (aioice), the DTLS handshake and SRTP keying; once DTLS is up, media goes through the
FastPath (sfu/aiortc_glue.py) in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiortc import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCIceParameters,
    RTCIceTransport,
)
from aiortc.sdp import candidate_from_sdp

from voxa.sfu import aiortc_glue
from voxa.sfu.sdp import LocalTransport, RemoteDescription

log = logging.getLogger("voxa.sfu.transport")


class TransportError(Exception):
    """The transport could not be set up or did not connect."""


class WebRtcTransport:
    def __init__(
        self,
        certificate: RTCCertificate,
        *,
        on_rtp: Callable[[bytes], None],
        on_rtcp: Callable[[bytes], None],
        on_closed: Callable[[str], None],
    ) -> None:
        self._certificate = certificate
        self._gatherer = aiortc_glue.new_gatherer()
        self.ice = RTCIceTransport(self._gatherer)
        self.dtls = RTCDtlsTransport(self.ice, [certificate])
        self.fast = aiortc_glue.FastPath(self.ice, on_rtp, on_rtcp)
        self._on_closed = on_closed
        self._start_task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.closed = False
        self.local: LocalTransport | None = None
        self.dtls.on("statechange", self._dtls_state)

    async def setup(
        self,
        listen_ip: str,
        announced_ip: str | None,
        min_port: int,
        max_port: int,
        remote_filter: Callable[[str], bool] | None = None,
    ) -> LocalTransport:
        """Bind the media socket; return what goes into every SDP of this peer."""
        host, port = await aiortc_glue.bind_host_candidate(self._gatherer, listen_ip, min_port, max_port)
        if remote_filter is not None:
            aiortc_glue.restrict_remote_addresses(self._gatherer, remote_filter)
        address = announced_ip or host
        params = self._gatherer.getLocalParameters()
        fingerprint = next(f for f in self._certificate.getFingerprints() if f.algorithm == "sha-256")
        priority = 2130706431
        candidate = f"1 1 udp {priority} {address} {port} typ host generation 0"
        assert params.usernameFragment is not None and params.password is not None
        self.local = LocalTransport(
            ice_ufrag=params.usernameFragment,
            ice_pwd=params.password,
            fingerprint=(fingerprint.algorithm, fingerprint.value),
            setup="active",
            candidates=(candidate,),
            address=address,
            port=port,
        )
        return self.local

    def start(self, remote: RemoteDescription, timeout_s: float) -> None:
        """Connect ICE, then DTLS, in the background; close the transport if that is not done in timeout_s."""
        if self._start_task is None:
            self._start_task = asyncio.create_task(self._start(remote, timeout_s), name="voxa-sfu-connect")

    async def _start(self, remote: RemoteDescription, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                for section in remote.media[:1]:
                    for line in section.candidates:
                        await self.add_candidate(line)
                    if section.end_of_candidates:
                        await self.ice.addRemoteCandidate(None)
                await self.ice.start(
                    RTCIceParameters(
                        usernameFragment=remote.ice_ufrag, password=remote.ice_pwd, iceLite=remote.ice_lite
                    )
                )
                if self.ice.state != "completed":
                    raise TransportError("ICE failed")
                fingerprints = [RTCDtlsFingerprint(algorithm=a, value=v) for a, v in remote.fingerprints]
                await self.dtls.start(RTCDtlsParameters(fingerprints=fingerprints, role="auto"))
                if self.dtls.state != "connected":
                    raise TransportError("DTLS failed")
            self.fast.attach(self.dtls)
            self.connected.set()
        except (TimeoutError, TransportError, ConnectionError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            log.info("transport.connect_failed", extra={"reason": reason})
            await self.close(reason)

    async def add_candidate(self, line: str) -> None:
        """Add a remote candidate (an SDP a=candidate value, with or without the `candidate:` prefix)."""
        value = line.removeprefix("a=").removeprefix("candidate:").strip()
        if not value:
            await self.ice.addRemoteCandidate(None)
            return
        try:
            candidate = candidate_from_sdp(value)
        except (ValueError, IndexError) as exc:
            raise TransportError(f"malformed ICE candidate: {exc}") from None
        if candidate.protocol.lower() != "udp":
            return  # the SFU listens on UDP only
        await self.ice.addRemoteCandidate(candidate)

    def _dtls_state(self) -> None:
        if self.dtls.state in ("closed", "failed") and not self.closed:
            asyncio.get_running_loop().create_task(self.close(f"dtls {self.dtls.state}"))

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.fast.detach()
        task = self._start_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.dtls.stop()
        with contextlib.suppress(Exception):
            await self.ice.stop()
        self._on_closed(reason)
