"""The private aiortc/aioice surface the SFU relies on. If an upgrade moves any of it, fail here, loudly."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aioice.ice
import pytest
from aioice.ice import CandidatePair, Connection, StunProtocol
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceTransport

from voxa.sfu import aiortc_glue


def test_pinned_versions_are_installed() -> None:
    for package, pinned in aiortc_glue.PINNED.items():
        assert version(package) == pinned, f"{package}: re-verify sfu/aiortc_glue.py before upgrading"
    aiortc_glue.check_versions()


async def test_private_attributes_exist() -> None:
    gatherer = aiortc_glue.new_gatherer()
    dtls = RTCDtlsTransport(RTCIceTransport(gatherer), [RTCCertificate.generateCertificate()])
    aiortc_glue.check_internals(gatherer, dtls)
    assert gatherer._connection.stun_server is None and gatherer._connection.turn_server is None


def test_aioice_shapes() -> None:
    assert "datagram_received" in vars(StunProtocol)
    assert {"protocol", "remote_addr"} <= set(inspect.signature(CandidatePair).parameters) | set(
        vars(CandidatePair)
    )
    assert callable(getattr(Connection, "request_received", None))
    assert callable(aioice.ice.get_host_addresses)


async def test_bind_host_candidate_in_range() -> None:
    gatherer = aiortc_glue.new_gatherer()
    host, port = await aiortc_glue.bind_host_candidate(gatherer, "127.0.0.1", 45000, 45010)
    assert host == "127.0.0.1" and 45000 <= port <= 45010
    (candidate,) = gatherer.getLocalCandidates()
    assert (candidate.ip, candidate.port, candidate.type) == ("127.0.0.1", port, "host")
    await RTCIceTransport(gatherer).stop()


async def test_port_range_exhaustion_is_an_error() -> None:
    first = aiortc_glue.new_gatherer()
    _, port = await aiortc_glue.bind_host_candidate(first, "127.0.0.1", 45020, 45020)
    second = aiortc_glue.new_gatherer()
    with pytest.raises(OSError, match="no free UDP port in 45020-45020"):
        await aiortc_glue.bind_host_candidate(second, "127.0.0.1", port, port)
    await RTCIceTransport(first).stop()


def test_fastpath_refuses_unconnected_dtls() -> None:
    gatherer = aiortc_glue.new_gatherer()
    ice = RTCIceTransport(gatherer)
    dtls = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])
    fast = aiortc_glue.FastPath(ice, lambda data: None, lambda data: None)
    with pytest.raises(aiortc_glue.GlueError, match="no SRTP sessions"):
        fast.attach(dtls)
    fast.send_rtp(b"\x80" * 20)  # not attached: silently nothing
    assert fast.tx_packets == 0
