"""Signaling drives the SFU: real `voxa signaling` + `voxa sfu` processes, Phoenix clients with aiortc
peers negotiating through the channel (the protocol of docs/protocol.md), tones decoded and checked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from conftest import SignalingFactory
from tests.integration.conftest import token
from tests.integration.hearing import silence
from tests.integration.sfu.test_control_api import AUTH, SfuProcess
from voxa.client.media import AudioSink, Level, SineTrack
from voxa.client.phoenix import ClientChannel, PhoenixClient, PushError
from voxa.common.testing.wait import scaled

TOPIC = "voice:g1:lobby"


class RawVoiceClient:
    """The smallest polite client: one peer connection, answers whatever `sdp` offers arrive."""

    def __init__(
        self, ws_url: str, user: str, hz: float, grant: str = "connect,speak", topic: str = TOPIC
    ) -> None:
        self.phx = PhoenixClient(ws_url, token(user, grant=grant))
        self.topic = topic
        self.user = user
        self.hz = hz
        self.sinks: dict[str, AudioSink] = {}
        self.resets = 0
        self.channel: ClientChannel | None = None
        self.pc: RTCPeerConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def join(self) -> dict[str, Any]:
        await self.phx.connect()
        self.channel, reply = await self.phx.join(self.topic)
        self._task = asyncio.create_task(self._events())
        await self.negotiate()
        return reply

    async def negotiate(self) -> None:
        assert self.channel is not None
        async with self.lock:
            if self.pc is not None:
                await self.pc.close()
            self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTrack(SineTrack(self.hz))
            pc.on("track", lambda track: self.sinks.__setitem__(track.id, AudioSink(track)))
            await pc.setLocalDescription(await pc.createOffer())
            await self.channel.push("sdp", {"type": "offer", "sdp": pc.localDescription.sdp})

    async def _events(self) -> None:
        assert self.channel is not None
        while True:
            name, payload = await self.channel.events.get()
            if name == "sdp":
                async with self.lock:
                    assert self.pc is not None
                    await self.pc.setRemoteDescription(RTCSessionDescription(payload["sdp"], payload["type"]))
                    if payload["type"] == "offer":
                        await self.pc.setLocalDescription(await self.pc.createAnswer())
                        await self.channel.push(
                            "sdp", {"type": "answer", "sdp": self.pc.localDescription.sdp}
                        )
            elif name == "media_reset":
                self.resets += 1
                for sink in self.sinks.values():
                    await sink.stop()
                self.sinks.clear()
                await self.negotiate()

    def heard_from(self, user: str) -> AudioSink | None:
        return next((s for tid, s in self.sinks.items() if tid.startswith(f"{self.session_of(user)}:")), None)

    def session_of(self, user: str) -> str:
        assert self.channel is not None
        return str(self.channel.members()[user]["session_id"])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for sink in self.sinks.values():
            await sink.stop()
        if self.pc is not None:
            await self.pc.close()
        await self.phx.close()


async def hears(client: RawVoiceClient, user: str, hz: float, timeout: float = 15.0) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            sink = (
                client.heard_from(user)
                if user in (client.channel.members() if client.channel else {})
                else None
            )
            if sink is not None:
                level = await sink.measure(0.5)
                if level.hz is not None and abs(level.hz - hz) < 15 and level.rms > 0.01:
                    return True
            await asyncio.sleep(0.2)


async def silent(client: RawVoiceClient, user: str) -> bool:
    sink = client.heard_from(user)
    assert sink is not None
    return (await sink.measure(0.5)).rms < 0.01


async def hears_silence(client: RawVoiceClient, user: str, timeout: float = 15.0) -> Level:
    """Wait until a whole fresh 0.5 s window of `user`'s track at `client` is silent."""

    def sink() -> AudioSink:
        found = client.heard_from(user)
        assert found is not None, f"{client.user} has no track from {user}"
        return found

    return await silence(lambda: sink().measure(0.5), f"{client.user} hearing silence from {user}", timeout)


async def registered(signaling_url: str, *ids: str) -> None:
    """Wait until the SFUs are in signaling's registry for voice server g1."""
    url = f"{signaling_url}/internal/servers/g1/media-servers"
    async with asyncio.timeout(20), aiohttp.ClientSession(headers=AUTH) as http:
        while True:
            async with http.get(url) as resp:
                found = {m["id"] for m in (await resp.json())["media_servers"]}
            if set(ids) <= found:
                return
            await asyncio.sleep(0.1)


@pytest.fixture
async def stack(signaling_factory: SignalingFactory, tmp_path: Path) -> Any:
    signaling = signaling_factory(media_server_ttl_s="3")
    sfu = SfuProcess(tmp_path, signaling_url=signaling.url)
    await sfu.ready()
    await registered(signaling.url, "sfu-a")
    yield signaling, sfu
    sfu.stop()


async def test_clients_hear_each_other_through_signaling_and_sfu(stack: Any) -> None:
    signaling, _sfu = stack
    alice = RawVoiceClient(signaling.ws_url, "alice", 440.0)
    bob = RawVoiceClient(signaling.ws_url, "bob", 660.0)
    reply = await alice.join()
    assert reply["media_server"] == "sfu-a"
    await bob.join()
    assert await hears(alice, "bob", 660.0)
    assert await hears(bob, "alice", 440.0)
    # Mute through signaling: presence shows it, the SFU stops forwarding.
    assert bob.channel is not None and alice.channel is not None
    await bob.channel.push("mute")
    await alice.channel.wait_presence(lambda m: m["bob"]["muted"])
    await hears_silence(alice, "bob")
    await bob.channel.push("unmute")
    assert await hears(alice, "bob", 660.0)
    # Speaking comes from the SFU into presence.
    await alice.channel.wait_presence(lambda m: m["bob"]["speaking"], timeout=10)
    await alice.close()
    await bob.close()


async def test_without_speak_a_client_is_not_heard(stack: Any) -> None:
    signaling, _sfu = stack
    alice = RawVoiceClient(signaling.ws_url, "alice", 440.0)
    mute_me = RawVoiceClient(signaling.ws_url, "quiet", 660.0, grant="connect")
    await alice.join()
    await mute_me.join()
    assert await hears(mute_me, "alice", 440.0)  # its transport is up: were it forwarded, it would be heard
    await asyncio.sleep(scaled(1.0))  # a negative check: time for its track to arrive
    assert alice.heard_from("quiet") is None or await silent(alice, "quiet")
    await alice.close()
    await mute_me.close()


async def test_moderator_server_mute_reaches_the_sfu(stack: Any) -> None:
    signaling, _sfu = stack
    mod = RawVoiceClient(signaling.ws_url, "mod", 440.0, grant="connect,speak,mute_members")
    bob = RawVoiceClient(signaling.ws_url, "bob", 660.0)
    await mod.join()
    await bob.join()
    assert await hears(mod, "bob", 660.0)
    assert mod.channel is not None and bob.channel is not None
    await mod.channel.push("moderate", {"target": "bob", "action": "mute"})
    await bob.channel.wait_presence(lambda m: m["bob"]["server_muted"])
    await hears_silence(mod, "bob")
    await bob.channel.push("unmute")  # cannot undo a server mute
    await asyncio.sleep(scaled(0.5))  # a negative check: time for a wrongly honoured unmute to take effect
    assert await silent(mod, "bob")
    await mod.channel.push("moderate", {"target": "bob", "action": "unmute"})
    assert await hears(mod, "bob", 660.0)
    await mod.close()
    await bob.close()


@pytest.mark.slow
async def test_killed_sfu_channel_moves_to_another_and_media_resumes(
    signaling_factory: SignalingFactory, tmp_path: Path
) -> None:
    signaling = signaling_factory(media_server_ttl_s="3")
    first = SfuProcess(tmp_path / "a", signaling_url=signaling.url, media_id="sfu-a")
    second = SfuProcess(tmp_path / "b", signaling_url=signaling.url, media_id="sfu-b")
    try:
        await first.ready()
        await second.ready()
        await registered(signaling.url, "sfu-a", "sfu-b")
        alice = RawVoiceClient(signaling.ws_url, "alice", 440.0)
        bob = RawVoiceClient(signaling.ws_url, "bob", 660.0)
        hosting = (await alice.join())["media_server"]
        await bob.join()
        assert await hears(alice, "bob", 660.0)
        victim, survivor = (first, second) if hosting == "sfu-a" else (second, first)
        victim.stop()  # SIGKILL: no drain, no goodbye
        async with asyncio.timeout(20):
            while not (alice.resets and bob.resets):
                await asyncio.sleep(0.1)
        assert await hears(alice, "bob", 660.0, timeout=20)
        assert await hears(bob, "alice", 440.0, timeout=20)
        assert survivor.proc.poll() is None
        await alice.close()
        await bob.close()
    finally:
        first.stop()
        second.stop()


@pytest.mark.slow
async def test_a_channel_remembered_on_a_draining_sfu_with_nobody_left_moves_to_another(
    signaling_factory: SignalingFactory, tmp_path: Path
) -> None:
    """As after a signaling rollout while the operator drains an SFU: the channel's assignment names
    the draining SFU, which has no router for it any more and refuses a new one. The first offer
    moves the channel to another SFU instead of failing for ever."""
    signaling = signaling_factory(media_server_ttl_s="3")
    first = SfuProcess(tmp_path / "a", signaling_url=signaling.url, media_id="sfu-a")
    second = SfuProcess(tmp_path / "b", signaling_url=signaling.url, media_id="sfu-b")
    base = f"{signaling.url}/internal/servers/g1"
    try:
        await first.ready()
        await second.ready()
        await registered(signaling.url, "sfu-a", "sfu-b")
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(f"{base}/channels/lobby/media-server") as r:
                remembered = (await r.json())["media_server"]["id"]
            draining, other = (first, second) if remembered == "sfu-a" else (second, first)
            async with http.put(f"{base}/media-servers/{remembered}/drain", json={"draining": True}) as r:
                assert r.status == 200
            async with asyncio.timeout(20):  # the SFU follows the mark on its next heartbeat
                while True:
                    async with http.get(f"{draining.url}/readyz") as r:
                        if r.status == 503:
                            break
                    await asyncio.sleep(0.1)
            alice = RawVoiceClient(signaling.ws_url, "alice", 440.0)
            bob = RawVoiceClient(signaling.ws_url, "bob", 660.0)
            assert (await alice.join())["media_server"] == remembered
            await bob.join()
            assert await hears(alice, "bob", 660.0, timeout=20)
            assert await hears(bob, "alice", 440.0, timeout=20)
            async with http.get(f"{base}/channels/lobby/media-server") as r:
                assert (await r.json())["media_server"]["id"] == other.media_id
            await alice.close()
            await bob.close()
    finally:
        first.stop()
        second.stop()


async def test_deafen_stops_what_the_sfu_sends(stack: Any) -> None:
    signaling, _sfu = stack
    mod = RawVoiceClient(signaling.ws_url, "mod", 440.0, grant="connect,speak,deafen_members")
    bob = RawVoiceClient(signaling.ws_url, "bob", 660.0)
    await mod.join()
    await bob.join()
    assert await hears(bob, "mod", 440.0)
    assert mod.channel is not None and bob.channel is not None
    await mod.channel.push("moderate", {"target": "bob", "action": "deafen"})
    await bob.channel.wait_presence(lambda m: m["bob"]["server_deafened"])
    await hears_silence(bob, "mod")
    assert await hears(mod, "bob", 660.0)  # deafened, not muted: still heard
    await mod.channel.push("moderate", {"target": "bob", "action": "undeafen"})
    assert await hears(bob, "mod", 440.0)
    await mod.close()
    await bob.close()


async def test_a_call_answered_on_the_user_channel_carries_media_on_its_call_topic(stack: Any) -> None:
    """1:1 call: ring and answer on `user:` topics, then both join `call:<id>`, which negotiates with
    the SFU exactly like a voice channel; a stranger may not join it."""
    signaling, _sfu = stack
    caller = PhoenixClient(signaling.ws_url, token("alice", grant="connect,speak,call"))
    callee = PhoenixClient(signaling.ws_url, token("bob"))
    stranger = PhoenixClient(signaling.ws_url, token("eve"))
    alice = bob = None
    try:
        for client in (caller, callee, stranger):
            await client.connect()
        alice_user, _ = await caller.join("user:alice", {"device_id": "a1"})
        bob_user, _ = await callee.join("user:bob", {"device_id": "b1"})
        call = await alice_user.push("start_call", {"invitees": ["bob"]})
        assert (await bob_user.wait_event("call_started"))["call_id"] == call["call_id"]
        # Not answered yet: bob may not join the media.
        with pytest.raises(PushError) as early:
            await callee.join(call["topic"])
        assert early.value.response["reason"] == "only the call's members who answered may join its media"
        answered = await bob_user.push("answer_call", {"call_id": call["call_id"]})
        alice = RawVoiceClient(signaling.ws_url, "alice", 440.0, topic=call["topic"])
        bob = RawVoiceClient(signaling.ws_url, "bob", 660.0, topic=answered["topic"])
        reply = await alice.join()
        assert reply["call_id"] == call["call_id"]
        await bob.join()
        assert await hears(alice, "bob", 660.0)
        assert await hears(bob, "alice", 440.0)
        assert bob.channel is not None
        await bob.channel.push("mute")
        await hears_silence(alice, "bob")
        with pytest.raises(PushError) as refused:
            await stranger.join(call["topic"])
        assert refused.value.response["reason"] == "only the call's members who answered may join its media"
        with pytest.raises(PushError) as moderation:
            await bob.channel.push("moderate", {"target": "alice", "action": "mute"})
        assert moderation.value.response["reason"] == "no moderation in a call"
    finally:
        for voice in (alice, bob):
            if voice is not None:
                await voice.close()
        for client in (caller, callee, stranger):
            await client.close()
