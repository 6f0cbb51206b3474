"""What the SFU must not do (decode, leak) and what it must survive (bad SDP, garbage RTP, dead peers)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
from pathlib import Path
from typing import Any

import aiortc.codecs
import pytest
from aiortc import RTCPeerConnection

from tests.integration.sfu.conftest import Harness
from voxa.common.testing.wait import eventually_async
from voxa.sfu.peer import PeerError
from voxa.sfu.sdp import SdpError

SFU_SOURCES = Path(__file__).resolve().parents[3] / "sfu"


LOAD_PEERS_MARKER = "# --- the SFU benchmark's load peers"


def test_sfu_code_never_touches_aiortc_media_pipeline() -> None:
    """Forwarded tracks have no RTCRtpReceiver/Sender, hence no decoder, encoder or their threads."""
    forbidden = (
        "RTCPeerConnection",
        "RTCRtpReceiver",
        "RTCRtpSender",
        "get_decoder",
        "get_encoder",
        "aiortc.codecs",
        "threading",
        "run_in_executor",
        "to_thread",
    )
    for path in SFU_SOURCES.glob("*.py"):
        text = path.read_text()
        # The glue module also holds the benchmark's client-side helpers (so one version pin covers
        # every use of aiortc internals); they run in the load generator, never in the SFU.
        text = text.split(LOAD_PEERS_MARKER)[0]
        for name in forbidden:
            assert name not in text, f"{path.name} uses {name}"


async def test_no_decoder_or_encoder_is_constructed_for_forwarded_tracks(
    sfu: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: dict[str, int] = {"decoders": 0, "encoders": 0}
    real_decoder, real_encoder = aiortc.codecs.get_decoder, aiortc.codecs.get_encoder

    def counting_decoder(codec: Any) -> Any:
        made["decoders"] += 1
        return real_decoder(codec)

    def counting_encoder(codec: Any) -> Any:
        made["encoders"] += 1
        return real_encoder(codec)

    monkeypatch.setattr("aiortc.rtcrtpreceiver.get_decoder", counting_decoder)
    monkeypatch.setattr("aiortc.rtcrtpsender.get_encoder", counting_encoder)
    room = sfu.worker.create_router("lobby")
    clients = [await sfu.join(room, name, hz) for name, hz in (("a", 440.0), ("b", 660.0), ("c", 880.0))]
    await eventually_async(lambda: all(len(c.sinks) == 2 for c in clients))

    def forwarded() -> int:
        return sum(c.stats.packets for c in room.router.consumers.values())

    # Every received track decoded (so its decoder exists), and media well under way.
    await eventually_async(
        lambda: all(s.frames > 0 for c in clients for s in c.sinks) and forwarded() > 100,
        20.0,
        lambda: (
            f"every track decoded and > 100 packets forwarded: {forwarded()}, "
            f"{[s.frames for c in clients for s in c.sinks]} frames"
        ),
    )
    # Exactly the clients' own: 3 encoders (one per sent track), 6 decoders (one per received track).
    assert made == {"decoders": 6, "encoders": 3}
    decoder_threads = [t for t in threading.enumerate() if "decoder" in t.name.lower()]
    assert len(decoder_threads) <= 6


def sfu_side_threads() -> int:
    """Threads that are not the aiortc clients': their codec threads and the loop's default executor
    (aiortc encodes in it), which keeps idle workers. The SFU itself starts no thread at all."""
    client = ("-decoder", "-encoder")
    return sum(
        1 for t in threading.enumerate() if not t.name.endswith(client) and not t.name.startswith("asyncio_")
    )


def open_sockets() -> int:
    fds = os.listdir("/proc/self/fd")
    count = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.slow
async def test_churn_leaves_nothing_behind(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    watcher = await sfu.join(room, "watcher", None)

    async def batch(number: int) -> None:
        names = [f"p{number}-{i}" for i in range(5)]
        joined = [await sfu.join(room, name, 300.0 + 50 * i) for i, name in enumerate(names)]
        await eventually_async(
            lambda: len(room.peers) == 6 and all(room.peer(n).transport.connected.is_set() for n in names)
        )
        for client in joined:
            await room.remove_peer(client.name)
            for sink in client.sinks:
                await sink.stop()
            await client.pc.close()
            del sfu.clients[client.name]
        await eventually_async(lambda: len(room.peers) == 1 and not room.router.producers)
        await asyncio.sleep(0.5)

    # The first batch gives the watcher its (reusable) receiving m-sections; then nothing may grow.
    await batch(0)
    gc.collect()
    baseline_tasks = len(asyncio.all_tasks())
    baseline_threads = sfu_side_threads()
    baseline_sockets = open_sockets()
    for number in range(1, 10):
        await batch(number)
    await eventually_async(lambda: len(room.peers) == 1 and not room.router.producers)
    watcher_lines = room.peer("watcher").negotiator.lines  # type: ignore[union-attr]
    # Its own m-section plus at most the 5 consumer m-sections a batch needed, reused batch after batch.
    assert len(watcher_lines) <= 6, [ln.media.mid for ln in watcher_lines]
    assert len(room.router.consumers) == 0
    gc.collect()
    assert len(asyncio.all_tasks()) <= baseline_tasks + 2

    try:
        await eventually_async(lambda: sfu_side_threads() <= baseline_threads + 1, timeout=10)
    except TimeoutError:
        pytest.fail(f"threads left behind: {sorted(t.name for t in threading.enumerate())}")
    assert open_sockets() <= baseline_sockets
    del watcher


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        ("", "empty SDP"),
        ("hello", "SDP must start with v=0"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "SDP has no m-sections"),
        (
            "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n",
            "SDP lacks a=ice-ufrag/a=ice-pwd",
        ),
    ],
)
async def test_garbage_sdp_is_refused_and_frees_resources(sfu: Harness, offer: str, reason: str) -> None:
    room = sfu.worker.create_router("lobby")
    before = open_sockets()
    with pytest.raises(SdpError, match=reason):
        await room.add_peer("bad", offer)
    assert "bad" not in room.peers
    assert open_sockets() <= before
    if sfu.worker.server is not None:
        assert sfu.worker.server.engine.counters()["peers"] == 0


async def test_unsupported_codecs_are_rejected_sections(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    # Keep only PCMU: the SFU forwards Opus, VP8 and H.264.
    lines = [ln for ln in offer.split("\r\n") if not (ln.startswith("a=rtpmap:") and "PCMU" not in ln)]
    pcmu = next(ln for ln in lines if ln.startswith("a=rtpmap:")).split()[0].split(":")[1]
    lines = [f"m=audio 9 UDP/TLS/RTP/SAVPF {pcmu}" if ln.startswith("m=audio") else ln for ln in lines]
    answer = await room.add_peer("pcmu", "\r\n".join(lines))
    assert "m=audio 0 " in answer  # rejected, not an error
    await room.remove_peer("pcmu")
    await pc.close()


async def test_garbled_rtp_and_rtcp_are_dropped(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    alice = await sfu.join(room, "alice", 440.0)
    await sfu.join(room, "bob", 660.0)
    await eventually_async(lambda: bool(alice.sinks))
    bob = room.peer("bob")
    bad_before = sfu.worker.bad_packets + sfu.worker.unknown_packets
    junks = (
        b"\x80",
        b"\x80\x6f" + b"\x00" * 5,
        b"\x90\x6f" + b"\x00" * 10 + b"\xbe\xde\xff\xff",
        b"\x81\xc9\x00\x07" + b"\x00" * 4,
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12,
        b"\x16\xfe\xfd" + b"\x00" * 20,
        b"\xff" * 1500,
        b"\x80\x6f" + b"\x00" * 2000,
    )
    if sfu.worker.server is None:
        for junk in junks:
            bob.on_rtp(junk)
            bob.on_rtcp(junk)
    else:
        # The native data plane's one port: hostile datagrams from a stranger (the Rust unit tests
        # cover garbage from an authenticated peer's own address).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for junk in junks:
                stranger.sendto(junk, ("127.0.0.1", sfu.worker.server.port))
        await eventually_async(
            lambda: sfu.worker.bad_packets + sfu.worker.unknown_packets >= bad_before + len(junks)
        )
    assert sfu.worker.bad_packets + sfu.worker.unknown_packets > bad_before
    await alice.hears("bob", 660.0)


async def test_peer_that_never_connects_is_removed(sfu: Harness) -> None:
    sfu.worker.settings = sfu.worker.settings.model_copy(update={"connect_timeout_s": 1.0})
    room = sfu.worker.create_router("lobby")
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    await room.add_peer("ghost", pc.localDescription.sdp)  # the answer is never applied: no ICE
    await pc.close()
    await eventually_async(lambda: "ghost" not in room.peers, timeout=10)
    states = [e for e in sfu.events if e["type"] == "peer_state" and e["peer"] == "ghost"]
    assert states and states[-1]["state"] == "closed"


async def test_unknown_router_and_peer_are_clear_errors(sfu: Harness) -> None:
    with pytest.raises(PeerError, match="no router 'nope'"):
        sfu.worker.router("nope")
    room = sfu.worker.create_router("lobby")
    with pytest.raises(PeerError, match="no peer 'zed'"):
        room.peer("zed")
