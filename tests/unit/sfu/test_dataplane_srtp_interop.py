"""The native data plane's SRTP (voxa_dataplane.SrtpSession, rtc-srtp) against libsrtp as aiortc drives
it (pylibsrtp), both ways: the far end of every SFU media path is aiortc's or a browser's libsrtp.

aiortc's side is made by aiortc itself: `RTCDtlsTransport._setup_srtp()` runs on a transport whose
DTLS connection is replaced by a stand-in that only names the negotiated profile and returns the
exporter output, so the key split, the profiles and the pylibsrtp Policies (SSRC_ANY_*, window 1024,
allow_repeat_tx) are exactly aiortc 1.16's. The key split is also checked against RFC 5764 §4.2
directly, with Policies made by hand. No I/O: packets go from one session object to the other.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from typing import Any, cast

import pylibsrtp
import pytest
import voxa_dataplane
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
from aiortc.rtcdtlstransport import SRTP_PROFILES, SRTPProtectionProfile

# DTLS-SRTP profile ids (RFC 5764 §4.1.2, RFC 7714 §14.2) and aiortc's names for them.
OPENSSL_NAMES = {
    0x0001: b"SRTP_AES128_CM_SHA1_80",
    0x0007: b"SRTP_AEAD_AES_128_GCM",
    0x0008: b"SRTP_AEAD_AES_256_GCM",
}
AIORTC_PROFILES = {p.openssl_profile: p for p in SRTP_PROFILES}
PROFILES = [
    pytest.param(
        pid,
        id=f"0x{pid:04x}",
        marks=pytest.mark.skipif(name not in AIORTC_PROFILES, reason=f"this libsrtp lacks {name!r}"),
    )
    for pid, name in OPENSSL_NAMES.items()
]
ROLES = [pytest.param(True, id="sfu-dtls-client"), pytest.param(False, id="sfu-dtls-server")]
SSRC = 0x1234_5678


def rtp(seq: int, payload: bytes = b"opus frame 20ms", *, ssrc: int = SSRC, extension: bytes = b"") -> bytes:
    """An RTP packet (PT 111); `extension` is a one-byte-header extension block's body (RFC 8285)."""
    first = 0x90 if extension else 0x80
    header = struct.pack("!BBHII", first, 111, seq & 0xFFFF, (seq * 960) & 0xFFFF_FFFF, ssrc)
    if extension:
        assert len(extension) % 4 == 0
        header += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    return header + payload


def receiver_report(ssrc: int = SSRC) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def sender_report(ssrc: int = SSRC, packets: int = 100) -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 0xE89F3C10, 0x80000000, 48000, packets, packets * 80)


class _ExporterOnly:
    """What `_setup_srtp` asks of aiortc's DTLS connection: the negotiated profile and the exporter."""

    def __init__(self, profile: bytes, material: bytes) -> None:
        self.profile, self.material = profile, material

    def get_selected_srtp_profile(self) -> bytes:
        return self.profile

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        assert label == b"EXTRACTOR-dtls_srtp" and length == len(self.material)
        return self.material


@dataclass
class Aiortc:
    """aiortc's two libsrtp sessions for one DTLS role."""

    tx: pylibsrtp.Session
    rx: pylibsrtp.Session


def aiortc_side(profile: int, material: bytes, role: str) -> Aiortc:
    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    dtls._ssl = cast(Any, _ExporterOnly(OPENSSL_NAMES[profile], material))
    dtls._role = role
    dtls._setup_srtp()
    assert dtls.state == "new", "aiortc refused the profile"
    return Aiortc(tx=dtls._tx_srtp, rx=dtls._rx_srtp)


@dataclass
class Pair:
    sfu: voxa_dataplane.SrtpSession
    peer: Aiortc
    """aiortc in the other DTLS role: what the SFU talks to."""
    twin: Aiortc
    """aiortc in the SFU's own role: it must seal exactly as the SFU does."""


def pair(profile: int, sfu_is_client: bool) -> Pair:
    material = os.urandom(voxa_dataplane.srtp_keying_material_len(profile))
    sfu_role, peer_role = ("client", "server") if sfu_is_client else ("server", "client")
    return Pair(
        sfu=voxa_dataplane.SrtpSession(profile, material, sfu_is_client),
        peer=aiortc_side(profile, material, peer_role),
        twin=aiortc_side(profile, material, sfu_role),
    )


@pytest.mark.parametrize("sfu_is_client", ROLES)
@pytest.mark.parametrize("profile", PROFILES)
def test_rtp_both_ways(profile: int, sfu_is_client: bool) -> None:
    p = pair(profile, sfu_is_client)
    for seq in range(1000, 1020):
        packet = rtp(seq, os.urandom(seq % 50 + 1))
        sealed = p.sfu.protect_rtp(packet)
        # Byte for byte what libsrtp makes from the same keys, and libsrtp opens it.
        assert sealed == p.twin.tx.protect(packet)
        assert p.peer.rx.unprotect(sealed) == packet
        assert p.sfu.unprotect_rtp(p.peer.tx.protect(packet)) == packet


@pytest.mark.parametrize("sfu_is_client", ROLES)
@pytest.mark.parametrize("profile", PROFILES)
def test_rtcp_both_ways(profile: int, sfu_is_client: bool) -> None:
    p = pair(profile, sfu_is_client)
    for n in range(20):
        for packet in (sender_report(packets=n), receiver_report() + sender_report(packets=n)):
            assert p.peer.rx.unprotect_rtcp(p.sfu.protect_rtcp(packet)) == packet
            assert p.sfu.unprotect_rtcp(p.peer.tx.protect_rtcp(packet)) == packet


@pytest.mark.parametrize("sfu_is_client", ROLES)
@pytest.mark.parametrize("profile", PROFILES)
def test_sequence_rollover_both_ways(profile: int, sfu_is_client: bool) -> None:
    """65500 → 65535 → 0 → 99: the rollover counter moves on both sides (RFC 3711 §3.3.1); a wrong
    ROC fails authentication (AES-CM's HMAC covers it, GCM's IV holds it) from the first packet on."""
    p = pair(profile, sfu_is_client)
    for i in range(136):
        packet = rtp(65500 + i)  # rtp() keeps the low 16 bits
        assert p.peer.rx.unprotect(p.sfu.protect_rtp(packet)) == packet, f"SFU → aiortc at {i}"
        assert p.sfu.unprotect_rtp(p.peer.tx.protect(packet)) == packet, f"aiortc → SFU at {i}"


@pytest.mark.parametrize("profile", PROFILES)
def test_replay_window(profile: int) -> None:
    """The SFU's inbound side keeps a 128-packet window (libsrtp's default; aiortc's own is 1024)."""
    p = pair(profile, sfu_is_client=False)
    sealed = {seq: p.peer.tx.protect(rtp(seq)) for seq in range(1, 400)}
    for seq in range(1, 300):
        if seq != 250:
            assert p.sfu.unprotect_rtp(sealed[seq]) == rtp(seq)
    with pytest.raises(ValueError, match="rejected"):
        p.sfu.unprotect_rtp(sealed[299])  # a replay of the newest
    with pytest.raises(ValueError, match="rejected"):
        p.sfu.unprotect_rtp(sealed[200])  # a replay inside the window
    assert p.sfu.unprotect_rtp(sealed[250]) == rtp(250)  # late, inside the window: accepted
    with pytest.raises(ValueError, match="rejected"):
        p.sfu.unprotect_rtp(sealed[250])  # ... once
    # Never seen, but 299 - 150 = 149 behind the newest: too old for a 128-packet window.
    fresh = pair(profile, sfu_is_client=False)
    old = {seq: fresh.peer.tx.protect(rtp(seq)) for seq in range(1, 300)}
    for seq in range(1, 300):
        if seq != 150:
            fresh.sfu.unprotect_rtp(old[seq])
    with pytest.raises(ValueError, match="rejected"):
        fresh.sfu.unprotect_rtp(old[150])


@pytest.mark.parametrize("profile", PROFILES)
def test_rtcp_replay_is_rejected(profile: int) -> None:
    p = pair(profile, sfu_is_client=True)
    first, second = (p.peer.tx.protect_rtcp(receiver_report()) for _ in range(2))
    assert p.sfu.unprotect_rtcp(first) == receiver_report()
    assert p.sfu.unprotect_rtcp(second) == receiver_report()
    with pytest.raises(ValueError, match="rejected"):
        p.sfu.unprotect_rtcp(first)


def _flip(data: bytes, index: int) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= 0x01
    return bytes(mutable)


@pytest.mark.parametrize("profile", PROFILES)
def test_forgeries_are_rejected(profile: int) -> None:
    p = pair(profile, sfu_is_client=True)
    sealed = p.peer.tx.protect(rtp(7))
    for forged in (
        _flip(sealed, len(sealed) - 1),  # the tag
        _flip(sealed, 14),  # the payload
        _flip(sealed, 3),  # the sequence number (authenticated header)
        _flip(sealed, 11),  # the SSRC
        sealed[:-1],  # a truncated tag
        sealed[:12],  # a header alone
    ):
        with pytest.raises(ValueError, match="rejected"):
            p.sfu.unprotect_rtp(forged)
    assert p.sfu.unprotect_rtp(sealed) == rtp(7)  # the forgeries did not consume its index
    rtcp = p.peer.tx.protect_rtcp(receiver_report())
    for forged in (_flip(rtcp, len(rtcp) - 1), _flip(rtcp, 5), rtcp[:-4]):
        with pytest.raises(ValueError, match="rejected"):
            p.sfu.unprotect_rtcp(forged)
    # A session with other keys (another peer's) opens nothing of this one's.
    stranger = pair(profile, sfu_is_client=True)
    with pytest.raises(ValueError, match="rejected"):
        stranger.sfu.unprotect_rtp(sealed)


@pytest.mark.parametrize("profile", PROFILES)
def test_dtls_role_key_split_is_rfc_5764(profile: int) -> None:
    """RFC 5764 §4.2: the exporter output is client_write_key | server_write_key | client_salt |
    server_salt. The DTLS client writes with the client's key and salt and reads with the server's.
    Checked with libsrtp Policies made here from that layout, not aiortc's."""
    aiortc_profile: SRTPProtectionProfile = AIORTC_PROFILES[OPENSSL_NAMES[profile]]
    key, salt = aiortc_profile.key_length, aiortc_profile.salt_length
    material = os.urandom(2 * (key + salt))
    client_key, server_key = material[:key], material[key : 2 * key]
    client_salt, server_salt = material[2 * key : 2 * key + salt], material[2 * key + salt :]

    def libsrtp(master: bytes, ssrc_type: int) -> pylibsrtp.Session:
        profile_id = aiortc_profile.libsrtp_profile
        return pylibsrtp.Session(pylibsrtp.Policy(key=master, ssrc_type=ssrc_type, srtp_profile=profile_id))

    for is_client, writes, reads in (
        (True, client_key + client_salt, server_key + server_salt),
        (False, server_key + server_salt, client_key + client_salt),
    ):
        sfu = voxa_dataplane.SrtpSession(profile, material, is_client)
        packet = rtp(42)
        assert libsrtp(writes, pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(sfu.protect_rtp(packet)) == packet
        assert sfu.unprotect_rtp(libsrtp(reads, pylibsrtp.Policy.SSRC_ANY_OUTBOUND).protect(packet)) == packet
        with pytest.raises(pylibsrtp.Error):  # and not with the other direction's keys
            libsrtp(reads, pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(sfu.protect_rtp(rtp(43)))


@pytest.mark.parametrize("profile", PROFILES)
def test_header_extensions_and_csrcs(profile: int) -> None:
    """The header libsrtp leaves in the clear (RFC 3711 §3.1) is the wire header: CSRCs and the
    extension block by its length field, padding between elements included."""
    p = pair(profile, sfu_is_client=False)
    mid_level_abs = b"\x10a\x30\x85\x22\x01\x02\x03"  # mid "a", audio level, abs-send-time
    padded = b"\x10a\x00\x00\x30\x85\x00\x00"  # padding between and after elements
    csrcs = struct.pack("!BBHIIII", 0x82, 111, 9, 9 * 960, SSRC, 0xAAAA_AAAA, 0xBBBB_BBBB)
    for seq, packet in enumerate(
        (rtp(1, extension=mid_level_abs), rtp(2, extension=padded), csrcs + b"mixed"), start=1
    ):
        assert p.sfu.unprotect_rtp(p.peer.tx.protect(packet)) == packet, f"packet {seq}"
        assert p.peer.rx.unprotect(p.sfu.protect_rtp(packet)) == packet, f"packet {seq}"


# rtc-srtp 0.21.1 takes the payload offset from rtc-rtp's re-marshalled header size, not from the
# header's length on the wire as libsrtp does; the two differ for a one-byte extension element that
# runs past its block (larger) or the reserved id 15 (smaller). src/srtp.rs hands rtc-srtp the header
# as this crate parses it (its length on the wire), so these cases seal and open as libsrtp does.
OVERRUN = b"\x13\x00\x00\x00"
"""A one-word one-byte-extension block whose element (id 1) claims 4 bytes: 1 more than the block."""


@pytest.mark.parametrize(
    "profile",
    [pytest.param(pid, id=f"0x{pid:04x}") for pid in OPENSSL_NAMES],
)
def test_protect_of_a_malformed_header_does_not_panic(profile: int) -> None:
    """Protect must refuse (ValueError) or seal what it is given, never panic: a panic is a
    PanicException out of PyO3, which `except Exception` does not catch, and in the native worker a
    dead thread. An element claiming 16 bytes in a one-word block, in a 33-byte packet."""
    sfu = voxa_dataplane.SrtpSession(profile, bytes(voxa_dataplane.srtp_keying_material_len(profile)), True)
    with contextlib.suppress(ValueError):
        sfu.protect_rtp(rtp(5, b"a" * 13, extension=b"\x1f\x00\x00\x00"))


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(0x0001, id="0x0001"),
        pytest.param(0x0007, id="0x0007"),
    ],
)
def test_an_extension_element_past_its_block(profile: int) -> None:
    """libsrtp seals this malformed packet (it reads only the block's length). The SFU must open it
    unchanged or drop it (rtc-srtp left alone opened it with the first payload bytes still encrypted)."""
    p = pair(profile, sfu_is_client=False)
    packet = rtp(5, b"abcdefgh", extension=OVERRUN)
    try:
        opened = p.sfu.unprotect_rtp(p.peer.tx.protect(packet))
    except ValueError:
        return
    assert opened == packet


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(0x0001, id="0x0001"),
        pytest.param(0x0007, id="0x0007"),
    ],
)
def test_the_reserved_extension_id_15(profile: int) -> None:
    """RFC 8285 §4.2: at id 15 a receiver stops reading elements; the block still ends where its length
    says (rtc-srtp left alone decrypted AES-CM from the wrong offset and failed GCM's authentication)."""
    p = pair(profile, sfu_is_client=False)
    packet = rtp(6, b"payload!", extension=b"\x10a\xf0\x00\x30\x85\x00\x00")
    assert p.sfu.unprotect_rtp(p.peer.tx.protect(packet)) == packet
