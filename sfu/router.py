"""Routers, peers, producers and consumers: the SFU's forwarding logic.

A Router is one voice channel. Each Peer has one WebRtcTransport; the tracks it sends are Producers,
and every other peer gets a Consumer of each producer. A packet from a producer is decrypted once (by
the transport), then each consumer rewrites its header (SSRC, payload type, sequence number,
timestamp, extensions) and sends it: no decoding, no encoding, no per-consumer task.

The forwarding methods take plain bytes and a send function, so the logic is exercised in unit tests
without sockets (tests/unit/sfu/test_router.py); sfu/peer.py wires them to real transports.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voxa.sfu import rtcp, rtp
from voxa.sfu.codecs import KeyframeTest, keyframe_check
from voxa.sfu.negotiation import Layer
from voxa.sfu.sdp import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
    Codec,
)
from voxa.sfu.speaker import DominantSpeakerChanged, SpeakerDetector, SpeakingStarted, SpeakingStopped

Send = Callable[[bytes], None]
Emit = Callable[[dict[str, Any]], None]


class NativeSink:
    """The subscriber end of consumers on the native data plane: the subscriber's peer id there.

    Packets never pass through Python on that plane, so calling it is a programming error.
    """

    __slots__ = ("engine", "peer")

    def __init__(self, engine: Any, peer: int) -> None:
        self.engine = engine
        self.peer = peer

    def __call__(self, data: bytes) -> None:
        raise RuntimeError("the native data plane sends media itself")


def now_ms() -> int:
    return int(time.monotonic() * 1000)


def _ignore(events: tuple[Any, ...]) -> None:
    del events


def random_ssrc() -> int:
    return random.randint(1, 0xFFFFFFFF)


SOURCES = {"microphone": "audio", "screen_audio": "audio", "camera": "video", "screen": "video"}
"""A track's source (what the client captures) and the media kind it must be."""


def default_source(kind: str) -> str:
    return "microphone" if kind == "audio" else "camera"


@dataclass(frozen=True, slots=True)
class Preferences:
    """What a subscriber asked for one video consumer (a tile's size; hidden = paused). 0 = no cap."""

    max_width: int = 0
    max_height: int = 0
    paused: bool = False


@dataclass(slots=True)
class ProducerStats:
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    keyframe_requests: int = 0


class Producer:
    """A track one peer sends. Forwarding stops while it is muted, server-muted or not allowed."""

    __slots__ = (
        "_keyframe_throttle",
        "_stats",
        "audio_level_id",
        "clock_rate",
        "codec",
        "consumers",
        "engine",
        "extensions",
        "id",
        "is_audio",
        "keyframe_test",
        "kind",
        "layers",
        "mid",
        "mid_id",
        "muted",
        "native",
        "on_speaker_events",
        "peer_id",
        "permitted",
        "receivers",
        "request_keyframe",
        "rid_id",
        "rtx_payload_types",
        "sending",
        "server_muted",
        "source",
        "speaker",
        "ssrcs",
    )

    def __init__(
        self,
        peer_id: str,
        mid: str,
        kind: str,
        codec: Codec,
        ssrcs: tuple[int, ...],
        extensions: dict[str, int],
        *,
        request_keyframe: Callable[[int], None],
        layers: tuple[Layer, ...] = (),
        rtx_payload_types: tuple[tuple[int, int], ...] = (),
        source: str | None = None,
    ) -> None:
        self.id = f"{peer_id}:{mid}"
        self.peer_id = peer_id
        self.mid = mid
        self.kind = kind
        self.is_audio = kind == "audio"
        self.codec = codec
        self.clock_rate = codec.clock_rate
        self.ssrcs: set[int] = set(ssrcs)
        self.mid_id = extensions.get(MID_URI, 0)
        self.audio_level_id = extensions.get(AUDIO_LEVEL_URI, 0)
        self.rid_id = extensions.get(RID_URI, 0)
        self.extensions = dict(extensions)
        self.layers = layers  # simulcast layers, lowest first (() = one stream)
        self.rtx_payload_types = rtx_payload_types
        self.source = source or default_source(kind)
        self.sending = True  # the client's m-section sends (not inactive/recvonly)
        self.consumers: list[Consumer] = []
        self.muted = False
        self.server_muted = False
        self.permitted = True
        self._stats = ProducerStats()
        self.receivers: dict[int, rtcp.ReceiverStats] = {}
        self.keyframe_test: KeyframeTest | None = keyframe_check(codec.name)
        self._keyframe_throttle = rtcp.KeyframeRequestThrottle(1000)
        self.request_keyframe = request_keyframe
        self.speaker: SpeakerDetector | None = None
        self.on_speaker_events: Callable[[tuple[Any, ...]], None] = _ignore
        self.engine: Any = None  # the native data plane's Worker, when this producer lives there
        self.native = 0

    @property
    def stats(self) -> ProducerStats:
        """Counters; on the native data plane read from it on each access (one call)."""
        if self.engine is not None:
            with contextlib.suppress(KeyError):
                s = self._stats
                s.packets, s.bytes, s.dropped, s.keyframe_requests = self.engine.producer_stats(self.native)
        return self._stats

    def attach_native(self, engine: Any, peer: int) -> None:
        """Create this producer on the native data plane (which then receives and forwards its packets)."""
        codec = None if self.is_audio else self.codec.name
        self.native = engine.add_producer(
            peer,
            kind=self.kind,
            clock_rate=self.clock_rate,
            ssrcs=sorted(self.ssrcs),
            mid=self.mid,
            mid_id=self.mid_id,
            audio_level_id=self.audio_level_id,
            codec=codec,
            layers=[(layer.rid, layer.ssrc, layer.rtx_ssrc) for layer in self.layers],
            rid_id=self.rid_id,
            repaired_rid_id=self.extensions.get(REPAIRED_RID_URI, 0),
            rtx_payload_types=list(self.rtx_payload_types),
            transport_cc_id=self.extensions.get(TRANSPORT_CC_URI, 0),
        )
        self.engine = engine

    @property
    def rids(self) -> list[str]:
        """The simulcast layers' names, lowest first ([] for a single stream)."""
        return [layer.rid for layer in self.layers if layer.rid]

    def layer_states(self) -> list[dict[str, Any]]:
        """Per layer: rid, SSRC, measured bitrate and size, whether a subscriber wants it (native only)."""
        if self.engine is None or not self.layers:
            return []
        with contextlib.suppress(KeyError):
            return [
                {"rid": rid, "ssrc": ssrc, "bitrate": bps, "width": w, "height": h, "wanted": wanted}
                for rid, ssrc, bps, w, h, wanted in self.engine.producer_layers(self.native)
            ]
        return []

    @property
    def forwarding(self) -> bool:
        return self.permitted and not self.muted and not self.server_muted

    def set_paused(
        self, *, muted: bool | None = None, server_muted: bool | None = None, permitted: bool | None = None
    ) -> None:
        was = self.forwarding
        if muted is not None:
            self.muted = muted
        if server_muted is not None:
            self.server_muted = server_muted
        if permitted is not None:
            self.permitted = permitted
        if self.engine is not None:
            if self.forwarding != was:
                self.engine.set_producer_forwarding(self.native, self.forwarding)
            return
        if self.forwarding and not was:
            for consumer in self.consumers:
                consumer.resume()

    def receive(self, data: bytes, now: int) -> None:
        """One plaintext RTP packet of this producer (hot path)."""
        stats = self._stats
        stats.packets += 1
        stats.bytes += len(data)
        ssrc = (data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11]
        receiver = self.receivers.get(ssrc)
        if receiver is None:
            receiver = self.receivers[ssrc] = rtcp.ReceiverStats(ssrc)
        receiver.update((data[2] << 8) | data[3], rtp.timestamp_of(data), now, self.clock_rate)
        level = -1
        if self.audio_level_id:
            level = rtp.audio_level_raw(data, self.audio_level_id)
            if level >= 0 and self.speaker is not None and self.forwarding:
                self.speaker_feed(now, level)
        if not self.forwarding:
            stats.dropped += 1
            return
        keyframe = False
        if self.keyframe_test is not None:
            start, _end = rtp.payload_range(data)
            keyframe = self.keyframe_test(memoryview(data)[start:])
            if keyframe:
                self._keyframe_throttle.keyframe_received()
        abs_time = rtp.abs_send_time_ns(time.monotonic_ns())
        for consumer in self.consumers:
            consumer.forward(data, now, abs_time, level, keyframe)

    def speaker_feed(self, now: int, level: int) -> None:
        speaker = self.speaker
        if speaker is not None:
            events = speaker.feed(self.peer_id, now, level & 0x7F, level >= 0x80)
            if events:
                self.on_speaker_events(events)

    def want_keyframe(self, now: int) -> None:
        """A consumer needs a keyframe (new subscriber, PLI, FIR): ask the publisher, at most 1/s."""
        if self.keyframe_test is None:
            return
        send, _retry = self._keyframe_throttle.request(now)
        if send:
            self._ask_keyframe()

    def _ask_keyframe(self) -> None:
        self._stats.keyframe_requests += 1
        for ssrc in self.ssrcs or self.receivers:
            self.request_keyframe(ssrc)

    def native_levels(self, now: int, loudness_sum: int, packets: int, voiced: int) -> None:
        """The native data plane's audio levels of this producer since the last tick, as one sample."""
        level = 127 - min(loudness_sum // max(packets, 1), 127)
        self.speaker_feed(now, level | (0x80 if 2 * voiced >= packets else 0))

    def poll_keyframe(self, now: int) -> None:
        if self.engine is not None:
            return  # the native data plane throttles and retries keyframe requests itself
        send, _retry = self._keyframe_throttle.poll(now)
        if send:
            self._ask_keyframe()


@dataclass(slots=True)
class ConsumerStats:
    packets: int = 0
    bytes: int = 0
    retransmitted: int = 0
    nacks: int = 0
    plis: int = 0


class Consumer:
    """One producer forwarded to one subscriber, with its own SSRC and sequence space."""

    __slots__ = (
        "_clock_rate",
        "_history",
        "_need_keyframe",
        "_send",
        "_stats",
        "configured",
        "engine",
        "id",
        "kind",
        "mid",
        "native",
        "paused",
        "preferences",
        "producer",
        "ready",
        "rewriter",
        "rtx_ssrc",
        "ssrc",
        "subscriber_id",
    )

    def __init__(self, producer: Producer, subscriber_id: str, send: Send) -> None:
        self.id = f"{producer.id}>{subscriber_id}"
        self.producer = producer
        self.subscriber_id = subscriber_id
        self.kind = producer.kind
        self.ssrc = random_ssrc()
        self.rtx_ssrc = 0  # RTX for video on the native data plane (the Python one retransmits plainly)
        self.mid: str | None = None
        self.ready = False
        self.paused = False  # the subscriber is deafened: nothing is sent to it
        self.preferences = Preferences()
        self._send = send
        self._clock_rate = producer.clock_rate
        self.rewriter: rtp.Rewriter | None = None
        # NACK is negotiated for video only; its history covers ~3 s at typical video packet rates.
        self._history: rtcp.PacketHistory | None = None if producer.is_audio else rtcp.PacketHistory(256)
        self._need_keyframe = producer.keyframe_test is not None
        self._stats = ConsumerStats()
        self.configured = False
        self.engine: Any = None
        self.native = 0
        if isinstance(send, NativeSink):
            if not producer.is_audio:
                self.rtx_ssrc = random_ssrc()
                while self.rtx_ssrc == self.ssrc:
                    self.rtx_ssrc = random_ssrc()
            self.native = send.engine.add_consumer(producer.native, send.peer, self.ssrc, self.rtx_ssrc)
            self.engine = send.engine
            self._history = None

    def negotiated(
        self,
        mid: str,
        payload_type: int,
        extensions: dict[str, int],
        rtx_payload_type: int | None = None,
    ) -> None:
        """The subscriber accepted this consumer on `mid` with `payload_type`, extension ids and (video
        on the native data plane) an RTX payload type or none."""
        mapping = {self.producer.codec.pt: payload_type}
        kwargs = {
            "mid": mid,
            "mid_id": extensions.get(MID_URI, 0),
            "abs_send_time_id": extensions.get(ABS_SEND_TIME_URI, 0),
            "audio_level_id": extensions.get(AUDIO_LEVEL_URI, 0) if self.kind == "audio" else 0,
        }
        self.mid = mid
        self.configured = True
        if self.engine is not None:
            self.engine.configure_consumer(
                self.native,
                [(self.producer.codec.pt, payload_type)],
                **kwargs,
                transport_cc_id=extensions.get(TRANSPORT_CC_URI, 0),
                rtx_payload_types=[(rtx_payload_type, payload_type)] if rtx_payload_type is not None else [],
            )
            return
        if self.rewriter is None:
            self.rewriter = rtp.Rewriter(self.ssrc, self._clock_rate, mapping, **kwargs)  # type: ignore[arg-type]
        else:
            self.rewriter.configure(mapping, **kwargs)  # type: ignore[arg-type]

    def start(self, now: int) -> None:
        """Negotiated and the subscriber's transport is up: begin forwarding (from a keyframe for video)."""
        if not self.configured:
            return
        self.ready = True
        if self.engine is not None:
            self.engine.set_consumer_ready(self.native, True)
            return
        if self._need_keyframe:
            self.producer.want_keyframe(now)

    def stop(self) -> None:
        """The subscriber rejected the consumer's m-line, or it is being removed: forward nothing."""
        self.ready = False
        if self.engine is not None:
            with contextlib.suppress(KeyError):
                self.engine.set_consumer_ready(self.native, False)

    def close_native(self) -> None:
        """Remove this consumer from the native data plane (its producer's removal does it too)."""
        if self.engine is not None:
            with contextlib.suppress(KeyError):
                self.engine.remove_consumer(self.native)

    def refresh_stats(self) -> None:
        """Copy the native data plane's counters into `stats` (one call); kept after its removal."""
        if self.engine is not None:
            with contextlib.suppress(KeyError):
                s = self._stats
                s.packets, s.bytes, s.retransmitted, s.nacks, s.plis = self.engine.consumer_stats(self.native)

    @property
    def stats(self) -> ConsumerStats:
        self.refresh_stats()
        return self._stats

    def set_paused(self, paused: bool) -> None:
        if self.engine is not None:
            self.paused = paused
            self.engine.set_consumer_paused(self.native, paused)
            return
        if self.paused and not paused and not self.preferences.paused:
            self.paused = False
            self.resume()
        self.paused = paused

    def set_preferences(self, preferences: Preferences) -> None:
        """A subscriber's wishes for this (video) consumer: the tile's size caps the layer, a hidden
        tile pauses it. Separate from `set_paused` (deafen): either one stops the consumer.

        The Python data plane forwards one layer whatever the size, so it keeps only `paused`."""
        was = self.preferences
        self.preferences = preferences
        if self.engine is not None:
            self.engine.set_consumer_preferences(
                self.native,
                max_width=preferences.max_width,
                max_height=preferences.max_height,
                paused=preferences.paused,
            )
            return
        if was.paused and not preferences.paused and not self.paused:
            self.resume()

    def layers(self) -> tuple[int, int]:
        """(current, target) simulcast layer index, -1 = none yet (the Python data plane: layer 0)."""
        if self.engine is not None:
            with contextlib.suppress(KeyError):
                current, target = self.engine.consumer_layers(self.native)
                return int(current), int(target)
            return -1, -1
        return (0, 0) if self.kind == "video" else (-1, -1)

    def resume(self) -> None:
        if self.rewriter is not None:
            self.rewriter.resume()
        if self.producer.keyframe_test is not None:
            self._need_keyframe = True
            self.producer.want_keyframe(now_ms())

    def forward(self, data: bytes, now: int, abs_time: int, level: int, keyframe: bool) -> None:
        """Hot path: rewrite and send one producer packet."""
        if not self.ready or self.paused or self.preferences.paused:
            return
        if self._need_keyframe:
            if not keyframe:
                return
            self._need_keyframe = False
            self.rewriter.switch_source()  # type: ignore[union-attr]
        out = self.rewriter.rewrite(data, now, abs_time, level)  # type: ignore[union-attr]
        if out is None:
            return
        history = self._history
        if history is not None:
            history.put(out)
        self._send(out)
        stats = self._stats
        stats.packets += 1
        stats.bytes += len(out)

    def retransmit(self, seqs: tuple[int, ...]) -> None:
        """Answer a NACK from the packet history."""
        self._stats.nacks += 1
        for seq in seqs:
            packet = self._history.get(seq) if self._history is not None else None
            if packet is not None:
                self._send(packet)
                self._stats.retransmitted += 1

    def sender_report(self, wall_s: float, now: int) -> bytes | None:
        """An SR for this consumer's stream (the subscriber uses it for lip sync and RTT)."""
        rewriter = self.rewriter
        stats = self._stats
        if rewriter is None or not stats.packets:
            return None
        return rtcp.build_sr(
            self.ssrc,
            rtcp.ntp_timestamp(wall_s),
            rewriter.timestamp_at(now),
            stats.packets & 0xFFFFFFFF,
            stats.bytes & 0xFFFFFFFF,
        )


@dataclass
class RouterStats:
    peers: int = 0
    producers: int = 0
    consumers: int = 0
    packets_in: int = 0
    packets_out: int = 0


@dataclass
class Router:
    """One voice channel on this SFU: who publishes what, and who receives it."""

    id: str
    emit: Emit
    speaker: SpeakerDetector = field(default_factory=SpeakerDetector)
    producers: dict[str, Producer] = field(default_factory=dict)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    forwarded_closed: int = 0

    def add_producer(self, producer: Producer, subscribers: dict[str, Send]) -> list[Consumer]:
        """Register a producer and create a consumer for each other peer (`subscribers`: peer id -> send)."""
        self.producers[producer.id] = producer
        if producer.is_audio:
            producer.speaker = self.speaker
            producer.on_speaker_events = self._speaker_events
        created = []
        for peer_id, send in subscribers.items():
            if peer_id != producer.peer_id:
                created.append(self._consume(producer, peer_id, send))
        return created

    def consumers_for_new_peer(self, peer_id: str, send: Send) -> list[Consumer]:
        return [self._consume(p, peer_id, send) for p in self.producers.values() if p.peer_id != peer_id]

    def _consume(self, producer: Producer, peer_id: str, send: Send) -> Consumer:
        consumer = Consumer(producer, peer_id, send)
        producer.consumers.append(consumer)
        self.consumers[consumer.id] = consumer
        return consumer

    def remove_producer(self, producer_id: str) -> list[Consumer]:
        producer = self.producers.pop(producer_id, None)
        if producer is None:
            return []
        gone = list(producer.consumers)
        producer.consumers.clear()
        if producer.engine is not None:
            for consumer in gone:
                consumer.refresh_stats()
            with contextlib.suppress(KeyError):
                producer.engine.remove_producer(producer.native)  # and its consumers
        for consumer in gone:
            self.consumers.pop(consumer.id, None)
            self.forwarded_closed += consumer.stats.packets
        if producer.is_audio:
            self._speaker_events(self.speaker.remove(producer.peer_id, now_ms()))
        return gone

    def remove_consumers_of(self, peer_id: str) -> None:
        for consumer in [c for c in self.consumers.values() if c.subscriber_id == peer_id]:
            consumer.refresh_stats()
            consumer.close_native()
            self.consumers.pop(consumer.id, None)
            self.forwarded_closed += consumer.stats.packets
            consumers = consumer.producer.consumers
            if consumer in consumers:
                consumers.remove(consumer)

    def tick(self, now: int) -> None:
        self._speaker_events(self.speaker.tick(now))
        for producer in self.producers.values():
            producer.poll_keyframe(now)

    def _speaker_events(self, events: tuple[Any, ...]) -> None:
        for event in events:
            if isinstance(event, SpeakingStarted):
                self.emit(
                    {"type": "speaking", "router": self.id, "peer": event.participant_id, "speaking": True}
                )
            elif isinstance(event, SpeakingStopped):
                self.emit(
                    {"type": "speaking", "router": self.id, "peer": event.participant_id, "speaking": False}
                )
            elif isinstance(event, DominantSpeakerChanged):
                self.emit({"type": "dominant_speaker", "router": self.id, "peer": event.participant_id})
