"""Simulcast, RTX and transport-cc in SDP: a real Chromium simulcast offer, the SFU's answers and offers."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxa.sfu import sdp
from voxa.sfu.negotiation import (
    PYTHON_FEATURES,
    ConsumerSpec,
    Layer,
    NegotiationError,
    Negotiator,
)
from voxa.sfu.sdp import Codec, SdpError, Simulcast, SimulcastStream

from .test_negotiation import CHROMIUM_OFFER, LOCAL

# Recorded from Chromium (headless, fake camera) publishing three encodings rid q, h, f, lowest first:
# rid-based simulcast, so the video section has no a=ssrc and no ssrc-group at all.
OFFER = (Path(__file__).parent / "data" / "chromium-simulcast-offer.sdp").read_bytes().decode()


def answer_to(offer: str) -> str:
    """Chromium's answer to an SFU offer, as far as these tests need it: everything accepted."""
    text = offer.replace("a=sendonly", "a=recvonly").replace("a=setup:active", "a=setup:passive")
    text = text.replace("a=ice-ufrag:sfuu", "a=ice-ufrag:bxVo")
    return text.replace("a=ice-pwd:sfupassword0123456789ab", "a=ice-pwd:4y7zEl49ofYGg0kUppu03na4")


def video_consumer(cid: str = "v", ssrc: int = 6000, rtx_ssrc: int = 6001) -> ConsumerSpec:
    return ConsumerSpec(cid, "video", Codec(120, "VP8", 90000), ssrc, "cname", "alice", "alice:1", rtx_ssrc)


def audio_consumer(cid: str = "a", ssrc: int = 5000) -> ConsumerSpec:
    return ConsumerSpec(cid, "audio", Codec(100, "opus", 48000, 2), ssrc, "cname", "alice", "alice:0")


def test_parse_chromium_simulcast_offer() -> None:
    video = sdp.parse(OFFER, "offer").media[1]
    assert [(r.id, r.direction) for r in video.rids] == [("q", "send"), ("h", "send"), ("f", "send")]
    assert video.simulcast == Simulcast(
        send=(SimulcastStream("q"), SimulcastStream("h"), SimulcastStream("f"))
    )
    assert video.extensions[sdp.RID_URI] == 10 and video.extensions[sdp.REPAIRED_RID_URI] == 11
    assert video.extensions[sdp.TRANSPORT_CC_URI] == 3
    assert video.ssrcs == [] and video.fid == {} and video.sim == []
    rtx = {c.pt: c.apt for c in video.codecs if c.is_rtx}
    assert rtx[97] == 96 and rtx[103] == 102


def test_answer_to_simulcast_offer_receives_the_three_layers_with_rtx() -> None:
    neg = Negotiator(LOCAL, 1)
    result = neg.on_offer(OFFER)
    assert result.answer is not None
    text = result.answer
    assert "a=simulcast:recv q;h;f\r\n" in text
    assert all(f"a=rid:{rid} recv\r\n" in text for rid in "qhf")
    video = sdp.parse(text, "answer").media[1]
    assert video.direction == "recvonly"
    assert [(c.name, c.pt, c.apt) for c in video.codecs] == [("VP8", 96, None), ("rtx", 97, 96)]
    assert video.extensions == {
        sdp.MID_URI: 4,
        sdp.ABS_SEND_TIME_URI: 2,
        sdp.RID_URI: 10,
        sdp.REPAIRED_RID_URI: 11,
        sdp.TRANSPORT_CC_URI: 3,
    }  # transport-cc on the publishing leg: the data plane sends publishers feedback for their uplink
    assert "transport-cc" in video.codecs[0].feedback
    spec = next(p for p in result.producers if p.kind == "video")
    assert spec.layers == (Layer("q"), Layer("h"), Layer("f"))
    assert spec.rids == ("q", "h", "f")
    assert spec.ssrcs == () and spec.rtx_payload_types == ((97, 96),)
    audio = next(p for p in result.producers if p.kind == "audio")
    assert audio.layers == () and audio.ssrcs == (3503944919,)


def test_sfu_offer_to_chromium_carries_rtx_fid_and_transport_cc_with_its_ids() -> None:
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(OFFER)
    offer = neg.create_offer([audio_consumer(), video_consumer()])
    assert offer is not None
    parsed = sdp.parse(offer, "offer")
    c_audio, c_video = parsed.media[2], parsed.media[3]
    # Chromium's own numbers: VP8 96 / rtx 97, transport-cc 3, mid 4 (no id reassignment).
    assert [(c.name, c.pt, c.apt) for c in c_video.codecs] == [("VP8", 96, None), ("rtx", 97, 96)]
    assert c_video.extensions == {sdp.MID_URI: 4, sdp.ABS_SEND_TIME_URI: 2, sdp.TRANSPORT_CC_URI: 3}
    assert c_audio.extensions[sdp.TRANSPORT_CC_URI] == 3
    assert "transport-cc" in c_video.codecs[0].feedback and "transport-cc" in c_audio.codecs[0].feedback
    assert c_video.fid == {6000: 6001} and c_video.ssrcs == [6000]
    assert "a=ssrc:6001 msid:alice alice:1" in offer
    assert not [c for c in c_audio.codecs if c.is_rtx]
    # Every id the SFU wrote means what it meant in Chromium's offer.
    remote = {i: u for m in sdp.parse(OFFER, "offer").media for u, i in m.extensions.items()}
    for section in parsed.media:
        for uri, ext_id in section.extensions.items():
            assert remote.get(ext_id, uri) == uri


def test_fresh_extension_ids_avoid_every_id_the_client_used() -> None:
    """A client that numbered transport-cc nowhere: the SFU's new id is one the client never used."""
    offer = CHROMIUM_OFFER.replace(
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:3 urn:ietf:params:rtp-hdrext:toffset",
    )
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(offer)
    text = neg.create_offer([video_consumer()])
    assert text is not None
    twcc = sdp.parse(text, "offer").media[2].extensions[sdp.TRANSPORT_CC_URI]
    assert twcc not in (1, 2, 3, 4)


def test_subscriber_answer_decides_rtx_and_extensions() -> None:
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(OFFER)
    offer = neg.create_offer([audio_consumer(), video_consumer()])
    assert offer is not None
    full = neg.on_answer(answer_to(offer)).accepted
    assert full["v"].rtx_payload_type == 97 and full["v"].payload_type == 96
    assert full["v"].extensions[sdp.TRANSPORT_CC_URI] == 3
    assert full["a"].rtx_payload_type is None
    # An answer without RTX and transport-cc (aiortc's, for example): plain retransmission, no twcc.
    offer = neg.create_offer([audio_consumer(), video_consumer(), video_consumer("w", 7000, 7001)])
    assert offer is not None
    lean = answer_to(offer)
    lean = lean.replace("a=rtpmap:97 rtx/90000\r\n", "").replace("a=fmtp:97 apt=96\r\n", "")
    lean = lean.replace(f"a=extmap:3 {sdp.TRANSPORT_CC_URI}\r\n", "")
    accepted = neg.on_answer(lean).accepted
    assert accepted["w"].rtx_payload_type is None
    assert sdp.TRANSPORT_CC_URI not in accepted["w"].extensions and sdp.MID_URI in accepted["w"].extensions


def test_python_data_plane_negotiates_neither_rtx_nor_transport_cc() -> None:
    neg = Negotiator(LOCAL, 1, PYTHON_FEATURES)
    result = neg.on_offer(OFFER)
    assert result.answer is not None and "a=simulcast:recv q;h;f" in result.answer  # layer 0 forwarded
    assert "rtx" not in result.answer
    offer = neg.create_offer([video_consumer()])
    assert offer is not None and "transport-cc" not in offer and "rtx" not in offer and "FID" not in offer


def test_more_than_three_layers_are_truncated_to_the_first_three() -> None:
    offer = OFFER.replace("a=rid:f send\r\n", "a=rid:f send\r\na=rid:x send\r\n").replace(
        "a=simulcast:send q;h;f", "a=simulcast:send q;h;f;x"
    )
    result = Negotiator(LOCAL, 1).on_offer(offer)
    assert result.answer is not None and "a=simulcast:recv q;h;f\r\n" in result.answer
    assert "a=rid:x" not in result.answer
    assert next(p for p in result.producers if p.kind == "video").rids == ("q", "h", "f")


def test_reoffer_keeps_layers_and_refuses_changing_them() -> None:
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(OFFER)
    again = neg.on_offer(OFFER)
    assert again.answer is not None and "a=simulcast:recv q;h;f" in again.answer
    with pytest.raises(NegotiationError, match="simulcast layers cannot change"):
        neg.on_offer(OFFER.replace("a=simulcast:send q;h;f", "a=simulcast:send q;h"))


def test_simulcast_without_the_rid_extension_is_refused() -> None:
    offer = OFFER.replace(f"a=extmap:10 {sdp.RID_URI}\r\n", "")
    with pytest.raises(NegotiationError, match="rtp-stream-id"):
        Negotiator(LOCAL, 1).on_offer(offer)


def test_ssrc_group_sim_layers_with_fid_rtx() -> None:
    lines = [
        "a=ssrc-group:SIM 10 20 30",
        "a=ssrc-group:FID 10 11",
        "a=ssrc-group:FID 20 21",
        "a=ssrc-group:FID 30 31",
        *(f"a=ssrc:{s} cname:x" for s in (10, 11, 20, 21, 30, 31)),
    ]
    offer = CHROMIUM_OFFER.replace(
        "a=ssrc-group:FID 2222 3333\r\na=ssrc:2222 cname:xyz\r\na=ssrc:3333 cname:xyz\r\n",
        "\r\n".join(lines) + "\r\n",
    )
    video = sdp.parse(offer, "offer").media[1]
    assert video.sim == [10, 20, 30] and video.fid == {10: 11, 20: 21, 30: 31} and video.ssrcs == [10, 20, 30]
    spec = next(p for p in Negotiator(LOCAL, 1).on_offer(offer).producers if p.kind == "video")
    assert spec.layers == (Layer("0", 10, 11), Layer("1", 20, 21), Layer("2", 30, 31))
    assert spec.ssrcs == (10, 20, 30)


def test_single_stream_video_with_rtx_is_one_layer() -> None:
    spec = next(p for p in Negotiator(LOCAL, 1).on_offer(CHROMIUM_OFFER).producers if p.kind == "video")
    assert spec.layers == (Layer("", 2222, 3333),) and spec.rids == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("send q;h;f", Simulcast(send=(SimulcastStream("q"), SimulcastStream("h"), SimulcastStream("f")))),
        ("send q,q2;h", Simulcast(send=(SimulcastStream("q"), SimulcastStream("h")))),
        (
            "send ~q;h recv r",
            Simulcast(send=(SimulcastStream("q", True), SimulcastStream("h")), recv=(SimulcastStream("r"),)),
        ),
    ],
)
def test_simulcast_attribute_forms(value: str, expected: Simulcast) -> None:
    assert sdp.parse_simulcast(value) == expected


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (("a=simulcast:send q;h;f", "a=simulcast:send q;h;z"), "names rid 'z' with no a=rid:z send"),
        (("a=rid:h send", "a=rid:h recv"), "names rid 'h' with no a=rid:h send"),
        (("a=simulcast:send q;h;f", "a=simulcast:sideways q;h;f"), "bad or repeated direction"),
        (("a=simulcast:send q;h;f", "a=simulcast:send q;q"), "listed twice"),
        (("a=simulcast:send q;h;f", "a=simulcast:send"), "pairs"),
        (("a=rid:q send", "a=rid:q?! send"), "invalid rid"),
        (("a=rid:q send", "a=rid:q both"), "direction must be send or recv"),
        (("a=rid:q send", "a=rid:q send pt=55"), "unknown payload type 55"),
        (("a=rid:q send", "a=rid:q send pt=x"), "malformed a=rid"),
        (("a=rid:h send", "a=rid:q send"), "declared twice"),
        (("a=ssrc-group:FID", "a=ssrc-group:FID 1 99999999999"), "ssrc out of range"),
    ],
)
def test_bad_simulcast_sdp_names_the_problem(edit: tuple[str, str], reason: str) -> None:
    base = (
        OFFER
        if "FID" not in edit[0]
        else CHROMIUM_OFFER.replace("a=ssrc-group:FID 2222 3333", "a=ssrc-group:FID")
    )
    with pytest.raises(SdpError, match=reason):
        sdp.parse(base.replace(*edit, 1), "offer")
