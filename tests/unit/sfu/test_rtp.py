"""RTP accessors, header extensions and the per-consumer Rewriter, checked against aiortc's parser."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from voxa.sfu.rtp import (
    Rewriter,
    SeqUnwrapper,
    abs_send_time_ns,
    audio_level,
    audio_level_raw,
    check_rtp,
    find_extension,
    header_length,
    marker_of,
    payload_range,
    payload_type_of,
    seq_diff,
    seq_lt,
    sequence_of,
    ssrc_of,
    timestamp_of,
    ts_diff,
)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def ext_block(elements: list[tuple[int, bytes]], two_byte: bool = False, pad_between: int = 0) -> bytes:
    """An RFC 8285 extension block written independently of the code under test."""
    body = b""
    for eid, value in elements:
        if two_byte:
            body += bytes([eid, len(value)]) + value
        else:
            body += bytes([(eid << 4) | (len(value) - 1)]) + value
        body += bytes(pad_between)
    body += bytes(-len(body) % 4)
    profile = 0x1000 if two_byte else 0xBEDE
    return struct.pack("!HH", profile, len(body) // 4) + body


def rtp(
    *,
    pt: int = 111,
    seq: int = 1,
    ts: int = 1000,
    ssrc: int = 0x11223344,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    ext: bytes | None = None,
    payload: bytes = b"\x01\x02\x03\x04opus",
    padding: int = 0,
) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    data = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    data += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        data += ext
    data += payload
    if padding:
        data += bytes(padding - 1) + bytes([padding])
    return data


def ext_map(**ids: int) -> HeaderExtensionsMap:
    uris = {"mid": MID_URI, "level": LEVEL_URI, "abs": ABS_URI, "twcc": TWCC_URI}
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=uris[k]) for k, i in ids.items()]
        )
    )
    return m


def elements(data: bytes) -> list[tuple[int, bytes]]:
    """All (id, value) elements of a packet, via aiortc's own extension parser."""
    from aiortc.rtp import unpack_header_extensions

    if not data[0] & 0x10:
        return []
    p = 12 + 4 * (data[0] & 0x0F)
    profile, words = struct.unpack_from("!HH", data, p)
    return unpack_header_extensions(profile, data[p + 4 : p + 4 + 4 * words])


# Chrome-like incoming audio: level(1), abs-send-time(2), transport-cc(3), mid(4)
CHROME_EXT = ext_block([(1, b"\x85"), (2, b"\x01\x02\x03"), (3, b"\x00\x07"), (4, b"0")])


# -- accessors ----------------------------------------------------------------------------------------


@given(
    pt=st.integers(0, 127).filter(lambda p: not 64 <= p <= 95),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    payload=st.binary(max_size=64),
    padding=st.integers(0, 40),
)
def test_accessors_match_aiortc(
    pt: int, seq: int, ts: int, ssrc: int, marker: bool, csrcs: list[int], payload: bytes, padding: int
) -> None:
    pkt = RtpPacket(payload_type=pt, marker=int(marker), sequence_number=seq, timestamp=ts, ssrc=ssrc)
    pkt.csrc = csrcs
    pkt.payload = payload
    pkt.padding_size = padding
    pkt.extensions.mid = "audio0"
    m = ext_map(mid=9)
    data = pkt.serialize(m)
    assert check_rtp(data) is None
    assert (payload_type_of(data), sequence_of(data), timestamp_of(data), ssrc_of(data)) == (
        pt,
        seq,
        ts,
        ssrc,
    )
    assert marker_of(data) is marker
    start, end = payload_range(data)
    assert data[start:end] == payload
    assert header_length(data) == start == 12 + 4 * len(csrcs) + 4 + 8
    off_len = find_extension(data, 9)
    assert off_len is not None
    assert data[off_len[0] : off_len[0] + off_len[1]] == b"audio0"


def test_header_length_without_extension() -> None:
    assert header_length(rtp()) == 12
    assert header_length(rtp(csrcs=(1, 2))) == 20
    assert header_length(rtp(ext=CHROME_EXT)) == 12 + len(CHROME_EXT)


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter"),
        (rtp()[:11], "shorter"),
        (b"\x40" + rtp()[1:], "version 1"),
        (rtp(pt=72), "RTCP"),
        (rtp(pt=95, marker=True), "RTCP"),
        (rtp(csrcs=(1, 2, 3), payload=b"")[:20], "CSRC"),
        (rtp(ext=b"", payload=b"\xbe\xde"), "extension header"),
        (rtp(ext=b"\xbe\xde\x00\x05" + bytes(4), payload=b""), "extension runs past"),
        (rtp(payload=b"abc") + b"\x00", "padding count is 0"),
        (rtp(payload=b"")[:12] + b"\x00\x00\x05", "padding longer"),
    ],
)
def test_check_rtp_reasons(data: bytes, reason: str) -> None:
    if len(data) >= 12 and data[0] >> 6 == 2 and reason.startswith("padding"):
        data = bytes([data[0] | 0x20]) + data[1:]
    result = check_rtp(data)
    assert result is not None
    assert reason in result


def test_check_rtp_accepts_real_packets() -> None:
    assert check_rtp(rtp()) is None
    assert check_rtp(rtp(ext=CHROME_EXT, csrcs=(5,), padding=4)) is None
    assert check_rtp(rtp(payload=b"", padding=1)) is None  # padding-only probe packet


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_garbage_never_crashes(data: bytes) -> None:
    """check_rtp never raises; whatever it accepts is safe for every accessor and the rewriter."""
    if check_rtp(data) is not None:
        return
    assert header_length(data) <= len(data)
    start, end = payload_range(data)
    assert start <= end <= len(data)
    for ext_id in (1, 2, 14, 15, 200):
        found = find_extension(data, ext_id)
        if found is not None:
            assert found[0] + found[1] <= len(data)
    audio_level(data, 1)
    rw = Rewriter(
        7, 48000, {p: p for p in range(128)}, mid="m", mid_id=1, abs_send_time_id=2, audio_level_id=3
    )
    out = rw.rewrite(data, 0, 5, audio_level_raw(data, 1))
    assert out is not None
    assert check_rtp(out) is None
    assert out[payload_range(out)[0] :] == data[header_length(data) :]


# -- header extensions --------------------------------------------------------------------------------


def test_find_extension_one_byte() -> None:
    data = rtp(ext=CHROME_EXT)
    assert find_extension(data, 3) == (12 + 4 + 2 + 4 + 1, 2)
    off, n = find_extension(data, 4) or (0, 0)
    assert data[off : off + n] == b"0"
    assert find_extension(data, 5) is None
    assert find_extension(data, 0) is None
    assert find_extension(rtp(), 1) is None


def test_find_extension_skips_padding_bytes_and_csrcs() -> None:
    ext = ext_block([(1, b"\x10"), (7, b"abcdefghijklmnop")], pad_between=3)
    data = rtp(ext=ext, csrcs=(1, 2))
    off, n = find_extension(data, 7) or (0, 0)
    assert data[off : off + n] == b"abcdefghijklmnop"


def test_find_extension_stops_at_reserved_id_15() -> None:
    ext = struct.pack("!HH", 0xBEDE, 2) + bytes([0x10, 0x55, 0xF0, 0x20, 0x66]) + bytes(3)
    data = rtp(ext=ext)
    assert find_extension(data, 1) is not None
    assert find_extension(data, 2) is None


def test_find_extension_truncated_element() -> None:
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x55, 0x2F, 0x01])  # id 2 claims 16 bytes
    data = rtp(ext=ext)
    assert find_extension(data, 1) == (17, 1)
    assert find_extension(data, 2) is None
    two = struct.pack("!HH", 0x1000, 1) + bytes([0, 0, 0, 9])  # id 9 with no room for its length
    assert find_extension(rtp(ext=two), 9) is None
    two = struct.pack("!HH", 0x1000, 1) + bytes([9, 5, 1, 2])
    assert find_extension(rtp(ext=two), 9) is None


def test_find_extension_two_byte() -> None:
    ext = ext_block([(1, b""), (20, b"\x85"), (200, b"x" * 40)], two_byte=True, pad_between=1)
    data = rtp(ext=ext)
    assert find_extension(data, 1) == (12 + 4 + 2, 0)
    assert audio_level(data, 20) == (True, 5)
    off, n = find_extension(data, 200) or (0, 0)
    assert data[off : off + n] == b"x" * 40
    # appbits in the low nibble of the profile are allowed
    data2 = bytearray(data)
    data2[13 + 0] = 0x00
    data2[12:14] = b"\x10\x07"
    assert find_extension(bytes(data2), 200) == (off, n)


def test_unknown_profile_has_no_elements() -> None:
    ext = struct.pack("!HH", 0xABCD, 1) + bytes([0x10, 0x55, 0, 0])
    assert find_extension(rtp(ext=ext), 1) is None


def test_audio_level() -> None:
    assert audio_level(rtp(ext=ext_block([(1, b"\x85")])), 1) == (True, 5)
    assert audio_level(rtp(ext=ext_block([(1, b"\x7f")])), 1) == (False, 127)
    assert audio_level(rtp(ext=ext_block([(2, b"\x7f")])), 1) is None
    assert audio_level(rtp(), 1) is None
    assert audio_level_raw(rtp(ext=ext_block([(3, b"\x00")])), 3) == 0
    assert audio_level_raw(rtp(), 3) == -1


def test_abs_send_time_ns() -> None:
    assert abs_send_time_ns(0) == 0
    assert abs_send_time_ns(1_000_000_000) == 1 << 18
    assert abs_send_time_ns(1_500_000_000) == 3 << 17
    assert abs_send_time_ns(64_000_000_000) == 0  # wraps every 64 s
    assert abs_send_time_ns(63_999_999_999) == 0xFFFFFF


# -- sequence arithmetic ------------------------------------------------------------------------------


def test_seq_wraparound() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_lt(65535, 0)
    assert not seq_lt(0, 65535)
    assert not seq_lt(5, 5)
    assert seq_diff(0x8000, 0) == -0x8000
    assert ts_diff(0, 0xFFFFFFFF) == 1
    assert ts_diff(0xFFFFFFFF, 0) == -1
    assert ts_diff(10, 0xFFFFFFF0) == 26


@given(st.integers(0, 0xFFFF), st.integers(-0x7FFF, 0x7FFF))
def test_seq_diff_inverts_addition(a: int, d: int) -> None:
    b = (a + d) & 0xFFFF
    assert seq_diff(b, a) == d
    assert seq_lt(a, b) == (d > 0)
    assert seq_lt(b, a) == (d < 0)


@given(st.integers(0, 0xFFFFFFFF), st.integers(-0x7FFFFFFF, 0x7FFFFFFF))
def test_ts_diff_inverts_addition(a: int, d: int) -> None:
    assert ts_diff((a + d) & 0xFFFFFFFF, a) == d


def test_unwrapper_across_wrap_and_reorder() -> None:
    u = SeqUnwrapper()
    assert u.highest == -1
    assert [u.update(s) for s in (65533, 65534, 65535, 0, 1)] == [65533, 65534, 65535, 65536, 65537]
    assert u.update(65535) == 65535  # late packet from before the wrap
    assert u.update(2) == 65538
    assert u.highest == 65538
    assert u.update(65535 - 2) == 65533


@given(st.integers(0, 0xFFFF), st.lists(st.integers(-200, 1000), max_size=300))
def test_unwrapper_tracks_true_counter(start: int, steps: list[int]) -> None:
    """Fed a stream with jumps and reordering (each within +-32767 of the newest), it recovers the truth."""
    u = SeqUnwrapper()
    true = start + 0x10000 * 5
    highest = true
    assert u.update(true & 0xFFFF) == start
    offset = true - start
    for step in steps:
        true = highest + step
        highest = max(highest, true)
        assert u.update(true & 0xFFFF) + offset == true


# -- Rewriter -----------------------------------------------------------------------------------------


def audio_rewriter(**kw: object) -> Rewriter:
    args: dict[str, object] = {
        "mid": "a1",
        "mid_id": 5,
        "abs_send_time_id": 6,
        "audio_level_id": 7,
        "initial_seq": 100,
        "initial_ts": 5000,
    }
    args.update(kw)
    return Rewriter(0xCAFE, 48000, {111: 109}, **args)  # type: ignore[arg-type]


def forward(rw: Rewriter, data: bytes, now_ms: int = 0, abs_time: int = 0x0A0B0C) -> bytes:
    out = rw.rewrite(data, now_ms, abs_time, audio_level_raw(data, 1))
    assert out is not None
    assert check_rtp(out) is None
    return out


def test_rewrite_header_fields_and_extensions() -> None:
    rw = audio_rewriter()
    data = rtp(seq=7, ts=123, marker=True, ext=CHROME_EXT, payload=b"PAYLOAD!")
    out = forward(rw, data)
    pkt = RtpPacket.parse(out, ext_map(mid=5, abs=6, level=7))
    assert (pkt.ssrc, pkt.payload_type, pkt.marker) == (0xCAFE, 109, 1)
    assert (pkt.sequence_number, pkt.timestamp) == (100, 5000)
    assert pkt.payload == b"PAYLOAD!"
    assert pkt.extensions.mid == "a1"
    assert pkt.extensions.abs_send_time == 0x0A0B0C
    assert pkt.extensions.audio_level == (True, 5)
    # exactly the negotiated elements, nothing of the producer's transport-cc or mid ids
    assert sorted(eid for eid, _ in elements(out)) == [5, 6, 7]
    assert rw.ssrc == 0xCAFE
    assert (rw.last_seq, rw.last_timestamp) == (100, 5000)


def test_rewrite_packet_without_extensions() -> None:
    rw = audio_rewriter()
    out = forward(rw, rtp(payload=b"xyz"))
    assert dict(elements(out)) == {5: b"a1", 6: b"\x0a\x0b\x0c"}  # no level to copy
    assert out[payload_range(out)[0] :] == b"xyz"


def test_rewrite_without_negotiated_extensions_clears_x_bit() -> None:
    rw = Rewriter(1, 48000, {111: 111}, initial_seq=0, initial_ts=0)
    out = rw.rewrite(rtp(ext=CHROME_EXT, payload=b"abc"), 0, 0, 0x85)
    assert out is not None
    assert not out[0] & 0x10
    assert header_length(out) == 12
    assert out[12:] == b"abc"


def test_rewrite_level_only() -> None:
    rw = Rewriter(1, 48000, {111: 111}, audio_level_id=3, initial_seq=0, initial_ts=0)
    with_level = rw.rewrite(rtp(ext=CHROME_EXT), 0, 0, 0x85)
    assert with_level is not None
    assert elements(with_level) == [(3, b"\x85")]
    without = rw.rewrite(rtp(seq=2), 0, 0, -1)
    assert without is not None
    assert header_length(without) == 12
    assert not without[0] & 0x10


def test_rewrite_abs_send_time_only_and_mid_only() -> None:
    rw = Rewriter(1, 90000, {96: 100}, abs_send_time_id=3, initial_seq=0, initial_ts=0)
    out = rw.rewrite(rtp(pt=96, ext=CHROME_EXT), 0, 0xFFFFFFFF, 0x85)  # extra bits are masked off
    assert out is not None
    assert elements(out) == [(3, b"\xff\xff\xff")]
    rw = Rewriter(1, 90000, {96: 100}, mid="video-main", mid_id=1, initial_seq=0, initial_ts=0)
    out = rw.rewrite(rtp(pt=96, ext=CHROME_EXT), 0, 0, 0x85)
    assert out is not None
    assert elements(out) == [(1, b"video-main")]


def test_rewrite_two_byte_form_for_large_ids_or_long_mid() -> None:
    rw = audio_rewriter(abs_send_time_id=16)
    out = forward(rw, rtp(ext=CHROME_EXT))
    assert out[12:14] == b"\x10\x00"
    pkt = RtpPacket.parse(out, ext_map(mid=5, abs=16, level=7))
    assert (pkt.extensions.mid, pkt.extensions.abs_send_time, pkt.extensions.audio_level) == (
        "a1",
        0x0A0B0C,
        (True, 5),
    )
    rw = audio_rewriter(mid="m" * 17)
    out = forward(rw, rtp(ext=CHROME_EXT))
    assert dict(elements(out))[5] == b"m" * 17
    rw = audio_rewriter(mid="m" * 17, audio_level_id=0, abs_send_time_id=0)
    out = forward(rw, rtp(ext=CHROME_EXT))
    assert elements(out) == [(5, b"m" * 17)]


def test_rewrite_keeps_csrcs_and_padding() -> None:
    rw = audio_rewriter()
    data = rtp(csrcs=(0xAAAA, 0xBBBB), ext=CHROME_EXT, payload=b"pp", padding=5)
    out = forward(rw, data)
    pkt = RtpPacket.parse(out, ext_map(mid=5, abs=6, level=7))
    assert pkt.csrc == [0xAAAA, 0xBBBB]
    assert pkt.payload == b"pp"
    assert pkt.padding_size == 5
    assert pkt.extensions.audio_level == (True, 5)


def test_rewrite_drops_unnegotiated_payload_type() -> None:
    rw = audio_rewriter()
    assert rw.rewrite(rtp(pt=0), 0, 0, -1) is None
    assert rw.rewrite(rtp(pt=0, marker=True), 0, 0, -1) is None


def test_rewrite_sequence_and_timestamp_wrap() -> None:
    rw = audio_rewriter(initial_seq=65534, initial_ts=0xFFFFFFFF - 959)
    outs = [forward(rw, rtp(seq=s, ts=960 * s)) for s in range(4)]
    assert [sequence_of(o) for o in outs] == [65534, 65535, 0, 1]
    assert [timestamp_of(o) for o in outs] == [0xFFFFFFFF - 959, 0, 960, 1920]


def test_rewrite_incoming_wrap_is_continuous() -> None:
    rw = audio_rewriter(initial_seq=10, initial_ts=0)
    seqs = [65534, 65535, 0, 1]
    tss = [(0xFFFFFC40 + 960 * i) & 0xFFFFFFFF for i in range(4)]  # crosses 2**32 as well
    outs = [forward(rw, rtp(seq=s, ts=t)) for s, t in zip(seqs, tss, strict=True)]
    assert [sequence_of(o) for o in outs] == [10, 11, 12, 13]
    assert [timestamp_of(o) for o in outs] == [0, 960, 1920, 2880]
    assert rw.incoming_seq(12) == 0
    assert rw.incoming_seq(10) == 65534


def test_resume_after_pause_continues_without_gap_and_advances_time() -> None:
    rw = audio_rewriter(initial_seq=1, initial_ts=0)
    for i in range(5):
        forward(rw, rtp(seq=i, ts=960 * i), now_ms=20 * i)
    assert (rw.last_seq, rw.last_timestamp) == (5, 3840)
    # muted for 3 s: the producer kept sending (seq 5..154) but nothing was forwarded
    rw.resume()
    out = forward(rw, rtp(seq=155, ts=960 * 155), now_ms=80 + 3000)
    assert sequence_of(out) == 6
    assert timestamp_of(out) == 3840 + 3000 * 48
    out = forward(rw, rtp(seq=156, ts=960 * 156), now_ms=3100)
    assert (sequence_of(out), timestamp_of(out)) == (7, 3840 + 3000 * 48 + 960)
    # a late packet from before the pause is not forwarded into the new stretch
    assert rw.rewrite(rtp(seq=4, ts=960 * 4), 3100, 0, -1) is None


def test_switch_source_continues_and_detects_ssrc_change() -> None:
    rw = audio_rewriter(initial_seq=1000, initial_ts=10_000)
    for i in range(3):
        forward(rw, rtp(ssrc=1, seq=500 + i, ts=77_000 + 960 * i), now_ms=20 * i)
    # another producer, same PT: the SSRC change alone re-bases
    out = forward(rw, rtp(ssrc=2, seq=9, ts=5), now_ms=60)
    assert sequence_of(out) == 1003
    assert timestamp_of(out) == 10_000 + 2 * 960 + 960  # 20 ms later
    out = forward(rw, rtp(ssrc=2, seq=10, ts=965), now_ms=80)
    assert (sequence_of(out), timestamp_of(out)) == (1004, 10_000 + 4 * 960)
    # an explicit switch with the same SSRC (the producer restarted its numbering)
    rw.switch_source()
    out = forward(rw, rtp(ssrc=2, seq=40_000, ts=123, payload=b"x"), now_ms=80)
    assert sequence_of(out) == 1005
    assert timestamp_of(out) == 10_000 + 4 * 960 + 960  # min step (20 ms) when no time passed
    # packets from before the re-base point are dropped
    assert rw.rewrite(rtp(ssrc=2, seq=39_990, ts=0), 90, 0, -1) is None


def test_timestamp_at_extrapolates_for_sender_reports() -> None:
    rw = audio_rewriter(initial_seq=0, initial_ts=0xFFFFFFFF - 47)
    assert rw.timestamp_at(500) == 0xFFFFFFFF - 47  # nothing sent yet
    forward(rw, rtp(seq=1, ts=0), now_ms=1000)
    assert rw.timestamp_at(1000) == 0xFFFFFFFF - 47
    assert rw.timestamp_at(1001) == 0  # one ms = 48 ticks later, across 2**32
    assert rw.timestamp_at(1250) == 250 * 48 - 48


def test_min_ts_step_is_configurable() -> None:
    rw = Rewriter(1, 90000, {96: 96}, initial_seq=0, initial_ts=0, min_ts_step=3000)
    rw.rewrite(rtp(pt=96, ssrc=1, seq=1, ts=1), 0, 0, -1)
    out = rw.rewrite(rtp(pt=96, ssrc=2, seq=1, ts=1), 1, 0, -1)
    assert out is not None
    assert timestamp_of(out) == 3000
    out = rw.rewrite(rtp(pt=96, ssrc=3, seq=1, ts=1), 1001, 0, -1)
    assert out is not None
    assert timestamp_of(out) == 3000 + 90000


def test_reordered_packets_keep_their_place() -> None:
    rw = audio_rewriter(initial_seq=0, initial_ts=0)
    order = [0, 1, 3, 2, 4]
    outs = [forward(rw, rtp(seq=s, ts=960 * s), now_ms=20 * s) for s in order]
    assert [sequence_of(o) for o in outs] == order
    assert [timestamp_of(o) for o in outs] == [960 * s for s in order]
    assert rw.last_seq == 4
    forward(rw, rtp(seq=1, ts=960))  # a duplicate is forwarded again (the receiver discards it)


def test_very_old_packets_are_dropped() -> None:
    rw = audio_rewriter(initial_seq=0, initial_ts=0)
    for s in range(0, 20_000, 100):
        forward(rw, rtp(seq=s, ts=s))
    assert rw.rewrite(rtp(seq=19_900 - 0x4000 + 5, ts=0), 0, 0, -1) is not None
    assert rw.rewrite(rtp(seq=19_900 - 0x4000 - 5, ts=0), 0, 0, -1) is None


def test_configure_keeps_numbering() -> None:
    rw = audio_rewriter(initial_seq=50, initial_ts=0)
    forward(rw, rtp(seq=1, ts=0))
    rw.configure({111: 120}, mid="b", mid_id=2)
    out = rw.rewrite(rtp(seq=2, ts=960, ext=CHROME_EXT), 20, 0, 0x85)
    assert out is not None
    assert (sequence_of(out), payload_type_of(out)) == (51, 120)
    assert elements(out) == [(2, b"b")]


def test_random_initial_numbers() -> None:
    a = Rewriter(1, 48000, {111: 111})
    b = Rewriter(1, 48000, {111: 111})
    outs = [rw.rewrite(rtp(), 0, 0, -1) for rw in (a, b)]
    assert outs[0] is not None
    assert outs[1] is not None
    assert outs[0][2:8] != outs[1][2:8]  # 48 random bits: equal with probability 2^-48


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ssrc": -1},
        {"ssrc": 1 << 32},
        {"clock_rate": 0},
        {"payload_types": {128: 1}},
        {"payload_types": {1: 200}},
        {"mid_id": 1},
        {"mid_id": 1, "mid": ""},
        {"mid_id": 1, "mid": "x" * 256},
        {"mid_id": 3, "mid": "x", "audio_level_id": 3},
        {"abs_send_time_id": 256},
    ],
)
def test_rewriter_rejects_bad_configuration(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"ssrc": 1, "clock_rate": 48000, "payload_types": {111: 111}}
    args.update(kwargs)
    with pytest.raises(ValueError):
        Rewriter(**args)  # type: ignore[arg-type]


ext_elements = st.lists(
    st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=5, unique_by=lambda e: e[0]
)


@given(
    incoming=ext_elements,
    has_ext=st.booleans(),
    level=st.integers(-1, 255),
    mid=st.text(min_size=1, max_size=20),
    ids=st.lists(st.integers(1, 20), min_size=3, max_size=3, unique=True),
    payload=st.binary(max_size=200),
    seq=st.integers(0, 0xFFFF),
    abs_time=st.integers(0, 0xFFFFFF),
)
def test_rewrite_property(
    incoming: list[tuple[int, bytes]],
    has_ext: bool,
    level: int,
    mid: str,
    ids: list[int],
    payload: bytes,
    seq: int,
    abs_time: int,
) -> None:
    """Any producer extension layout in -> exactly the consumer's elements out, parsed by aiortc."""
    mid_id, abs_id, level_id = ids
    rw = Rewriter(
        9, 48000, {111: 100}, mid=mid, mid_id=mid_id, abs_send_time_id=abs_id, audio_level_id=level_id
    )
    data = rtp(seq=seq, ext=ext_block(incoming) if has_ext else None, payload=payload)
    out = rw.rewrite(data, 0, abs_time, level)
    assert out is not None
    assert check_rtp(out) is None
    pkt = RtpPacket.parse(out, ext_map(mid=mid_id, abs=abs_id, level=level_id))
    assert pkt.payload == payload
    assert pkt.ssrc == 9
    assert pkt.payload_type == 100
    assert pkt.extensions.mid == mid
    assert pkt.extensions.abs_send_time == abs_time
    expected_level = None if level < 0 else (level >= 0x80, level & 0x7F)
    assert pkt.extensions.audio_level == expected_level
    assert {eid for eid, _ in elements(out)} == {mid_id, abs_id} | ({level_id} if level >= 0 else set())


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40), st.integers(0, 500)), max_size=60))
def test_output_sequence_is_gapless_across_switches(events: list[tuple[int, int, int]]) -> None:
    """In-order input from sources that change and pause: the consumer sees +1 steps, time moving forward."""
    rw = Rewriter(1, 48000, {111: 111}, initial_seq=65500, initial_ts=0xFFFFF000)
    seqs = [0, 30000, 65530, 123]
    tss = [0, 1 << 31, 0xFFFFFF00, 5]
    now = 0
    last: tuple[int, int] | None = None
    for src, count, pause in events:
        if pause > 250:
            rw.resume()
        now += pause
        for _ in range(count):
            seqs[src] = (seqs[src] + 1) & 0xFFFF
            tss[src] = (tss[src] + 960) & 0xFFFFFFFF
            now += 20
            out = rw.rewrite(rtp(ssrc=100 + src, seq=seqs[src], ts=tss[src]), now, 0, -1)
            assert out is not None
            if last is not None:
                assert seq_diff(sequence_of(out), last[0]) == 1
                assert 0 < ts_diff(timestamp_of(out), last[1]) <= (pause + 40) * 48 + 960 * 2
            last = sequence_of(out), timestamp_of(out)


def test_rewrite_cross_check_with_aiortc_serialized_input() -> None:
    """A packet serialized by aiortc with its own extension ids comes out right for the consumer."""
    producer_map = ext_map(level=10, abs=11, mid=12, twcc=13)
    pkt = RtpPacket(payload_type=111, sequence_number=65535, timestamp=0xFFFFFFFF, ssrc=42, payload=b"opus")
    pkt.extensions.audio_level = (False, 42)
    pkt.extensions.abs_send_time = 7
    pkt.extensions.mid = "producer-mid"
    pkt.extensions.transport_sequence_number = 99
    data = pkt.serialize(producer_map)
    rw = audio_rewriter()
    out = rw.rewrite(data, 0, 1234, audio_level_raw(data, 10))
    assert out is not None
    parsed = RtpPacket.parse(out, ext_map(mid=5, abs=6, level=7, twcc=13))
    assert parsed.extensions.audio_level == (False, 42)
    assert parsed.extensions.mid == "a1"
    assert parsed.extensions.abs_send_time == 1234
    assert parsed.extensions.transport_sequence_number is None
    assert parsed.payload == b"opus"
