"""A Peer: one client's transport, negotiation state, producers and consumers, wired to its Router."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voxa.sfu import rtcp, rtp, sdp
from voxa.sfu.negotiation import (
    NATIVE_FEATURES,
    PYTHON_FEATURES,
    ConsumerSpec,
    NegotiationError,
    Negotiator,
    ProducerSpec,
    State,
)
from voxa.sfu.router import (
    SOURCES,
    Consumer,
    NativeSink,
    Preferences,
    Producer,
    default_source,
    now_ms,
    random_ssrc,
)
from voxa.sfu.sdp import RemoteDescription, SdpError
from voxa.sfu.transport import WebRtcTransport
from voxa.sfu.webrtc_server import NativeTransport

if TYPE_CHECKING:
    from voxa.sfu.worker import RouterHandle, SfuWorker

log = logging.getLogger("voxa.sfu.peer")


class PeerError(Exception):
    """A request about a router or peer that cannot be honoured; the message is for the caller.

    The subclass says which HTTP status the control API answers with: `NotFound` 404, `Conflict`
    409; the native data plane's KeyError/RuntimeError("conflict: ...") map the same way.
    """


class NotFound(PeerError):
    """No such router, peer, producer or consumer."""


class Conflict(PeerError):
    """The request contradicts the current state (draining, a duplicate)."""


class Peer:
    def __init__(
        self,
        worker: SfuWorker,
        room: RouterHandle,
        peer_id: str,
        *,
        can_speak: bool = True,
        can_video: bool = True,
        can_stream: bool = False,
    ) -> None:
        self.worker = worker
        self.room = room
        self.id = peer_id
        self.can_speak = can_speak
        self.can_video = can_video
        self.can_stream = can_stream  # screen and screen_audio sources (Discord's "Go Live")
        self.sources: dict[str, str] = {}  # mid -> source, as the client told; else by kind
        self._tracks_told: list[dict[str, Any]] | None = None
        self.muted = False
        self.server_muted = False
        self.deafened = False
        self.rtcp_ssrc = random_ssrc()
        self.producers: dict[str, Producer] = {}  # mid -> producer
        self.by_ssrc: dict[int, Producer] = {}
        self._other_layers: set[int] = set()  # Python data plane: SSRCs of simulcast layers above 0
        self.consumers: dict[str, Consumer] = {}  # consumers sending to this peer
        self.transport: WebRtcTransport | NativeTransport
        if worker.server is not None:
            # The native data plane: one shared port, no packet of this peer passes through Python.
            self.transport = NativeTransport(
                worker.server, worker.certificate, on_closed=self._transport_closed
            )
            self.send_rtp: Callable[[bytes], None] = NativeSink(worker.server.engine, self.transport.peer)
            self.send_rtcp: Callable[[bytes], None] = self.send_rtp
        else:
            self.transport = WebRtcTransport(
                worker.certificate, on_rtp=self.on_rtp, on_rtcp=self.on_rtcp, on_closed=self._transport_closed
            )
            self.send_rtp = self.transport.fast.send_rtp
            self.send_rtcp = self.transport.fast.send_rtcp
        self.negotiator: Negotiator | None = None
        self.last_offer: str | None = None
        """The last offer this peer was sent: while unanswered, signaling sends it again to a client
        that resumed its session (it may have reached the lost socket only, or not at all)."""
        self.remote: RemoteDescription | None = None
        self.offers_sent = 0
        self._offer_dirty = False
        self.closed = False

    # --- negotiation ------------------------------------------------------------------------------
    async def open(self, offer: str, sources: dict[str, str] | None = None) -> str:
        settings = self.worker.settings
        if isinstance(self.transport, NativeTransport):
            local = self.transport.setup()
        else:
            local = await self.transport.setup(
                settings.rtc_listen_ip,
                settings.rtc_announced_ip,
                settings.rtc_min_port,
                settings.rtc_max_port,
                settings.remote_filter,
            )
        native = isinstance(self.transport, NativeTransport)
        self.negotiator = Negotiator(local, random_ssrc(), NATIVE_FEATURES if native else PYTHON_FEATURES)
        try:
            answer = self.handle_offer(offer, sources)
        except SdpError:
            await self.transport.close("bad offer")
            raise
        assert answer is not None and self.remote is not None
        self.transport.start(self.remote, settings.connect_timeout_s)
        asyncio.get_running_loop().create_task(self._when_connected())
        return answer

    def handle_offer(self, offer: str, sources: dict[str, str] | None = None) -> str | None:
        """Answer a client offer, or return None if our own offer is pending (we are impolite).

        `sources` names what some of its m-sections carry (mid -> microphone, camera, screen,
        screen_audio); a mid it leaves out keeps what it was told before, else its kind's default."""
        assert self.negotiator is not None
        if sources:
            self._check_sources(offer, sources)
        result = self.negotiator.on_offer(offer)
        if result.answer is None:
            return None
        if result.first:
            self.remote = result.remote
        if sources:
            self.sources.update(sources)
        for spec in result.producers:
            self._apply_producer(spec)
        self._tell_tracks()
        if self._offer_dirty or any(c.mid is None for c in self.consumers.values()):
            asyncio.get_running_loop().call_soon(self.schedule_offer)
        return result.answer

    def _check_sources(self, offer: str, sources: dict[str, str]) -> None:
        """Every mid named is one of the offer's m-sections, with a source of its kind (before the
        offer changes any state)."""
        kinds = {m.mid: m.kind for m in sdp.parse(offer, "offer").media}
        for mid, source in sources.items():
            if mid not in kinds:
                raise NegotiationError(f"sources: the offer has no m-section {mid!r}")
            if SOURCES.get(source) != kinds[mid]:
                raise NegotiationError(
                    f"sources: {source!r} cannot be the source of {kinds[mid]} m-section {mid!r}"
                )

    def handle_answer(self, answer: str) -> None:
        assert self.negotiator is not None
        result = self.negotiator.on_answer(answer)
        now = now_ms()
        for consumer_id, mid in result.consumers.items():
            consumer = self.consumers.get(consumer_id)
            media = self.negotiator.consumer_line(consumer_id)
            if consumer is None or media is None:
                continue
            accepted = result.accepted.get(consumer_id)
            if consumer.mid != mid or not consumer.configured:
                if accepted is None:
                    consumer.negotiated(mid, media.codecs[0].pt, media.extensions)
                else:
                    consumer.negotiated(
                        mid, accepted.payload_type, accepted.extensions, accepted.rtx_payload_type
                    )
            if self.transport.connected.is_set() and not consumer.ready:
                consumer.start(now)
        for consumer_id in result.rejected:
            consumer = self.consumers.get(consumer_id)
            if consumer is not None:
                consumer.stop()
        if self._offer_dirty:
            self.schedule_offer()

    def schedule_offer(self) -> None:
        """Offer the consumers this peer should receive now (after the pending answer, if one is due)."""
        negotiator = self.negotiator
        if negotiator is None or self.closed:
            return
        if negotiator.state is not State.STABLE:
            self._offer_dirty = True
            return
        self._offer_dirty = False
        specs = [
            ConsumerSpec(
                consumer_id=c.id,
                kind=c.kind,
                codec=c.producer.codec,
                ssrc=c.ssrc,
                cname=f"voxa-{c.producer.peer_id}",
                stream_id=c.producer.peer_id,
                track_id=c.producer.id,
                rtx_ssrc=c.rtx_ssrc,
            )
            for c in self.consumers.values()
        ]
        offer = negotiator.create_offer(specs)
        if offer is not None:
            self.offers_sent += 1
            self.last_offer = offer
            self.worker.emit({"type": "offer", "router": self.room.router.id, "peer": self.id, "sdp": offer})

    def _apply_producer(self, spec: ProducerSpec) -> None:
        producer = self.producers.get(spec.mid)
        native = isinstance(self.transport, NativeTransport)
        ssrcs = spec.ssrcs
        if not native and len(spec.layers) > 1:
            # The Python data plane forwards the lowest simulcast layer only (see docs/sfu.md).
            ssrcs = (spec.layers[0].ssrc,) if spec.layers[0].ssrc else ()
        source = self.sources.get(spec.mid, default_source(spec.kind))
        if producer is None:
            if not spec.sending:
                return
            producer = Producer(
                self.id,
                spec.mid,
                spec.kind,
                spec.codec,
                ssrcs,
                spec.extensions,
                request_keyframe=self._request_keyframe,
                layers=spec.layers,
                rtx_payload_types=spec.rtx_payload_types,
                source=source,
            )
            if isinstance(self.transport, NativeTransport):
                producer.attach_native(self.transport.server.engine, self.transport.peer)
            self.producers[spec.mid] = producer
            producer.set_paused(
                muted=self._mute_applies(producer) and self.muted,
                server_muted=self.server_muted and producer.is_audio,
                permitted=self._permitted(producer),
            )
            for ssrc in ssrcs:
                self.by_ssrc[ssrc] = producer
            self.room.add_producer(self, producer)
            if not native and len(spec.layers) > 1 and spec.rids:
                # Dynacast on the Python data plane: only the lowest layer is ever forwarded.
                self.tell_layers(producer, 1)
        else:
            for ssrc in ssrcs:
                if ssrc not in producer.ssrcs:
                    producer.ssrcs.add(ssrc)
                    self.by_ssrc[ssrc] = producer
            producer.source = source
            producer.sending = spec.sending
            if not spec.sending:
                producer.set_paused(permitted=False)
            else:
                producer.set_paused(permitted=self._permitted(producer))

    def _permitted(self, producer: Producer) -> bool:
        """The right a source needs: speak (microphone), video (camera), stream (screen, its audio)."""
        if producer.source in ("screen", "screen_audio"):
            return self.can_stream
        return self.can_speak if producer.is_audio else self.can_video

    @staticmethod
    def _mute_applies(producer: Producer) -> bool:
        """The client's own mute is its microphone's; a shared tab's audio is not muted with it."""
        return producer.source == "microphone"

    def set_rights(
        self, *, can_speak: bool | None = None, can_video: bool | None = None, can_stream: bool | None = None
    ) -> None:
        if can_speak is not None:
            self.can_speak = can_speak
        if can_video is not None:
            self.can_video = can_video
        if can_stream is not None:
            self.can_stream = can_stream
        for producer in self.producers.values():
            producer.set_paused(permitted=self._permitted(producer) and producer.sending)
        self._tell_tracks()

    def tracks(self) -> list[dict[str, Any]]:
        """What this peer publishes and others may receive: for presence (the `tracks` event)."""
        return [
            {"track": p.id, "mid": p.mid, "kind": p.kind, "source": p.source, "layers": p.rids}
            for p in self.producers.values()
            if p.sending and p.permitted
        ]

    def _tell_tracks(self) -> None:
        tracks = self.tracks()
        if tracks != self._tracks_told:
            self._tracks_told = tracks
            self.worker.emit(
                {"type": "tracks", "router": self.room.router.id, "peer": self.id, "tracks": tracks}
            )

    def tell_layers(self, producer: Producer, mask: int) -> None:
        """Dynacast: which of its simulcast layers the publisher should encode (bit i = layer i)."""
        active = {rid: bool(mask >> i & 1) for i, rid in enumerate(producer.rids)}
        if active:
            self.worker.emit(
                {
                    "type": "publish_layers",
                    "router": self.room.router.id,
                    "peer": self.id,
                    "mid": producer.mid,
                    "active": active,
                }
            )

    def set_quality(self, track: str, preferences: Preferences) -> dict[str, Any]:
        """A subscriber's tile of `track` (the producer id): its size caps the layer, hidden pauses it."""
        consumer = next((c for c in self.consumers.values() if c.producer.id == track), None)
        if consumer is None:
            raise NotFound(f"peer {self.id!r} receives no track {track!r}")
        consumer.set_preferences(preferences)
        current, target = consumer.layers()
        return {
            "track": track,
            "max_width": preferences.max_width or None,
            "max_height": preferences.max_height or None,
            "paused": preferences.paused,
            "layer": current,
            "target_layer": target,
        }

    def set_deafened(self, deafened: bool) -> None:
        """Deafened (by itself or a moderator): stop sending this peer anything, without renegotiation."""
        self.deafened = deafened
        for consumer in self.consumers.values():
            consumer.set_paused(deafened)

    def set_muted(self, *, muted: bool | None = None, server_muted: bool | None = None) -> None:
        """Mute (client's own) or server-mute (moderator's) every audio producer, without renegotiation."""
        if muted is not None:
            self.muted = muted
        if server_muted is not None:
            self.server_muted = server_muted
        for producer in self.producers.values():
            if producer.is_audio:
                producer.set_paused(
                    muted=self.muted and self._mute_applies(producer), server_muted=self.server_muted
                )

    async def _when_connected(self) -> None:
        await self.transport.connected.wait()
        now = now_ms()
        for consumer in self.consumers.values():
            if consumer.configured and not consumer.ready:
                consumer.start(now)
        self.worker.emit(
            {"type": "peer_state", "router": self.room.router.id, "peer": self.id, "state": "connected"}
        )

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers[consumer.id] = consumer
        consumer.paused = self.deafened

    def drop_consumers(self, consumers: list[Consumer]) -> None:
        changed = False
        for consumer in consumers:
            if self.consumers.pop(consumer.id, None) is not None:
                consumer.stop()
                changed = True

        if changed:
            self.schedule_offer()

    # --- media (hot path) ---------------------------------------------------------------------------
    def on_rtp(self, data: bytes) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            self.worker.bad_packets += 1
            return
        ssrc = (data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11]
        producer = self.by_ssrc.get(ssrc)
        if producer is None:
            producer = self._bind_unknown_ssrc(data, ssrc)
            if producer is None:
                return
        if rtp.check_rtp(data) is not None:
            self.worker.bad_packets += 1
            return
        producer.receive(data, now_ms())

    def _bind_unknown_ssrc(self, data: bytes, ssrc: int) -> Producer | None:
        """An SSRC the SDP did not announce: find its producer by the mid header extension.

        A simulcast producer takes only its lowest layer's SSRC (by the rid extension) here: the
        Python data plane does not switch layers. Other layers' SSRCs are remembered and dropped."""
        if ssrc in self._other_layers:
            return None
        if rtp.check_rtp(data) is not None:
            self.worker.bad_packets += 1
            return None
        for producer in self.producers.values():
            if producer.mid_id and _extension_text(data, producer.mid_id) == producer.mid:
                if (data[1] & 0x7F) != producer.codec.pt:
                    break  # RTX or padding of a format the Python data plane did not negotiate
                if len(producer.layers) > 1 and producer.rid_id:
                    rid = _extension_text(data, producer.rid_id)
                    if rid is None:
                        break  # wait for a packet that names its layer
                    if rid != producer.layers[0].rid:
                        self._other_layers.add(ssrc)
                        return None
                producer.ssrcs.add(ssrc)
                self.by_ssrc[ssrc] = producer
                return producer
        self.worker.unknown_packets += 1
        return None

    def on_rtcp(self, data: bytes) -> None:
        try:
            packets = rtcp.parse_rtcp(data)
        except ValueError:
            self.worker.bad_packets += 1
            return
        now = now_ms()
        for packet in packets:
            if isinstance(packet, rtcp.Nack):
                consumer = self._consumer_by_ssrc(packet.media_ssrc)
                if consumer is not None:
                    consumer.retransmit(packet.lost)
            elif isinstance(packet, rtcp.Pli):
                consumer = self._consumer_by_ssrc(packet.media_ssrc)
                if consumer is not None:
                    consumer.stats.plis += 1
                    consumer.producer.want_keyframe(now)
            elif isinstance(packet, rtcp.Fir):
                for media_ssrc, _seq in packet.entries:
                    consumer = self._consumer_by_ssrc(media_ssrc)
                    if consumer is not None:
                        consumer.producer.want_keyframe(now)
            elif isinstance(packet, rtcp.SenderReport):
                producer = self.by_ssrc.get(packet.ssrc)
                if producer is not None:
                    stats = producer.receivers.get(packet.ssrc)
                    if stats is not None:
                        stats.on_sender_report(packet.ntp_ts, now)

    def _consumer_by_ssrc(self, ssrc: int) -> Consumer | None:
        for consumer in self.consumers.values():
            if consumer.ssrc == ssrc:
                return consumer
        return None

    def _request_keyframe(self, media_ssrc: int) -> None:
        self.send_rtcp(rtcp.build_pli(self.rtcp_ssrc, media_ssrc))

    def send_reports(self, wall_s: float, now: int) -> None:
        """Periodic RTCP: an SR per consumer sent to this peer, and RRs for what this peer publishes.

        (The native data plane sends its reports itself.)"""
        if not self.transport.connected.is_set() or isinstance(self.transport, NativeTransport):
            return
        parts = [
            sr
            for c in self.consumers.values()
            if c.ready and (sr := c.sender_report(wall_s, now)) is not None
        ]
        blocks = [
            block
            for producer in self.producers.values()
            for stats in producer.receivers.values()
            if (block := stats.report_block(now)) is not None
        ]
        if blocks or not parts:
            parts.insert(0, rtcp.build_rr(self.rtcp_ssrc, blocks[:31]))
        self.send_rtcp(b"".join(parts))

    # --- lifecycle --------------------------------------------------------------------------------
    def _transport_closed(self, reason: str) -> None:
        if not self.closed:
            asyncio.get_running_loop().create_task(self.room.remove_peer(self.id, reason=reason))

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        await self.transport.close(reason)
        self.worker.emit(
            {
                "type": "peer_state",
                "router": self.room.router.id,
                "peer": self.id,
                "state": "closed",
                "reason": reason,
            }
        )

    def pending_offer(self) -> str | None:
        """The offer still waiting for the client's answer, if any."""
        negotiator = self.negotiator
        if negotiator is None or negotiator.state is not State.HAVE_LOCAL_OFFER:
            return None
        return self.last_offer

    def stats(self) -> dict[str, Any]:
        fast = self.transport.fast
        return {
            "id": self.id,
            "connected": self.transport.connected.is_set(),
            "muted": self.muted,
            "server_muted": self.server_muted,
            "deafened": self.deafened,
            "producers": [
                {
                    "mid": p.mid,
                    "kind": p.kind,
                    "packets": p.stats.packets,
                    "dropped": p.stats.dropped,
                    "forwarding": p.forwarding,
                    "source": p.source,
                    "layers": p.layer_states() or p.rids,
                }
                for p in self.producers.values()
            ],
            "consumers": [
                {
                    "mid": c.mid,
                    "kind": c.kind,
                    "producer": c.producer.id,
                    "packets": c.stats.packets,
                    "retransmitted": c.stats.retransmitted,
                    "ready": c.ready,
                    "layer": c.layers()[0],
                    "paused": c.preferences.paused,
                }
                for c in self.consumers.values()
            ],
            "offers_sent": self.offers_sent,
            "rx_packets": fast.rx_packets,
            "tx_packets": fast.tx_packets,
            "srtp_errors": fast.rx_errors,
            "at": time.time(),
        }


def _extension_text(data: bytes, ext_id: int) -> str | None:
    found = rtp.find_extension(data, ext_id)
    if found is None:
        return None
    return bytes(data[found[0] : found[0] + found[1]]).decode(errors="replace")
