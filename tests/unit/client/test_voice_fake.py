"""VoiceClient against a scripted fake of signaling + SFU (fake_signaling.py): negotiation as the polite
peer (including glare, which the real SFU rarely produces), media_reset, reconnection, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.client.fake_signaling import BOB, FakeSignaling, fake_signaling, fake_token
from voxa.client import voice
from voxa.client.phoenix import PushError
from voxa.client.voice import VoiceClient, VoiceClientError, VoiceEvent

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSignaling]:
    async with fake_signaling() as server:
        yield server


def sending(client: VoiceClient) -> bool:
    return client._track is not None


async def heard(client: VoiceClient, user: str, hz: float, timeout: float = 10.0) -> float:
    """Wait until `user` is heard at `hz` (±15 Hz); returns the measured frequency."""
    sink = await client.wait_audio(user, timeout)
    async with asyncio.timeout(timeout):
        while True:
            level = await sink.measure(0.4)
            if level.hz is not None and abs(level.hz - hz) < 15:
                return level.hz


async def test_joins_negotiates_and_maps_tracks_to_presence(fake: FakeSignaling) -> None:
    events: list[VoiceEvent] = []
    async with VoiceClient(fake.url, fake_token(), "lobby", tone_hz=440.0, on_event=events.append) as client:
        assert client.server_id == "g1" and client.topic == "voice:g1:lobby"
        assert client.session_id == "s1" and client.user_id == "alice"
        await heard(client, "bob", 660.0)
        assert set(client.remote_tracks) == {BOB}
        assert client.remote_tracks[BOB].user_id == "bob"
        assert client.pc is not None and client.pc.signalingState == "stable"
        await client.wait_media()
        # What the fake SFU peer received from us is our tone.
        assert client.members().keys() == {"alice", "bob", "carol"}
    kinds = [e.type for e in events]
    assert kinds[0] == "joined" and "track" in kinds and kinds[-1] == "left"
    track = next(e for e in events if e.type == "track")
    assert track.data == {"user": "bob", "session_id": BOB, "mid": track.data["mid"]}
    # The client never trickles (aiortc puts its candidates in the SDP) and sent one offer, one answer.
    sdp = [f[4] for f in fake.frames if f[3] == "sdp"]
    assert [p["type"] for p in sdp] == ["offer", "answer"]
    assert "a=candidate:" in sdp[0]["sdp"]
    assert not [f for f in fake.frames if f[3] == "ice"]
    assert not fake.errors


async def test_glare_polite_client_rolls_back_answers_and_offers_again(fake: FakeSignaling) -> None:
    async with VoiceClient(fake.url, fake_token(), "lobby", tone_hz=440.0) as client:
        await heard(client, "bob", 660.0)
        fake.glare_next = True
        assert client.channel is not None
        # Make the client re-offer (it has no reason of its own to, on a negotiated connection).
        client.channel.events.put_nowait((voice._OFFER, {}))
        await heard(client, "carol", 880.0)
        peer = fake.peers["s1"]
        async with asyncio.timeout(10):
            while len(fake.sdp_replies) < 5:
                await asyncio.sleep(0.05)
        # offer (first), answer (bob), offer (ignored: glare), answer (carol's offer), offer (again).
        assert fake.sdp_replies == [{}, {}, {"ignored": True}, {}, {}]
        assert [f[4]["type"] for f in fake.frames if f[3] == "sdp"] == [
            "offer",
            "answer",
            "offer",
            "answer",
            "offer",
        ]
        assert peer.answers_received == 2
        await client.wait_for(lambda: client.pc is not None and client.pc.signalingState == "stable")
        assert peer.pc.signalingState == "stable"
        assert await heard(client, "bob", 660.0)  # the earlier track survived the collision
    assert not fake.errors


async def test_media_reset_makes_a_new_peer_connection(fake: FakeSignaling) -> None:
    async with VoiceClient(fake.url, fake_token(), "lobby", tone_hz=440.0) as client:
        await heard(client, "bob", 660.0)
        first_pc = client.pc
        events = client.subscribe()
        await fake.media_reset("s1")
        await client.wait_for(lambda: client.pc is not None and client.pc is not first_pc)
        await heard(client, "bob", 660.0)
        kinds = [events.get_nowait().type for _ in range(events.qsize())]
        assert "media_reset" in kinds and kinds.index("track_ended") < len(kinds) - 1
        assert first_pc is not None and first_pc.connectionState == "closed"
    offers = [f for f in fake.frames if f[3] == "sdp" and f[4]["type"] == "offer"]
    assert len(offers) == 2


async def test_socket_loss_reconnects_rejoins_and_renegotiates(fake: FakeSignaling) -> None:
    client = VoiceClient(fake.url, fake_token(), "lobby", tone_hz=440.0, backoff_s=(0.05, 0.2))
    events = client.subscribe()
    await client.start()
    try:
        await heard(client, "bob", 660.0)
        await client.mute()
        await fake.drop_sockets()
        await client.wait_for(lambda: client.session_id == "s2", timeout=10)
        await heard(client, "bob", 660.0)
        kinds = [events.get_nowait().type for _ in range(events.qsize())]
        assert "reconnecting" in kinds and kinds.count("joined") == 2
        # The rejoin carries the state the client was in.
        assert fake.joins[-1] == {"muted": True, "deafened": False}
    finally:
        await client.close()
    assert client.closed.is_set()


async def test_failed_negotiation_starts_over_with_a_new_session(fake: FakeSignaling) -> None:
    fake.fail_next_answer = True  # the SFU refuses our answer to its first offer
    events: list[VoiceEvent] = []
    async with VoiceClient(fake.url, fake_token(), "lobby", tone_hz=440.0, on_event=events.append) as client:
        await client.wait_for(lambda: client.session_id == "s2")
        await heard(client, "bob", 660.0)
    errors = [e.data["reason"] for e in events if e.type == "error"]
    assert errors == ["media negotiation failed (sdp): PushError: SDP must start with v=0"]
    assert [f[3] for f in fake.frames if f[3] in ("phx_join", "phx_leave")] == [
        "phx_join",
        "phx_leave",
        "phx_join",
        "phx_leave",
    ]
    assert "s1" not in fake.peers


async def test_mute_releases_the_track_without_renegotiating(fake: FakeSignaling) -> None:
    async with VoiceClient(fake.url, fake_token(), "lobby", tone_hz=440.0) as client:
        await heard(client, "bob", 660.0)
        assert client._transceiver is not None
        sender = client._transceiver.sender
        first = sender.track
        assert first is not None
        state = await client.mute()
        assert state == {"muted": True}
        released: object = sender.track  # aiortc types it as never None
        assert released is None and first.readyState == "ended"
        await client.unmute()
        second = client._transceiver.sender.track
        assert second is not None and second is not first
        assert second.readyState == "live"
        # Timestamps carry on: the new track starts after the old one's.
        assert getattr(second, "next_pts", 0) >= getattr(first, "next_pts", 0)
        offers = [f for f in fake.frames if f[3] == "sdp" and f[4]["type"] == "offer"]
        assert len(offers) == 1
        pushed = [f[3] for f in fake.frames if f[3] in ("mute", "unmute")]
        assert pushed == ["mute", "unmute"]


async def test_deafen_drops_received_audio_and_undeafen_restores_the_mute(fake: FakeSignaling) -> None:
    async with VoiceClient(fake.url, fake_token(), "lobby", tone_hz=440.0) as client:
        sink = await client.wait_audio("bob")
        await heard(client, "bob", 660.0)
        await client.deafen()
        await asyncio.sleep(0.1)
        level = await sink.measure(0.4)
        assert level.frames == 0 and level.hz is None
        await client.undeafen()
        assert await heard(client, "bob", 660.0)
        assert sending(client)  # speaking again: it was not muted before deafening
        await client.mute()
        await client.deafen()
        await client.undeafen()
        assert not sending(client)  # still muted, as before deafening
        pushed = [f[3] for f in fake.frames if f[3] in ("mute", "unmute", "deafen", "undeafen")]
        assert pushed == ["deafen", "undeafen", "mute", "deafen", "undeafen"]
        fake.undeafen_keeps_mute = True  # a server that does not restore the earlier mute
        await client.unmute()
        await client.deafen()
        await client.undeafen()
        pushed = [f[3] for f in fake.frames if f[3] in ("mute", "unmute", "deafen", "undeafen")]
        assert pushed[-4:] == ["unmute", "deafen", "undeafen", "unmute"]


async def test_refused_socket_reports_the_http_reason(fake: FakeSignaling) -> None:
    client = VoiceClient(fake.url, fake_token().replace("a", "b", 1)[:-4] + "AAAA", "lobby", server_id="g1")
    with pytest.raises(VoiceClientError) as info:
        await client.start()
    assert info.value.status == 403 and info.value.reason == "bad token signature"
    assert client.closed.is_set()


async def test_refused_join_reports_the_reason(fake: FakeSignaling) -> None:
    client = VoiceClient(fake.url, fake_token(perms=("speak",)), "lobby")
    with pytest.raises(VoiceClientError) as info:
        await client.start()
    assert info.value.status == 0 and info.value.reason == "missing permission 'connect'"
    assert not info.value.retry


async def test_records_what_it_hears(fake: FakeSignaling, tmp_path: Any) -> None:
    from voxa.client.media import dominant_frequency, read_wav

    out = tmp_path / "heard.wav"
    async with VoiceClient(fake.url, fake_token(), "lobby", record=out) as client:
        await heard(client, "bob", 660.0)
        await asyncio.sleep(1.0)
    audio = read_wav(out)
    assert audio.sample_rate == 48_000 and audio.channels == 1 and audio.seconds > 1.0
    # A busy machine delays frames, and the recording keeps them on the wall-clock timeline, so a
    # stretch may hold a gap or an overlap: the tone is what most quarter seconds of the last second
    # hold, not necessarily all of them.
    tail = audio.samples[-48_000:]
    windows = [dominant_frequency(tail[i : i + 12_000]) for i in range(0, 48_000, 12_000)]
    near = [hz for hz in windows if hz is not None and abs(hz - 660.0) < 15]
    assert len(near) >= 2, windows


async def test_video_quality_and_publish_layers(fake: FakeSignaling) -> None:
    """The audio-only client still speaks video's signaling: it asks to pause a participant's video and
    surfaces the SFU's `publish_layers` as an event."""
    events: list[VoiceEvent] = []
    async with VoiceClient(fake.url, fake_token(), "lobby", tone_hz=440.0, on_event=events.append) as client:
        await client.wait_audio("bob")
        assert await client.video_quality(f"{BOB}:1", paused=True) == {}
        with pytest.raises(PushError, match="unknown track"):
            await client.video_quality("nobody:1", max_width=320, max_height=180)
        pushed = [f[4] for f in fake.frames if f[3] == "video_quality"]
        assert pushed[0] == {"track": f"{BOB}:1", "max_width": None, "max_height": None, "paused": True}
        assert pushed[1] == {"track": "nobody:1", "max_width": 320, "max_height": 180, "paused": False}
        await fake.push("s1", "publish_layers", {"mid": "1", "active": {"q": True, "h": False}})
        await client.wait_for(lambda: any(e.type == "publish_layers" for e in events))
    layers = next(e for e in events if e.type == "publish_layers")
    assert layers.data == {"mid": "1", "active": {"q": True, "h": False}}
