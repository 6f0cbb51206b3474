"""The browser client signaling serves at `/` (signaling/static/), end to end against `voxa demo`.

`voxa demo --port P` runs signaling and an SFU worker and prints two invite links (Alice and Bob). Each
link opens in its own headless Chromium process (the fake microphones play 440 Hz and 660 Hz tones), in
pages of the e2e/browser harness that navigate away from the harness page to the invite (`$goto`). The
test only uses the page's UI (buttons, the participant list) and its test hook
`window.voxa = {state(), participants(), measure(ms)}`:

1. presence and the mute UI: both pages list both participants with the "you" marker on the right one;
   muting on one page shows on the other;
2. media: each page hears the other's tone (dominant frequency within 15 Hz); mute on Alice's page makes
   Bob's page measure silence and show Alice muted, unmute brings the tone back; a server mute by Alice
   (a moderator) disables Bob's unmute button and silences him; deafen;
3. screenshots, desktop and phone sized, into tmp_path and `artifacts/` (gitignored) for humans.

Other tests: a refused connection shows the server's reason; a signaling restart is survived (the page
reconnects, rejoins and negotiates media from scratch).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest

from e2e.browser.app_client import (
    DESKTOP,
    PHONE,
    Client,
)
from e2e.browser.conftest import ChromiumFactory
from e2e.browser.harness import ROOT
from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.ports import free_port
from voxa.common.tokens import mint_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

A_HZ = 440.0  # Alice's fake microphone
B_HZ = 660.0  # Bob's
ARTIFACTS = ROOT / "artifacts"
INVITE = re.compile(r"Invite for (\w+): (http://\S+)")


# --- voxa demo ----------------------------------------------------------------------------------------
@dataclass
class Demo:
    port: int
    workdir: Path
    env: dict[str, str]
    base_url: str = ""
    invites: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    stdout: list[str] = field(default_factory=list)
    runs: int = 0
    _drain: asyncio.Task[None] | None = None

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"demo-{self.runs}.stderr"

    def output(self) -> str:
        stderr = ""
        with contextlib.suppress(OSError):
            stderr = self.stderr_path.read_text(errors="replace")[-4000:]
        return "--- voxa demo stdout:\n" + "".join(self.stdout) + "--- voxa demo stderr (tail):\n" + stderr

    async def start(self) -> None:
        self.runs += 1
        self.stdout.clear()
        with self.stderr_path.open("wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "voxa.common.cli",
                "demo",
                "--port",
                str(self.port),
                cwd=ROOT,
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        invites: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while len(invites) < 2:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"voxa demo printed no two invite links in 30 s\n{self.output()}")
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not raw:
                raise AssertionError(f"voxa demo exited with {await self.proc.wait()}\n{self.output()}")
            line = raw.decode(errors="replace")
            self.stdout.append(line)
            match = INVITE.search(line)
            if match:
                invites[match.group(1).lower()] = match.group(2)
        self.invites = invites
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._drain = asyncio.create_task(self._drain_stdout(self.proc.stdout))
        await self._wait_ready()

    async def _drain_stdout(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self.stdout.append(raw.decode(errors="replace"))

    async def _wait_ready(self) -> None:
        """Signaling answers, serves the client, and the demo's SFU is in the media-server registry."""
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.base_url}/healthz") as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise AssertionError(f"voxa demo not healthy in 20 s\n{self.output()}")
                await asyncio.sleep(0.1)
            async with http.get(f"{self.base_url}/") as resp:
                page = await resp.text()
                assert resp.status == 200 and "/static/app.js" in page, (
                    f"GET / does not serve the browser client (HTTP {resp.status}):\n{page[:400]}"
                )
            async with http.get(f"{self.base_url}/vendor/phoenix.mjs") as resp:
                assert resp.status == 200, f"GET /vendor/phoenix.mjs answered {resp.status}"

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._drain, 5)
            self._drain = None


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    env = dict(os.environ)
    # A fixed secret: the invite links stay valid when a test restarts the demo.
    env["VOXA_JWT_SECRET"] = "browser-client-test-secret-0123456789abcdef"
    env.setdefault("VOXA_LOG_LEVEL", "info")
    workdir = tmp_path / "demo"
    workdir.mkdir()
    server = Demo(port=free_port(), workdir=workdir, env=env)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def open_clients(chromium: ChromiumFactory, demo: Demo) -> tuple[Client, Client]:
    peers = await chromium(2, tone_hz=[A_HZ, B_HZ])  # one Chromium process per tone
    alice = Client(peers, 0, "alice", demo)
    bob = Client(peers, 1, "bob", demo)
    await alice.open(demo.invites["alice"])
    await bob.open(demo.invites["bob"])
    return alice, bob


def keep(shot: Path, name: str) -> Path:
    """Copy a screenshot to artifacts/ (gitignored) for humans."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    shutil.copyfile(shot, target)
    return target


# --- tests ------------------------------------------------------------------------------------------------
async def test_two_browsers_presence_mute_and_voice(
    chromium: ChromiumFactory, demo: Demo, tmp_path: Path
) -> None:
    alice, bob = await open_clients(chromium, demo)

    # 1. Connected, joined, and both listed on both pages, "you" on the right entry.
    for client in (alice, bob):
        state = await client.wait_status("connected")
        assert state["topic"] == "voice:demo:lobby" and state["user"]["id"] == client.name, state

    for client in (alice, bob):
        listed = await client.until(functools.partial(_both_listed, client), "Alice and Bob in the list")
        you = [p["user"] for p in listed if p["you"] and p["youBadge"]]
        assert you == [client.name], listed
        names = {p["user"]: p["name"] for p in listed}
        assert names == {"alice": "Alice", "bob": "Bob"}, listed
        hook = {p["id"]: p for p in await client.participants()}
        assert hook[client.name]["you"] and not hook["bob" if client is alice else "alice"]["you"], hook
        assert all(p["session_id"] for p in hook.values()), hook

    # Mute shows on the other page (presence), and the button says so (aria-pressed).
    assert await alice.attr("#mute", "aria-pressed") == "false"
    await alice.click("#mute")
    await alice.until(lambda: _attr_is(alice, "#mute", "aria-pressed", "true"), "mute pressed")

    async def alice_muted_on_bob(muted: bool) -> bool:
        person = await bob.person("alice")
        return bool(person and person["muted"] is muted and ("Muted" in person["flags"]) is muted)

    await bob.until(lambda: alice_muted_on_bob(True), "Alice shown muted")
    mic_after_mute = (await alice.state())["mic"]
    assert mic_after_mute is None, f"the microphone must be released on mute: {mic_after_mute}"
    await alice.click("#mute")
    await bob.until(lambda: alice_muted_on_bob(False), "Alice shown unmuted")
    await alice.until(lambda: _attr_is(alice, "#mute", "aria-pressed", "false"), "mute released")

    # 2. Media: each hears the other.
    await alice.wait_voice()
    await bob.wait_voice()
    heard_by_alice = await alice.hears("bob", B_HZ)
    heard_by_bob = await bob.hears("alice", A_HZ)
    print(f"alice hears bob {heard_by_alice}; bob hears alice {heard_by_bob}")

    # Speaking rings come from the SFU's audio levels.
    await alice.until(lambda: _speaking(alice, "bob"), "Bob's speaking ring")

    shots = tmp_path / "screenshots"
    desktop = await alice.screenshot(shots / "alice-desktop.png", DESKTOP)
    phone = await bob.screenshot(shots / "bob-phone.png", PHONE)

    # Mute on Alice's page: Bob measures silence and shows Alice muted. No renegotiation.
    negotiated = (await alice.state())["media"]["counters"]
    await alice.click("#mute")
    await bob.until(lambda: alice_muted_on_bob(True), "Alice shown muted")
    await bob.silence_from("alice")
    await alice.click("#mute")
    await bob.hears("alice", A_HZ)
    await bob.until(lambda: alice_muted_on_bob(False), "Alice shown unmuted")
    after = await alice.state()
    assert after["media"]["counters"]["offers"] == negotiated["offers"], (negotiated, after["media"])
    assert after["media"]["transceivers"] >= 1 and after["media"]["sending"], after["media"]

    # Server mute (Alice may mute members): Bob's unmute is disabled with a tooltip; Bob goes silent.
    await alice.click("li[data-user='bob'] button.mod")

    async def bob_server_muted(on: bool) -> bool:
        state = await bob.state()
        disabled = await bob.js("document.getElementById('mute').disabled")
        return bool(state["server_muted"] is on and disabled is on)

    await bob.until(lambda: bob_server_muted(True), "Bob server muted with the mute button disabled")
    title = await bob.attr("#mute", "title") or ""
    assert "moderator" in title.lower(), title
    assert await bob.attr("#mute", "aria-pressed") == "true"
    await alice.until(lambda: _flag(alice, "bob", "Muted by a moderator"), "Bob's server-mute icon")
    await alice.silence_from("bob")
    server_muted_phone = await bob.screenshot(shots / "bob-phone-server-muted.png")
    await alice.click("li[data-user='bob'] button.mod")
    await bob.until(lambda: bob_server_muted(False), "Bob's server mute lifted")
    await alice.hears("bob", B_HZ)

    # Deafen on Bob's page: his playback is muted locally, he is shown deafened (and muted) to Alice,
    # and Alice hears nothing from him; undeafen restores both.
    await bob.click("#deafen")
    await bob.until(lambda: _attr_is(bob, "#deafen", "aria-pressed", "true"), "deafen pressed")
    playing_muted = await bob.js("[...document.querySelectorAll('#audio audio')].map((a) => a.muted)")
    assert playing_muted and all(playing_muted), playing_muted
    await alice.until(lambda: _flag(alice, "bob", "Deafened"), "Bob shown deafened")
    await alice.silence_from("bob")
    await bob.click("#deafen")
    await alice.hears("bob", B_HZ)
    playing_muted = await bob.js("[...document.querySelectorAll('#audio audio')].map((a) => a.muted)")
    assert playing_muted and not any(playing_muted), playing_muted

    # Leave: Alice's page says so, and Bob's list drops her.
    await alice.click("#leave")
    await alice.wait_status("left")

    async def alone(client: Client) -> bool:
        return [p["user"] for p in await client.listed()] == ["bob"]

    await bob.until(lambda: alone(bob), "Alice gone from Bob's list")

    for shot in (desktop, phone, server_muted_phone):
        assert shot.stat().st_size > 10_000, shot
    kept = [keep(desktop, "browser-client-desktop.png"), keep(phone, "browser-client-phone.png")]
    print(f"screenshots: {desktop} {phone} {server_muted_phone}; copies: {' '.join(map(str, kept))}")


async def test_refusals_show_the_reason(chromium: ChromiumFactory, demo: Demo) -> None:
    """A refused WebSocket (bad signature: HTTP 403 before the upgrade, read back by the page) and a
    refused join (no `connect` permission: the phx_reply's reason) both end in a readable error."""
    peers = await chromium(2, tone_hz=A_HZ)
    forged, listener = Client(peers, 0, "alice", demo), Client(peers, 1, "carol", demo)
    url = urlsplit(demo.invites["alice"])

    def invite(token: str) -> str:
        query = dict(parse_qsl(url.query))
        query["token"] = token
        return urlunsplit(url._replace(query=urlencode(query)))

    alice = VoiceClaims(sub="alice", name="Alice", server="demo", perms=parse_permissions("connect,speak"))
    await forged.open(invite(mint_token(alice, "not-the-demo-secret-0123456789abcdef")))
    carol = VoiceClaims(sub="carol", name="Carol", server="demo", perms=parse_permissions("speak"))
    await listener.open(invite(mint_token(carol, demo.env["VOXA_JWT_SECRET"])))

    expected = [
        (forged, "Connection refused: bad token signature"),
        (listener, "Cannot join lobby: missing permission 'connect'"),
    ]
    for client, reason in expected:
        state = await client.wait_status("error")
        assert state["error"] == reason, state
        assert not state["joined"] and state["media"] is None and state["mic"] is None, state
        status_text = await client.js("document.getElementById('status-text').textContent")
        assert reason in status_text, status_text
        panel = await client.js(
            "(() => { const el = document.getElementById('left');"
            " return {hidden: el.hidden, role: el.getAttribute('role'), text: el.textContent}; })()"
        )
        assert not panel["hidden"] and panel["role"] == "alert" and reason in panel["text"], panel


async def test_signaling_restart_rejoins_and_renegotiates(
    chromium: ChromiumFactory, demo: Demo, tmp_path: Path
) -> None:
    alice, bob = await open_clients(chromium, demo)
    for client, other, hz in ((alice, "bob", B_HZ), (bob, "alice", A_HZ)):
        await client.wait_voice()
        await client.hears(other, hz)
    first = {c.name: (await c.state())["session_id"] for c in (alice, bob)}

    await demo.stop()
    for client in (alice, bob):
        # The page keeps its RTCPeerConnection while it reconnects, to resume its session; the demo
        # restarts with an empty store and a new SFU, so the rejoin is not resumed and it starts over.
        await client.wait_status("reconnecting")

    await demo.start()  # same port, same secret: the invite links still work
    for client in (alice, bob):
        state = await client.wait_status("connected", timeout=40)
        assert state["session_id"] != first[client.name], state  # a new join
    for client, other, hz in ((alice, "bob", B_HZ), (bob, "alice", A_HZ)):
        state = await client.wait_voice(timeout=40)
        assert state["media"]["counters"]["offers"] >= 1, state
        await client.hears(other, hz)


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_camera_and_screen_share_reach_the_other_page(
    chromium: ChromiumFactory, demo: Demo, tmp_path: Path
) -> None:
    """Camera on/off and screen share from Alice's page (Chromium's fake camera and fake screen capture),
    seen as tiles on Bob's page; Bob's tiles tell the SFU their size (`video_quality`); Alice's camera
    publishes three simulcast layers; Bob (no `stream` permission) cannot share his screen."""
    peers = await chromium(2, tone_hz=[A_HZ, B_HZ])
    alice, bob = Client(peers, 0, "alice", demo), Client(peers, 1, "bob", demo)
    small = {"camera": "640x360"}  # a small camera: two browsers encode on two shared cores
    await alice.open(with_query(demo.invites["alice"], **small))
    await bob.open(with_query(demo.invites["bob"], **small))
    for client in (alice, bob):
        await client.wait_voice()

    # Bob lacks `stream`: his screen button is disabled and says why; his camera button is not.
    assert await bob.js("document.getElementById('screen').disabled") is True
    assert "permission" in (await bob.attr("#screen", "title") or "")
    assert await bob.js("document.getElementById('camera').disabled") is False

    # Alice's camera: her own tile, three layers lowest first, and a live tile on Bob's page.
    await alice.click("#camera")
    await alice.until(lambda: _attr_is(alice, "#camera", "aria-pressed", "true"), "camera pressed")
    mine = await alice.until(lambda: _tile(alice, "alice", "camera", local=True), "Alice's own camera tile")
    assert mine["label"] == "Alice (you)", mine
    published = (await alice.video())["publishing"]
    camera = next(p for p in published if p["source"] == "camera")
    assert [(e["rid"], e["scaleResolutionDownBy"]) for e in camera["encodings"]] == [
        ("q", 4),
        ("h", 2),
        ("f", 1),
    ], camera
    assert (await alice.video())["sources"][camera["mid"]] == "camera"
    await bob.until(lambda: _flag(bob, "alice", "Camera on"), "Alice's camera flag")
    seen = await bob.until(
        lambda: _tile(bob, "alice", "camera", playing=True), "Alice's camera on Bob's page"
    )
    assert seen["label"] == "Alice" and seen["track"].startswith(seen["track"].split(":")[0] + ":"), seen
    frames = seen["frames"]
    await bob.until(
        lambda: _tile(bob, "alice", "camera", more_frames_than=frames), "Alice's video to keep playing"
    )
    sent = await bob.until(lambda: _sent_quality(bob, "alice", "camera"), "a video_quality push")
    assert sent["paused"] is False and sent["max_width"] > 0 and sent["max_height"] > 0, sent
    # Dynacast: the SFU tells Alice which layers Bob receives, and her encoder follows (by rid).
    await alice.until(lambda: _layers_follow(alice, lambda active: any(active.values())), "publish_layers")

    # Bob hides the tile: it asks for nothing (paused), nobody receives any layer, Alice encodes none.
    await bob.js("document.querySelector('#grid .tile[data-source=camera]').style.display = 'none'")
    paused = await bob.until(lambda: _sent_quality(bob, "alice", "camera", paused=True), "a paused tile")
    assert paused["max_width"] == 0, paused
    await alice.until(lambda: _layers_follow(alice, lambda active: not any(active.values())), "no layers")
    await bob.js("document.querySelector('#grid .tile[data-source=camera]').style.display = ''")
    await alice.until(lambda: _layers_follow(alice, lambda active: any(active.values())), "layers again")

    # Alice shares her screen (Chromium's fake capture): a second tile on both pages.
    await alice.click("#screen")
    await alice.until(lambda: _attr_is(alice, "#screen", "aria-pressed", "true"), "screen pressed")
    mine = await alice.until(lambda: _tile(alice, "alice", "screen", local=True), "Alice's own screen tile")
    assert mine["label"] == "Alice's screen (you)", mine
    shared = await bob.until(
        lambda: _tile(bob, "alice", "screen", playing=True), "Alice's screen on Bob's page"
    )
    assert shared["label"] == "Alice's screen", shared
    await bob.until(lambda: _flag(bob, "alice", "Sharing their screen"), "Alice's streaming flag")
    shots = tmp_path / "screenshots"
    grid_shot = await bob.screenshot(shots / "bob-video-grid.png", DESKTOP)
    keep(grid_shot, "browser-client-video-grid.png")

    # Camera off: Bob's camera tile of Alice goes, her screen stays; then the screen share ends.
    await alice.click("#camera")
    await bob.until(lambda: _no_tile(bob, "alice", "camera"), "Alice's camera tile gone")
    assert await _tile(bob, "alice", "screen"), await bob.tiles()
    assert (await alice.video())["camera"] is None  # the camera is released
    await alice.click("#screen")
    await bob.until(lambda: _no_tile(bob, "alice", "screen"), "Alice's screen tile gone")
    await alice.until(lambda: _no_tile(alice, "alice", "screen"), "Alice's own screen tile gone")
    # And the camera comes back on the same transceiver.
    await alice.click("#camera")
    await bob.until(lambda: _tile(bob, "alice", "camera", playing=True), "Alice's camera back on Bob's page")
    # Voice kept working throughout.
    await bob.hears("alice", A_HZ)


# --- small probes -------------------------------------------------------------------------------------------
async def _tile(
    client: Client,
    user: str,
    source: str,
    *,
    local: bool = False,
    playing: bool = False,
    more_frames_than: int | None = None,
) -> dict[str, Any] | None:
    for tile in await client.tiles():
        if tile["user"] != user or tile["source"] != source or tile["local"] is not local:
            continue
        if playing and not tile["videoWidth"]:
            continue
        if more_frames_than is not None and (tile["frames"] or 0) <= more_frames_than:
            continue
        return tile
    return None


async def _no_tile(client: Client, user: str, source: str) -> bool:
    return not any(t["user"] == user and t["source"] == source for t in await client.tiles())


async def _sent_quality(
    client: Client, user: str, source: str, paused: bool = False
) -> dict[str, Any] | None:
    tile = await _tile(client, user, source)
    sent: dict[str, Any] | None = tile["sent"] if tile else None
    return sent if sent and sent["paused"] is paused else None


async def _layers_follow(client: Client, wanted: Callable[[dict[str, bool]], bool]) -> bool:
    """The camera's last publish_layers matches `wanted`, and its encodings' `active` follow it."""
    camera = next((p for p in (await client.video())["publishing"] if p["source"] == "camera"), None)
    requested = camera["requested"] if camera else None
    if camera is None or not requested or not wanted(requested):
        return False
    return all(e["active"] is requested.get(e["rid"], e["active"]) for e in camera["encodings"])


async def _both_listed(client: Client) -> list[dict[str, Any]] | None:
    listed = await client.listed()
    return listed if sorted(p["user"] for p in listed) == ["alice", "bob"] else None


async def _attr_is(client: Client, selector: str, name: str, value: str) -> bool:
    return await client.attr(selector, name) == value


async def _speaking(client: Client, user: str) -> bool:
    person = await client.person(user)
    return bool(person and person["speaking"])


async def _flag(client: Client, user: str, title: str) -> bool:
    person = await client.person(user)
    return bool(person and title in person["flags"])
