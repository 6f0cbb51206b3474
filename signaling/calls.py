"""Call state: 1:1 and group calls as pure transitions over one stored call.

Every transition takes the call as stored and an explicit clock, and returns the call to store (or
None once it has ended: nothing of a call outlives it) with the events it causes. The store backends
only make a transition atomic (read, apply, write under one lock or Lua script), so the rules that
users notice most — a phone that keeps ringing after the call was answered on another device, a ring
that never stops after a cancel, a decline that never reaches the caller — are decided here, once,
and tested without sockets, stores or timers.

Events are addressed to users, not sockets: signaling delivers each to every device of those users
on their `user:` topics, except `exclude_device` (the device that acted already knows).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any


class CallError(Exception):
    """A request that does not fit the call's state; `reason` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class State(enum.StrEnum):
    RINGING = "ringing"
    """Nobody but the caller has joined yet."""
    ACTIVE = "active"
    """At least one invitee answered."""
    ENDED = "ended"


class Member(enum.StrEnum):
    RINGING = "ringing"
    JOINED = "joined"
    LEFT = "left"
    DECLINED = "declined"
    BUSY = "busy"
    TIMEOUT = "timeout"


class EndReason(enum.StrEnum):
    HANGUP = "hangup"
    DECLINED = "declined"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    BUSY = "busy"
    FAILED = "failed"


class StopReason(enum.StrEnum):
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    DECLINED_ELSEWHERE = "declined_elsewhere"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Policy:
    """The settings transitions depend on (VOXA_CALL_*)."""

    ring_timeout_s: float = 30.0
    max_invitees: int = 16
    reconnect_grace_s: float = 10.0
    """How long a ringing call survives its caller having no connected device."""
    call_waiting: bool = False
    """Ring an invitee who is in another call (with `busy: true`) instead of declining for them."""


@dataclass(frozen=True)
class Invitee:
    state: Member
    deadline: float
    """When this invitee's ring times out."""
    acked: bool = False
    """One of their devices reported that it rings (the caller then gets `call_ringing`)."""


@dataclass(frozen=True)
class Call:
    id: str
    server_id: str
    caller: str
    caller_name: str
    video: bool
    group: bool
    """More than one invitee at the start: lives while anyone is in it; 1:1 ends when either leaves."""
    created_at: float
    members: Mapping[str, Invitee]
    """Everyone in the call, the caller included (joined from the start, with no deadline)."""
    state: State = State.RINGING
    caller_gone_since: float | None = None
    """Since when the caller has had no connected device while the call rings."""
    reconnect_grace_s: float = 10.0
    """The policy's grace, kept with the call so any replica expires it alike."""

    @property
    def topic(self) -> str:
        return f"call:{self.id}"

    def member_states(self) -> dict[str, str]:
        return {user: str(m.state) for user, m in self.members.items()}

    def ringing(self) -> list[str]:
        return [user for user, m in self.members.items() if m.state is Member.RINGING]

    def joined(self) -> list[str]:
        return [user for user, m in self.members.items() if m.state is Member.JOINED]

    def next_deadline(self) -> float | None:
        """When `expire` has something to do next: the store schedules the call for that moment, so
        any replica fires it, whichever placed the call."""
        times = [m.deadline for m in self.members.values() if m.state is Member.RINGING]
        if self.caller_gone_since is not None and self.state is State.RINGING:
            times.append(self.caller_gone_since + self.reconnect_grace_s)
        return min(times) if times else None


@dataclass(frozen=True)
class Event:
    """One server → client event for every device of `users` (but `exclude_device`)."""

    users: tuple[str, ...]
    name: str
    payload: Mapping[str, Any]
    exclude_device: str | None = None


@dataclass(frozen=True)
class MissedCall:
    """A short-lived record for a callee who never answered (shown as a missed-call notice)."""

    user: str
    call_id: str
    caller: str
    caller_name: str
    at: float


@dataclass(frozen=True)
class Outcome:
    call: Call | None
    """The call to store, or None: it ended and is deleted."""
    events: tuple[Event, ...] = ()
    missed: tuple[MissedCall, ...] = ()
    ended: EndReason | None = None


# --- transitions ------------------------------------------------------------------------------------
def start(
    call_id: str,
    server_id: str,
    caller: str,
    caller_name: str,
    invitees: Iterable[str],
    *,
    video: bool,
    now: float,
    policy: Policy,
    busy: frozenset[str] = frozenset(),
) -> Outcome:
    """A new call from `caller`; `busy` are the invitees already in an active call."""
    wanted = list(dict.fromkeys(invitees))
    if caller in wanted:
        raise CallError("you cannot call yourself")
    if not wanted:
        raise CallError("invite at least one user")
    if len(wanted) > policy.max_invitees:
        raise CallError(f"at most {policy.max_invitees} invitees")
    deadline = now + policy.ring_timeout_s
    members: dict[str, Invitee] = {caller: Invitee(Member.JOINED, deadline=now, acked=True)}
    declined_busy: list[str] = []
    for user in wanted:
        if user in busy and not policy.call_waiting:
            members[user] = Invitee(Member.BUSY, deadline=now)
            declined_busy.append(user)
        else:
            members[user] = Invitee(Member.RINGING, deadline=deadline)
    call = Call(
        id=call_id,
        server_id=server_id,
        caller=caller,
        caller_name=caller_name,
        video=video,
        group=len(wanted) > 1,
        created_at=now,
        members=members,
        reconnect_grace_s=policy.reconnect_grace_s,
    )
    events: list[Event] = []
    ringing = call.ringing()
    for user in ringing:
        events.append(Event((user,), "call_started", _started(call, deadline, busy=user in busy)))
    for user in declined_busy:
        events.append(
            Event((caller,), "call_declined", {"call_id": call_id, "user_id": user, "reason": "busy"})
        )
    if not ringing:
        return _end(call, EndReason.BUSY, events)
    events.append(_state_event(call))
    return Outcome(call, tuple(events))


def ring_acked(call: Call, user: str) -> Outcome:
    """A device of `user` reports that it rings: the caller hears the ringback from the first one."""
    member = call.members.get(user)
    if member is None or member.state is not Member.RINGING or member.acked:
        return Outcome(call)
    updated = _with(call, user, replace(member, acked=True))
    return Outcome(updated, (Event((call.caller,), "call_ringing", {"call_id": call.id, "user_id": user}),))


def answer(call: Call, user: str, device: str, now: float) -> Outcome:
    """The first answer of a user wins, on whichever device; their other devices stop ringing."""
    member = _member(call, user)
    if member.state is Member.JOINED:
        raise CallError("already answered")
    if member.state is not Member.RINGING:
        raise CallError(f"this call is not ringing for you ({member.state})")
    updated = replace(_with(call, user, replace(member, state=Member.JOINED)), state=State.ACTIVE)
    events = [
        Event(_others(updated, user), "call_accepted", {"call_id": call.id, "user_id": user}),
        Event((user,), "stop_ringing", _stop(call, StopReason.ANSWERED_ELSEWHERE), exclude_device=device),
        _state_event(updated),
    ]
    return Outcome(updated, tuple(events))


def decline(call: Call, user: str, device: str | None, reason: str, now: float) -> Outcome:
    """`reason` is "declined" or "busy"; a decline on one device declines on all of them."""
    if reason not in ("declined", "busy"):
        raise CallError('reason must be "declined" or "busy"')
    member = _member(call, user)
    if user == call.caller:
        raise CallError("the caller ends the call instead (end_call)")
    if member.state is not Member.RINGING:
        raise CallError(f"this call is not ringing for you ({member.state})")
    state = Member.DECLINED if reason == "declined" else Member.BUSY
    updated = _with(call, user, replace(member, state=state))
    events = [
        Event(
            _others(updated, user), "call_declined", {"call_id": call.id, "user_id": user, "reason": reason}
        ),
        Event((user,), "stop_ringing", _stop(call, StopReason.DECLINED_ELSEWHERE), exclude_device=device),
    ]
    return _settle(updated, events, EndReason(reason) if reason == "busy" else EndReason.DECLINED)


def end(call: Call, user: str, now: float) -> Outcome:
    """`end_call`: the caller's end while ringing cancels the call; after an answer it leaves it. An
    invitee who has not answered declines."""
    member = _member(call, user)
    if user == call.caller and call.state is State.RINGING:
        return _end(call, EndReason.CANCELLED, [])
    if member.state is Member.RINGING:
        return decline(call, user, None, "declined", now)
    if member.state is not Member.JOINED:
        raise CallError(f"you are not in this call ({member.state})")
    updated = _with(call, user, replace(member, state=Member.LEFT))
    if not call.group:
        return _end(updated, EndReason.HANGUP, [])
    events = [Event(_others(updated, user), "call_left", {"call_id": call.id, "user_id": user})]
    if not updated.joined():
        return _end(updated, EndReason.HANGUP, events)
    events.append(_state_event(updated))
    return Outcome(updated, tuple(events))


def invite(
    call: Call,
    by: str,
    invitees: Iterable[str],
    now: float,
    policy: Policy,
    busy: frozenset[str] = frozenset(),
) -> Outcome:
    """A member of a live group call rings more people (again, for those who declined or missed it)."""
    if _member(call, by).state is not Member.JOINED:
        raise CallError("only a member in the call may invite")
    if not call.group:
        raise CallError("a 1:1 call takes no more invitees")
    wanted = [u for u in dict.fromkeys(invitees) if call.members.get(u, _ABSENT).state not in _PRESENT]
    if len([m for m in call.members.values() if m.state in _PRESENT]) + len(wanted) > policy.max_invitees + 1:
        raise CallError(f"at most {policy.max_invitees} invitees")
    deadline = now + policy.ring_timeout_s
    members = dict(call.members)
    events: list[Event] = []
    for user in wanted:
        if user in busy and not policy.call_waiting:
            members[user] = Invitee(Member.BUSY, deadline=now)
            events.append(
                Event((by,), "call_declined", {"call_id": call.id, "user_id": user, "reason": "busy"})
            )
            continue
        members[user] = Invitee(Member.RINGING, deadline=deadline)
    updated = replace(call, members=members)
    for user in wanted:
        if members[user].state is Member.RINGING:
            events.append(Event((user,), "call_started", _started(updated, deadline, busy=user in busy)))
    events.append(_state_event(updated))
    return Outcome(updated, tuple(events))


def caller_presence(call: Call, connected: bool, now: float) -> Outcome:
    """The caller's last device went away (or one came back) while the call rings."""
    if call.state is not State.RINGING:
        return Outcome(call)
    if connected:
        return Outcome(replace(call, caller_gone_since=None))
    if call.caller_gone_since is not None:
        return Outcome(call)
    return Outcome(replace(call, caller_gone_since=now))


def expire(call: Call, now: float) -> Outcome:
    """Whatever is due at `now`: rings past their deadline stop (`timeout`), and a ringing call whose
    caller stayed away past the grace is cancelled."""
    if (
        call.state is State.RINGING
        and call.caller_gone_since is not None
        and now >= call.caller_gone_since + call.reconnect_grace_s
    ):
        return _end(call, EndReason.CANCELLED, [])
    due = [u for u, m in call.members.items() if m.state is Member.RINGING and now >= m.deadline]
    if not due:
        return Outcome(call)
    members = dict(call.members)
    for user in due:
        members[user] = replace(members[user], state=Member.TIMEOUT)
    updated = replace(call, members=members)
    events = [Event((user,), "stop_ringing", _stop(call, StopReason.TIMEOUT)) for user in due]
    missed = tuple(MissedCall(u, call.id, call.caller, call.caller_name, now) for u in due)
    outcome = _settle(updated, events, EndReason.TIMEOUT)
    return replace(outcome, missed=missed)


# --- helpers ----------------------------------------------------------------------------------------
_ABSENT = Invitee(Member.LEFT, deadline=0.0)
_PRESENT = (Member.RINGING, Member.JOINED)


def _member(call: Call, user: str) -> Invitee:
    member = call.members.get(user)
    if member is None:
        raise CallError("you are not part of this call")
    return member


def _with(call: Call, user: str, member: Invitee) -> Call:
    return replace(call, members={**call.members, user: member})


def _others(call: Call, user: str) -> tuple[str, ...]:
    return tuple(u for u in call.members if u != user)


def _started(call: Call, deadline: float, *, busy: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "call_id": call.id,
        "caller": {"id": call.caller, "name": call.caller_name},
        "invitees": [u for u in call.members if u != call.caller],
        "video": call.video,
        "expires_at": int(deadline * 1000),
    }
    if busy:
        payload["busy"] = True
    return payload


def _stop(call: Call, reason: StopReason) -> dict[str, Any]:
    return {"call_id": call.id, "reason": str(reason)}


def _state_event(call: Call) -> Event:
    payload = {"call_id": call.id, "state": str(call.state), "members": call.member_states()}
    return Event(tuple(call.members), "call_state", payload)


def _settle(call: Call, events: list[Event], reason: EndReason) -> Outcome:
    """After an invitee dropped out: a call that nobody can still join ends. A 1:1 call ends with its
    callee's reason; a ringing group call ends when no invitee is left ringing; an active group call
    goes on while someone is in it."""
    if call.state is State.RINGING and not call.ringing():
        return _end(call, reason, events)
    events.append(_state_event(call))
    return Outcome(call, tuple(events))


def _end(call: Call, reason: EndReason, events: list[Event]) -> Outcome:
    ringing = call.ringing()
    stop = StopReason.TIMEOUT if reason is EndReason.TIMEOUT else StopReason.CANCELLED
    for user in ringing:
        events.append(Event((user,), "stop_ringing", _stop(call, stop)))
    members = {
        u: (replace(m, state=Member.LEFT) if m.state in _PRESENT else m) for u, m in call.members.items()
    }
    ended = replace(call, state=State.ENDED, members=members)
    everyone = tuple(call.members)
    events.append(Event(everyone, "call_ended", {"call_id": call.id, "reason": str(reason)}))
    events.append(_state_event(ended))
    return Outcome(None, tuple(events), ended=reason)


# --- stored form ------------------------------------------------------------------------------------
def encode(call: Call) -> str:
    """The call as the store keeps it (JSON): one value, so a transition commits it whole."""
    return json.dumps(
        {
            "id": call.id,
            "server_id": call.server_id,
            "caller": call.caller,
            "caller_name": call.caller_name,
            "video": call.video,
            "group": call.group,
            "created_at": call.created_at,
            "state": str(call.state),
            "caller_gone_since": call.caller_gone_since,
            "reconnect_grace_s": call.reconnect_grace_s,
            "members": {user: [str(m.state), m.deadline, m.acked] for user, m in call.members.items()},
        },
        separators=(",", ":"),
    )


def decode(raw: str | bytes) -> Call:
    data = json.loads(raw)
    return Call(
        id=data["id"],
        server_id=data["server_id"],
        caller=data["caller"],
        caller_name=data["caller_name"],
        video=data["video"],
        group=data["group"],
        created_at=data["created_at"],
        state=State(data["state"]),
        caller_gone_since=data["caller_gone_since"],
        reconnect_grace_s=data["reconnect_grace_s"],
        members={
            user: Invitee(Member(state), deadline=deadline, acked=acked)
            for user, (state, deadline, acked) in data["members"].items()
        },
    )
