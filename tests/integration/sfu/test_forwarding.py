"""Media through the SFU between real aiortc peers on loopback: decoded and checked, not assumed."""

from __future__ import annotations

import asyncio

from tests.integration.sfu.conftest import Harness
from voxa.common.testing.wait import eventually_async


async def test_three_peers_hear_exactly_the_other_two(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    tones = {"a": 440.0, "b": 660.0, "c": 880.0}
    clients = [await sfu.join(room, name, hz) for name, hz in tones.items()]
    await eventually_async(lambda: all(len(c.sinks) == 2 for c in clients))
    for client in clients:
        # Two tracks, one from each of the others (never its own), each carrying that peer's tone.
        assert sorted(s.track.id.split(":")[0] for s in client.sinks) == sorted(
            name for name in tones if name != client.name
        ), (client.name, [s.track.id for s in client.sinks])
        for name, hz in tones.items():
            if name != client.name:
                await client.hears(name, hz)


async def test_mute_silences_without_renegotiation(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    alice = await sfu.join(room, "alice", 440.0)
    bob = await sfu.join(room, "bob", 660.0)
    await eventually_async(lambda: alice.sinks and bob.sinks)
    await alice.hears("bob", 660.0)
    offers_before = (alice.offers, bob.offers, room.peer("bob").offers_sent)

    room.peer("bob").set_muted(muted=True)
    await alice.hears_silence("bob")

    room.peer("bob").set_muted(muted=False)
    await alice.hears("bob", 660.0)
    # Bob still hears Alice throughout, and nobody renegotiated.
    assert abs(((await bob.sink_from("alice").measure(0.5)).hz or 0) - 440) < 15
    assert (alice.offers, bob.offers, room.peer("bob").offers_sent) == offers_before


async def test_server_mute_holds_until_lifted_by_server(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    alice = await sfu.join(room, "alice", 440.0)
    await sfu.join(room, "bob", 660.0)
    await eventually_async(lambda: bool(alice.sinks))
    bob = room.peer("bob")
    bob.set_muted(server_muted=True)
    bob.set_muted(muted=False)  # the client unmuting itself does not lift a server mute
    await alice.hears_silence("bob")
    bob.set_muted(server_muted=False)
    await alice.hears("bob", 660.0)


async def test_without_speak_right_audio_is_not_forwarded(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    alice = await sfu.join(room, "alice", 440.0)
    await sfu.join(room, "bob", 660.0)
    room.peer("bob").set_rights(can_speak=False)
    await eventually_async(lambda: bool(alice.sinks))
    # Bob's audio reaches the SFU (so a window now would carry it, were it forwarded): none may pass.
    microphone = room.peer("bob").producers["0"]
    await eventually_async(lambda: microphone.stats.packets > 10, 20.0, "the SFU receiving bob's audio")
    assert (await alice.sink_from("bob").measure(0.5)).rms < 0.01
    room.peer("bob").set_rights(can_speak=True)
    await alice.hears("bob", 660.0)


async def test_active_speaker_follows_the_tone(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    alice = await sfu.join(room, "alice", 440.0)
    bob = await sfu.join(room, "bob", None)
    del bob
    assert alice.tone is not None

    def speaking(peer: str) -> bool | None:
        states = [e["speaking"] for e in sfu.events if e["type"] == "speaking" and e["peer"] == peer]
        return states[-1] if states else None

    await eventually_async(lambda: speaking("alice") is True)
    assert room.router.speaker.dominant == "alice"
    alice.tone.frequency = None  # silence
    await eventually_async(lambda: speaking("alice") is False)
    alice.tone.frequency = 440.0
    await eventually_async(lambda: speaking("alice") is True)
    assert speaking("bob") is None


async def test_late_video_subscriber_starts_from_a_keyframe_obtained_by_pli(sfu: Harness) -> None:
    room = sfu.worker.create_router("lobby")
    await sfu.join(room, "publisher", None, video=True)
    await asyncio.sleep(2.0)  # the publisher's first keyframe is long gone (its GOP is 3000 frames)
    producer = next(p for p in room.router.producers.values() if p.kind == "video")
    requests_before = producer.stats.keyframe_requests
    late = await sfu.join(room, "late", None)
    await eventually_async(lambda: bool(late.video))
    frame = await asyncio.wait_for(late.video[0].recv(), 10)
    assert frame.width == 640 and frame.height == 480
    frames = [await asyncio.wait_for(late.video[0].recv(), 5) for _ in range(10)]
    assert len(frames) == 10
    assert producer.stats.keyframe_requests > requests_before
    consumer = next(c for c in room.router.consumers.values() if c.subscriber_id == "late")
    assert consumer.stats.packets > 0
