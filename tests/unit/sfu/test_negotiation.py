"""SDP parsing/rendering and the per-peer negotiation state, without sockets."""

from __future__ import annotations

import pytest

from voxa.sfu import sdp
from voxa.sfu.negotiation import ConsumerSpec, NegotiationError, Negotiator, State
from voxa.sfu.sdp import Codec, LocalTransport, SdpError

# A Chromium-style offer: audio with extension ids that differ from any default, and video.
CHROMIUM_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic: WMS stream",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 AA:BB:CC",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendrecv",
        "a=msid:stream track-a",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=ssrc:1111 cname:xyz",
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 AA:BB:CC",
        "a=setup:actpass",
        "a=mid:1",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtcp-fb:96 goog-remb",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=ssrc-group:FID 2222 3333",
        "a=ssrc:2222 cname:xyz",
        "a=ssrc:3333 cname:xyz",
        "",
    ]
)
LOCAL = LocalTransport(
    "sfuu",
    "sfupassword0123456789ab",
    ("sha-256", "11:22"),
    "active",
    ("1 1 udp 1 127.0.0.1 40000 typ host",),
    "127.0.0.1",
    40000,
)


def consumer(cid: str, kind: str = "audio", ssrc: int = 5000) -> ConsumerSpec:
    codec = (
        Codec(100, "opus", 48000, 2, "minptime=10;useinbandfec=1")
        if kind == "audio"
        else Codec(120, "VP8", 90000)
    )
    return ConsumerSpec(cid, kind, codec, ssrc, "cname", f"stream-{cid}", f"track-{cid}")


def answer_to(offer: str) -> str:
    """What a client answers to an SFU offer: its own ICE/DTLS, and recvonly where the SFU sends."""
    text = offer.replace("a=sendonly", "a=recvonly").replace("a=setup:active", "a=setup:passive")
    text = text.replace("a=ice-ufrag:sfuu", "a=ice-ufrag:abcd")
    return text.replace("a=ice-pwd:sfupassword0123456789ab", "a=ice-pwd:abcdefghijklmnopqrstuvwx")


def test_parse_chromium_offer() -> None:
    remote = sdp.parse(CHROMIUM_OFFER, "offer")
    audio, video = remote.media
    assert (remote.ice_ufrag, remote.setup, remote.bundle) == ("abcd", "actpass", ["0", "1"])
    assert audio.extensions[sdp.MID_URI] == 4 and audio.extensions[sdp.AUDIO_LEVEL_URI] == 1
    assert [c.name for c in audio.codecs][:2] == ["opus", "red"]
    assert audio.ssrcs == [1111]
    assert video.ssrcs == [2222]  # the RTX SSRC of the FID group is left out
    assert len(audio.candidates) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("v=0\r\nm=audio x RTP 1\r\n", "bad port"),
        ("v=0\r\nm=audio 9 RTP/SAVPF 300\r\na=mid:0\r\n", "payload type out of range"),
        ("v=0\r\nm=audio 9 RTP/SAVPF 111\r\n", "has no a=mid"),
        (CHROMIUM_OFFER.replace("a=fingerprint:sha-256 AA:BB:CC\r\n", ""), "lacks a=fingerprint"),
        (CHROMIUM_OFFER.replace("a=mid:1", "a=mid:0"), "duplicate mid"),
        (CHROMIUM_OFFER.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus"), "malformed a=rtpmap"),
        ("v=0\r\n" + "a=x\r\n" * 70000, "larger than"),
    ],
)
def test_parse_errors_name_the_problem(text: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        sdp.parse(text, "offer")


def test_answer_keeps_client_ids_and_chooses_one_codec() -> None:
    neg = Negotiator(LOCAL, 1)
    result = neg.on_offer(CHROMIUM_OFFER)
    assert result.first and result.answer is not None
    answer = sdp.parse(result.answer, "answer")
    audio, video = answer.media
    assert [c.name for c in audio.codecs] == ["opus"] and audio.codecs[0].pt == 111
    assert audio.direction == "recvonly"
    assert audio.extensions == {
        sdp.MID_URI: 4,
        sdp.AUDIO_LEVEL_URI: 1,
        sdp.ABS_SEND_TIME_URI: 2,
        sdp.TRANSPORT_CC_URI: 3,
    }
    assert [(c.name, c.pt, c.apt) for c in video.codecs] == [("VP8", 96, None), ("rtx", 97, 96)]
    assert video.codecs[0].feedback == (
        "nack",
        "nack pli",
        "goog-remb",
    )
    assert answer.setup == "active"
    assert {p.mid: p.ssrcs for p in result.producers} == {"0": (1111,), "1": (2222,)}


def test_reoffers_keep_mids_payload_types_and_extension_ids() -> None:
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(CHROMIUM_OFFER)
    offer = neg.create_offer([consumer("x"), consumer("y", "video", 6000)])
    assert offer is not None and neg.state is State.HAVE_LOCAL_OFFER
    parsed = sdp.parse(offer, "offer")
    assert [m.mid for m in parsed.media] == ["0", "1", "c0", "c1"]
    c_audio, c_video = parsed.media[2], parsed.media[3]
    assert c_audio.codecs[0].pt == 111 and c_video.codecs[0].pt == 96  # the client's numbers
    assert c_audio.extensions[sdp.MID_URI] == 4 and c_audio.extensions[sdp.AUDIO_LEVEL_URI] == 1
    assert parsed.media[0].extensions[sdp.MID_URI] == 4
    assert c_audio.direction == "sendonly" and c_audio.ssrcs == [5000]
    # The client answers: consumers accepted.
    result = neg.on_answer(answer_to(offer))
    assert result.consumers == {"x": "c0", "y": "c1"}
    assert neg.state.value == "stable"


def test_inactive_sections_are_reused() -> None:
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(CHROMIUM_OFFER)
    for specs in ([consumer("x")], [], [consumer("z", ssrc=7000)]):
        offer = neg.create_offer(specs)
        assert offer is not None
        neg.on_answer(answer_to(offer))
    mids = [ln.media.mid for ln in neg.lines]
    assert mids == ["0", "1", "c0"]  # z took x's old m-section
    assert neg.consumer_line("z") is not None and neg.consumer_line("z").mid == "c0"  # type: ignore[union-attr]


def test_glare_the_sfu_is_impolite() -> None:
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(CHROMIUM_OFFER)
    assert neg.create_offer([consumer("x")]) is not None
    assert neg.on_offer(CHROMIUM_OFFER).answer is None  # ignored while ours is pending
    assert neg.create_offer([consumer("x"), consumer("y")]) is None  # one offer at a time


def test_ice_restart_and_renumbering_are_refused() -> None:
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(CHROMIUM_OFFER)
    with pytest.raises(NegotiationError, match="ICE restarts"):
        neg.on_offer(CHROMIUM_OFFER.replace("ice-ufrag:abcd", "ice-ufrag:efgh"))
    with pytest.raises(NegotiationError, match="changed id"):
        neg.on_offer(CHROMIUM_OFFER.replace("extmap:4 urn", "extmap:9 urn"))
    with pytest.raises(NegotiationError, match="keep every existing m-section"):
        head = CHROMIUM_OFFER.split("m=video")[0]
        neg.on_offer(head)


def test_answer_without_offer_is_an_error() -> None:
    neg = Negotiator(LOCAL, 1)
    neg.on_offer(CHROMIUM_OFFER)
    with pytest.raises(NegotiationError, match="no offer of ours"):
        neg.on_answer(CHROMIUM_OFFER)


def test_rejected_sections_for_unsupported_media() -> None:
    offer = CHROMIUM_OFFER + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n"
    neg = Negotiator(LOCAL, 1)
    answer = neg.on_offer(offer).answer
    assert answer is not None and "m=application 0 " in answer
