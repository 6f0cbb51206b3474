"""Calls in the browser client (signaling/static/calls.js) between two real Chromium pages on `voxa demo`
(signaling + SFU), driven through the page's UI alone: Alice presses "Call" next to Bob, Bob's page rings
(incoming-call screen, ring tone), Bob answers, and each page hears the other's fake-microphone tone
through the call's own `call:` topic; the decline path; and the service worker's Web Push handling,
shown by delivering pushes through the DevTools protocol (ServiceWorker.deliverPushMessage).

The page's hook `window.voxa.calls()` reports what the call UI is built from; `window.voxa.measure()`
measures the call's media while a call is up (the voice channel's is held meanwhile).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from e2e.browser.app_client import PHONE, Client
from e2e.browser.conftest import ChromiumFactory
from e2e.browser.test_browser_client import A_HZ, B_HZ, Demo, demo, keep, open_clients
from voxa.common.ports import free_port

__all__ = ["demo"]  # the fixture, re-used from the voice suite

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def calls(client: Client) -> dict[str, Any]:
    result: dict[str, Any] = await client.js("window.voxa.calls()")
    return result


async def visible(client: Client, selector: str) -> bool:
    shown: bool = await client.js(
        f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
        " return Boolean(el && !el.hidden); })()"
    )
    return shown


async def ready_to_call(client: Client) -> None:
    await client.wait_status("connected")

    async def probe() -> dict[str, Any] | None:
        state = await calls(client)
        return state if state["joined"] else None

    await client.until(probe, "the user: topic joined")


async def call_bob_from_alice(alice: Client, bob: Client) -> str:
    """Alice presses Call next to Bob; returns the call id once Bob's page shows the incoming call."""
    for client in (alice, bob):
        await ready_to_call(client)
    await alice.until(
        lambda: alice.attr("li[data-user='bob'] button.call", "aria-label"), "a Call button for Bob"
    )
    assert await alice.attr("li[data-user='bob'] button.call", "aria-label") == "Call Bob"
    await alice.click("li[data-user='bob'] button.call")

    async def ringing() -> dict[str, Any] | None:
        state = await calls(bob)
        return state if state["incoming"] and await visible(bob, "#incoming") else None

    state = await bob.until(ringing, "the incoming-call screen")
    [ring] = state["incoming"]
    assert ring["caller"] == {"id": "alice", "name": "Alice"}, ring
    assert state["tone"] == "ring", state
    text = await bob.js("document.getElementById('incoming-from').textContent")
    assert "Alice is calling" in text, text
    assert await bob.attr("#incoming-from", "aria-live") == "assertive"
    assert await bob.attr("#answer", "aria-label") == "Answer the call from Alice"
    call_id: str = ring["call_id"]
    return call_id


async def test_alice_calls_bob_who_answers_and_both_hear_each_other(
    chromium: ChromiumFactory, demo: Demo, tmp_path: Path
) -> None:
    alice, bob = await open_clients(chromium, demo)
    call_id = await call_bob_from_alice(alice, bob)

    # The caller hears ringback once Bob's device acknowledged the ring (call_ringing).
    async def ringback() -> dict[str, Any] | None:
        state = await calls(alice)
        current = state["current"]
        return state if current and current["phase"] == "ringing" and state["tone"] == "ringback" else None

    await alice.until(ringback, "ringback on Alice's page")
    assert await visible(alice, "#call")
    ring_shot = await bob.screenshot(tmp_path / "bob-incoming.png", PHONE)

    await bob.click("#answer")
    for client in (alice, bob):

        async def in_call(client: Client = client) -> dict[str, Any] | None:
            state = await calls(client)
            media = state["media"] or {}
            current = state["current"] or {}
            connected = media.get("connectionState") == "connected"
            both = sorted(state["in_call"]) == ["alice", "bob"]
            if current.get("phase") == "active" and connected and both and state["tone"] is None:
                return state
            return None

        state = await client.until(in_call, "an active call with both in it")
        assert state["media_topic"] == f"call:{call_id}" and state["current"]["call_id"] == call_id, state
        assert not await visible(client, "#incoming")
        # The voice channel's media is held while the call has the microphone.
        assert (await client.state())["media"] is None

    heard_by_bob = await bob.hears("alice", A_HZ)
    heard_by_alice = await alice.hears("bob", B_HZ)
    print(f"in the call: bob hears alice {heard_by_bob}; alice hears bob {heard_by_alice}")
    members = await alice.js(
        "[...document.querySelectorAll('#call-members li')].map((li) => li.dataset.user)"
    )
    assert sorted(members) == ["alice", "bob"], members
    call_shot = await alice.screenshot(tmp_path / "alice-in-call.png")

    # Mute in the call: Bob measures silence from Alice; unmute brings her back.
    await alice.click("#call-mute")
    await bob.silence_from("alice")
    await alice.click("#call-mute")
    await bob.hears("alice", A_HZ)

    # Alice ends the call: both views close with "hangup", and the voice channel comes back.
    await alice.click("#call-end")
    for client in (alice, bob):

        async def over(client: Client = client) -> dict[str, Any] | None:
            state = await calls(client)
            ended = state["ended"] or {}
            return state if state["current"] is None and ended.get("call_id") == call_id else None

        state = await client.until(over, "the call ended")
        assert state["ended"]["reason"] == "hangup" and state["tone"] is None, state
        assert not await visible(client, "#call")
        await client.wait_voice()
    await bob.hears("alice", A_HZ)  # in the voice channel again
    for shot, name in ((ring_shot, "browser-call-incoming.png"), (call_shot, "browser-call-active.png")):
        assert shot.stat().st_size > 10_000, shot
        keep(shot, name)


async def test_bob_declines_and_nothing_rings_any_more(chromium: ChromiumFactory, demo: Demo) -> None:
    alice, bob = await open_clients(chromium, demo)
    call_id = await call_bob_from_alice(alice, bob)
    await bob.click("#decline")

    async def alice_saw_decline() -> dict[str, Any] | None:
        state = await calls(alice)
        declined = state["declined"] or {}
        ended = state["ended"] or {}
        if (
            declined.get("user_id") == "bob"
            and ended.get("reason") == "declined"
            and state["current"] is None
        ):
            return state
        return None

    state = await alice.until(alice_saw_decline, "Bob's decline on Alice's page")
    assert state["ended"]["call_id"] == call_id and state["tone"] is None, state
    notices = [n["text"] for n in (await alice.state())["notices"]]
    assert any("Bob declined" in text for text in notices), notices
    assert not await visible(alice, "#call")

    async def quiet() -> dict[str, Any] | None:
        state = await calls(bob)
        return state if not state["incoming"] and state["tone"] is None else None

    await bob.until(quiet, "Bob's ring stopped")
    assert not await visible(bob, "#incoming")
    # Both are back in the voice channel.
    await alice.wait_voice()
    await alice.hears("bob", B_HZ)


async def test_the_service_worker_shows_and_closes_a_pushed_ring(
    chromium: ChromiumFactory, demo: Demo
) -> None:
    peers = await chromium(1, tone_hz=B_HZ)
    bob = Client(peers, 0, "bob", demo)
    await bob.open(demo.invites["bob"])
    await ready_to_call(bob)
    # The grant replaces the context's list for the origin: keep the microphone's.
    await peers.call(0, "$grant", ["microphone", "camera", "notifications"])
    scope = await bob.until(
        lambda: bob.js("navigator.serviceWorker.ready.then((r) => r.active ? r.scope : null)", timeout=20),
        "an active service worker",
    )
    assert scope == f"{demo.base_url}/", scope

    ring = {
        "type": "call_started",
        "call_id": "c-pushed-1",
        "caller": {"id": "alice", "name": "Alice"},
        "video": False,
        "expires_at": 0,
        "reason": None,
    }
    delivered = await peers.call(0, "$swPush", json.dumps(ring))
    assert delivered["scope"] == scope, delivered
    shown_js = (
        "navigator.serviceWorker.ready.then((r) => r.getNotifications()).then((list) => list.map((n) => ({"
        " title: n.title, tag: n.tag, body: n.body, requireInteraction: n.requireInteraction,"
        " actions: n.actions.map((a) => a.action), data: n.data })))"
    )

    async def shown() -> list[dict[str, Any]] | None:
        notes: list[dict[str, Any]] = await bob.js(shown_js)
        return notes or None

    [note] = await bob.until(shown, "the incoming-call notification")
    assert note["tag"] == "call-c-pushed-1" and note["title"] == "Alice is calling", note
    assert note["requireInteraction"] is True and note["actions"] == ["answer", "decline"], note
    assert note["data"]["call_id"] == "c-pushed-1", note

    # The follow-up push closes the ring.
    stop = {**ring, "type": "stop_ringing", "reason": "answered_elsewhere"}
    await peers.call(0, "$swPush", json.dumps(stop))

    async def closed() -> bool:
        notes: list[dict[str, Any]] = await bob.js(shown_js)
        return not notes

    await bob.until(closed, "the notification closed by stop_ringing")

    # A ring that timed out becomes a missed-call notice under the same tag; junk pushes change nothing.
    await peers.call(0, "$swPush", json.dumps({**ring, "call_id": "c-pushed-2"}))
    await bob.until(shown, "a second ring")
    await peers.call(0, "$swPush", "not json")
    await peers.call(0, "$swPush", json.dumps({**stop, "call_id": "c-pushed-2", "reason": "timeout"}))

    async def missed() -> list[dict[str, Any]] | None:
        notes: list[dict[str, Any]] = await bob.js(shown_js)
        return notes if [n["title"] for n in notes] == ["Missed call from Alice"] else None

    [note] = await bob.until(missed, "the missed-call notification")
    assert note["tag"] == "call-c-pushed-2" and note["requireInteraction"] is False, note

    # The page asks the server for push; this demo has none configured, so it skipped quietly.
    errors = [n for n in (await bob.state())["notices"] if n["level"] == "error"]
    assert errors == [], errors


async def test_a_reloaded_page_rebuilds_the_ring_from_call_state(
    chromium: ChromiumFactory, demo: Demo
) -> None:
    """Bob's page reloads while Alice's call rings it: the same device (its id is in localStorage) gets
    the call's `call_state` after its `user:` join and shows the incoming call again, and answering works."""
    alice, bob = await open_clients(chromium, demo)
    call_id = await call_bob_from_alice(alice, bob)
    device = (await calls(bob))["device_id"]
    await bob.open(demo.invites["bob"])
    await ready_to_call(bob)

    async def rebuilt() -> dict[str, Any] | None:
        state = await calls(bob)
        return state if state["incoming"] and await visible(bob, "#incoming") else None

    state = await bob.until(rebuilt, "the incoming call rebuilt after the reload")
    assert state["device_id"] == device, state
    assert [r["call_id"] for r in state["incoming"]] == [call_id], state
    assert state["incoming"][0]["caller"]["id"] == "alice" and state["tone"] == "ring", state
    await bob.click("#answer")

    async def in_call() -> dict[str, Any] | None:
        state = await calls(alice)
        return state if state["current"] and state["current"]["phase"] == "active" else None

    await alice.until(in_call, "Alice's call accepted")
    await bob.hears("alice", A_HZ)


@pytest.fixture
async def short_ring_demo(tmp_path: Path) -> AsyncIterator[Demo]:
    """`voxa demo` whose calls stop ringing after 3 s (VOXA_CALL_RING_TIMEOUT_S)."""
    env = dict(os.environ)
    env["VOXA_JWT_SECRET"] = "browser-calls-test-secret-0123456789abcdef"
    env["VOXA_CALL_RING_TIMEOUT_S"] = "3"
    env.setdefault("VOXA_LOG_LEVEL", "info")
    workdir = tmp_path / "demo"
    workdir.mkdir()
    server = Demo(port=free_port(), workdir=workdir, env=env)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def test_an_unanswered_call_is_a_missed_call_notice(
    chromium: ChromiumFactory, short_ring_demo: Demo
) -> None:
    alice, bob = await open_clients(chromium, short_ring_demo)
    call_id = await call_bob_from_alice(alice, bob)

    async def alice_no_answer() -> dict[str, Any] | None:
        state = await calls(alice)
        ended = state["ended"] or {}
        return state if ended.get("reason") == "timeout" and state["current"] is None else None

    await alice.until(alice_no_answer, "the call timed out on Alice's page")

    async def missed(client: Client) -> dict[str, Any] | None:
        state = await calls(client)
        shown = [n["text"] for n in (await client.state())["notices"]]
        if [m["call_id"] for m in state["missed"]] == [call_id] and any(
            "Missed call from Alice" in t for t in shown
        ):
            return state
        return None

    state = await bob.until(lambda: missed(bob), "the missed-call notice")
    assert not state["incoming"] and state["tone"] is None, state
    assert not await visible(bob, "#incoming")
    # A later page load lists it from the user: join reply (missed_calls), once.
    await bob.open(short_ring_demo.invites["bob"])
    await ready_to_call(bob)
    await bob.until(lambda: missed(bob), "the missed call listed after a reload")


async def test_a_reloaded_page_rejoins_its_active_call(chromium: ChromiumFactory, demo: Demo) -> None:
    """Alice's page reloads during an active call: after its `user:` join the call's `call_state`
    (active, Alice joined) is all it has, and from it the page rebuilds the call view and rejoins the
    call's media; both hear each other again."""
    alice, bob = await open_clients(chromium, demo)
    call_id = await call_bob_from_alice(alice, bob)
    await bob.click("#answer")
    await bob.hears("alice", A_HZ)

    await alice.open(demo.invites["alice"])
    await ready_to_call(alice)

    async def rebuilt() -> dict[str, Any] | None:
        state = await calls(alice)
        current = state["current"] or {}
        media = state["media"] or {}
        if current.get("call_id") == call_id and media.get("connectionState") == "connected":
            return state
        return None

    state = await alice.until(rebuilt, "the call rebuilt and its media connected after the reload")
    assert state["current"]["phase"] == "active" and state["current"]["peers"] == ["bob"], state
    assert await visible(alice, "#call")
    title = await alice.js("document.getElementById('call-title').textContent")
    assert title == "Call with Bob", title
    await alice.hears("bob", B_HZ)
    await bob.hears("alice", A_HZ)


async def test_answering_from_the_notification_connects_the_call(
    chromium: ChromiumFactory, demo: Demo
) -> None:
    """Alice calls Bob; the ring also reaches Bob's service worker as a push (delivered through DevTools,
    payload as signaling's push sends it) and shows a notification; its Answer action, run in the
    worker, makes Bob's open page answer on its socket; the call connects and both hear each other."""
    alice, bob = await open_clients(chromium, demo)
    await bob.peers.call(bob.index, "$grant", ["microphone", "camera", "notifications"])
    await bob.until(
        lambda: bob.js("navigator.serviceWorker.ready.then((r) => Boolean(r.active))", timeout=20),
        "Bob's active service worker",
    )
    call_id = await call_bob_from_alice(alice, bob)
    ring = {
        "type": "call_started",
        "call_id": call_id,
        "caller": {"id": "alice", "name": "Alice"},
        "video": False,
        "expires_at": 0,
        "reason": None,
    }
    await bob.peers.call(bob.index, "$swPush", json.dumps(ring))
    tag = f"call-{call_id}"
    click = (
        f"self.registration.getNotifications({{tag: {json.dumps(tag)}}}).then((list) =>"
        " list.length ? self.voxaSw.onClick(list[0], 'answer').then(() => list.length) : 0)"
    )

    async def clicked() -> int | None:
        count: int = await bob.peers.call(bob.index, "$swEvaluate", click)
        return count or None

    await bob.until(clicked, "the notification's Answer action")

    async def in_call() -> dict[str, Any] | None:
        state = await calls(alice)
        current = state["current"] or {}
        return state if current.get("phase") == "active" else None

    await alice.until(in_call, "Bob's answer from the notification")
    assert not await visible(bob, "#incoming")
    await bob.hears("alice", A_HZ)
    await alice.hears("bob", B_HZ)
    # The clicked notification is closed.
    left = await bob.js(
        f"navigator.serviceWorker.ready.then((r) => r.getNotifications({{tag: {json.dumps(tag)}}}))"
    )
    assert left == [], left


async def test_answer_on_one_of_two_devices_stops_the_other(chromium: ChromiumFactory, demo: Demo) -> None:
    """Bob has two pages (two devices: each browser context has its own localStorage device id). Both
    ring; the one that answers gets the call, the other stops ringing and says it was answered elsewhere."""
    peers = await chromium(3, tone_hz=[A_HZ, B_HZ, B_HZ])
    alice, bob, bob_too = (
        Client(peers, 0, "alice", demo),
        Client(peers, 1, "bob", demo),
        Client(peers, 2, "bob", demo),
    )
    for client, who in ((alice, "alice"), (bob, "bob"), (bob_too, "bob")):
        await client.open(demo.invites[who])
    await ready_to_call(bob_too)
    call_id = await call_bob_from_alice(alice, bob)
    assert (await calls(bob))["device_id"] != (await calls(bob_too))["device_id"]

    async def rings(client: Client) -> dict[str, Any] | None:
        state = await calls(client)
        return state if [r["call_id"] for r in state["incoming"]] == [call_id] else None

    await bob_too.until(lambda: rings(bob_too), "the second device ringing")
    await bob.click("#answer")

    async def stopped() -> dict[str, Any] | None:
        state = await calls(bob_too)
        notices = [n["text"] for n in (await bob_too.state())["notices"]]
        done = not state["incoming"] and state["tone"] is None and state["current"] is None
        return state if done and "Answered on another device." in notices else None

    await bob_too.until(stopped, "the second device stopped ringing")
    assert not await visible(bob_too, "#incoming")
    await bob.hears("alice", A_HZ)
