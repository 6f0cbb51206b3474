"""RTCP parse/build round trips, cross-checked both ways with aiortc, plus stats, history and throttle."""

from __future__ import annotations

import contextlib
import struct

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from voxa.sfu.rtcp import (
    Bye,
    Fir,
    KeyframeRequestThrottle,
    Nack,
    PacketHistory,
    Pli,
    ReceiverReport,
    ReceiverStats,
    Remb,
    ReportBlock,
    SenderReport,
    build_bye,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_report_block,
    build_rr,
    build_sr,
    is_rtcp,
    ntp_timestamp,
    parse_rtcp,
)

BLOCK = ReportBlock(0xABCDEF01, 25, -3, 0x1FFFF, 480, 0x12345678, 65536)
u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.builds(
    ReportBlock,
    u32,
    st.integers(0, 255),
    st.integers(-(1 << 23), (1 << 23) - 1),
    u32,
    u32,
    u32,
    u32,
)


# -- round trips --------------------------------------------------------------------------------------


def test_sr_round_trip() -> None:
    data = build_sr(1, 0x0102030405060708, 0xFFFFFFFF, 10, 2000, [BLOCK, BLOCK._replace(ssrc=2)])
    assert len(data) == 4 + 24 + 48
    assert parse_rtcp(data) == [
        SenderReport(1, 0x0102030405060708, 0xFFFFFFFF, 10, 2000, (BLOCK, BLOCK._replace(ssrc=2)))
    ]


def test_rr_round_trip_and_empty_rr() -> None:
    assert parse_rtcp(build_rr(7, [BLOCK])) == [ReceiverReport(7, (BLOCK,))]
    assert parse_rtcp(build_rr(7, [])) == [ReceiverReport(7, ())]
    assert len(build_rr(7, [])) == 8


@given(st.lists(blocks, max_size=31), u32, st.integers(0, (1 << 64) - 1), u32, u32, u32)
def test_sr_rr_property(
    reports: list[ReportBlock], ssrc: int, ntp: int, rtp_ts: int, pk: int, oc: int
) -> None:
    assert parse_rtcp(build_sr(ssrc, ntp, rtp_ts, pk, oc, reports)) == [
        SenderReport(ssrc, ntp, rtp_ts, pk, oc, tuple(reports))
    ]
    assert parse_rtcp(build_rr(ssrc, reports)) == [ReceiverReport(ssrc, tuple(reports))]


def test_too_many_report_blocks() -> None:
    with pytest.raises(ValueError, match="31"):
        build_rr(1, [BLOCK] * 32)


def test_report_block_clamps() -> None:
    raw = build_report_block(1, 300, -(1 << 30), 1 << 33, -5, 1, 2)
    fields = struct.unpack("!IIIIII", raw)
    assert fields[1] == (255 << 24) | 0x800000  # fraction capped, loss clamped to -2^23
    assert fields[2] == 0  # 2^33 mod 2^32
    assert fields[3] == 0  # negative jitter -> 0
    big = build_report_block(1, 0, 1 << 30, 0, 0, 0, 0)
    assert struct.unpack("!II", big[:8])[1] == 0x7FFFFF


def test_feedback_round_trips() -> None:
    assert parse_rtcp(build_pli(1, 2)) == [Pli(1, 2)]
    assert parse_rtcp(build_fir(1, 2, 257)) == [Fir(1, ((2, 1),))]
    assert parse_rtcp(build_remb(1, 1_500_000, [2, 3])) == [Remb(1, 1_500_000 >> 3 << 3, (2, 3))]
    assert parse_rtcp(build_remb(1, 0, [])) == [Remb(1, 0, ())]
    assert parse_rtcp(build_bye([5, 6])) == [Bye((5, 6), b"")]
    assert parse_rtcp(build_bye([])) == [Bye((), b"")]


def test_nack_packing() -> None:
    assert parse_rtcp(build_nack(1, 2, [10])) == [Nack(1, 2, (10,))]
    data = build_nack(1, 2, [10, 12, 26, 27])
    assert len(data) == 12 + 8  # 10 + bits for 12 and 26; 27 needs a second pair
    assert parse_rtcp(data) == [Nack(1, 2, (10, 12, 26, 27))]
    # straddling the wrap packs into one pair, earliest first
    data = build_nack(1, 2, [0, 65534, 1, 65535, 65534])
    assert len(data) == 16
    assert parse_rtcp(data) == [Nack(1, 2, (65534, 65535, 0, 1))]
    with pytest.raises(ValueError):
        build_nack(1, 2, [])


@given(st.integers(0, 0xFFFF), st.sets(st.integers(0, 3000), min_size=1, max_size=200))
def test_nack_property(base: int, offsets: set[int]) -> None:
    seqs = [(base + o) & 0xFFFF for o in offsets]
    (nack,) = parse_rtcp(build_nack(1, 2, seqs))
    assert isinstance(nack, Nack)
    assert sorted(nack.lost) == sorted(seqs)
    assert list(nack.lost) == [(base + o) & 0xFFFF for o in sorted(offsets)]


@given(st.integers(0, (1 << 63) - 1))
def test_remb_bitrate_precision(bitrate: int) -> None:
    (remb,) = parse_rtcp(build_remb(1, bitrate, [9]))
    assert isinstance(remb, Remb)
    assert remb.bitrate <= bitrate
    assert bitrate - remb.bitrate < max(1, bitrate >> 17)


def test_remb_limits() -> None:
    with pytest.raises(ValueError):
        build_remb(1, -1, [])
    with pytest.raises(ValueError):
        build_remb(1, 1, list(range(256)))
    with pytest.raises(ValueError):
        build_bye(list(range(32)))


def test_compound_with_sdes_padding_and_unknown_types_skipped() -> None:
    sdes = bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=1, items=[(1, b"cname")])]))
    app = struct.pack("!BBHI4s", 0x80, 204, 2, 1, b"name")
    tcc = struct.pack("!BBHII", 0x8F, 205, 3, 1, 2) + bytes(4)  # transport-cc, not used
    sli = struct.pack("!BBHII", 0x82, 206, 3, 1, 2) + bytes(4)
    afb = struct.pack("!BBHII", 0x8F, 206, 3, 1, 2) + b"XXXX"  # application feedback other than REMB
    padded_pli = bytearray(build_pli(3, 4) + b"\x00\x00\x00\x04")
    padded_pli[0] |= 0x20
    padded_pli[3] += 1
    data = build_rr(1, [BLOCK]) + sdes + app + tcc + sli + afb + bytes(padded_pli) + build_nack(1, 2, [7])
    assert parse_rtcp(data) == [ReceiverReport(1, (BLOCK,)), Pli(3, 4), Nack(1, 2, (7,))]


def test_bye_with_reason() -> None:
    data = struct.pack("!BBHI", 0x81, 203, 3, 9) + b"\x04gone\x00\x00\x00"
    assert parse_rtcp(data) == [Bye((9,), b"gone")]


def test_fir_with_several_entries() -> None:
    data = struct.pack("!BBHIIIIII", 0x84, 206, 6, 1, 0, 10, 3 << 24, 11, 4 << 24)
    assert parse_rtcp(data) == [Fir(1, ((10, 3), (11, 4)))]


def test_is_rtcp_and_ntp() -> None:
    assert is_rtcp(build_pli(1, 2))
    assert is_rtcp(build_sr(1, 0, 0, 0, 0))
    assert not is_rtcp(bytes([0x80, 111]) + bytes(10))
    assert not is_rtcp(bytes([0x80, 0x80 | 111]) + bytes(10))  # marker set, PT 111
    assert not is_rtcp(b"\x80")
    assert ntp_timestamp(0) == 2_208_988_800 << 32
    assert ntp_timestamp(1.5) == ((2_208_988_800 + 1) << 32) | (1 << 31)


# -- cross-checks with aiortc -------------------------------------------------------------------------


def aiortc_info(b: ReportBlock) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(
        ssrc=b.ssrc,
        fraction_lost=b.fraction_lost,
        packets_lost=b.cumulative_lost,
        highest_sequence=b.ext_highest_seq,
        jitter=b.jitter,
        lsr=b.lsr,
        dlsr=b.dlsr,
    )


def test_aiortc_parses_our_packets() -> None:
    data = (
        build_sr(1, 0x0102030405060708, 99, 10, 2000, [BLOCK])
        + build_rr(2, [BLOCK])
        + build_nack(3, 4, [100, 101, 117, 300])
        + build_pli(5, 6)
        + build_fir(7, 8, 9)
        + build_remb(9, 2_000_000, [10, 11])
        + build_bye([12])
    )
    sr, rr, nack, pli, fir, remb, bye = RtcpPacket.parse(data)
    assert isinstance(sr, RtcpSrPacket)
    assert sr.ssrc == 1
    assert sr.sender_info == RtcpSenderInfo(0x0102030405060708, 99, 10, 2000)
    assert sr.reports == [aiortc_info(BLOCK)]
    assert isinstance(rr, RtcpRrPacket)
    assert rr.reports == [aiortc_info(BLOCK)]
    assert isinstance(nack, RtcpRtpfbPacket)
    assert (nack.fmt, nack.ssrc, nack.media_ssrc, nack.lost) == (1, 3, 4, [100, 101, 117, 300])
    assert isinstance(pli, RtcpPsfbPacket)
    assert (pli.fmt, pli.ssrc, pli.media_ssrc, pli.fci) == (1, 5, 6, b"")
    assert isinstance(fir, RtcpPsfbPacket)
    assert (fir.fmt, fir.ssrc, fir.media_ssrc, fir.fci) == (4, 7, 0, struct.pack("!II", 8, 9 << 24))
    assert isinstance(remb, RtcpPsfbPacket)
    assert remb.fmt == 15
    assert unpack_remb_fci(remb.fci) == (2_000_000 >> 3 << 3, [10, 11])
    assert isinstance(bye, RtcpByePacket)
    assert bye.sources == [12]


def test_we_parse_aiortc_packets() -> None:
    info = aiortc_info(BLOCK)
    data = b"".join(
        bytes(p)
        for p in (
            RtcpSrPacket(ssrc=1, sender_info=RtcpSenderInfo(5, 6, 7, 8), reports=[info]),
            RtcpRrPacket(ssrc=2, reports=[info, info]),
            RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=1, items=[(1, b"me")])]),
            RtcpRtpfbPacket(fmt=1, ssrc=3, media_ssrc=4, lost=[1, 2, 3, 40, 41]),
            RtcpPsfbPacket(fmt=1, ssrc=5, media_ssrc=6),
            RtcpPsfbPacket(fmt=15, ssrc=7, media_ssrc=0, fci=pack_remb_fci(123_456_789, [8, 9])),
            RtcpByePacket(sources=[10, 11]),
        )
    )
    assert parse_rtcp(data) == [
        SenderReport(1, 5, 6, 7, 8, (BLOCK,)),
        ReceiverReport(2, (BLOCK, BLOCK)),
        Nack(3, 4, (1, 2, 3, 40, 41)),
        Pli(5, 6),
        Remb(7, unpack_remb_fci(pack_remb_fci(123_456_789, []))[0], (8, 9)),
        Bye((10, 11), b""),
    ]


@given(st.lists(st.integers(0, 32767), min_size=1, max_size=100, unique=True))
def test_nack_cross_check(seqs: list[int]) -> None:
    seqs.sort()
    (ours,) = RtcpPacket.parse(build_nack(1, 2, seqs))
    assert isinstance(ours, RtcpRtpfbPacket)
    assert ours.lost == seqs
    theirs = bytes(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=seqs))
    assert parse_rtcp(theirs) == [Nack(1, 2, tuple(seqs))]


# -- malformed input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter"),
        (b"\x80\xc9\x00", "shorter"),
        (b"\x40\xc9\x00\x01" + bytes(4), "version"),
        (b"\x80\xc9\x00\x05" + bytes(4), "runs past"),
        (build_rr(1, []) + b"\x80", "trailing"),
        (b"\x81\xc9\x00\x01" + bytes(4), "RR shorter"),
        (b"\x80\xc8\x00\x01" + bytes(4), "SR shorter"),
        (b"\xa0\xc9\x00\x01" + bytes(3) + b"\x00", "padding"),
        (b"\xa0\xc9\x00\x01" + bytes(3) + b"\x09", "padding"),
        (b"\x82\xcb\x00\x01" + bytes(4), "BYE shorter"),
        (b"\x80\xcb\x00\x01" + b"\x09abc", "BYE reason"),
        (b"\x81\xcd\x00\x01" + bytes(4), "feedback packet shorter"),
        (b"\x84\xce\x00\x03" + bytes(12), "FIR"),
        (b"\x8f\xce\x00\x03" + bytes(8) + b"REMB", "REMB shorter"),
        (b"\x8f\xce\x00\x04" + bytes(8) + b"REMB" + b"\x02\x00\x00\x01", "REMB SSRC"),
    ],
)
def test_malformed_rtcp(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_rtcp(data)


def test_nack_with_odd_fci() -> None:
    data = bytearray(build_nack(1, 2, [5]) + b"\x00\x00\x00\x00")
    data[3] += 1  # claims the extra word
    parse_rtcp(bytes(data))  # 2 whole words of FCI: fine
    odd = bytearray(build_nack(1, 2, [5]) + b"\x00\x00\x00\x02")
    odd[0] |= 0x20
    odd[3] += 1
    with pytest.raises(ValueError, match="NACK"):
        parse_rtcp(bytes(odd))


def test_every_truncation_raises_value_error() -> None:
    data = (
        build_sr(1, 2, 3, 4, 5, [BLOCK])
        + build_nack(1, 2, [1, 50])
        + build_fir(1, 2, 3)
        + build_remb(1, 10**6, [1, 2])
        + build_bye([1])
    )
    boundaries = {0}
    pos = 0
    while pos < len(data):
        pos += 4 + 4 * struct.unpack_from("!H", data, pos + 2)[0]
        boundaries.add(pos)
    for cut in range(1, len(data)):
        if cut in boundaries:
            assert parse_rtcp(data[:cut])
        else:
            with pytest.raises(ValueError):
                parse_rtcp(data[:cut])


@settings(max_examples=1000)
@given(st.binary(max_size=120))
def test_garbage_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_rtcp(data)


@settings(max_examples=500)
@given(st.binary(min_size=4, max_size=100), st.sampled_from([200, 201, 203, 205, 206]), st.integers(0, 31))
def test_plausible_headers_with_garbage_bodies(body: bytes, pt: int, count: int) -> None:
    """Well-formed common headers around random bodies exercise each type's own checks."""
    body = body[: len(body) // 4 * 4]
    data = struct.pack("!BBH", 0x80 | count, pt, len(body) // 4) + body
    with contextlib.suppress(ValueError):
        parse_rtcp(data)


# -- ReceiverStats ------------------------------------------------------------------------------------


def feed(stats: ReceiverStats, seqs: list[int], start_ms: float = 0.0) -> None:
    for i, s in enumerate(seqs):
        stats.update(s & 0xFFFF, (s * 960) & 0xFFFFFFFF, start_ms + 20 * i, 48000)


def test_stats_clean_stream() -> None:
    stats = ReceiverStats(42)
    assert stats.report_block(0) is None
    feed(stats, list(range(100)))
    block = stats.report_block(2000)
    assert block == ReportBlock(42, 0, 0, 99, 0, 0, 0)
    assert stats.received == 100


def test_stats_loss_fraction_per_interval() -> None:
    stats = ReceiverStats(1)
    feed(stats, [s for s in range(100) if s % 4 != 0 or s == 0])  # 24 of 100 lost
    block = stats.report_block(0)
    assert block is not None
    assert block.cumulative_lost == 24
    assert block.fraction_lost == 24 * 256 // 100
    feed(stats, list(range(100, 200)), start_ms=3000)  # no loss in this interval
    block = stats.report_block(0)
    assert block is not None
    assert (block.fraction_lost, block.cumulative_lost) == (0, 24)


def test_stats_sequence_wrap_extends() -> None:
    stats = ReceiverStats(1)
    feed(stats, list(range(65530, 65536 + 10)))
    assert stats.ext_highest_seq == 65536 + 9
    block = stats.report_block(0)
    assert block is not None
    assert block.ext_highest_seq == 0x10009
    assert block.cumulative_lost == 0


def test_stats_duplicates_and_reordering() -> None:
    stats = ReceiverStats(1)
    feed(stats, [0, 1, 3, 2, 4, 4, 5])
    assert stats.received == 7
    assert stats.cumulative_lost == -1  # RFC 3550: duplicates make loss negative
    assert stats.ext_highest_seq == 5


def test_stats_restart_after_big_jump() -> None:
    stats = ReceiverStats(1)
    feed(stats, [0, 1, 2])
    stats.update(40_000, 0, 100, 48000)  # one stray packet: ignored
    assert stats.ext_highest_seq == 2
    stats.update(3, 3 * 960, 120, 48000)
    assert stats.ext_highest_seq == 3
    stats.update(40_000, 0, 140, 48000)
    stats.update(40_001, 960, 160, 48000)  # two in a row: the source restarted
    assert stats.ext_highest_seq == 40_001
    assert stats.received == 1  # counting starts over at the restart
    assert stats.cumulative_lost == 0


def test_stats_jitter() -> None:
    stats = ReceiverStats(1)
    for i in range(200):  # every other packet 10 ms late: |D| = 480 ticks each time
        stats.update(i, (i * 960) & 0xFFFFFFFF, 20 * i + (10 if i % 2 else 0), 48000)
    assert stats.jitter == pytest.approx(480, rel=0.01)
    block = stats.report_block(4000)
    assert block is not None
    assert block.jitter == int(stats.jitter)


def test_stats_jitter_across_timestamp_wrap() -> None:
    stats = ReceiverStats(1)
    base = 0xFFFFFFFF - 960 * 5
    for i in range(20):
        stats.update(i, (base + 960 * i) & 0xFFFFFFFF, 20.0 * i, 48000)
    assert stats.jitter == pytest.approx(0, abs=1e-6)


def test_stats_lsr_dlsr() -> None:
    stats = ReceiverStats(1)
    feed(stats, [0])
    stats.on_sender_report(0x1234_5678_9ABC_DEF0, 1000.0)
    block = stats.report_block(1500.0)
    assert block is not None
    assert block.lsr == 0x5678_9ABC
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s units


# -- PacketHistory ------------------------------------------------------------------------------------


def pkt(seq: int) -> bytes:
    return struct.pack("!BBH", 0x80, 111, seq) + bytes(8) + seq.to_bytes(4, "big")


def test_history_put_get_overwrite_and_wrap() -> None:
    h = PacketHistory(8)
    for s in range(65530, 65536 + 4):
        h.put(pkt(s & 0xFFFF))
    assert h.get(65535) == pkt(65535)
    assert h.get(3) == pkt(3)
    assert h.get(65529) is None  # never stored
    assert h.get(65530) is None  # overwritten by 2 (same slot)
    assert h.get(4) is None
    h.clear()
    assert h.get(3) is None


@given(st.lists(st.integers(0, 0xFFFF), max_size=300))
def test_history_property(seqs: list[int]) -> None:
    """get returns the newest packet stored under a sequence number, unless its slot was reused since."""
    h = PacketHistory(64)
    latest_in_slot: dict[int, int] = {}
    for s in seqs:
        h.put(pkt(s))
        latest_in_slot[s % 64] = s
    for s in set(seqs):
        expected = pkt(s) if latest_in_slot[s % 64] == s else None
        assert h.get(s) == expected


@pytest.mark.parametrize("size", [0, 3, 100, 65536])
def test_history_size_must_be_power_of_two(size: int) -> None:
    with pytest.raises(ValueError):
        PacketHistory(size)


# -- KeyframeRequestThrottle --------------------------------------------------------------------------


def test_throttle() -> None:
    t = KeyframeRequestThrottle(1000)
    assert t.poll(0) == (False, None)
    assert t.request(10_000) == (True, None)
    assert not t.pending
    assert t.request(10_300) == (False, 11_000)
    assert (t.pending, t.retry_at_ms) == (True, 11_000)
    assert t.request(10_500) == (False, 11_000)  # still one pending request, not two
    assert t.poll(10_999) == (False, 11_000)
    assert t.poll(11_000) == (True, None)
    assert t.poll(11_001) == (False, None)
    assert (t.pending, t.retry_at_ms) == (False, None)
    assert t.request(11_500) == (False, 12_000)
    t.keyframe_received()  # the producer sent one anyway
    assert t.poll(12_000) == (False, None)
    assert t.request(12_000) == (True, None)
