"""Call state transitions, pure: one stored call and an explicit clock in, the call and its events out."""

from __future__ import annotations

import pytest

from voxa.signaling.calls import (
    Call,
    CallError,
    EndReason,
    Event,
    Member,
    Outcome,
    Policy,
    State,
    answer,
    caller_presence,
    decline,
    decode,
    encode,
    end,
    expire,
    invite,
    ring_acked,
    start,
)

POLICY = Policy(ring_timeout_s=30, max_invitees=4, reconnect_grace_s=10)


def events(outcome: Outcome, name: str) -> list[Event]:
    return [e for e in outcome.events if e.name == name]


def one_to_one(now: float = 0.0) -> Call:
    call = start("c1", "g1", "alice", "Alice", ["bob"], video=False, now=now, policy=POLICY).call
    assert call is not None
    return call


def group(now: float = 0.0) -> Call:
    call = start("c2", "g1", "alice", "Alice", ["bob", "carol"], video=True, now=now, policy=POLICY).call
    assert call is not None
    return call


def test_start_rings_every_invitee_and_tells_the_caller_the_state() -> None:
    out = start("c1", "g1", "alice", "Alice", ["bob", "bob"], video=False, now=100, policy=POLICY)
    assert out.call is not None and not out.call.group
    (started,) = events(out, "call_started")
    assert started.users == ("bob",)
    assert started.payload == {
        "call_id": "c1",
        "caller": {"id": "alice", "name": "Alice"},
        "invitees": ["bob"],
        "video": False,
        "expires_at": 130_000,
    }
    (state,) = events(out, "call_state")
    assert state.payload["members"] == {"alice": "joined", "bob": "ringing"}
    assert out.call.next_deadline() == 130


@pytest.mark.parametrize(
    ("invitees", "reason"),
    [([], "invite at least one"), (["alice"], "yourself"), (["a", "b", "c", "d", "e"], "at most 4")],
)
def test_start_refuses_what_cannot_be_a_call(invitees: list[str], reason: str) -> None:
    with pytest.raises(CallError, match=reason):
        start("c", "g1", "alice", "Alice", invitees, video=False, now=0, policy=POLICY)


def test_the_first_ring_ack_gives_the_caller_ringback_once() -> None:
    call = one_to_one()
    out = ring_acked(call, "bob")
    assert [(e.users, e.name) for e in out.events] == [(("alice",), "call_ringing")]
    assert out.call is not None
    assert ring_acked(out.call, "bob").events == ()


def test_answer_wins_once_and_stops_the_other_devices() -> None:
    out = answer(one_to_one(), "bob", "bob-phone", now=5)
    assert out.call is not None and out.call.state is State.ACTIVE
    (accepted,) = events(out, "call_accepted")
    assert accepted.users == ("alice",) and accepted.payload["user_id"] == "bob"
    (stop,) = events(out, "stop_ringing")
    assert stop.users == ("bob",) and stop.exclude_device == "bob-phone"
    assert stop.payload["reason"] == "answered_elsewhere"
    with pytest.raises(CallError, match="already answered"):
        answer(out.call, "bob", "bob-laptop", now=6)
    assert out.call.next_deadline() is None  # nothing rings any more


def test_a_decline_on_one_device_declines_everywhere_and_ends_a_1_to_1_call() -> None:
    out = decline(one_to_one(), "bob", "bob-phone", "declined", now=3)
    assert out.call is None and out.ended is EndReason.DECLINED
    (declined,) = events(out, "call_declined")
    assert declined.users == ("alice",)
    (stop,) = events(out, "stop_ringing")
    assert stop.payload["reason"] == "declined_elsewhere" and stop.exclude_device == "bob-phone"
    (ended,) = events(out, "call_ended")
    assert set(ended.users) == {"alice", "bob"} and ended.payload["reason"] == "declined"


def test_busy_decline_ends_with_busy() -> None:
    out = decline(one_to_one(), "bob", "bob-phone", "busy", now=3)
    assert out.ended is EndReason.BUSY
    with pytest.raises(CallError, match="reason must be"):
        decline(one_to_one(), "bob", None, "nope", now=3)


def test_an_invitee_already_in_a_call_declines_busy_at_once() -> None:
    out = start(
        "c1", "g1", "alice", "Alice", ["bob"], video=False, now=0, policy=POLICY, busy=frozenset({"bob"})
    )
    assert out.call is None and out.ended is EndReason.BUSY
    (declined,) = events(out, "call_declined")
    assert declined.payload == {"call_id": "c1", "user_id": "bob", "reason": "busy"}
    assert events(out, "call_started") == []
    waiting = Policy(call_waiting=True)
    out = start(
        "c1", "g1", "alice", "Alice", ["bob"], video=False, now=0, policy=waiting, busy=frozenset({"bob"})
    )
    (started,) = events(out, "call_started")
    assert started.payload["busy"] is True


def test_the_caller_cancels_while_ringing() -> None:
    out = end(one_to_one(), "alice", now=4)
    assert out.call is None and out.ended is EndReason.CANCELLED
    (stop,) = events(out, "stop_ringing")
    assert stop.users == ("bob",) and stop.payload["reason"] == "cancelled" and stop.exclude_device is None


def test_either_member_leaving_ends_a_1_to_1_call() -> None:
    active = answer(one_to_one(), "bob", "bob-phone", now=1).call
    assert active is not None
    for leaver in ("alice", "bob"):
        out = end(active, leaver, now=9)
        assert out.call is None and out.ended is EndReason.HANGUP


def test_timeout_stops_the_ring_ends_a_1_to_1_call_and_leaves_a_missed_call() -> None:
    call = one_to_one(now=0)
    assert expire(call, now=29.9).events == ()
    out = expire(call, now=30)
    assert out.call is None and out.ended is EndReason.TIMEOUT
    (stop,) = events(out, "stop_ringing")
    assert stop.payload["reason"] == "timeout"
    (missed,) = out.missed
    assert (missed.user, missed.caller, missed.call_id) == ("bob", "alice", "c1")


def test_a_group_call_lives_while_anyone_is_in_it_and_takes_late_joiners() -> None:
    call = group()
    out = decline(call, "bob", "bob-phone", "declined", now=1)
    assert out.call is not None and out.call.state is State.RINGING  # carol still rings
    out = answer(out.call, "carol", "carol-phone", now=2)
    assert out.call is not None
    out = invite(out.call, "carol", ["bob", "dave"], now=3, policy=POLICY)  # bob again, and dave
    assert out.call is not None
    assert sorted(e.users[0] for e in events(out, "call_started")) == ["bob", "dave"]
    out = answer(out.call, "dave", "dave-phone", now=4)
    assert out.call is not None
    out = end(out.call, "alice", now=5)  # the caller leaves; carol and dave go on
    assert out.call is not None and sorted(out.call.joined()) == ["carol", "dave"]
    # bob's second ring times out: the active call goes on.
    out = expire(out.call, now=33)
    assert out.call is not None and out.call.members["bob"].state is Member.TIMEOUT
    out = end(out.call, "carol", now=40)
    assert out.call is not None
    out = end(out.call, "dave", now=41)
    assert out.call is None and out.ended is EndReason.HANGUP


def test_a_ringing_group_call_ends_when_nobody_is_left_ringing() -> None:
    out = decline(group(), "bob", None, "declined", now=1)
    assert out.call is not None
    out = expire(out.call, now=30)
    assert out.call is None and out.ended is EndReason.TIMEOUT


def test_only_members_in_the_call_invite_and_1_to_1_takes_no_more() -> None:
    with pytest.raises(CallError, match="1:1"):
        invite(one_to_one(), "alice", ["carol"], now=1, policy=POLICY)
    with pytest.raises(CallError, match="only a member"):
        invite(group(), "bob", ["dave"], now=1, policy=POLICY)
    with pytest.raises(CallError, match="not part of this call"):
        invite(group(), "eve", ["dave"], now=1, policy=POLICY)
    with pytest.raises(CallError, match="at most 4"):
        invite(group(), "alice", ["d", "e", "f"], now=1, policy=POLICY)


def test_strangers_and_wrong_states_are_refused() -> None:
    with pytest.raises(CallError, match="not part of this call"):
        answer(one_to_one(), "eve", "eve-phone", now=1)
    with pytest.raises(CallError, match="not ringing"):
        decline(
            decline(group(), "bob", None, "declined", now=1).call or group(), "bob", None, "declined", now=2
        )
    with pytest.raises(CallError, match="end_call"):
        decline(one_to_one(), "alice", None, "declined", now=1)


def test_a_caller_gone_past_the_grace_cancels_the_ringing_call() -> None:
    call = caller_presence(one_to_one(), connected=False, now=2).call
    assert call is not None and call.next_deadline() == 12
    back = caller_presence(call, connected=True, now=5).call
    assert back is not None and back.next_deadline() == 30  # came back in time
    assert expire(call, now=11.9).call is not None
    out = expire(call, now=12)
    assert out.call is None and out.ended is EndReason.CANCELLED
    (stop,) = events(out, "stop_ringing")
    assert stop.payload["reason"] == "cancelled"


def test_the_stored_form_round_trips() -> None:
    call = caller_presence(answer(group(), "bob", "p", now=1).call or group(), connected=False, now=2).call
    assert call is not None
    assert decode(encode(call)) == call
