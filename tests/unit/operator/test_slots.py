"""The stunnerd slots' state machine: prepare, switch, retire; going back; a second rotation early."""

from __future__ import annotations

from voxa.operator.render.stunnerd_config import EphemeralAuth, StaticAuth
from voxa.operator.slots import SIGNALING_ROLL_S, Slots, advance, pending_switch, previous_valid_until

TTL = 3600
WAIT = 120  # propagation: how long a prepared secret waits for the pods
T0 = 1_800_000_000
ONE, TWO, THREE = EphemeralAuth("k1-7f3a"), EphemeralAuth("k2-9b1c"), EphemeralAuth("k3-04de")


def step(slots: Slots | None, auth: EphemeralAuth | StaticAuth, now: int) -> tuple[Slots, str | None]:
    new, change = advance(slots, auth, TTL, now, WAIT)
    if change is not None:
        assert "k1-" not in change.message and "k2-" not in change.message  # no secrets in events
    return new, None if change is None else change.reason


def test_a_new_gateway_starts_on_slot_a_with_the_same_auth_on_both() -> None:
    slots, change = step(None, ONE, T0)
    assert slots == Slots(active="a", a=ONE, b=ONE, activated_at=T0) and change is None
    assert previous_valid_until(slots) == "" and pending_switch(slots, ONE, WAIT) == ""
    assert step(slots, ONE, T0 + 10 * TTL) == (slots, None)


def test_a_rotation_prepares_the_standby_switches_after_propagation_and_retires_after_a_lifetime() -> None:
    start, _ = step(None, ONE, T0)

    # 1. Prepare: the standby gets the new secret; new calls stay where they are.
    prepared, change = step(start, TWO, T0 + 100)
    assert change == "TurnSecretRotating"
    assert prepared == Slots(active="a", a=ONE, b=TWO, activated_at=T0, standby_since=T0 + 100)
    assert prepared.revision == start.revision  # signaling keeps issuing for slot a
    assert pending_switch(prepared, TWO, WAIT) == "2027-01-15T08:03:40Z"
    assert step(prepared, TWO, T0 + 100 + WAIT - 1) == (prepared, None)

    # 2. Switch once every pod has had time to see it: slot a keeps the previous secret for a
    #    lifetime plus the time signaling takes to roll.
    switched, change = step(prepared, TWO, T0 + 100 + WAIT)
    until = T0 + 100 + WAIT + TTL + SIGNALING_ROLL_S
    assert change == "TurnSecretRotated"
    assert switched == Slots(
        active="b", a=ONE, b=TWO, activated_at=T0 + 100 + WAIT, standby_since=T0 - WAIT, standby_until=until
    )
    assert switched.revision != start.revision
    assert (
        previous_valid_until(switched) == "2027-01-15T09:13:40Z" and pending_switch(switched, TWO, WAIT) == ""
    )

    # 3. Retire when that time is up: the standby adopts the current secret.
    assert step(switched, TWO, until - 1) == (switched, None)
    retired, change = step(switched, TWO, until)
    assert change == "PreviousSecretRetired"
    assert (retired.a, retired.b, retired.active, retired.standby_until) == (TWO, TWO, "b", 0)
    assert retired.revision == switched.revision  # signaling does not roll for that
    assert previous_valid_until(retired) == ""

    # The next rotation goes back to slot a.
    again, _ = step(retired, THREE, until + 10)
    again, change = step(again, THREE, until + 10 + WAIT)
    assert change == "TurnSecretRotated" and again.active == "a" and again.auth("a") == THREE


def test_going_back_to_the_previous_secret_switches_at_once_and_warns_of_nothing() -> None:
    start, _ = step(None, ONE, T0)
    prepared, _ = step(start, TWO, T0)
    switched, _ = step(prepared, TWO, T0 + WAIT)
    back, change = step(switched, ONE, T0 + WAIT + 1)
    assert change == "TurnSecretRotated"
    assert back.active == "a" and back.auth("a") == ONE and back.auth("b") == TWO
    # And forth again: slot b has held TWO all along.
    forth, change = step(back, TWO, T0 + WAIT + 2)
    assert change == "TurnSecretRotated" and forth.active == "b"


def test_undoing_a_prepared_rotation_keeps_new_calls_where_they_are() -> None:
    start, _ = step(None, ONE, T0)
    prepared, _ = step(start, TWO, T0)
    undone, change = step(prepared, ONE, T0 + 10)
    assert undone.active == "a" and undone.auth("b") == ONE and change == "TurnSecretRotationCancelled"
    assert undone.revision == start.revision


def test_a_new_secret_while_the_standby_still_holds_the_previous_one_ends_it_early() -> None:
    start, _ = step(None, ONE, T0)
    prepared, _ = step(start, TWO, T0)
    switched, _ = step(prepared, TWO, T0 + WAIT)
    third, change = advance(switched, THREE, TTL, T0 + WAIT + 60, WAIT)
    assert change is not None and change.reason == "TurnSecretRotating" and change.warning
    assert "no longer is" in change.message
    assert third.active == "b" and third.auth("a") == THREE and third.auth("b") == TWO


def test_a_secret_changed_again_before_the_switch_waits_again() -> None:
    start, _ = step(None, ONE, T0)
    prepared, _ = step(start, TWO, T0)
    again, change = step(prepared, THREE, T0 + WAIT - 1)
    assert (
        change == "TurnSecretRotating" and again.auth("b") == THREE and again.standby_since == T0 + WAIT - 1
    )
    assert step(again, THREE, T0 + WAIT) == (again, None)


def test_static_credentials_rotate_the_same_way() -> None:
    old, new = StaticAuth("u", "p1"), StaticAuth("u", "p2")
    start, _ = step(None, old, T0)
    prepared, _ = step(start, new, T0)
    switched, _ = step(prepared, new, T0 + WAIT)
    assert (switched.active, switched.auth("a"), switched.auth("b")) == ("b", old, new)
