"""Inputs the coverage-guided fuzzer (.ci/pyfuzz.sh) once crashed a parser with, replayed through the
same targets (tests/fuzz/targets.py), and the behaviour each fix settled, spelled out."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.fuzz import targets
from voxa.sfu import rtp, sdp
from voxa.signaling import protocol

CRASHES = Path(__file__).resolve().parent / "fuzz_crashes"


def _target_of(path: Path) -> str:
    """A file is named `<target>-<what it found>`."""
    return next(name for name in sorted(targets.TARGETS, key=len, reverse=True) if path.name.startswith(name))


@pytest.mark.parametrize("path", sorted(CRASHES.iterdir()), ids=lambda p: p.name)
def test_crash_input_replays_cleanly(path: Path) -> None:
    targets.TARGETS[_target_of(path)](path.read_bytes())


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_every_seed_passes_its_target(name: str) -> None:
    seeds = list(targets.seeds(name))
    assert seeds
    for seed in seeds:
        targets.TARGETS[name](seed)


def test_subprotocol_token_with_non_ascii_bytes_is_no_token() -> None:
    # aiohttp hands header bytes >= 0x80 over as surrogate escapes; base64 refused them with a
    # ValueError that was not caught, so the socket handler answered 500.
    header = "phoenix, base64url.bearer.phx.ZXlKaG" + b"\xad\xb7".decode("utf-8", "surrogateescape")
    assert protocol.token_from_subprotocols(header) == (None, True)
    assert protocol.token_from_subprotocols("base64url.bearer.phx.é") == (None, False)


def test_empty_two_byte_audio_level_element_has_no_level() -> None:
    # A two-byte (0x100X) element may be empty; at the end of a packet with no payload, reading its
    # "level byte" ran past the packet (IndexError in the SFU's receive path).
    ext = bytes([0, 0, 1, 0])  # two padding bytes, then element 1 with no data, ending the packet
    packet = struct.pack("!BBHII", 0x90, 111, 1, 960, 1111) + struct.pack("!HH", 0x1000, 1) + ext
    assert rtp.check_rtp(packet) is None
    assert rtp.find_extension(packet, 1) == (len(packet), 0)
    assert rtp.audio_level_raw(packet, 1) == -1
    assert rtp.audio_level(packet, 1) is None
    assert rtp.audio_level_raw(packet + b"\x7f", 1) == -1  # empty even when a payload byte follows


def test_ice_credentials_come_from_the_first_section_that_has_them() -> None:
    # The SFU renders a rejected m-section (port 0) without ICE lines, and a client answers it the
    # same way: when the client's first section had been rejected, every later answer was refused.
    offer = "\r\n".join(
        [
            "v=0",
            "o=- 1 2 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "m=audio 0 UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 0.0.0.0",
            "a=mid:0",
            "a=inactive",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "c=IN IP4 0.0.0.0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=fingerprint:sha-256 AA:BB",
            "a=setup:passive",
            "a=mid:c0",
            "a=recvonly",
            "a=rtpmap:111 opus/48000/2",
            "",
        ]
    )
    remote = sdp.parse(offer, "answer")
    assert (remote.ice_ufrag, remote.ice_pwd, remote.setup) == ("abcd", "abcdefghijklmnopqrstuvwx", "passive")
