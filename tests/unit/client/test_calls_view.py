"""CallClient's local view of calls, rebuilt from events alone (as after a reconnect)."""

from __future__ import annotations

import jwt
import pytest

from voxa.client.calls import CallClient


def client(user: str = "bob") -> CallClient:
    token = jwt.encode({"sub": user, "server": "g1"}, "k" * 32, algorithm="HS256")
    return CallClient("ws://127.0.0.1:1/socket", token, device_id="d1")


def ringing(device: CallClient, call_id: str) -> bool:
    return device.calls[call_id].ringing_here


def test_a_ring_then_an_answer_elsewhere() -> None:
    bob = client()
    bob._apply("call_started", {"call_id": "c1", "caller": {"id": "alice", "name": "Alice"}})
    assert ringing(bob, "c1") and bob.calls["c1"].caller == "alice"
    bob._apply("stop_ringing", {"call_id": "c1", "reason": "answered_elsewhere"})
    assert not ringing(bob, "c1")
    bob._apply(
        "call_state", {"call_id": "c1", "state": "active", "members": {"alice": "joined", "bob": "joined"}}
    )
    assert bob.calls["c1"].state == "active"
    bob._apply("call_ended", {"call_id": "c1", "reason": "hangup"})
    assert "c1" not in bob.calls


def test_call_state_alone_rebuilds_a_ringing_call_and_missed_calls_accumulate() -> None:
    bob = client()
    bob._apply(
        "call_state", {"call_id": "c2", "state": "ringing", "members": {"alice": "joined", "bob": "ringing"}}
    )
    assert bob.calls["c2"].state == "ringing" and bob.calls["c2"].members["bob"] == "ringing"
    bob._apply(
        "call_state", {"call_id": "c2", "state": "ended", "members": {"alice": "left", "bob": "timeout"}}
    )
    assert bob.calls == {}
    bob._apply("missed_call", {"call_id": "c2", "caller": {"id": "alice", "name": "Alice"}, "at": 1})
    assert [m["call_id"] for m in bob.missed_calls] == ["c2"]


def test_a_token_without_sub_is_refused() -> None:
    token = jwt.encode({"server": "g1"}, "k" * 32, algorithm="HS256")
    with pytest.raises(ValueError, match="sub"):
        CallClient("ws://127.0.0.1:1/socket", token, device_id="d1")
