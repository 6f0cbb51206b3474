"""The OFFICIAL `phoenix` JS client (npm phoenix, run by node over `ws`) against real `voxa signaling`
processes: sockets, channels, Presence, moderation, replicas sharing Redis, restarts and heartbeats.

Each peer is a node process (e2e/js/client.mjs) printing JSON events; the tests wait for events with
deadlines and assert on what the phoenix client itself saw (Presence.onSync lists, replies, close codes).
"""

from __future__ import annotations

import base64
import http.client
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from e2e.phoenix_harness import (
    Minter,
    NodePeers,
    NodeProcess,
    Redis,
    Signaling,
    keys_are,
    meta_has,
    meta_of,
    presences,
)

TOPIC = "voice:s1:lobby"
META_FIELDS = {"muted", "deafened", "server_muted", "server_deafened", "speaking", "video", "suppressed"}
META_FIELDS |= {"name", "session_id"}

SignalingFactory = Callable[..., Signaling]


def joined(peer: NodeProcess, *, since: int = 0) -> dict[str, Any]:
    """Wait for the join (or rejoin) reply and return its response; fail on an error reply."""
    event = peer.wait_for(lambda e: e.get("ev") == "join", "join reply", since=since)
    assert event["status"] == "ok", f"{peer.name} join refused: {event}"
    response: dict[str, Any] = event["response"]
    return response


def upgrade(signaling: Signaling, query: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """A hand-made WebSocket upgrade request; returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", signaling.port, timeout=5)
    try:
        conn.request(
            "GET",
            f"/socket/websocket?{query}",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                "Sec-WebSocket-Version": "13",
                **(headers or {}),
            },
        )
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


# --- 1 ------------------------------------------------------------------------------------------------
def test_presence_sync_mute_and_leave(
    signaling_factory: SignalingFactory, node_peers: NodePeers, mint: Minter
) -> None:
    sig = signaling_factory()
    alice = node_peers.phoenix("alice", sig, mint(sig, "alice", name="Alice"), topic=TOPIC)
    bob = node_peers.phoenix("bob", sig, mint(sig, "bob", name="Bob"), topic=TOPIC)

    alice_join = joined(alice)
    bob_join = joined(bob)
    assert alice_join["user"] == {"id": "alice", "name": "Alice"}
    assert alice_join["state"]["muted"] is False

    for peer in (alice, bob):
        state = peer.wait_sync(keys_are("alice", "bob"), "alice and bob are present")
        a = meta_of(state, "alice")
        assert a.keys() >= META_FIELDS, a
        assert a["session_id"] == alice_join["session_id"]
        assert a["name"] == "Alice"
        assert not any(
            a[f] for f in ("muted", "deafened", "server_muted", "server_deafened", "speaking", "video")
        )
        assert meta_of(state, "bob")["session_id"] == bob_join["session_id"]

    mark = bob.mark()
    reply = alice.push("mute")
    assert reply["status"] == "ok", reply
    assert reply["response"]["state"]["muted"] is True

    # Bob sees the flip as a presence_diff (leave of the old meta + join of the new one), then in Presence.
    diff = bob.wait_for(
        lambda e: (
            e.get("ev") == "presence_diff"
            and "alice" in e["payload"]["joins"]
            and "alice" in e["payload"]["leaves"]
        ),
        "diff for alice",
        since=mark,
    )["payload"]
    new_meta = diff["joins"]["alice"]["metas"][0]
    old_meta = diff["leaves"]["alice"]["metas"][0]
    assert new_meta["muted"] is True and old_meta["muted"] is False
    assert new_meta["phx_ref_prev"] == old_meta["phx_ref"]
    state = bob.wait_sync(meta_has("alice", muted=True), "alice is muted", since=mark)
    assert set(state) == {"alice", "bob"}
    assert meta_of(state, "alice")["session_id"] == alice_join["session_id"]

    mark = bob.mark()
    left = alice.leave()
    assert left["status"] == "ok", left
    bob.wait_ev("presence_leave", key="alice", remaining=0, since=mark)
    state = bob.wait_sync(keys_are("bob"), "alice is gone", since=mark)
    assert meta_of(state, "bob")["muted"] is False


# --- 2 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "reason"),
    [("expired", "token expired"), ("forged", "bad token signature"), ("missing", "missing token")],
)
def test_bad_token_is_refused(
    signaling_factory: SignalingFactory, node_peers: NodePeers, mint: Minter, case: str, reason: str
) -> None:
    sig = signaling_factory()
    token: str | None
    if case == "expired":
        token = mint(sig, "eve", now=time.time() - 7200, ttl_s=60)  # far beyond the verifier's leeway
    elif case == "forged":
        token = mint(sig, "eve", secret="not-the-server-secret-0123456789-abcdef")
    else:
        token = None

    # The raw handshake: 403 with the reason in the body, no 101.
    query = "vsn=2.0.0" + (f"&token={token}" if token else "")
    status, body = upgrade(sig, query)
    assert (status, body.strip()) == (403, reason)

    # The phoenix client: every attempt ends in onError and the socket never opens (it keeps retrying).
    eve = node_peers.phoenix("eve", sig, token, topic=TOPIC, reconnect_ms=100)
    first = eve.wait_ev("error")
    assert "403" in first["message"], first
    eve.wait_count("error", 2)  # a retry is refused too
    assert eve.select("open") == []
    assert eve.select("join") == []
    closes = eve.select("close")
    assert closes and all(c["code"] == 1006 for c in closes), closes


# --- 3 ------------------------------------------------------------------------------------------------
def test_token_in_auth_token_subprotocol(
    signaling_factory: SignalingFactory, node_peers: NodePeers, mint: Minter
) -> None:
    sig = signaling_factory()
    token = mint(sig, "carol", name="Carol")
    carol = node_peers.phoenix("carol", sig, token, topic=TOPIC, auth="authToken")

    opened = carol.wait_ev("open")
    assert opened["protocol"] == "phoenix"  # the server selected the phoenix subprotocol
    response = joined(carol)
    assert response["user"] == {"id": "carol", "name": "Carol"}
    state = carol.wait_sync(keys_are("carol"), "carol is present")
    assert meta_of(state, "carol")["session_id"] == response["session_id"]

    # The same header, made by hand, is what authenticates: without it the upgrade is refused.
    encoded = base64.b64encode(token.encode()).decode().rstrip("=")
    status, _ = upgrade(
        sig, "vsn=2.0.0", {"Sec-WebSocket-Protocol": f"phoenix, base64url.bearer.phx.{encoded}"}
    )
    assert status == 101
    status, body = upgrade(sig, "vsn=2.0.0", {"Sec-WebSocket-Protocol": "phoenix"})
    assert (status, body.strip()) == (403, "missing token")


# --- 4 ------------------------------------------------------------------------------------------------
def test_moderator_server_mutes(
    signaling_factory: SignalingFactory, node_peers: NodePeers, mint: Minter
) -> None:
    sig = signaling_factory()
    mod = node_peers.phoenix("mod", sig, mint(sig, "mod", grant="connect,speak,mute_members"), topic=TOPIC)
    user = node_peers.phoenix("user", sig, mint(sig, "user", grant="connect,speak"), topic=TOPIC)
    assert "mute_members" in joined(mod)["permissions"]
    assert "mute_members" not in joined(user)["permissions"]
    for peer in (mod, user):
        peer.wait_sync(keys_are("mod", "user"), "mod and user are present")

    # The user mutes themself first, so that their later unmute is a real change.
    assert user.push("mute")["status"] == "ok"

    marks = {peer: peer.mark() for peer in (mod, user)}
    reply = mod.push("moderate", {"target": "user", "action": "mute"})
    assert reply["status"] == "ok", reply
    assert reply["response"] == {"target": "user", "action": "mute"}
    for peer in (mod, user):
        peer.wait_sync(
            meta_has("user", server_muted=True, muted=True), "user is server-muted", since=marks[peer]
        )

    # The user's own unmute clears `muted` only; server_muted stays.
    marks = {peer: peer.mark() for peer in (mod, user)}
    reply = user.push("unmute")
    assert reply["status"] == "ok", reply
    assert reply["response"]["state"]["muted"] is False
    assert reply["response"]["state"]["server_muted"] is True
    for peer in (mod, user):
        state = peer.wait_sync(meta_has("user", muted=False), "user unmuted themself", since=marks[peer])
        assert meta_of(state, "user")["server_muted"] is True

    # A member without mute_members cannot moderate, and the moderator's meta does not change: the
    # user's pushes are answered in order, so once a later no-op push is answered, any presence_diff
    # the refused push caused would already have arrived.
    mark = user.mark()
    reply = user.push("moderate", {"target": "mod", "action": "mute"})
    assert reply["status"] == "error", reply
    assert reply["response"]["reason"] == "missing permission 'mute_members'"
    assert user.push("unmute")["status"] == "ok"
    diffs = [d["payload"] for d in user.select("presence_diff", since=mark)]
    assert not any("mod" in d["joins"] or "mod" in d["leaves"] for d in diffs), diffs
    latest = presences(user.select("sync")[-1])
    assert meta_of(latest, "mod")["server_muted"] is False


# --- 5 ------------------------------------------------------------------------------------------------
def test_two_replicas_share_presence_through_redis(
    signaling_factory: SignalingFactory, redis_server: Redis, node_peers: NodePeers, mint: Minter
) -> None:
    one = signaling_factory(redis_url=redis_server.url)
    two = signaling_factory(redis_url=redis_server.url)
    alice = node_peers.phoenix("alice@1", one, mint(one, "alice"), topic=TOPIC)
    joined(alice)
    alice.wait_sync(keys_are("alice"), "alice alone")
    bob = node_peers.phoenix("bob@2", two, mint(two, "bob", grant="connect,speak,mute_members"), topic=TOPIC)
    joined(bob)

    for peer in (alice, bob):
        peer.wait_sync(keys_are("alice", "bob"), "alice and bob are present")

    # A self-mute on replica 2 reaches the client on replica 1.
    mark = alice.mark()
    assert bob.push("mute")["status"] == "ok"
    alice.wait_sync(meta_has("bob", muted=True), "bob is muted", since=mark)

    # Moderation from replica 2 is applied by replica 1, which holds the target's socket.
    marks = {peer: peer.mark() for peer in (alice, bob)}
    reply = bob.push("moderate", {"target": "alice", "action": "mute"})
    assert reply["status"] == "ok", reply
    for peer in (alice, bob):
        peer.wait_sync(meta_has("alice", server_muted=True), "alice is server-muted", since=marks[peer])

    # Bob's socket closes: replica 2 removes his presence and replica 1's client sees him leave.
    mark = alice.mark()
    bob.disconnect()
    alice.wait_ev("presence_leave", key="bob", remaining=0, since=mark)
    state = alice.wait_sync(keys_are("alice"), "bob is gone", since=mark)
    assert meta_of(state, "alice")["server_muted"] is True


# --- 6 ------------------------------------------------------------------------------------------------
def test_reconnect_after_server_restart(
    signaling_factory: SignalingFactory, redis_server: Redis, node_peers: NodePeers, mint: Minter
) -> None:
    sig = signaling_factory(redis_url=redis_server.url)
    alice = node_peers.phoenix("alice", sig, mint(sig, "alice"), topic=TOPIC, reconnect_ms=200, rejoin_ms=200)
    bob = node_peers.phoenix("bob", sig, mint(sig, "bob"), topic=TOPIC, reconnect_ms=200, rejoin_ms=200)
    before = {peer: joined(peer)["session_id"] for peer in (alice, bob)}
    for peer in (alice, bob):
        peer.wait_sync(keys_are("alice", "bob"), "alice and bob are present")

    marks = {peer: peer.mark() for peer in (alice, bob)}
    sig.stop()  # SIGTERM: the server closes every socket with 1012 (service restart) and exits
    for peer in (alice, bob):
        close = peer.wait_ev("close", since=marks[peer])
        assert close["code"] == 1012, close
        assert close["reason"] == "server restarting", close
        peer.wait_ev("chan_error", since=marks[peer])

    sig.start()  # same port; the clients reconnect and rejoin by themselves
    after: dict[NodeProcess, str] = {}
    for peer in (alice, bob):
        peer.wait_ev("open", n=2, since=marks[peer])
        after[peer] = joined(peer, since=marks[peer])["session_id"]
        assert after[peer] != before[peer]

    expected = {"alice": after[alice], "bob": after[bob]}

    def rejoined(state: dict[str, list[dict[str, Any]]]) -> bool:
        return {k: [m["session_id"] for m in metas] for k, metas in state.items()} == {
            k: [v] for k, v in expected.items()
        }

    for peer in (alice, bob):
        peer.wait_sync(rejoined, f"exactly the new sessions {expected}", since=marks[peer])


# --- 7 ------------------------------------------------------------------------------------------------
def test_heartbeats_keep_socket_open_idle_socket_closed(
    signaling_factory: SignalingFactory, node_peers: NodePeers, mint: Minter
) -> None:
    sig = signaling_factory(idle_timeout_s="1")
    live = node_peers.phoenix("heartbeating", sig, mint(sig, "alice"), heartbeat_ms=200)
    live.wait_ev("open")
    idle = node_peers.raw_idle("idle", sig, mint(sig, "bob"))
    idle.wait_ev("open")

    close = idle.wait_ev("close")
    assert close["code"] == 4000, close
    assert close["reason"] == "idle timeout", close
    assert idle.select("message") == []

    # Ten answered heartbeats, 200 ms apart, span two seconds: twice the idle timeout, and past the moment
    # the idle socket was closed. The phoenix socket must still be open, never having been closed.
    live.wait_count("heartbeat", 10, status="ok", since=live.mark())
    assert live.select("close") == [] and live.select("error") == []
    assert len(live.select("open")) == 1
