"""Forwarding logic without sockets: producers, consumers, rewriting, mute, NACK, keyframes."""

from __future__ import annotations

import struct

from voxa.sfu import rtcp, rtp
from voxa.sfu.router import Consumer, Producer, Router
from voxa.sfu.sdp import AUDIO_LEVEL_URI, MID_URI, Codec

OPUS = Codec(111, "opus", 48000, 2)
VP8 = Codec(96, "VP8", 90000)


def packet(
    seq: int, ts: int, ssrc: int = 1111, pt: int = 111, payload: bytes = b"\x01" * 40, level: int | None = 30
) -> bytes:
    header = struct.pack("!BBHII", 0x90 if level is not None else 0x80, pt, seq, ts, ssrc)
    if level is None:
        return header + payload
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([(1 << 4) | 0, level, 0, 0])
    return header + ext + payload


def audio_producer(requests: list[int] | None = None) -> Producer:
    return Producer(
        "alice",
        "0",
        "audio",
        OPUS,
        (1111,),
        {AUDIO_LEVEL_URI: 1, MID_URI: 4},
        request_keyframe=(requests.append if requests is not None else lambda ssrc: None),
    )


def subscribe(router: Router, producer: Producer, sent: list[bytes], pt: int = 100) -> Consumer:
    (consumer,) = router.add_producer(producer, {"bob": sent.append})
    consumer.negotiated("c0", pt, {MID_URI: 3, AUDIO_LEVEL_URI: 5})
    consumer.start(0)
    return consumer


def test_forwarded_packets_are_rewritten_for_the_consumer() -> None:
    router, sent = Router("r", lambda e: None), list[bytes]()
    producer = audio_producer()
    consumer = subscribe(router, producer, sent)
    for i in range(5):
        producer.receive(packet(1000 + i, 960 * i), now=20 * i)
    assert len(sent) == 5
    seqs = [rtp.sequence_of(p) for p in sent]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(5)]
    assert {rtp.ssrc_of(p) for p in sent} == {consumer.ssrc}
    assert {rtp.payload_type_of(p) for p in sent} == {100}
    mid = rtp.find_extension(sent[0], 3)
    assert mid is not None and sent[0][mid[0] : mid[0] + mid[1]] == b"c0"
    assert rtp.audio_level_raw(sent[0], 5) == 30  # audio level kept, under the subscriber's id
    assert sent[0].endswith(b"\x01" * 40)


def test_mute_stops_forwarding_and_unmute_continues_the_sequence() -> None:
    router, sent = Router("r", lambda e: None), list[bytes]()
    producer = audio_producer()
    subscribe(router, producer, sent)
    producer.receive(packet(10, 0), now=0)
    producer.set_paused(muted=True)
    for i in range(1, 50):
        producer.receive(packet(10 + i, 960 * i), now=20 * i)
    assert len(sent) == 1 and producer.stats.dropped == 49
    producer.set_paused(muted=False)
    producer.receive(packet(60, 960 * 50), now=1000)
    assert len(sent) == 2
    assert rtp.seq_diff(rtp.sequence_of(sent[1]), rtp.sequence_of(sent[0])) == 1  # no gap to NACK
    elapsed = rtp.ts_diff(rtp.timestamp_of(sent[1]), rtp.timestamp_of(sent[0]))
    assert 48 * 900 <= elapsed <= 48 * 1100  # real time passed: about one second at 48 kHz


def test_server_mute_and_rights_combine() -> None:
    producer = audio_producer()
    producer.set_paused(server_muted=True)
    producer.set_paused(muted=False)
    assert not producer.forwarding
    producer.set_paused(server_muted=False, permitted=False)
    assert not producer.forwarding
    producer.set_paused(permitted=True)
    assert producer.forwarding


def test_nack_is_answered_from_history() -> None:
    producer = Producer("alice", "1", "video", VP8, (2222,), {}, request_keyframe=lambda ssrc: None)
    router, sent = Router("r", lambda e: None), list[bytes]()
    (consumer,) = router.add_producer(producer, {"bob": sent.append})
    consumer.negotiated("c1", 96, {})
    consumer.start(now=0)
    key = bytes([0x10, 0x00]) + b"\x00" * 30
    for i in range(10):
        producer.receive(packet(i, 3000 * i, ssrc=2222, pt=96, payload=key, level=None), now=33 * i)
    assert len(sent) == 10
    lost = (rtp.sequence_of(sent[3]), rtp.sequence_of(sent[7]), (rtp.sequence_of(sent[0]) - 500) & 0xFFFF)
    consumer.retransmit(lost)
    assert sent[10:] == [sent[3], sent[7]]  # the unknown one is simply not answered
    assert consumer.stats.retransmitted == 2


def test_audio_keeps_no_history() -> None:
    router, sent = Router("r", lambda e: None), list[bytes]()
    consumer = subscribe(router, audio_producer(), sent)
    consumer.retransmit((1, 2, 3))  # audio does not negotiate NACK: nothing to resend, nothing kept
    assert consumer.stats.retransmitted == 0


def test_video_consumer_waits_for_a_keyframe_and_requests_are_throttled() -> None:
    requests: list[int] = []
    producer = Producer("alice", "1", "video", VP8, (2222,), {}, request_keyframe=requests.append)
    router, sent = Router("r", lambda e: None), list[bytes]()
    (consumer,) = router.add_producer(producer, {"bob": sent.append})
    consumer.negotiated("c1", 96, {})
    consumer.start(now=0)
    assert requests == [2222]  # a new subscriber asks for a keyframe
    delta = bytes([0x10, 0x01]) + b"\x00" * 30  # VP8 start of partition, P bit set: not a keyframe
    key = bytes([0x10, 0x00]) + b"\x00" * 30
    producer.receive(packet(1, 0, ssrc=2222, pt=96, payload=delta, level=None), now=10)
    assert sent == []
    producer.want_keyframe(now=20)  # a PLI 20 ms later: throttled
    assert requests == [2222]
    producer.receive(packet(2, 3000, ssrc=2222, pt=96, payload=key, level=None), now=30)
    producer.receive(packet(3, 3000, ssrc=2222, pt=96, payload=delta, level=None), now=31)
    assert len(sent) == 2
    producer.want_keyframe(now=1500)
    assert requests == [2222, 2222]


def test_speaker_events_from_audio_levels() -> None:
    events: list[dict[str, object]] = []
    router = Router("r", events.append)
    producer = audio_producer()
    router.add_producer(producer, {})
    for i in range(20):
        producer.receive(packet(i, 960 * i, level=20), now=20 * i)
    assert {"type": "speaking", "router": "r", "peer": "alice", "speaking": True} in events
    router.tick(now=2000)
    assert events[-1]["type"] in ("speaking", "dominant_speaker")


def test_receiver_report_after_packets() -> None:
    producer = audio_producer()
    for i in range(10):
        producer.receive(packet(i, 960 * i), now=20 * i)
    block = producer.receivers[1111].report_block(200)
    assert block is not None and block.ssrc == 1111 and block.cumulative_lost == 0
    rr = rtcp.build_rr(42, [block])
    (parsed,) = rtcp.parse_rtcp(rr)
    assert isinstance(parsed, rtcp.ReceiverReport) and parsed.reports[0].ssrc == 1111
