"""The Python client SDK end to end: VoiceClients (and `voxa client join`) against real `voxa signaling`
(on real Redis) and a real `voxa sfu` registered for voice server g1; tones decoded and checked."""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import RedisServer, SignalingFactory, SignalingProcess
from tests.integration.conftest import token
from tests.integration.hearing import wait_level
from tests.integration.sfu.test_control_api import SfuProcess
from tests.integration.test_media_signaling import registered
from voxa.client.media import Level, dominant_frequency, read_wav
from voxa.client.voice import VoiceClient, VoiceEvent
from voxa.common.testing.wait import scaled

VOXA = str(Path(sys.executable).with_name("voxa"))
TOLERANCE_HZ = 15.0
TONE_RMS = 0.01
pytestmark = pytest.mark.timeout(120)


@dataclass
class Stack:
    signaling: SignalingProcess
    sfu: SfuProcess

    def client(
        self,
        user: str,
        hz: float | None = None,
        grant: str = "connect,speak",
        backoff_s: tuple[float, float] = (0.5, 10.0),
        play: Path | None = None,
    ) -> VoiceClient:
        signed = token(user, grant=grant)
        return VoiceClient(
            self.signaling.ws_url, signed, "lobby", tone_hz=hz, play=play, loop=True, backoff_s=backoff_s
        )


@pytest.fixture
def signaling_env() -> dict[str, str]:
    """Settings of the stack's signaling (a test overrides it with its own fixture or parameter)."""
    return {}


@pytest.fixture
async def stack(
    redis_server: RedisServer,
    signaling_factory: SignalingFactory,
    tmp_path: Path,
    signaling_env: dict[str, str],
) -> AsyncIterator[Stack]:
    signaling = signaling_factory(redis_server.url, media_server_ttl_s="3", **signaling_env)
    sfu = SfuProcess(tmp_path, signaling_url=signaling.url)
    try:
        await sfu.ready()
        await registered(signaling.url, "sfu-a")
        yield Stack(signaling, sfu)
    finally:
        sfu.stop()


async def hears(client: VoiceClient, user: str, hz: float, timeout: float = 15.0) -> Level:
    """Wait until `client` hears `user` at `hz` (±15 Hz); returns that measurement."""
    async with asyncio.timeout(timeout):
        sink = await client.wait_audio(user, timeout)
        while True:
            level = await sink.measure(0.5)
            if level.hz is not None and abs(level.hz - hz) < TOLERANCE_HZ and level.rms > TONE_RMS:
                return level
            sink = client.audio_from(user) or sink


async def silent(client: VoiceClient, user: str, seconds: float = 0.6) -> bool:
    return (await client.measure(user, seconds)).rms < TONE_RMS


async def silence(client: VoiceClient, user: str, timeout: float = 15.0) -> Level:
    """Wait until a whole fresh 0.6 s window of `user` at `client` is silent (no track counts as silent)."""
    return await wait_level(
        lambda: client.measure(user, 0.6), lambda level: level.rms < TONE_RMS, timeout, f"{user} silent"
    )


def stereo_wav_44k1(path: Path, hz: float, seconds: float = 1.0) -> Path:
    """A 44.1 kHz stereo tone: what `play=` must convert to 48 kHz mono on the way out."""
    count = int(44_100 * seconds)
    samples = [round(16000 * math.sin(2 * math.pi * hz * i / 44_100)) for i in range(count)]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44_100)
        wav.writeframes(struct.pack(f"<{2 * count}h", *(x for s in samples for x in (s, s))))
    return path


async def test_three_clients_hear_each_other_and_mute_silences(stack: Stack, tmp_path: Path) -> None:
    tones = {"alice": 440.0, "bob": 660.0, "carol": 880.0}
    clients = {user: stack.client(user, hz) for user, hz in tones.items() if user != "carol"}
    # Carol plays a WAV file (looped) rather than a generated tone.
    clients["carol"] = stack.client("carol", play=stereo_wav_44k1(tmp_path / "carol.wav", tones["carol"]))
    events: list[VoiceEvent] = []
    clients["alice"].on_event(events.append)
    try:
        for client in clients.values():
            reply = await client.start()
            assert reply["media_server"] == "sfu-a" and reply["ice_servers"] == []
        for user, client in clients.items():
            for other, hz in tones.items():
                if other != user:
                    level = await hears(client, other, hz)
                    assert level.hz is not None and abs(level.hz - hz) < TOLERANCE_HZ
        alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
        assert set(alice.members()) == set(tones)
        assert {r.user_id for r in alice.remote_tracks.values()} == {"bob", "carol"}

        # Mute: the track is released without renegotiation; presence shows it; nobody hears bob.
        offers_before = alice.pc.signalingState if alice.pc else None
        state = await bob.mute()
        assert state["muted"] is True
        await alice.wait_for(lambda: alice.members()["bob"]["muted"])
        await silence(alice, "bob")
        await silence(carol, "bob")
        assert await hears(alice, "carol", 880.0)  # the others are untouched
        await bob.unmute()
        assert await hears(alice, "bob", 660.0) and await hears(carol, "bob", 660.0)
        assert offers_before == "stable"

        # Speaking comes from the SFU through presence.
        await alice.wait_for(lambda: any(e.type == "speaking" and e.data["user"] == "bob" for e in events))
        kinds = {e.type for e in events}
        assert {"joined", "presence_join", "presence_update", "track", "media_state"} <= kinds
    finally:
        for client in clients.values():
            await client.close()


async def test_a_peer_without_speak_is_not_heard(stack: Stack) -> None:
    alice = stack.client("alice", 440.0)
    quiet = stack.client("quiet", 660.0, grant="connect")
    try:
        await alice.start()
        reply = await quiet.start()
        assert reply["permissions"] == ["connect"]
        assert await hears(quiet, "alice", 440.0)  # it hears...
        await alice.wait_for(lambda: alice.members().get("quiet", {}).get("suppressed") is True)
        await asyncio.sleep(
            scaled(1.0)
        )  # a negative check: time for what it sends to arrive, were it forwarded
        assert await silent(alice, "quiet", 1.0)  # ...but nothing it sends is forwarded
    finally:
        await alice.close()
        await quiet.close()


async def test_server_mute_holds_against_the_users_own_unmute(stack: Stack) -> None:
    mod = stack.client("mod", 440.0, grant="connect,speak,mute_members")
    bob = stack.client("bob", 660.0)
    try:
        await mod.start()
        await bob.start()
        assert await hears(mod, "bob", 660.0)
        assert await mod.moderate("bob", "mute") == {"target": "bob", "action": "mute"}
        await bob.wait_for(lambda: bool((bob.me() or {}).get("server_muted")))
        await silence(mod, "bob")
        state = await bob.unmute()  # cannot undo a server mute
        assert state["muted"] is False and state["server_muted"] is True
        await asyncio.sleep(
            scaled(0.5)
        )  # a negative check: time for a wrongly honoured unmute to take effect
        assert await silent(mod, "bob")
        await mod.moderate("bob", "unmute")
        assert await hears(mod, "bob", 660.0)
    finally:
        await mod.close()
        await bob.close()


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXA_")}
    return subprocess.run(
        [VOXA, "client", "join", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


async def test_cli_join_records_what_it_hears(stack: Stack, tmp_path: Path) -> None:
    alice = stack.client("alice", 440.0)
    out = tmp_path / "heard.wav"
    try:
        await alice.start()
        args = [
            "--url",
            stack.signaling.ws_url,
            "--token",
            token("cli"),
            "--channel",
            "lobby",
            "--tone",
            "660",
            "--record",
            str(out),
            "--seconds",
            "4",
            "--json",
            "--host-address",
            "127.0.0.1",  # the SFU takes media from loopback only (VOXA_SFU_RTC_REMOTE_NETWORKS)
        ]
        cli = asyncio.ensure_future(asyncio.to_thread(run_cli, *args))
        assert await hears(alice, "cli", 660.0, timeout=10)  # meanwhile, alice hears the CLI's tone
        result = await cli
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
    finally:
        await alice.close()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "joined" and events[0]["user"] == "cli" and "left" in kinds
    assert any(e["event"] == "presence_join" and e["user"] == "alice" for e in events)
    assert any(e["event"] == "track" and e["user"] == "alice" for e in events)
    assert events[-1] == {"t": events[-1]["t"], "event": "recorded", "path": str(out)}
    audio = read_wav(out)
    assert audio.sample_rate == 48_000 and 3.5 < audio.seconds < 5.0
    hz = dominant_frequency(audio.samples[-48_000 - 24_000 : -24_000])  # a second before the end
    assert hz is not None and abs(hz - 440.0) < TOLERANCE_HZ


async def test_cli_refusals_exit_2_with_the_reason(signaling_factory: SignalingFactory) -> None:
    signaling = signaling_factory()
    base = ["--url", signaling.ws_url, "--channel", "lobby", "--seconds", "2"]
    forged = token("mallory")[:-6] + "AAAAAA"
    result = await asyncio.to_thread(run_cli, *base, "--token", forged, "--json")
    assert result.returncode == 2
    assert "HTTP 403: bad token signature" in result.stderr
    assert json.loads(result.stdout.splitlines()[0])["reason"] == "bad token signature"
    result = await asyncio.to_thread(run_cli, *base, "--token", token("nobody", grant="speak"))
    assert result.returncode == 2 and "join refused: missing permission 'connect'" in result.stderr
    result = await asyncio.to_thread(run_cli, *base, "--token", "garbage")
    assert result.returncode == 2 and "not a JWT" in result.stderr


@pytest.mark.parametrize("signaling_env", [{"session_resume_s": "0"}, {}], ids=["resume-off", "resume-on"])
async def test_signaling_restart_reconnects_rejoins_and_renegotiates_or_resumes(
    stack: Stack, signaling_env: dict[str, str]
) -> None:
    """Without resume, the rejoin is a new session negotiated afresh; with it (the default), the
    session record in Redis and the SFU peer outlive the killed process: the same session goes on."""
    resume = signaling_env.get("session_resume_s") != "0"
    alice = stack.client("alice", 440.0, backoff_s=(0.2, 1.0))
    bob = stack.client("bob", 660.0, backoff_s=(0.2, 1.0))
    try:
        await alice.start()
        await bob.start()
        assert await hears(alice, "bob", 660.0)
        sessions = (alice.session_id, bob.session_id)
        pcs = (alice.pc, bob.pc)
        joins = alice.join_reply
        stack.signaling.stop(kill=True)
        await alice.wait_for(lambda: alice.channel is None or alice.phx is None or alice.phx.closed.is_set())
        stack.signaling.start()
        await alice.wait_for(lambda: alice.join_reply is not joins, timeout=20)
        if resume:
            await bob.wait_for(lambda: bool(bob.join_reply.get("resumed")), timeout=20)
            assert alice.join_reply["resumed"] is True
            assert (alice.session_id, bob.session_id) == sessions
            assert (alice.pc, bob.pc) == pcs
        else:
            assert "resumed" not in alice.join_reply
            await alice.wait_for(lambda: alice.session_id != sessions[0], timeout=20)
            await bob.wait_for(lambda: bob.session_id != sessions[1], timeout=20)
        assert await hears(alice, "bob", 660.0, timeout=20)
        assert await hears(bob, "alice", 440.0, timeout=20)
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.slow
async def test_a_lost_sfu_resets_media_and_clients_renegotiate(
    redis_server: RedisServer, signaling_factory: SignalingFactory, tmp_path: Path
) -> None:
    signaling = signaling_factory(redis_server.url, media_server_ttl_s="3")
    first = SfuProcess(tmp_path / "a", signaling_url=signaling.url, media_id="sfu-a")
    second = SfuProcess(tmp_path / "b", signaling_url=signaling.url, media_id="sfu-b")
    stack = Stack(signaling, first)
    alice = stack.client("alice", 440.0)
    bob = stack.client("bob", 660.0)
    resets: list[VoiceEvent] = []
    alice.on_event(lambda e: resets.append(e) if e.type == "media_reset" else None)
    try:
        await first.ready()
        await second.ready()
        await registered(signaling.url, "sfu-a", "sfu-b")
        hosting = (await alice.start())["media_server"]
        await bob.start()
        assert await hears(alice, "bob", 660.0)
        session = alice.session_id
        (first if hosting == "sfu-a" else second).stop()  # SIGKILL: no drain
        await alice.wait_for(lambda: bool(resets), timeout=20)
        assert await hears(alice, "bob", 660.0, timeout=20)
        assert await hears(bob, "alice", 440.0, timeout=20)
        assert alice.session_id == session  # same join: only the media was renegotiated
    finally:
        await alice.close()
        await bob.close()
        first.stop()
        second.stop()
