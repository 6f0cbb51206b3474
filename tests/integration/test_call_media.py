"""Calls with media, end to end through the Python SDK (`voxa.client.calls`) and `voxa client call` /
`voxa client answer`: two real `voxa signaling` replicas on a real Redis, caller and callee on different
replicas, one real `voxa sfu`; what each side hears is decoded and its tone frequency checked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from conftest import SFU_SECRET, RedisServer, SignalingFactory, SignalingProcess
from tests.integration.conftest import token
from tests.integration.sfu.test_control_api import SfuProcess
from tests.integration.test_media_signaling import registered
from tests.integration.test_voice_clients import hears, silence
from voxa.client.calls import CallClient
from voxa.client.media import dominant_frequency, read_wav
from voxa.client.voice import use_host_addresses

VOXA = str(Path(sys.executable).with_name("voxa"))
GRANT = "connect,speak,call"
pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@dataclass
class Stack:
    replicas: tuple[SignalingProcess, SignalingProcess]
    sfu: SfuProcess

    def device(self, user: str, replica: int, device_id: str | None = None) -> CallClient:
        url = self.replicas[replica].ws_url
        return CallClient(
            url, token(user, grant=GRANT), device_id=device_id or f"{user}-1", backoff_s=(0.2, 2)
        )


@pytest.fixture
async def stack(
    redis_server: RedisServer, signaling_factory: SignalingFactory, tmp_path: Path
) -> AsyncIterator[Stack]:
    settings = {"media_server_ttl_s": "3", "call_ring_timeout_s": "20"}
    one = signaling_factory(redis_server.url, **settings)
    two = signaling_factory(redis_server.url, **settings)
    sfu = SfuProcess(tmp_path, signaling_url=one.url)
    use_host_addresses(["127.0.0.1"])  # the SFU takes media from loopback only
    try:
        await sfu.ready()
        await registered(one.url, "sfu-a")
        yield Stack((one, two), sfu)
    finally:
        use_host_addresses(None)
        sfu.stop()


async def test_a_one_to_one_call_carries_both_tones_and_ends_for_both(stack: Stack) -> None:
    alice, bob = stack.device("alice", 0), stack.device("bob", 1)
    try:
        await alice.start()
        await bob.start()
        call = await alice.start_call(["bob"])
        alice_voice = await alice.join_media(call.call_id, tone_hz=440.0)
        ring = await bob.wait_event("call_started", call_id=call.call_id)
        assert ring["caller"]["id"] == "alice"
        await alice.wait_event("call_ringing", call_id=call.call_id)
        answer = await bob.answer(call.call_id)
        assert answer["topic"] == call.topic
        bob_voice = await bob.join_media(call.call_id, tone_hz=660.0)
        await alice.wait_event("call_accepted", call_id=call.call_id)
        await hears(alice_voice, "bob", 660.0, timeout=30)
        await hears(bob_voice, "alice", 440.0, timeout=30)
        # Mute works in a call as in a channel: silence, without renegotiation.
        await bob_voice.mute()
        await alice_voice.wait_for(lambda: alice_voice.members()["bob"]["muted"])
        await silence(alice_voice, "bob")
        assert await router_status(stack.sfu, f"g1.call.{call.call_id}") == 200
        await bob.end(call.call_id)
        assert (await alice.wait_event("call_ended", call_id=call.call_id))["reason"] == "hangup"
        for voice in (alice_voice, bob_voice):
            await asyncio.wait_for(voice.closed.wait(), 20)
        await router_gone(stack.sfu, f"g1.call.{call.call_id}")  # the call's room went with it
        assert call.call_id not in alice.calls and call.call_id not in bob.calls
    finally:
        await alice.close()
        await bob.close()


async def test_a_group_call_takes_a_late_joiner_and_ends_when_the_last_leaves(stack: Stack) -> None:
    alice, bob, carol = stack.device("alice", 0), stack.device("bob", 1), stack.device("carol", 0)
    try:
        for device in (alice, bob, carol):
            await device.start()
        call = await alice.start_call(["bob", "carol"])
        alice_voice = await alice.join_media(call.call_id, tone_hz=440.0)
        await bob.wait_event("call_started", call_id=call.call_id)
        await bob.answer(call.call_id)
        bob_voice = await bob.join_media(call.call_id, tone_hz=660.0)
        await hears(alice_voice, "bob", 660.0, timeout=30)
        await hears(bob_voice, "alice", 440.0, timeout=30)
        # Carol answers late, while the call is live; everybody hears everybody.
        await carol.answer(call.call_id)
        carol_voice = await carol.join_media(call.call_id, tone_hz=880.0)
        for voice, others in (
            (alice_voice, {"bob": 660.0, "carol": 880.0}),
            (bob_voice, {"alice": 440.0, "carol": 880.0}),
            (carol_voice, {"alice": 440.0, "bob": 660.0}),
        ):
            for user, hz in others.items():
                await hears(voice, user, hz, timeout=30)
        # The caller leaving does not end a group call; the last one leaving does.
        await alice.end(call.call_id)
        assert (await bob.wait_event("call_left", call_id=call.call_id))["user_id"] == "alice"
        # The server closes the media of whoever left, whatever their client does.
        await asyncio.wait_for(alice_voice.closed.wait(), 20)
        assert alice_voice.close_reason == "call ended"
        await bob_voice.wait_for(lambda: "alice" not in bob_voice.members(), timeout=20)
        await hears(bob_voice, "carol", 880.0, timeout=30)
        await bob.end(call.call_id)
        await carol.end(call.call_id)
        for device in (alice, bob, carol):
            await device.wait_event("call_ended", call_id=call.call_id)
    finally:
        for device in (alice, bob, carol):
            await device.close()


async def test_a_replica_killed_during_a_call_loses_no_member(stack: Stack) -> None:
    """Bob's replica dies mid-call and comes back: his device and media reconnect, the call goes on."""
    alice, bob = stack.device("alice", 0), stack.device("bob", 1)
    try:
        await alice.start()
        await bob.start()
        call = await alice.start_call(["bob"])
        alice_voice = await alice.join_media(call.call_id, tone_hz=440.0)
        await bob.wait_event("call_started", call_id=call.call_id)
        await bob.answer(call.call_id)
        bob_voice = await bob.join_media(call.call_id, tone_hz=660.0, backoff_s=(0.2, 2))
        await hears(bob_voice, "alice", 440.0, timeout=30)
        mark = bob.mark()
        stack.replicas[1].stop(kill=True)
        stack.replicas[1].start()
        await bob.wait_event("reconnected", since=mark, timeout=30)
        state = await bob.wait_event("call_state", call_id=call.call_id, since=mark)
        assert state["state"] == "active" and state["members"] == {"alice": "joined", "bob": "joined"}
        await hears(bob_voice, "alice", 440.0, timeout=40)
        await hears(alice_voice, "bob", 660.0, timeout=40)
        await alice.end(call.call_id)
        await bob.wait_event("call_ended", call_id=call.call_id, since=mark)
    finally:
        await alice.close()
        await bob.close()


async def router_status(sfu: SfuProcess, router: str) -> int:
    headers = {"Authorization": f"Bearer {SFU_SECRET}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{sfu.url}/v1/routers/{router}") as resp,
    ):
        return resp.status


async def router_gone(sfu: SfuProcess, router: str) -> None:
    """Until the SFU has no router `router` (automatic rooms: closed after the last leave)."""
    async with asyncio.timeout(20):
        while (status := await router_status(sfu, router)) != 404:
            assert status == 200, status
            await asyncio.sleep(0.1)


def cli(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXA_")}
    return subprocess.Popen(
        [VOXA, "client", *args, "--json", "--host-address", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def test_the_cli_calls_and_answers_and_each_records_the_other(stack: Stack, tmp_path: Path) -> None:
    one, two = stack.replicas
    heard_by_bob, heard_by_alice = tmp_path / "bob.wav", tmp_path / "alice.wav"
    bob = cli(
        "answer", "--url", two.ws_url, "--token", token("bob", grant=GRANT), "--from", "alice",
        "--tone", "660", "--record", str(heard_by_bob), "--seconds", "6",
    )  # fmt: skip
    # Alice calls once bob's device is on its user topic (a ring reaches the devices online).
    assert bob.stdout is not None
    first = await asyncio.to_thread(bob.stdout.readline)
    assert '"event":"joined"' in first, first + (bob.stderr.read() if bob.stderr else "")
    alice = cli(
        "call", "--url", one.ws_url, "--token", token("alice", grant=GRANT), "--to", "bob",
        "--tone", "440", "--record", str(heard_by_alice), "--seconds", "6",
    )  # fmt: skip
    try:
        alice_out, alice_err = await asyncio.to_thread(alice.communicate, timeout=90)
        bob_out, bob_err = await asyncio.to_thread(bob.communicate, timeout=90)
    finally:
        for proc in (alice, bob):
            if proc.poll() is None:
                proc.kill()
    assert alice.returncode == 0, alice_err + alice_out
    assert bob.returncode == 0, bob_err + bob_out
    assert '"event":"call_accepted"' in alice_out
    assert '"event":"call_started"' in bob_out
    for path, hz in ((heard_by_alice, 660.0), (heard_by_bob, 440.0)):
        audio = read_wav(path)
        heard = dominant_frequency(audio.samples[-48_000 - 24_000 : -24_000])  # a second before the end
        assert heard is not None and abs(heard - hz) < 15, path
