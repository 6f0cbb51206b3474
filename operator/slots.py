"""Two stunnerd slots per gateway pod, so that rotating the TURN secret drops no call.

stunnerd holds one secret, and checks every request against it: the Allocate, and also the Refresh,
CreatePermission and ChannelBind requests that keep a live allocation going. Clients sign those with
the credentials they allocated with. So one stunnerd cannot accept the old and the new credentials at
the same time, and changing its secret stops every call at its next refresh.

Each gateway pod therefore runs two stunnerd processes, slots "a" and "b", on different ports (a
listener's `port` and `alternatePort`). Signaling hands out the URIs of the active slot, with
credentials made with that slot's secret, so every credential names the slot that checks it.

A rotation (the gateway's auth changes) goes in three steps:

1. Prepare: the standby slot gets the new secret. Nobody is sent there yet: the kubelet updates the
   pods' mounted config lazily (about a minute), so the new secret must reach every pod first.
2. Switch, `propagation_s` later: the standby becomes active, and signaling (which follows the active
   slot) rolls. The slot that was active keeps the previous secret for one credential lifetime plus
   `SIGNALING_ROLL_S` (old signaling replicas hand out its credentials until they are replaced), so
   every credential issued for it stays valid until it expires: calls go on refreshing until they end.
3. Retire: when that time is up, the standby adopts the current secret, so the previous one stops
   being usable, by a client or by anyone who learnt it.

Going back to the secret the standby still holds switches at once (its pods already have it). A new
secret prepared while the standby still holds the previous one ends that one early: calls still on it
stop at their next refresh (a warning).

This module is the state machine, pure: the operator keeps the state in the gateway's config Secret.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Literal

from voxa.operator.render.stunnerd_config import Auth

Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")
SIGNALING_ROLL_S = 600
"""Allowance for signaling to roll after a switch: its old replicas keep handing out credentials of
the previous slot until they are replaced."""


def other(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


@dataclass(frozen=True)
class Slots:
    """Which slot new calls use, the auth each slot checks, and when things happened (unix seconds)."""

    active: Slot
    a: Auth
    b: Auth
    activated_at: int = 0
    """When the active slot became active (or the gateway was created): signaling's revision."""
    standby_since: int = 0
    """When the standby got the auth it holds (a prepared secret can be switched to once the pods have
    had time to see it)."""
    standby_until: int = 0
    """Until when the standby keeps the previous auth (it holds the previous one when > 0)."""

    def auth(self, slot: Slot) -> Auth:
        return self.a if slot == "a" else self.b

    @property
    def standby(self) -> Slot:
        return other(self.active)

    @property
    def revision(self) -> str:
        """Changes whenever signaling must hand out other credentials; reveals nothing of them."""
        return f"{self.active}@{self.activated_at}"

    def _standby(self, auth: Auth, since: int) -> Slots:
        """The standby given `auth` at `since` (it holds no previous secret any more)."""
        a, b = (auth, self.b) if self.standby == "a" else (self.a, auth)
        return dataclasses.replace(self, a=a, b=b, standby_since=since, standby_until=0)


@dataclass(frozen=True)
class Change:
    """What happened, for the gateway's events. Messages never contain secrets."""

    reason: str
    message: str
    warning: bool = False


def stamp(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def advance(
    current: Slots | None, auth: Auth, ttl_s: int, now: int, propagation_s: int
) -> tuple[Slots, Change | None]:
    """The slots after seeing the gateway's current `auth` at `now`."""
    if current is None:
        return Slots(active="a", a=auth, b=auth, activated_at=now), None
    active, standby = current.active, current.standby
    if auth == current.auth(active):
        if current.auth(standby) != auth and now >= current.standby_until:
            if not current.standby_until:  # the standby held a secret prepared, never used
                return current._standby(auth, now), Change(
                    "TurnSecretRotationCancelled",
                    f"the secret is back to the one in use before new calls moved; slot {standby} "
                    "holds it again",
                )
            return current._standby(auth, now), Change(
                "PreviousSecretRetired",
                f"slot {standby} now holds the current secret too; no other secret is valid any more",
            )
        return current, None
    if auth == current.auth(standby):
        if now < current.standby_since + propagation_s:
            return current, None  # prepared; waiting for every pod to have it
        until = now + ttl_s + SIGNALING_ROLL_S
        # The old active slot's pods had its secret before it became active.
        since = current.activated_at - propagation_s
        switched = dataclasses.replace(
            current, active=standby, activated_at=now, standby_since=since, standby_until=until
        )
        return switched, Change(
            "TurnSecretRotated",
            f"new calls use slot {standby} and its secret; slot {active} accepts the previous one until "
            f"{stamp(until)}, so calls in progress keep their media",
        )
    early = current.standby_until > now and current.auth(standby) != current.auth(active)
    prepared = current._standby(auth, now)
    message = (
        f"slot {standby} has the new secret; new calls move to it at {stamp(now + propagation_s)}, once "
        "every gateway pod has it"
    )
    if early:
        message += (
            f". The previous secret was to stay valid on slot {standby} until "
            f"{stamp(current.standby_until)} and no longer is: calls still using it stop at their next "
            "TURN refresh"
        )
    return prepared, Change("TurnSecretRotating", message, warning=early)


def previous_valid_until(slots: Slots) -> str:
    """RFC 3339 time until which the standby accepts the previous secret, "" when it holds none."""
    holds_previous = slots.standby_until and slots.auth(slots.standby) != slots.auth(slots.active)
    return stamp(slots.standby_until) if holds_previous else ""


def pending_switch(slots: Slots, auth: Auth | None, propagation_s: int) -> str:
    """RFC 3339 time at which new calls move to the standby, "" when no rotation is under way."""
    if auth is None or auth == slots.auth(slots.active) or auth != slots.auth(slots.standby):
        return ""
    return stamp(slots.standby_since + propagation_s)
