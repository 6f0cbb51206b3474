"""Fuzz targets of the Python parsers that read network input: one function per parser, bytes in.

Each target feeds its parser whatever it is given and checks what the parser promises: it returns,
or it raises its documented error type (`ALLOWED`); any other exception is a crash. Where the result
goes on to the wire (an RTP packet the SFU rewrites, a Phoenix frame re-encoded), the target also
checks that what comes out is valid. The targets are pure and deterministic, so an input that
crashed once replays as a plain unit test (tests/unit/test_fuzz_regressions.py), without atheris.

The coverage-guided runner is tests/fuzz/pyfuzz.py (`.ci/pyfuzz.sh`); `seeds()` gives each target a
starting corpus of well-formed inputs, written to the corpus folder before every run.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from voxa.sfu import rtcp, rtp, sdp
from voxa.sfu.negotiation import ConsumerSpec, Negotiator
from voxa.sfu.sdp import Codec, LocalTransport, SdpError
from voxa.signaling import protocol

Target = Callable[[bytes], None]
DATA = Path(__file__).resolve().parents[1] / "unit" / "sfu" / "data"


def _text(data: bytes) -> str:
    # What reaches the parsers is a JSON string (the control API, a Phoenix payload): valid Unicode.
    return data.decode("utf-8", "replace")


# --- SDP: voxa.sfu.sdp.parse, and the negotiation built on it --------------------------------------
def fuzz_sdp_parse(data: bytes) -> None:
    """The first byte picks offer or answer; the rest is the SDP. SdpError is the documented error."""
    if not data:
        return
    sdp_type = "offer" if data[0] & 1 else "answer"
    try:
        remote = sdp.parse(_text(data[1:]), sdp_type)
    except SdpError:
        return
    for section in remote.media:
        for codec in section.codecs:
            _ = (codec.key, codec.apt, codec.is_rtx)
        _ = (section.rids, section.simulcast)
    _ = [remote.section(m.mid) for m in remote.media]


LOCAL = LocalTransport(
    "sfuu",
    "sfupassword0123456789ab",
    ("sha-256", "11:22"),
    "active",
    ("1 1 udp 1 127.0.0.1 40000 typ host",),
    "127.0.0.1",
    40000,
)


def _consumers() -> list[ConsumerSpec]:
    return [
        ConsumerSpec("c-audio", "audio", Codec(100, "opus", 48000, 2, "minptime=10"), 5000, "cn", "s1", "t1"),
        ConsumerSpec("c-video", "video", Codec(120, "VP8", 90000), 6000, "cn", "s2", "t2"),
    ]


def answer_to(offer: str, ice: tuple[str, str] | None = None) -> str:
    """What a client answers to an SFU offer: its own ICE/DTLS (`ice`: the ufrag and password it
    offered before), and recvonly where the SFU sends."""
    ufrag, pwd = ice or ("abcd", "abcdefghijklmnopqrstuvwx")
    text = offer.replace("a=sendonly", "a=recvonly").replace("a=setup:active", "a=setup:passive")
    text = text.replace(f"a=ice-ufrag:{LOCAL.ice_ufrag}", f"a=ice-ufrag:{ufrag}")
    return text.replace(f"a=ice-pwd:{LOCAL.ice_pwd}", f"a=ice-pwd:{pwd}")


def _round(neg: Negotiator) -> None:
    """The SFU offers its consumers, the client answers as a browser would: both must work on
    whatever state the client's descriptions left behind."""
    offer = neg.create_offer(_consumers())
    if offer is None:
        return
    sdp.parse(offer, "offer")  # what the SFU sends must parse
    neg.on_answer(answer_to(offer, neg.remote_ice))


def fuzz_negotiation(data: bytes) -> None:
    """Negotiator.on_offer / on_answer on client input. The first byte picks the case:
    0: a first offer; 1: the answer to an SFU offer (after a valid first offer); 2: a re-offer after
    a valid first offer. After a fuzzed description is accepted, a whole SFU offer/answer round runs
    on the resulting state. SdpError (NegotiationError is one) is the documented error."""
    if not data:
        return
    mode, text = data[0] % 3, _text(data[1:])
    neg = Negotiator(LOCAL, 1)
    answer: str | None = None
    try:
        if mode == 0:
            answer = neg.on_offer(text).answer
        else:
            neg.on_offer(seed_offer())
            if mode == 1:
                offer = neg.create_offer(_consumers())
                assert offer is not None
                neg.on_answer(text)
            else:
                answer = neg.on_offer(text).answer
    except SdpError:
        return
    if answer is not None and any(not line.media.rejected for line in neg.lines):
        sdp.parse(answer, "answer")  # what the SFU answers must parse (ICE lines need a live section)
    try:
        _round(neg)
    except SdpError as exc:
        raise AssertionError(f"the SFU's own offer/answer round failed after accepted input: {exc}") from exc


SMALL_OFFER = "\n".join(
    [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 AA:BB",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=sendrecv",
        "a=rtpmap:111 opus/48000/2",
        "a=ssrc:1 cname:x",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=rid:q send",
        "a=rid:h send",
        "a=simulcast:send q;h",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "",
    ]
)
_SEED_OFFER: list[str] = []


def seed_offer() -> str:
    if not _SEED_OFFER:
        _SEED_OFFER.append((DATA / "chromium-simulcast-offer.sdp").read_text())
    return _SEED_OFFER[0]


# --- the Phoenix v2 frame codec (voxa.signaling.protocol) ------------------------------------------
def fuzz_phoenix(data: bytes) -> None:
    """decode() on a frame as bytes (binary WebSocket frame) or text; ProtocolError is the documented
    error. A decoded frame must re-encode and decode to itself. The auth subprotocol header parser
    (token_from_subprotocols) never raises."""
    if not data:
        return
    body = data[1:]
    frame: bytes | str = body if data[0] & 1 else _text(body)
    protocol.token_from_subprotocols(_text(body))
    try:
        msg = protocol.decode(frame)
    except protocol.ProtocolError:
        return
    again = protocol.decode(protocol.encode(*msg))
    assert again == msg, (again, msg)


# --- RTP (voxa.sfu.rtp) and RTCP (voxa.sfu.rtcp) ---------------------------------------------------
_REWRITERS: list[rtp.Rewriter] = []


def _rewriters() -> list[rtp.Rewriter]:
    if not _REWRITERS:
        every_pt = {pt: 100 for pt in range(128)}
        _REWRITERS.extend(
            [
                rtp.Rewriter(
                    5000,
                    48000,
                    every_pt,
                    mid="0",
                    mid_id=4,
                    abs_send_time_id=2,
                    audio_level_id=1,
                    initial_seq=1,
                    initial_ts=1,
                ),
                rtp.Rewriter(  # two-byte elements: a mid longer than 16 bytes
                    6000,
                    90000,
                    every_pt,
                    mid="m" * 20,
                    mid_id=3,
                    abs_send_time_id=200,
                    initial_seq=1,
                    initial_ts=1,
                ),
                rtp.Rewriter(7000, 90000, {96: 96}, initial_seq=1, initial_ts=1),
            ]
        )
    return _REWRITERS


def fuzz_rtp(data: bytes) -> None:
    """check_rtp decides; the accessors, header-extension readers, receive statistics and the
    consumer rewriters run on what it accepts and must not raise; what a rewriter returns must itself
    pass check_rtp. No exception is documented."""
    if rtp.check_rtp(data) is not None:
        return
    start, end = rtp.payload_range(data)
    assert 12 <= start <= end <= len(data), (start, end, len(data))
    _ = (rtp.ssrc_of(data), rtp.payload_type_of(data), rtp.marker_of(data), rtp.timestamp_of(data))
    for ext_id in (*range(1, 16), 200, 255):
        found = rtp.find_extension(data, ext_id)
        if found is not None:
            offset, length = found
            assert offset > 12 and offset + length <= start, (found, start)
            bytes(data[offset : offset + length]).decode(errors="replace")
        rtp.audio_level(data, ext_id)
    stats = rtcp.ReceiverStats(rtp.ssrc_of(data))
    stats.update(rtp.sequence_of(data), rtp.timestamp_of(data), 1000.0, 48000)
    stats.report_block(1020.0)
    level = rtp.audio_level_raw(data, 1)
    for now_ms, rewriter in enumerate(_rewriters()):
        out = rewriter.rewrite(data, 1000 + now_ms, 0x123456, level)
        if out is not None:
            reason = rtp.check_rtp(out)
            assert reason is None, f"rewritten packet is not valid RTP: {reason}"


def fuzz_rtcp(data: bytes) -> None:
    """parse_rtcp on a compound packet; ValueError is the documented error. Every parsed packet's
    fields are in range."""
    try:
        packets = rtcp.parse_rtcp(data)
    except ValueError:
        return
    for packet in packets:
        if isinstance(packet, rtcp.Nack):
            assert all(0 <= seq <= 0xFFFF for seq in packet.lost)
        for value in packet:
            if isinstance(value, int):
                assert value >= 0 or isinstance(packet, rtcp.ReportBlock)


TARGETS: dict[str, Target] = {
    "sdp_parse": fuzz_sdp_parse,
    "negotiation": fuzz_negotiation,
    "phoenix": fuzz_phoenix,
    "rtp": fuzz_rtp,
    "rtcp": fuzz_rtcp,
}


# --- seeds -----------------------------------------------------------------------------------------
def _rtp_packet(
    pt: int = 111, seq: int = 1, ts: int = 960, ssrc: int = 1111, ext: bytes = b"", profile: int = 0xBEDE
) -> bytes:
    b0 = 0x80 | (0x10 if ext else 0)
    head = struct.pack("!BBHII", b0, pt, seq, ts, ssrc)
    if ext:
        ext += b"\x00" * (-len(ext) % 4)
        head += struct.pack("!HH", profile, len(ext) // 4) + ext
    return head + b"\xaa" * 20


def seeds(name: str) -> Iterator[bytes]:
    """Well-formed inputs each target starts from (and edge cases near its checks)."""
    offer = seed_offer()
    if name in ("sdp_parse", "negotiation"):
        neg = Negotiator(LOCAL, 1)
        neg.on_offer(offer)
        sfu_offer = neg.create_offer(_consumers())
        assert sfu_offer is not None
        answer = answer_to(sfu_offer)
        small = SMALL_OFFER.encode()  # short inputs run many times faster than a browser's offer
        if name == "sdp_parse":
            yield b"\x01" + offer.encode()
            yield b"\x00" + answer.encode()
            yield b"\x01" + small
        else:
            yield b"\x00" + offer.encode()
            yield b"\x01" + answer.encode()
            yield b"\x02" + offer.encode()
            yield b"\x00" + small
    elif name == "phoenix":
        yield b"\x00" + protocol.encode("1", "1", "voice:g1:lobby", "phx_join", {"muted": False}).encode()
        yield b"\x01" + protocol.encode(None, "2", "phoenix", "heartbeat", {}).encode()
        yield b"\x00" + b'[1, 2, "voice:g1:lobby", "mute", {"a": [1, 2.5, null, true, "x"]}]'
        yield b"\x00phoenix, base64url.bearer.phx.ZXlKaGJHY2lPaUpJVXpJMU5pSjk"
    elif name == "rtp":
        yield _rtp_packet()
        yield _rtp_packet(ext=bytes([0x10, 0x85, 0x40, 0x30]))  # audio level 1, mid 4 = "0"
        yield _rtp_packet(ext=bytes([3, 2, 0x68, 0x69, 0, 200, 1, 7]), profile=0x1000)
        yield bytes([0xA2]) + _rtp_packet()[1:] + b"\x00\x00\x03"  # CSRC count 2, padding
    elif name == "rtcp":
        block = rtcp.ReportBlock(1111, 0, 0, 100, 10, 0, 0)
        yield rtcp.build_sr(5000, rtcp.ntp_timestamp(1.0), 960, 1, 100, [block])
        yield rtcp.build_rr(5000, [block]) + rtcp.build_pli(5000, 1111)
        yield rtcp.build_nack(5000, 1111, [1, 2, 3, 20]) + rtcp.build_fir(5000, 1111, 1)
        yield rtcp.build_remb(5000, 300_000, [1111, 2222]) + rtcp.build_bye([1111])


DICTIONARIES: dict[str, list[str]] = {
    "sdp": [
        "\r\n",
        "v=0",
        "m=audio ",
        "m=video ",
        "m=application ",
        " UDP/TLS/RTP/SAVPF ",
        "a=mid:",
        "a=rtpmap:",
        "a=fmtp:",
        "a=rtcp-fb:",
        "a=extmap:",
        "a=ssrc:",
        "a=ssrc-group:FID ",
        "a=ssrc-group:SIM ",
        "a=rid:",
        " send",
        " recv",
        "a=simulcast:",
        "a=group:BUNDLE ",
        "a=ice-ufrag:",
        "a=ice-pwd:",
        "a=fingerprint:sha-256 ",
        "a=setup:",
        "actpass",
        "passive",
        "a=candidate:",
        "a=sendrecv",
        "a=sendonly",
        "a=recvonly",
        "a=inactive",
        "a=rtcp-mux",
        "a=ice-options:trickle",
        "opus/48000/2",
        "VP8/90000",
        "H264/90000",
        "rtx/90000",
        "apt=",
        "profile-level-id=",
        "packetization-mode=",
        "pt=",
        "~",
        sdp.MID_URI,
        sdp.AUDIO_LEVEL_URI,
        sdp.ABS_SEND_TIME_URI,
        sdp.RID_URI,
        sdp.REPAIRED_RID_URI,
        sdp.TRANSPORT_CC_URI,
    ],
    "phoenix": [
        "[",
        "]",
        "{",
        "}",
        "null",
        "true",
        "false",
        '"phx_join"',
        '"phx_leave"',
        '"heartbeat"',
        '"phoenix"',
        '"voice:g1:lobby"',
        "base64url.bearer.phx.",
        "phoenix, ",
        "1e400",
        "-0",
        "\\u0000",
        "\\ud800",
    ],
}
DICTIONARY_OF = {"sdp_parse": "sdp", "negotiation": "sdp", "phoenix": "phoenix"}
