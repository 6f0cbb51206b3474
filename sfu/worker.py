"""One SFU worker process: its routers, the shared DTLS certificate, events for signaling, periodic work.

Each worker owns whole routers (mediasoup's model) and registers as a media server of its own, so
signaling spreads channels over workers like over pods, with no inter-process hops on the media path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from aiortc import RTCCertificate

from voxa.sfu.peer import Conflict, NotFound, Peer
from voxa.sfu.router import Producer, Router, now_ms
from voxa.sfu.settings import SfuSettings
from voxa.sfu.webrtc_server import WebRtcServer

log = logging.getLogger("voxa.sfu.worker")
Listener = Callable[[dict[str, Any]], None]


class RouterHandle:
    """A Router and the peers in it."""

    def __init__(self, worker: SfuWorker, router_id: str) -> None:
        self.worker = worker
        self.router = Router(router_id, worker.emit)
        self.peers: dict[str, Peer] = {}

    async def add_peer(
        self,
        peer_id: str,
        offer: str,
        *,
        can_speak: bool = True,
        can_video: bool = True,
        can_stream: bool = False,
        sources: dict[str, str] | None = None,
    ) -> str:
        if peer_id in self.peers:
            await self.remove_peer(peer_id, reason="replaced")
        peer = Peer(
            self.worker, self, peer_id, can_speak=can_speak, can_video=can_video, can_stream=can_stream
        )
        self.peers[peer_id] = peer
        try:
            answer = await peer.open(offer, sources)
        except BaseException:
            self.peers.pop(peer_id, None)
            await peer.close("failed to open")
            raise
        for consumer in self.router.consumers_for_new_peer(peer_id, peer.send_rtp):
            peer.add_consumer(consumer)
        if peer.consumers:
            asyncio.get_running_loop().call_soon(peer.schedule_offer)
        return answer

    def add_producer(self, peer: Peer, producer: Producer) -> None:
        subscribers = {pid: p.send_rtp for pid, p in self.peers.items() if pid != peer.id}
        for consumer in self.router.add_producer(producer, subscribers):
            subscriber = self.peers[consumer.subscriber_id]
            subscriber.add_consumer(consumer)
            subscriber.schedule_offer()

    def peer(self, peer_id: str) -> Peer:
        peer = self.peers.get(peer_id)
        if peer is None:
            raise NotFound(f"no peer {peer_id!r} in router {self.router.id!r}")
        return peer

    async def remove_peer(self, peer_id: str, *, reason: str = "removed") -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        for producer in list(peer.producers.values()):
            gone = self.router.remove_producer(producer.id)
            by_subscriber: dict[str, list[Any]] = {}
            for consumer in gone:
                by_subscriber.setdefault(consumer.subscriber_id, []).append(consumer)
            for subscriber_id, consumers in by_subscriber.items():
                subscriber = self.peers.get(subscriber_id)
                if subscriber is not None:
                    subscriber.drop_consumers(consumers)
        self.router.remove_consumers_of(peer_id)
        await peer.close(reason)

    async def close(self) -> None:
        for peer_id in list(self.peers):
            await self.remove_peer(peer_id, reason="router closed")

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.router.id,
            "peers": [p.stats() for p in self.peers.values()],
            "producers": len(self.router.producers),
            "consumers": len(self.router.consumers),
            "dominant_speaker": self.router.speaker.dominant,
            "speaking": sorted(self.router.speaker.speaking),
        }


class Meter:
    """Forwarded packets/s and CPU share, refreshed once a second (reported to the registry and metrics)."""

    def __init__(self) -> None:
        self.packets_per_s = 0.0
        self.cpu = 0.0
        self._packets = 0
        self._cpu_s = time.process_time()
        self._at = time.monotonic()

    def update(self, forwarded_total: int) -> None:
        now = time.monotonic()
        cpu_s = time.process_time()
        elapsed = now - self._at
        if elapsed > 0:
            self.packets_per_s = max(forwarded_total - self._packets, 0) / elapsed
            self.cpu = (cpu_s - self._cpu_s) / elapsed
        self._packets, self._cpu_s, self._at = forwarded_total, cpu_s, now


class SfuWorker:
    def __init__(self, settings: SfuSettings, worker_index: int = 0) -> None:
        self.settings = settings
        self.index = worker_index
        self.id = settings.id if settings.workers == 1 else f"{settings.id}-w{worker_index}"
        self.certificate = RTCCertificate.generateCertificate()
        self.routers: dict[str, RouterHandle] = {}
        self.listeners: list[Listener] = []
        self.draining = False
        self._bad_packets = 0
        self._unknown_packets = 0
        self.meter = Meter()
        self.forwarded_closed = 0  # packets forwarded by consumers that are gone
        self._tasks: list[asyncio.Task[None]] = []
        self.server: WebRtcServer | None = None  # the native data plane's shared port (when in use)

    @property
    def bad_packets(self) -> int:
        """Garbled datagrams dropped (the native data plane counts its own)."""
        if self.server is not None:
            c = self.server.engine.counters()
            return int(c["bad_packets"] + c["srtp_errors"] + c["oversized"] + c["stun_rejected"])
        return self._bad_packets

    @bad_packets.setter
    def bad_packets(self, value: int) -> None:
        self._bad_packets = value

    @property
    def unknown_packets(self) -> int:
        if self.server is not None:
            c = self.server.engine.counters()
            return int(c["unknown_ssrc"] + c["unknown_source"])
        return self._unknown_packets

    @unknown_packets.setter
    def unknown_packets(self, value: int) -> None:
        self._unknown_packets = value

    # --- events to signaling ------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("sfu.listener_failed")

    # --- routers ------------------------------------------------------------------------------------
    def create_router(self, router_id: str) -> RouterHandle:
        room = self.routers.get(router_id)
        if room is None:
            if self.draining:
                raise Conflict("this SFU is draining and takes no new routers")
            room = self.routers[router_id] = RouterHandle(self, router_id)
        return room

    def router(self, router_id: str) -> RouterHandle:
        room = self.routers.get(router_id)
        if room is None:
            raise NotFound(f"no router {router_id!r}")
        return room

    async def close_router(self, router_id: str) -> None:
        room = self.routers.pop(router_id, None)
        if room is not None:
            await room.close()
            self.forwarded_closed += room.router.forwarded_closed

    def load(self) -> dict[str, Any]:
        peers = sum(len(r.peers) for r in self.routers.values())
        producers = sum(len(r.router.producers) for r in self.routers.values())
        consumers = sum(len(r.router.consumers) for r in self.routers.values())
        return {
            "routers": len(self.routers),
            "peers": peers,
            "producers": producers,
            "consumers": consumers,
            "packets_per_s": round(self.meter.packets_per_s, 1),
            "cpu": round(self.meter.cpu, 3),
        }

    # --- periodic work ------------------------------------------------------------------------------
    def _open_server(self) -> WebRtcServer:
        """Bind this worker's one media port: rtc_min_port + index, else the next free one in the range."""
        s = self.settings
        span = s.rtc_max_port - s.rtc_min_port + 1
        last: OSError | None = None
        for i in range(span):
            port = s.rtc_min_port + (self.index + i) % span
            try:
                return WebRtcServer(s.rtc_listen_ip, port, s.rtc_announced_ip, list(s.rtc_remote_networks))
            except OSError as exc:
                last = exc
        raise OSError(f"no free UDP port in {s.rtc_min_port}-{s.rtc_max_port}: {last}")

    @property
    def media_port(self) -> int | None:
        """The native data plane's port (None on the Python data plane: a port per peer)."""
        return self.server.port if self.server is not None else None

    async def start(self) -> None:
        if self.settings.dataplane == "native" and self.server is None:
            self.server = self._open_server()
            self.server.on_media_event = self._on_media_event
            self.server.start()
            log.info("sfu.media_port", extra={"port": self.server.port, "worker": self.index})
        self._tasks = [
            asyncio.create_task(self._ticker(), name="voxa-sfu-ticker"),
            asyncio.create_task(self._reporter(), name="voxa-sfu-rtcp"),
        ]

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = now_ms()
            if self.server is not None:
                self._feed_levels(now)
            for room in list(self.routers.values()):
                room.router.tick(now)

    def _feed_levels(self, now: int) -> None:
        """The native data plane's audio levels (a sample per producer per tick) to the speaker detectors."""
        assert self.server is not None
        levels = self.server.engine.take_levels()
        if not levels:
            return
        producers = {p.native: p for r in self.routers.values() for p in r.router.producers.values()}
        for native, loudness, packets, voiced in levels:
            producer = producers.get(native)
            if producer is not None and producer.speaker is not None:
                producer.native_levels(now, loudness, packets, voiced)

    def _on_media_event(self, kind: str, native: int, value: object) -> None:
        """The data plane's simulcast events: dynacast (a producer's wanted layers changed) to the
        publisher, a consumer's layer switch for its subscriber. Rare (on change), so found by search."""
        for room in self.routers.values():
            if kind == "layers":
                producer = next((p for p in room.router.producers.values() if p.native == native), None)
                peer = room.peers.get(producer.peer_id) if producer is not None else None
                if producer is not None and peer is not None:
                    peer.tell_layers(producer, int(cast(int, value)))
                    return
            elif kind == "layer":
                consumer = next((c for c in room.router.consumers.values() if c.native == native), None)
                if consumer is not None:
                    layer = int(cast(int, value))
                    rids = consumer.producer.rids
                    self.emit(
                        {
                            "type": "consumer_layer",
                            "router": room.router.id,
                            "peer": consumer.subscriber_id,
                            "track": consumer.producer.id,
                            "layer": layer,
                            "rid": rids[layer] if 0 <= layer < len(rids) else None,
                        }
                    )
                    return

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            wall = time.time()
            now = now_ms()
            for room in list(self.routers.values()):
                for peer in list(room.peers.values()):
                    peer.send_reports(wall, now)
            self.meter.update(self.forwarded_total())

    def forwarded_total(self) -> int:
        if self.server is not None:
            return int(self.server.engine.forwarded_total())
        total = self.forwarded_closed
        for room in self.routers.values():
            total += room.router.forwarded_closed + sum(
                c.stats.packets for c in room.router.consumers.values()
            )
        return total

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for router_id in list(self.routers):
            await self.close_router(router_id)
        if self.server is not None:
            self.server.close()
            self.server = None
