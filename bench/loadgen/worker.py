"""One load process of the SFU benchmark: its peers, the pacer, and measurement windows.

The orchestrator (bench/sfu.py) spawns a few of these, pinned to the load generator's core, and sends
each commands over a pipe, answered in turn:

* ``join`` (``wave`` "publish" then "subscribe"): set peers up against Voxa (control API + the
  ``/v1/events`` WebSocket for the SFU's offers) or Janus (VideoRoom publisher / subscriber handles);
* ``wait_flowing``: until every subscriber receives all the streams it expects (distinct SSRCs);
* ``window``: count packets whose embedded send time falls in [t0, t1) from now on (senders and
  receivers), keeping each one's latency (receive - send, same host, same monotonic clock);
* ``collect``: the window's counts and latencies; ``leave``: remove peers; ``status``; ``exit``.

With simulcast (``WorkerConfig.simulcast``, the ``video-room --simulcast`` scenario) publishers send
three VP8 layers, answer keyframe requests (PLI/FIR) on each, and two more commands exist:

* ``set_layers`` (Voxa): give every joined subscriber its layers (`PeerSpec.layers`) through the SFU's
  quality API, and a bandwidth far above need through the bench hook (bench/loadgen/sfu_hooks.py), so
  that the layers follow the plan rather than an estimate made without feedback (Janus subscribers
  get their substreams with ``configure`` when they subscribe);
* ``switch``: measure one subscriber's layer switch: which layer each of its video SSRCs carries
  (the payload trailer), then the action (Voxa: its bandwidth drops to ``LOW_BPS`` — the data plane's
  ``set_peer_bandwidth`` through the bench hook — or its tiles shrink to 160x90 through the quality
  API; Janus: ``configure`` substream 0), then the time until each SSRC that was above q delivers a
  packet of q.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import heapq
import itertools
import json
import os
import random
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

import aiohttp
import pylibsrtp
from aiortc import RTCPeerConnection, RTCSessionDescription
from janus.client import JanusError, JanusHandle, JanusSession, VideoRoom
from janus.peers import check_loopback_sdp, restrict_ice_to_loopback

from loadgen.media import LAYER_MAGIC, RIDS, MediaCatalog, StreamSender, WindowClock
from loadgen.plan import VIDEO_MID, PeerSpec, video_track
from loadgen.rtc import (
    DatagramHandler,
    FastLink,
    HandlerFactory,
    negotiated,
    new_peer_connection,
    prefer_vp8,
    simulcast_offer,
    wait_connected,
)

Message = dict[str, Any]
SKIP_BEHIND_NS: Final = 200_000_000  # a sender more than this late skips ahead instead of bursting
PACER_MAX_SLEEP_S: Final = 0.005
MAX_ERRORS_KEPT: Final = 20
HIGH_BPS: Final = 10_000_000  # simulcast subscribers' bandwidth: every layer fits (the estimator's max)
LOW_BPS: Final = 100_000  # a switch probe's drop: below what q of three publishers plus audio needs
LAYER_TILES: Final = ((160, 90), (320, 180))  # quality API max_width/height that cap to q and h
WATCH_MIN_HITS: Final = 5  # packets with a layer trailer before an SSRC counts as a video consumer


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    target: str  # "voxa" or "janus"
    url: str  # Voxa: http://127.0.0.1:<port>; Janus: http://127.0.0.1:<port>/janus
    secret: str
    core: int | None
    catalog: MediaCatalog
    concurrency: int = 12
    join_timeout_s: float = 40.0
    max_runtime_s: float = 900.0
    max_latency_samples: int = 4_000_000
    decrypt_every: int = 1
    simulcast: bool = False


class Watch:
    """A switch probe's view of one subscriber: the layer each SSRC carries (from the payload trailer)
    and when each (SSRC, layer) was first seen since the watch began."""

    __slots__ = ("first", "hits", "layer")

    def __init__(self) -> None:
        self.layer: dict[bytes, int] = {}
        self.hits: Counter[bytes] = Counter()
        self.first: dict[tuple[bytes, int], int] = {}

    def seen(self, ssrc: bytes, layer: int, now: int) -> None:
        self.layer[ssrc] = layer
        self.hits[ssrc] += 1
        self.first.setdefault((ssrc, layer), now)

    def video_layers(self) -> dict[bytes, int]:
        """The video SSRCs (seen often enough with a trailer: not an audio payload's chance match)."""
        return {s: lay for s, lay in self.layer.items() if self.hits[s] >= WATCH_MIN_HITS}


class Receiver:
    """What one peer receives (all its receiving connections together)."""

    __slots__ = ("packets", "ssrcs", "watch")

    def __init__(self) -> None:
        self.packets = 0
        self.ssrcs: set[bytes] = set()
        self.watch: Watch | None = None  # a switch probe: every packet is decrypted and its layer read


class Meter:
    """A load process's receive-side counters for the current window, and its latency samples (ns)."""

    def __init__(self, clock: WindowClock, max_samples: int, decrypt_every: int = 1) -> None:
        if decrypt_every < 1 or decrypt_every & (decrypt_every - 1) or decrypt_every > 256:
            raise ValueError("decrypt_every must be a power of 2 in 1..256")
        self.clock = clock
        self.max_samples = max_samples
        self.decrypt_every = decrypt_every
        self.rx_window = 0
        self.rx_errors = 0
        self.rtcp_dropped = 0
        self.rx_bad = 0
        self.latencies = array.array("q")

    def reset(self) -> None:
        self.rx_window = 0
        self.rx_bad = 0
        del self.latencies[:]

    def handler_factory(
        self, receiver: Receiver, expect_streams: int, on_rtcp: Callable[[bytes], None] | None = None
    ) -> HandlerFactory:
        """Builds the datagram function of one receiving connection (the load generator's hot path).

        Every RTP packet arriving inside the window is counted (by arrival time; the RTP header is in
        the clear). Packets whose sequence number is a multiple of `decrypt_every` (a power of 2; 1 =
        all) are SRTP-unprotected and their latency (now - the send time in the last 8 payload bytes)
        kept, when that send time is inside the window. RTCP from the server is counted and dropped
        (aiortc would parse it in Python for nothing) or, with `on_rtcp`, handed to it (a simulcast
        publisher answers keyframe requests); STUN and DTLS go on to aiortc. While the receiver has a
        `Watch` (a switch probe, briefly), every packet is decrypted and its layer trailer read."""
        clock = self.clock
        latencies = self.latencies
        append = latencies.append
        ssrcs = receiver.ssrcs
        now_ns = time.monotonic_ns
        from_bytes = int.from_bytes
        max_samples = self.max_samples
        srtp_error = pylibsrtp.Error
        mask = self.decrypt_every - 1
        meter = self

        def make(unprotect: Callable[[bytes], bytes], original: DatagramHandler) -> DatagramHandler:
            def datagram_received(data: Any, addr: Any) -> None:
                if 127 < data[0] < 192 and not 191 < data[1] < 224:  # RTP (RFC 7983, RFC 5761)
                    now = now_ns()
                    receiver.packets += 1
                    if clock.t0 <= now < clock.t1:
                        meter.rx_window += 1
                    if len(ssrcs) < expect_streams:
                        ssrcs.add(data[8:12])
                    watch = receiver.watch
                    if watch is None:
                        if data[3] & mask:
                            return
                        try:
                            plain = unprotect(data)
                        except srtp_error:
                            meter.rx_errors += 1
                            return
                    else:
                        try:
                            plain = unprotect(data)
                        except srtp_error:
                            meter.rx_errors += 1
                            return
                        if len(plain) > 22 and plain[-10] == LAYER_MAGIC and plain[-9] < 3:
                            watch.seen(data[8:12], plain[-9], now)
                        if data[3] & mask:
                            return
                    sent = from_bytes(plain[-8:], "big")
                    if clock.t0 <= sent < clock.t1:
                        delay = now - sent
                        if delay < 0 or delay > 60_000_000_000:
                            meter.rx_bad += 1
                        elif len(latencies) < max_samples:
                            append(delay)
                elif 127 < data[0] < 192:
                    meter.rtcp_dropped += 1  # the SFU's SR/RR: nothing here needs them
                    if on_rtcp is not None:
                        on_rtcp(data)
                else:
                    original(data, addr)  # STUN (ICE consent) and DTLS

            return datagram_received

        return make


def rtcp_only_handler(on_rtcp: Callable[[bytes], None]) -> HandlerFactory:
    """A publisher-only connection's datagrams (Janus): RTCP to `on_rtcp`, the rest to aiortc."""

    def make(unprotect: Callable[[bytes], bytes], original: DatagramHandler) -> DatagramHandler:
        del unprotect

        def datagram_received(data: Any, addr: Any) -> None:
            if 127 < data[0] < 192:
                if 191 < data[1] < 224:
                    on_rtcp(data)
            else:
                original(data, addr)

        return datagram_received

    return make


def keyframe_answerer(
    unprotect_rtcp: Callable[[bytes], bytes], senders: dict[int, StreamSender]
) -> Callable[[bytes], None]:
    """Reads a publisher's incoming SRTCP for PLI and FIR (RFC 4585, RFC 5104) and makes the named
    layer's sender start its GOP over at the next frame, as a browser's encoder would (the SFU
    asks for a keyframe of the layer a subscriber switches to, and the switch waits for it)."""
    error = pylibsrtp.Error

    def on_rtcp(data: bytes) -> None:
        if not senders:
            return
        try:
            plain = unprotect_rtcp(data)
        except error:
            return
        i, n = 0, len(plain)
        while i + 12 <= n:
            length = (int.from_bytes(plain[i + 2 : i + 4], "big") + 1) * 4
            if plain[i + 1] == 206:  # PSFB
                fmt = plain[i] & 0x1F
                if fmt == 1:  # PLI: media source SSRC
                    sender = senders.get(int.from_bytes(plain[i + 8 : i + 12], "big"))
                    if sender is not None:
                        sender.request_keyframe()
                elif fmt == 4:  # FIR: one (SSRC, seq) entry of 8 bytes per source
                    for j in range(i + 12, min(i + length, n) - 7, 8):
                        sender = senders.get(int.from_bytes(plain[j : j + 4], "big"))
                        if sender is not None:
                            sender.request_keyframe()
            i += length

    return on_rtcp


class Pacer:
    """Fires every sender at its own period, each from a random phase (real clients are not in step)."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, StreamSender]] = []
        self.counter = itertools.count()
        self.senders: list[StreamSender] = []

    def add(self, sender: StreamSender) -> None:
        first = time.monotonic_ns() + random.randrange(sender.period_ns)
        sender.due = first
        self.senders.append(sender)
        heapq.heappush(self.heap, (first, next(self.counter), sender))

    def prune(self) -> None:
        self.senders = [s for s in self.senders if not s.dead]

    async def run(self, deadline: float) -> None:
        heap = self.heap
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            now = time.monotonic_ns()
            fired = 0
            while heap and heap[0][0] <= now and fired < 20_000:
                due, _, sender = heapq.heappop(heap)
                if sender.dead:
                    continue
                sender.fire(due)
                fired += 1
                due += sender.period_ns
                if due < now - SKIP_BEHIND_NS:
                    due = now + sender.period_ns
                heapq.heappush(heap, (due, next(self.counter), sender))
            wait = (heap[0][0] - time.monotonic_ns()) / 1e9 if heap else PACER_MAX_SLEEP_S
            await asyncio.sleep(min(max(wait, 0.0), PACER_MAX_SLEEP_S))


class LoadPeer:
    def __init__(self, spec: PeerSpec) -> None:
        self.spec = spec
        self.pcs: list[RTCPeerConnection] = []
        self.links: list[FastLink] = []
        self.senders: list[StreamSender] = []
        self.handles: list[JanusHandle] = []
        self.receiver = Receiver()
        self.by_ssrc: dict[int, StreamSender] = {}  # its simulcast layers' senders, for PLI/FIR
        self.janus_subscriber: VideoRoom | None = None
        self.janus_video_mids: dict[str, str] = {}  # publisher id -> its video's mid on this subscriber
        self.layers_set = False
        self.lock = asyncio.Lock()
        self.closing = False
        self.joined = False
        self.offers = 0
        self.server_closed: str | None = None


class Worker:
    def __init__(self, pipe: Connection, config: WorkerConfig) -> None:
        self.pipe = pipe
        self.config = config
        self.clock = WindowClock()
        self.meter = Meter(self.clock, config.max_latency_samples, config.decrypt_every)
        self.pacer = Pacer()
        self.peers: dict[str, LoadPeer] = {}
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.http: aiohttp.ClientSession | None = None
        self.janus: JanusSession | None = None
        self.parent_pid = os.getppid()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.auth = {"Authorization": f"Bearer {config.secret}"}

    # --- plumbing -------------------------------------------------------------------------------
    def _error(self, kind: str, exc: BaseException | str) -> str:
        self.errors[kind] += 1
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        if len(self.error_samples) < MAX_ERRORS_KEPT:
            self.error_samples.append(f"{kind}: {text}"[:500])
        return text

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _next_command(self, deadline: float) -> Message | None:
        """The parent's next command; None when the parent is gone or the deadline passed (the pipe is
        polled from a thread, so a big command is never read from a non-blocking descriptor)."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            if await asyncio.to_thread(self.pipe.poll, min(1.0, max(deadline - loop.time(), 0.0))):
                try:
                    command: Message = self.pipe.recv()
                except EOFError:
                    return None
                return command
            if os.getppid() != self.parent_pid:
                return None
        return None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.max_runtime_s
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
        )
        pacer = asyncio.create_task(self.pacer.run(deadline))
        handlers: dict[str, Callable[[Message], Awaitable[Message]]] = {
            "join": self._join,
            "wait_flowing": self._wait_flowing,
            "window": self._window,
            "collect": self._collect,
            "leave": self._leave,
            "status": self._status,
            "set_layers": self._set_layers,
            "switch": self._switch,
        }
        try:
            try:
                await self._connect()
                self.pipe.send({"op": "ready", "pid": os.getpid()})
            except Exception as exc:
                self.pipe.send({"op": "ready", "error": f"{type(exc).__name__}: {exc}"})
                return
            while loop.time() < deadline:
                command = await self._next_command(deadline)
                if command is None or command["op"] == "exit":
                    break
                try:
                    result = await handlers[command["op"]](command)
                except Exception as exc:
                    result = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"}
                result["op"] = command["op"]
                self.pipe.send(result)
        finally:
            pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pacer
            with contextlib.suppress(Exception):
                # The orchestrator stops the server right after: no need to wait for slow closes.
                await asyncio.wait_for(self._close_all(), 3.0)
            for task in list(self._tasks):
                task.cancel()
            await self.http.close()

    async def _connect(self) -> None:
        assert self.http is not None
        if self.config.target == "voxa":
            hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._spawn(self._voxa_events(hello))
            await asyncio.wait_for(hello, 15.0)
        else:
            self.janus = await JanusSession.create(self.config.url, http=self.http, request_timeout=30.0)

    async def _close_all(self) -> None:
        await self._close_peers(list(self.peers.values()), server_side=False)
        if self.janus is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.janus.destroy(), 5.0)

    # --- Voxa --------------------------------------------------------------------------------------
    async def _voxa(self, method: str, path: str, body: Message | None = None) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.request(method, self.config.url + path, json=body, headers=self.auth) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = await resp.text()
            return resp.status, data

    async def _voxa_events(self, hello: asyncio.Future[None]) -> None:
        assert self.http is not None
        try:
            async with self.http.ws_connect(
                self.config.url + "/v1/events", headers=self.auth, heartbeat=20, max_msg_size=0
            ) as ws:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        continue
                    event = json.loads(msg.data)
                    kind = event.get("type")
                    if kind == "hello" and not hello.done():
                        hello.set_result(None)
                    elif kind == "offer":
                        peer = self.peers.get(event.get("peer", ""))
                        if peer is not None and not peer.closing:
                            self._spawn(self._voxa_answer(peer, event))
                    elif kind == "peer_state" and event.get("state") == "closed":
                        peer = self.peers.get(event.get("peer", ""))
                        if peer is not None and not peer.closing:
                            peer.server_closed = str(event.get("reason"))
                            self._error("server_closed_peer", f"{peer.spec.id}: {peer.server_closed}")
        except Exception as exc:
            if not hello.done():
                hello.set_exception(exc)
            else:
                self._error("events", exc)

    async def _voxa_answer(self, peer: LoadPeer, event: Message) -> None:
        spec = peer.spec
        try:
            async with peer.lock:
                if peer.closing or not peer.pcs:
                    return
                pc = peer.pcs[0]
                await pc.setRemoteDescription(RTCSessionDescription(event["sdp"], "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                path = f"/v1/routers/{spec.voxa_router}/peers/{spec.id}/sdp"
                status, body = await self._voxa(
                    "POST", path, {"type": "answer", "sdp": pc.localDescription.sdp}
                )
                if status != 200 and not peer.closing:
                    self._error("answer", f"{spec.id}: HTTP {status} {body}")
                peer.offers += 1
        except Exception as exc:
            if not peer.closing:
                self._error("answer", exc)

    async def _voxa_join(self, peer: LoadPeer) -> None:
        spec = peer.spec
        pc = new_peer_connection()
        peer.pcs.append(pc)
        if spec.audio:
            pc.addTransceiver("audio", direction="sendonly")
        if spec.video:
            prefer_vp8(pc.addTransceiver("video", direction="sendonly"))
        if not spec.publishes:
            pc.addTransceiver("audio", direction="recvonly")
        async with peer.lock:
            await pc.setLocalDescription(await pc.createOffer())
            offer = pc.localDescription.sdp
            if spec.simulcast:
                offer = simulcast_offer(offer, RIDS)
            path = f"/v1/routers/{spec.voxa_router}/peers/{spec.id}"
            status, body = await self._voxa("POST", path, {"sdp": offer})
            if status != 200:
                raise RuntimeError(f"POST peer: HTTP {status} {body}")
            answer = str(body["sdp"])
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_connected(pc, self.config.join_timeout_s)
        link = FastLink(pc)
        peer.links.append(link)
        on_rtcp = keyframe_answerer(link.rx.unprotect_rtcp, peer.by_ssrc) if spec.simulcast else None
        link.hook(self.meter.handler_factory(peer.receiver, peer.spec.expect_streams, on_rtcp))
        self._start_senders(peer, pc, link, answer)

    # --- Janus -------------------------------------------------------------------------------------
    async def _janus_publish(self, peer: LoadPeer) -> None:
        assert self.janus is not None
        spec = peer.spec
        videoroom = await VideoRoom.attach(self.janus)
        peer.handles.append(videoroom.handle)
        await videoroom.join_publisher(spec.janus_room, spec.id, id=spec.feed)
        pc = new_peer_connection()
        peer.pcs.append(pc)
        if spec.audio:
            pc.addTransceiver("audio", direction="sendonly")
        if spec.video:
            prefer_vp8(pc.addTransceiver("video", direction="sendonly"))
        await pc.setLocalDescription(await pc.createOffer())
        options: dict[str, Any] = {"audiocodec": "opus"}
        if spec.video:
            options["videocodec"] = "vp8"
        offer = pc.localDescription.sdp
        jsep: dict[str, Any] = {}
        if spec.simulcast:
            offer = simulcast_offer(offer, RIDS)
            jsep["rid_order"] = "lmh"  # Janus assumes highest first unless told
        answer = await videoroom.publish(offer, jsep_extra=jsep, **options)
        check_loopback_sdp(answer)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_connected(pc, self.config.join_timeout_s)
        await asyncio.wait_for(videoroom.handle.webrtcup.wait(), self.config.join_timeout_s)
        link = FastLink(pc)
        peer.links.append(link)
        if spec.simulcast:
            link.hook(rtcp_only_handler(keyframe_answerer(link.rx.unprotect_rtcp, peer.by_ssrc)))
        self._start_senders(peer, pc, link, answer)

    async def _janus_subscribe(self, peer: LoadPeer) -> None:
        assert self.janus is not None
        spec = peer.spec
        videoroom = await VideoRoom.attach(self.janus)
        peer.handles.append(videoroom.handle)
        subscription = await videoroom.join_subscriber(spec.janus_room, list(spec.receive_feeds))
        check_loopback_sdp(subscription.offer_sdp)
        pc = new_peer_connection()
        peer.pcs.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(subscription.offer_sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await videoroom.start(pc.localDescription.sdp)
        await wait_connected(pc, self.config.join_timeout_s)
        await asyncio.wait_for(videoroom.handle.webrtcup.wait(), self.config.join_timeout_s)
        link = FastLink(pc)
        peer.links.append(link)
        link.hook(self.meter.handler_factory(peer.receiver, peer.spec.expect_streams))
        if spec.layers:
            # Each publisher's video on the substream the plan gives this subscriber (Janus's default
            # would be the highest).
            feeds = dict(zip(spec.receive_feeds, spec.receives, strict=True))
            peer.janus_video_mids = {
                feeds[int(s["feed_id"])]: str(s["mid"])
                for s in subscription.streams
                if s.get("type") == "video" and int(s.get("feed_id", 0)) in feeds
            }
            peer.janus_subscriber = videoroom
            await self._janus_substreams(
                peer, {r: lay for r, lay in zip(spec.receives, spec.layers, strict=True)}
            )

    async def _janus_substreams(self, peer: LoadPeer, layers: dict[str, int]) -> None:
        assert peer.janus_subscriber is not None
        streams = [
            {"mid": peer.janus_video_mids[r], "substream": lay}
            for r, lay in layers.items()
            if r in peer.janus_video_mids
        ]
        if streams:
            await peer.janus_subscriber.handle.message({"request": "configure", "streams": streams})

    # --- media -------------------------------------------------------------------------------------
    def _start_senders(self, peer: LoadPeer, pc: RTCPeerConnection, link: FastLink, answer: str) -> None:
        catalog = self.config.catalog
        for transceiver in pc.getTransceivers():
            if transceiver.direction != "sendonly" or transceiver.mid is None:
                continue
            kind = transceiver.kind
            codec = "opus" if kind == "audio" else "VP8"
            neg = negotiated(answer, transceiver.mid, codec)
            layers: list[tuple[Sequence[Sequence[bytes]], int, str, int]]  # frames, ssrc, rid, layer
            if kind == "audio":
                layers = [([(p,) for p in catalog.opus], transceiver.sender._ssrc, "", -1)]
            elif peer.spec.simulcast:
                if transceiver.mid != VIDEO_MID:
                    raise RuntimeError(f"video mid {transceiver.mid!r}, the plan's track ids say {VIDEO_MID}")
                if not neg.ext.rid_id:
                    raise RuntimeError("the answer did not negotiate the rtp-stream-id extension")
                rng = random.Random()
                layers = [
                    (gop, rng.randrange(1, 2**32), rid, i)
                    for i, (rid, gop) in enumerate(zip(RIDS, catalog.layers(), strict=True))
                ]
            else:
                layers = [(catalog.vp8, transceiver.sender._ssrc, "", -1)]
            for frames, ssrc, rid, layer in layers:
                sender = StreamSender(
                    peer.spec.id,
                    kind,
                    frames,
                    ssrc=ssrc,
                    pt=neg.pt,
                    ext=neg.ext,
                    protect=link.protect,
                    sendto=link.sendto,
                    addr=link.addr,
                    closing=link.is_closing,
                    clock=self.clock,
                    seed=self.config.index,
                    rid=rid,
                    layer=layer,
                )
                peer.senders.append(sender)
                if layer >= 0:
                    peer.by_ssrc[ssrc] = sender
                self.pacer.add(sender)

    # --- commands ----------------------------------------------------------------------------------
    async def _join_one(self, spec: PeerSpec, wave: str) -> str | None:
        """Set up `spec`'s part of `wave`; returns an error text, or None."""
        janus = self.config.target == "janus"
        peer = self.peers.get(spec.id)
        if peer is not None:
            peer.spec = spec  # the subscribe wave may carry fewer publishers (failed ones removed)
        if wave == "publish":
            if not spec.publishes:
                return None
        elif (janus and not spec.receives) or (not janus and spec.publishes):
            return None
        if peer is None:
            peer = self.peers[spec.id] = LoadPeer(spec)
        try:
            async with asyncio.timeout(self.config.join_timeout_s + 5.0):
                if not janus:
                    await self._voxa_join(peer)
                elif wave == "publish":
                    await self._janus_publish(peer)
                else:
                    await self._janus_subscribe(peer)
            peer.joined = True
            return None
        except Exception as exc:
            text = self._error(f"join_{wave}", f"{spec.id}: {type(exc).__name__}: {exc}")
            self.peers.pop(spec.id, None)
            await self._close_peers([peer], server_side=True)
            return text

    async def _join(self, command: Message) -> Message:
        specs: list[PeerSpec] = command["peers"]
        wave = str(command["wave"])
        started = time.monotonic()
        failed: dict[str, str] = {}
        queue = iter(specs)

        async def lane() -> None:
            for spec in queue:
                error = await self._join_one(spec, wave)
                if error is not None:
                    failed[spec.id] = error

        await asyncio.gather(*(lane() for _ in range(max(1, min(self.config.concurrency, len(specs))))))
        # The peers' objects live until they leave: keep the cyclic GC from re-scanning them (a full
        # collection over hundreds of connections is otherwise the costliest thing this process does).
        gc.collect()
        gc.freeze()
        return {"failed": failed, "seconds": round(time.monotonic() - started, 2)}

    async def _wait_flowing(self, command: Message) -> Message:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(command.get("timeout", 20.0))
        missing: list[tuple[str, int, int]] = []
        while True:
            missing = [
                (p.spec.id, len(p.receiver.ssrcs), p.spec.expect_streams)
                for p in self.peers.values()
                if p.joined and not p.closing and len(p.receiver.ssrcs) < p.spec.expect_streams
            ]
            if not missing or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        return {"flowing": not missing, "missing": missing[:10], "missing_count": len(missing)}

    async def _window(self, command: Message) -> Message:
        self.meter.reset()
        for sender in self.pacer.senders:
            sender.window_sent = 0
            sender.late_sends = 0
            sender.late_max_ns = 0
            sender.keyframes_requested = 0
        self.clock.t0 = int(command["t0"])
        self.clock.t1 = int(command["t1"])
        return {}

    async def _collect(self, command: Message) -> Message:
        sent: dict[str, dict[str, int]] = {}
        late = 0
        late_max = 0
        for sender in self.pacer.senders:
            if sender.dead:
                continue
            kind = sender.kind if sender.layer < 0 else f"video/{RIDS[sender.layer]}"
            sent.setdefault(sender.peer_id, {})[kind] = sender.window_sent
            late += sender.late_sends
            late_max = max(late_max, sender.late_max_ns)
        meter = self.meter
        return {
            "sent": sent,
            "received": meter.rx_window,
            "latencies": meter.latencies.tobytes(),
            "rx_total": sum(p.receiver.packets for p in self.peers.values()),
            "rx_errors": meter.rx_errors,
            "rtcp_dropped": meter.rtcp_dropped,
            "rx_bad": meter.rx_bad,
            "late_sends": late,
            "late_max_ms": round(late_max / 1e6, 2),
            "send_errors": sum(s.errors for s in self.pacer.senders),
            "keyframes_requested": sum(s.keyframes_requested for s in self.pacer.senders),
            "errors": dict(self.errors),
            "error_samples": list(self.error_samples),
        }

    async def _set_layers(self, command: Message) -> Message:
        """Voxa: every joined simulcast subscriber not yet set gets its layers (quality API) and a
        bandwidth every layer fits in (bench hook); returns the peers set and the failures."""
        done = 0
        failures: list[str] = []
        for peer in list(self.peers.values()):
            spec = peer.spec
            if not spec.layers or not peer.joined or peer.closing or peer.layers_set:
                continue
            base = f"/v1/routers/{spec.voxa_router}/peers/{spec.id}"
            status, body = await self._voxa("PUT", f"/bench{base}/bandwidth", {"bps": HIGH_BPS})
            ok = status == 200
            if not ok:
                failures.append(f"{spec.id} bandwidth: HTTP {status} {body}"[:300])
            for publisher, layer in zip(spec.receives, spec.layers, strict=True):
                width, height = LAYER_TILES[layer] if layer < len(LAYER_TILES) else (None, None)
                status, body = await self._voxa(
                    "PUT",
                    f"{base}/consumers/{video_track(publisher)}/quality",
                    {"max_width": width, "max_height": height, "paused": False},
                )
                if status != 200:
                    ok = False
                    failures.append(f"{spec.id} quality of {publisher}: HTTP {status} {body}"[:300])
            peer.layers_set = ok
            done += ok
        for failure in failures[:5]:
            self._error("set_layers", failure)
        return {"set": done, "failed": len(failures), "failures": failures[:5]}

    async def _switch(self, command: Message) -> Message:
        """One switch probe on subscriber `peer`: `action` "bandwidth" (Voxa), "quality" (Voxa quality
        API or Janus configure); the ms from the action's start until each of its video SSRCs that
        carried h or f delivers a packet of q (None: not within `timeout`)."""
        peer = self.peers.get(str(command["peer"]))
        if peer is None or not peer.joined or peer.closing:
            return {"absent": True}  # another load process runs it (the command is broadcast)
        spec = peer.spec
        action = str(command["action"])
        timeout = float(command.get("timeout", 5.0))
        watch = Watch()
        peer.receiver.watch = watch
        try:
            await asyncio.sleep(float(command.get("observe", 0.6)))
            before = watch.video_layers()
            targets = [s for s, layer in before.items() if layer > 0]
            started = time.monotonic_ns()
            base = f"/v1/routers/{spec.voxa_router}/peers/{spec.id}"
            if self.config.target == "janus":
                await self._janus_substreams(
                    peer, {r: 0 for r, lay in zip(spec.receives, spec.layers, strict=True) if lay > 0}
                )
            elif action == "bandwidth":
                status, body = await self._voxa("PUT", f"/bench{base}/bandwidth", {"bps": LOW_BPS})
                if status != 200:
                    raise RuntimeError(f"bandwidth hook: HTTP {status} {body}")
            else:
                for publisher, layer in zip(spec.receives, spec.layers, strict=True):
                    if layer > 0:
                        width, height = LAYER_TILES[0]
                        status, body = await self._voxa(
                            "PUT",
                            f"{base}/consumers/{video_track(publisher)}/quality",
                            {"max_width": width, "max_height": height, "paused": False},
                        )
                        if status != 200:
                            raise RuntimeError(f"quality: HTTP {status} {body}")
            acted_ms = (time.monotonic_ns() - started) / 1e6
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline and not all(watch.first.get((s, 0), 0) >= started for s in targets):
                await asyncio.sleep(0.005)
            times = [
                round((watch.first[(s, 0)] - started) / 1e6, 1)
                if watch.first.get((s, 0), 0) >= started
                else None
                for s in targets
            ]
        finally:
            peer.receiver.watch = None
        return {
            "peer": spec.id,
            "action": action,
            "layers_before": sorted(before.values()),
            "ms": times,
            "request_ms": round(acted_ms, 1),
        }

    async def _status(self, command: Message) -> Message:
        return {
            "peers": len(self.peers),
            "joined": sum(1 for p in self.peers.values() if p.joined),
            "senders": len([s for s in self.pacer.senders if not s.dead]),
            "offers": sum(p.offers for p in self.peers.values()),
            "errors": dict(self.errors),
        }

    async def _leave(self, command: Message) -> Message:
        ids = [str(i) for i in command["ids"]]
        peers = [p for i in ids if (p := self.peers.pop(i, None)) is not None]
        started = time.monotonic()
        await self._close_peers(peers, server_side=bool(command.get("server_side", True)))
        return {"left": len(peers), "seconds": round(time.monotonic() - started, 2)}

    async def _close_peers(self, peers: list[LoadPeer], *, server_side: bool) -> None:
        for peer in peers:
            peer.closing = True
            for sender in peer.senders:
                sender.dead = True
            for link in peer.links:
                link.unhook()
        self.pacer.prune()
        queue = iter(peers)

        async def close(peer: LoadPeer) -> None:
            spec = peer.spec
            if server_side:
                with contextlib.suppress(Exception):
                    if self.config.target == "voxa" and peer.pcs:
                        await self._voxa("DELETE", f"/v1/routers/{spec.voxa_router}/peers/{spec.id}")
                    for handle in peer.handles:
                        with contextlib.suppress(JanusError):
                            await handle.detach()
            for pc in peer.pcs:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pc.close(), 5.0)

        async def lane() -> None:
            for peer in queue:
                await close(peer)

        await asyncio.gather(*(lane() for _ in range(max(1, min(32, len(peers))))))


def worker_main(pipe: Connection, config: WorkerConfig) -> None:
    """Entry point of a load process (spawned): pinned to its core, on uvloop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator handles Ctrl-C and tells us to exit
    if config.core is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {config.core})
    restrict_ice_to_loopback()
    gc.set_threshold(50_000, 50, 100)  # one tuple per datagram (its address) would trigger gen-0 runs
    import uvloop

    try:
        with contextlib.suppress(BrokenPipeError, EOFError):
            uvloop.run(Worker(pipe, config).run())
    finally:
        # aiortc starts a (non-daemon) decoder thread per receiver; one whose connection did not close
        # cleanly would keep the interpreter alive: the peers are closed by now, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
