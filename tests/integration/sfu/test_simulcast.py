"""Simulcast through the native data plane, end to end over real ICE/DTLS/SRTP on loopback.

aiortc cannot send simulcast, so the publisher here is an aiortc peer connection used for ICE and
DTLS only: its offer is rewritten into Chromium's rid form (three `a=rid` send lines, `a=simulcast`,
the rtp-stream-id extension, no `a=ssrc`), and once connected it sends raw SRTP for three layers
(q 320x180, h 640x360, f 1280x720), each a VP8 stream of one-packet frames with a keyframe every
half second, each packet naming its rid. The subscriber is an aiortc peer whose RTP is taken off its
socket before aiortc sees it: the test reads which layer each forwarded packet came from (a marker
byte in the payload) and checks what the SFU promises: the layer follows `set_peer_bandwidth` and the
tile size, a switch lands on a keyframe of the new layer, and sequence numbers stay continuous.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from voxa.common.testing.wait import eventually_async
from voxa.sfu import aiortc_glue, rtp, sdp
from voxa.sfu.router import Preferences
from voxa.sfu.settings import SfuSettings
from voxa.sfu.worker import SfuWorker

from .conftest import Harness, stays_still, stopped_rising

LAYERS = (("q", 320, 180, 250), ("h", 640, 360, 600), ("f", 1280, 720, 1100))  # rid, w, h, payload bytes
RID_ID = 10
FPS = 30
KEYFRAME_EVERY = 15


def simulcast_offer(offer: str) -> str:
    """aiortc's video offer in Chromium's rid-based simulcast form."""
    out: list[str] = []
    for line in offer.split("\r\n"):
        if line.startswith(("a=ssrc:", "a=ssrc-group:")):
            continue
        out.append(line)
        if line.startswith("a=mid:"):
            out.append(f"a=extmap:{RID_ID} {sdp.RID_URI}")
    text = "\r\n".join(out).rstrip("\r\n") + "\r\n"
    return text + "".join(f"a=rid:{rid} send\r\n" for rid, *_ in LAYERS) + "a=simulcast:send q;h;f\r\n"


def vp8_payload(layer: int, picture_id: int, keyframe: bool) -> bytes:
    _rid, width, height, size = LAYERS[layer]
    descriptor = bytes([0x90, 0x80, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF])
    if keyframe:
        header = bytes([0x10, 0x00, 0x00, 0x9D, 0x01, 0x2A]) + struct.pack("<HH", width, height)
    else:
        header = bytes([0x11, 0x00, 0x00])
    body = bytes([layer]) * (size - len(descriptor) - len(header))
    return descriptor + header + body


def rtp_packet(
    pt: int, seq: int, ts: int, ssrc: int, mid_id: int, mid: str, rid: str, payload: bytes
) -> bytes:
    elements = bytes([(mid_id << 4) | (len(mid) - 1)]) + mid.encode()
    elements += bytes([(RID_ID << 4) | (len(rid) - 1)]) + rid.encode()
    elements += b"\x00" * (-len(elements) % 4)
    header = struct.pack("!BBHII", 0x90, 0x80 | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return header + struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements + payload


@dataclass
class Received:
    """One forwarded packet as the subscriber saw it."""

    seq: int
    ssrc: int
    layer: int
    keyframe: bool


@dataclass
class RawSubscriber:
    packets: list[Received] = field(default_factory=list)

    def handler(
        self, unprotect: Callable[[bytes], bytes], original: Callable[..., None]
    ) -> Callable[..., None]:
        def datagram_received(data: bytes, addr: Any) -> None:
            if 127 < data[0] < 192:
                if 191 < data[1] < 224:
                    return  # RTCP (sender reports): not needed
                plain = unprotect(data)
                start, _end = rtp.payload_range(plain)
                payload = plain[start:]
                if (plain[1] & 0x7F) > 95 and len(payload) > 10:
                    keyframe = payload[4] & 0x01 == 0 and payload[7:10] == b"\x9d\x01\x2a"
                    self.packets.append(
                        Received(rtp.sequence_of(plain), rtp.ssrc_of(plain), payload[-1], keyframe)
                    )
            else:
                original(data, addr)

        return datagram_received

    def recent_layer(self, count: int = 10) -> int | None:
        layers = {p.layer for p in self.packets[-count:]}
        return layers.pop() if len(self.packets) >= count and len(layers) == 1 else None


async def connected(pc: RTCPeerConnection, timeout: float = 15.0) -> None:
    await eventually_async(lambda: pc.connectionState == "connected", timeout, "publisher connected")


async def test_subscriber_gets_the_layer_its_bandwidth_and_tile_allow(sfu: Harness) -> None:
    if sfu.worker.server is None:
        pytest.skip("simulcast layer selection is the native data plane's")
    engine = sfu.worker.server.engine
    room = sfu.worker.create_router("r")

    publisher = RTCPeerConnection()
    publisher.addTransceiver("video", direction="sendonly")
    await publisher.setLocalDescription(await publisher.createOffer())
    answer = await room.add_peer("pub", simulcast_offer(publisher.localDescription.sdp))
    assert "a=simulcast:recv q;h;f" in answer
    await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await connected(publisher)
    video = sdp.parse(answer, "answer").media[0]
    pt, mid, mid_id = video.codecs[0].pt, video.mid, video.extensions[sdp.MID_URI]
    path = aiortc_glue.client_media_path(publisher)
    aiortc_glue.stop_idle_sender_loops(publisher)
    send = path.protocol.transport.sendto

    subscriber = await sfu.join(room, "sub", None)
    sub_peer = room.peer("sub")
    await eventually_async(
        lambda: any(c.ready for c in sub_peer.consumers.values()), 20.0, "consumer negotiated"
    )
    await eventually_async(sub_peer.transport.connected.is_set, 15.0, "subscriber connected")
    raw = RawSubscriber()
    sub_path = aiortc_glue.client_media_path(subscriber.pc)
    original = sub_path.protocol.datagram_received
    sub_path.protocol.datagram_received = raw.handler(sub_path.rx.unprotect, original)  # type: ignore[method-assign]

    ssrcs = [random.randint(1, 2**32 - 1) for _ in LAYERS]
    stop = asyncio.Event()

    async def publish() -> None:
        frame = 0
        while not stop.is_set():
            for i, (rid, *_rest) in enumerate(LAYERS):
                keyframe = frame % KEYFRAME_EVERY == 0
                packet = rtp_packet(
                    pt,
                    1000 * i + frame,
                    3000 * frame,
                    ssrcs[i],
                    mid_id,
                    mid,
                    rid,
                    vp8_payload(i, frame, keyframe),
                )
                send(path.tx.protect(packet), path.remote_addr)
            frame += 1
            await asyncio.sleep(1 / FPS)

    sender = asyncio.create_task(publish())
    try:
        track = f"pub:{mid}"
        tracks = [e for e in sfu.events if e["type"] == "tracks" and e["peer"] == "pub"][-1]["tracks"]
        assert tracks == [
            {"track": track, "mid": mid, "kind": "video", "source": "camera", "layers": ["q", "h", "f"]}
        ]
        native_peer = sub_peer.transport.peer  # type: ignore[union-attr]

        # Plenty of bandwidth: the full layer.
        engine.set_peer_bandwidth(native_peer, 5_000_000)
        await eventually_async(lambda: raw.recent_layer() == 2, 15.0, "f with 5 Mbit/s")
        # Squeezed: down to q promptly.
        engine.set_peer_bandwidth(native_peer, 120_000)
        await eventually_async(lambda: raw.recent_layer() == 0, 10.0, "q with 120 kbit/s")
        # Room again, but the tile is 640 px wide: h.
        engine.set_peer_bandwidth(native_peer, 5_000_000)
        sub_peer.set_quality(track, Preferences(max_width=640, max_height=360))
        await eventually_async(lambda: raw.recent_layer() == 1, 15.0, "h for a 640 px tile")
        # Nobody wants f any more: the publisher is told (the lowest layer always stays on: it is
        # where a new subscriber, or one that loses bandwidth, lands at once).
        await eventually_async(
            lambda: any(
                e["type"] == "publish_layers"
                and e["peer"] == "pub"
                and e["active"] == {"q": True, "h": True, "f": False}
                for e in sfu.events
            ),
            10.0,
            f"publish_layers without f: {[e for e in sfu.events if e['type'] == 'publish_layers']}",
        )
        # A hidden tile gets nothing.
        sub_peer.set_quality(track, Preferences(paused=True))
        await stopped_rising(lambda: len(raw.packets), "the paused tile's packets to stop")
        await stays_still(lambda: len(raw.packets), 0.7)
    finally:
        stop.set()
        await sender
        sub_path.protocol.datagram_received = original  # type: ignore[method-assign]
        await publisher.close()

    # Every switch lands on a keyframe of the new layer, on one SSRC, with no gap in the sequence.
    assert len({p.ssrc for p in raw.packets}) == 1
    for before, after in zip(raw.packets, raw.packets[1:], strict=False):
        assert after.seq == (before.seq + 1) & 0xFFFF, (before, after)
        if after.layer != before.layer:
            assert after.keyframe, (before, after)
    switched = [e for e in sfu.events if e["type"] == "consumer_layer" and e["peer"] == "sub"]
    assert {"q", "h", "f"} <= {e["rid"] for e in switched}
    assert [e["rid"] for e in switched][-1] == "h"


@pytest.fixture
async def python_sfu() -> AsyncIterator[Harness]:
    """The SFU on its Python reference data plane (VOXA_SFU_DATAPLANE=python)."""
    settings = SfuSettings(
        secret="test",
        workers=1,
        dataplane="python",
        rtc_listen_ip="127.0.0.1",
        rtc_remote_networks=["127.0.0.0/8"],
    )
    worker = SfuWorker(settings)
    await worker.start()
    harness = Harness(worker)
    yield harness
    await harness.close()
    await worker.stop()


async def test_python_data_plane_forwards_the_lowest_layer_only(python_sfu: Harness) -> None:
    sfu = python_sfu
    room = sfu.worker.create_router("r")
    publisher = RTCPeerConnection()
    publisher.addTransceiver("video", direction="sendonly")
    await publisher.setLocalDescription(await publisher.createOffer())
    answer = await room.add_peer("pub", simulcast_offer(publisher.localDescription.sdp))
    await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await connected(publisher)
    video = sdp.parse(answer, "answer").media[0]
    pt, mid, mid_id = video.codecs[0].pt, video.mid, video.extensions[sdp.MID_URI]
    path = aiortc_glue.client_media_path(publisher)
    aiortc_glue.stop_idle_sender_loops(publisher)
    told = [e for e in sfu.events if e["type"] == "publish_layers"]
    assert told and told[-1]["active"] == {"q": True, "h": False, "f": False}

    await sfu.join(room, "sub", None)
    consumer = next(iter(room.peer("sub").consumers.values()))
    await eventually_async(lambda: consumer.ready, 20.0, "consumer ready")
    seen: list[int] = []
    send = consumer._send

    def spy(data: bytes) -> None:
        seen.append(data[-1])  # the layer marker (the payload is forwarded untouched)
        send(data)

    consumer._send = spy
    for frame in range(20):
        for i, (rid, *_rest) in enumerate(LAYERS):
            payload = vp8_payload(i, frame, frame % 5 == 0)
            packet = rtp_packet(pt, 100 * i + frame, 3000 * frame, 1000 + i, mid_id, mid, rid, payload)
            path.protocol.transport.sendto(path.tx.protect(packet), path.remote_addr)
        await asyncio.sleep(1 / FPS)
    await eventually_async(lambda: len(seen) >= 15, 5.0, "layer 0 forwarded")
    assert set(seen) == {0}
    await publisher.close()
