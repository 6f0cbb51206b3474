"""Two stunnerd slots per gateway pod, so that rotating the TURN secret drops no call.

stunnerd holds one secret, and checks every request against it: the Allocate, and also the Refresh,
CreatePermission and ChannelBind requests that keep a live allocation going. Clients sign those with
the credentials they allocated with. So one stunnerd cannot accept the old and the new credentials at
the same time, and changing its secret stops every call at its next refresh.

Each gateway pod therefore runs two stunnerd processes, slots "a" and "b", on different ports (a
listener's `port` and `alternatePort`). Signaling hands out the URIs of the active slot, with
credentials made with that slot's secret, so every credential names the slot that checks it.

* Rotation (the gateway's auth changes): the standby slot takes the new secret and becomes active;
  the slot that was active keeps the previous secret for one credential lifetime. Every credential
  issued before the rotation expires within that lifetime, so calls using one go on refreshing until
  they end, and new calls use the new slot.
* Retirement, one lifetime later: the standby adopts the current secret, so the previous one stops
  being usable, by a client or by anyone who learnt it.
* A second rotation within that lifetime gives the standby the newest secret at once: the oldest
  secret stops being accepted early, and calls still on it stop at their next refresh (a warning).

This module is the state machine, pure: the operator keeps the state in the gateway's config Secret.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from voxa.operator.render.stunnerd_config import Auth

Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")


def other(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


@dataclass(frozen=True)
class Slots:
    """Which slot new calls use, and the auth each slot checks."""

    active: Slot
    a: Auth
    b: Auth
    standby_until: int = 0
    """Unix time until which the standby keeps the previous auth; 0 once it holds the current one."""

    def auth(self, slot: Slot) -> Auth:
        return self.a if slot == "a" else self.b

    @property
    def standby(self) -> Slot:
        return other(self.active)

    def with_auth(self, slot: Slot, auth: Auth) -> tuple[Auth, Auth]:
        return (auth, self.b) if slot == "a" else (self.a, auth)


@dataclass(frozen=True)
class Change:
    """What happened, for the gateway's events. Messages never contain secrets."""

    reason: str
    message: str
    warning: bool = False


def initial(auth: Auth) -> Slots:
    return Slots(active="a", a=auth, b=auth)


def _stamp(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def advance(current: Slots | None, auth: Auth, ttl_s: int, now: int) -> tuple[Slots, Change | None]:
    """The slots after seeing the gateway's current `auth` at `now` (unix seconds)."""
    if current is None:
        return initial(auth), None
    active, standby = current.active, current.standby
    if current.auth(active) == auth:
        if current.auth(standby) != auth and now >= current.standby_until:
            a, b = current.with_auth(standby, auth)
            retired = Slots(active=active, a=a, b=b)
            return retired, Change(
                "PreviousSecretRetired",
                f"slot {standby} now accepts the current secret only; the previous one is no longer valid",
            )
        return current, None
    early = current.auth(standby) != current.auth(active) and now < current.standby_until
    a, b = current.with_auth(standby, auth)
    until = now + ttl_s
    rotated = Slots(active=standby, a=a, b=b, standby_until=until)
    message = (
        f"new calls use slot {standby} with the new secret; slot {active} accepts the previous one "
        f"until {_stamp(until)}, so calls in progress keep their media"
    )
    if early:
        message += (
            f". The secret before it was still valid until {_stamp(current.standby_until)} and is no "
            "longer accepted: calls still using it stop at their next TURN refresh"
        )
    return rotated, Change("TurnSecretRotated", message, warning=early)


def standby_until_text(slots: Slots) -> str:
    """RFC 3339 time until which the standby accepts the previous secret, "" when it has none."""
    return _stamp(slots.standby_until) if slots.standby_until and slots.a != slots.b else ""
