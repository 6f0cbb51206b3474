"""Calls placed and answered with the OFFICIAL `phoenix` JS client (npm phoenix over `ws`, e2e/js/multi.mjs)
against real `voxa signaling` processes: the `user:` and `call:` topics of docs/protocol.md are usable
without Voxa's own SDKs. Alice and Bob each run one node process holding both channels on one socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from e2e.phoenix_harness import Minter, MultiPeer, NodePeers, Signaling, keys_are

SignalingFactory = Callable[..., Signaling]
GRANT = "connect,speak,call"
# Waits on a loaded 2-core machine: generous, and only ever an upper bound.
WAIT = 20.0

pytestmark = pytest.mark.slow


def device(
    node_peers: NodePeers, sig: Signaling, mint: Minter, user: str, device_id: str
) -> tuple[MultiPeer, dict[str, Any]]:
    """A node peer joined to `user:<user>` as `device_id`; returns it and the join reply."""
    peer = node_peers.multi(user, sig, mint(sig, user, grant=GRANT))
    joined = peer.join(f"user:{user}", {"device_id": device_id}, timeout=WAIT)
    assert joined["status"] == "ok", f"{user}: user topic join refused: {joined}"
    response: dict[str, Any] = joined["response"]
    assert response["user_id"] == user and response["device_id"] == device_id
    return peer, response


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["status"] == "ok", f"push refused: {reply}"
    response: dict[str, Any] = reply["response"]
    return response


def test_place_answer_and_meet_in_the_call_presence(
    signaling_factory: SignalingFactory, node_peers: NodePeers, mint: Minter
) -> None:
    sig = signaling_factory()
    alice, _ = device(node_peers, sig, mint, "alice", "alice-node")
    bob, _ = device(node_peers, sig, mint, "bob", "bob-node")

    started = ok(alice.push_to("user:alice", "start_call", {"invitees": ["bob"], "video": False}))
    call_id = started["call_id"]
    topic = f"call:{call_id}"
    assert started["topic"] == topic

    ring = bob.wait_msg("user:bob", "call_started", timeout=WAIT)
    assert ring["call_id"] == call_id
    assert ring["caller"] == {"id": "alice", "name": "Alice"}
    assert ring["invitees"] == ["bob"] and ring["video"] is False and ring["expires_at"] > 0
    assert alice.wait_msg("user:alice", "call_ringing", timeout=WAIT) == {
        "call_id": call_id,
        "user_id": "bob",
    }

    # The caller joins the media topic right after start_call (docs/protocol.md, "Media").
    alice_in = alice.join(topic, timeout=WAIT)
    assert alice_in["status"] == "ok", alice_in
    assert alice_in["response"]["call_id"] == call_id

    answered = ok(bob.push_to("user:bob", "answer_call", {"call_id": call_id}))
    assert answered["topic"] == topic and "ice_servers" in answered
    assert alice.wait_msg("user:alice", "call_accepted", timeout=WAIT)["user_id"] == "bob"

    bob_in = bob.join(topic, timeout=WAIT)
    assert bob_in["status"] == "ok", bob_in
    # Both see each other in the call's Presence, as the phoenix Presence helper merges it.
    for peer in (alice, bob):
        state = peer.wait_presence(
            topic, keys_are("alice", "bob"), "alice and bob are in the call", timeout=WAIT
        )
        assert state["alice"][0]["name"] == "Alice" and state["bob"][0]["name"] == "Bob"

    # The call's state as the members see it on their user topics.
    active = alice.wait_for(
        lambda e: (
            e.get("ev") == "msg"
            and e.get("event") == "call_state"
            and e["payload"].get("state") == "active"
            and e["payload"].get("members") == {"alice": "joined", "bob": "joined"}
        ),
        "call_state active",
        timeout=WAIT,
    )
    assert active["payload"]["call_id"] == call_id

    # Bob hangs up: a 1:1 call ends for both.
    ok(bob.push_to("user:bob", "end_call", {"call_id": call_id}))
    assert alice.wait_msg("user:alice", "call_ended", timeout=WAIT) == {
        "call_id": call_id,
        "reason": "hangup",
    }


def test_a_decline_reaches_the_caller(
    signaling_factory: SignalingFactory, node_peers: NodePeers, mint: Minter
) -> None:
    sig = signaling_factory()
    alice, _ = device(node_peers, sig, mint, "alice", "alice-node")
    bob, _ = device(node_peers, sig, mint, "bob", "bob-node")
    call_id = ok(alice.push_to("user:alice", "start_call", {"invitees": ["bob"]}))["call_id"]
    assert bob.wait_msg("user:bob", "call_started", timeout=WAIT)["call_id"] == call_id

    ok(bob.push_to("user:bob", "decline_call", {"call_id": call_id, "reason": "declined"}))
    declined = alice.wait_msg("user:alice", "call_declined", timeout=WAIT)
    assert declined["call_id"] == call_id and declined["user_id"] == "bob"
    assert alice.wait_msg("user:alice", "call_ended", timeout=WAIT) == {
        "call_id": call_id,
        "reason": "declined",
    }
    # A declined call's media is closed to the decliner.
    refused = bob.join(f"call:{call_id}", timeout=WAIT)
    assert refused["status"] == "error", refused


def test_an_unanswered_call_times_out_and_is_listed_as_missed(
    signaling_factory: SignalingFactory, node_peers: NodePeers, mint: Minter
) -> None:
    sig = signaling_factory(call_ring_timeout_s="2")
    alice, _ = device(node_peers, sig, mint, "alice", "alice-node")
    bob, _ = device(node_peers, sig, mint, "bob", "bob-node")
    call_id = ok(alice.push_to("user:alice", "start_call", {"invitees": ["bob"]}))["call_id"]
    assert bob.wait_msg("user:bob", "call_started", timeout=WAIT)["call_id"] == call_id

    assert bob.wait_msg("user:bob", "stop_ringing", timeout=WAIT) == {"call_id": call_id, "reason": "timeout"}
    assert alice.wait_msg("user:alice", "call_ended", timeout=WAIT) == {
        "call_id": call_id,
        "reason": "timeout",
    }
    missed = bob.wait_msg("user:bob", "missed_call", timeout=WAIT)
    assert missed["call_id"] == call_id and missed["caller"]["id"] == "alice"

    # A device that joins later finds the missed call in its join reply.
    _, reply = device(node_peers, sig, mint, "bob", "bob-other")
    assert [m["call_id"] for m in reply["missed_calls"]] == [call_id]
