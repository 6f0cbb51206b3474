"""The stunnerd slots' state machine: rotation, retirement, a second rotation within a lifetime."""

from __future__ import annotations

from voxa.operator.render.stunnerd_config import EphemeralAuth, StaticAuth
from voxa.operator.slots import Slots, advance, standby_until_text

TTL = 3600
T0 = 1_800_000_000
ONE, TWO, THREE = EphemeralAuth("k1-7f3a"), EphemeralAuth("k2-9b1c"), EphemeralAuth("k3-04de")


def test_a_new_gateway_starts_on_slot_a_with_the_same_auth_on_both() -> None:
    slots, change = advance(None, ONE, TTL, T0)
    assert slots == Slots(active="a", a=ONE, b=ONE) and change is None
    assert standby_until_text(slots) == ""


def test_nothing_changes_while_the_auth_stays() -> None:
    slots, _ = advance(None, ONE, TTL, T0)
    assert advance(slots, ONE, TTL, T0 + 10 * TTL) == (slots, None)


def test_a_rotation_moves_new_calls_to_the_standby_and_keeps_the_previous_secret_one_lifetime() -> None:
    start, _ = advance(None, ONE, TTL, T0)
    rotated, change = advance(start, TWO, TTL, T0 + 100)
    assert rotated == Slots(active="b", a=ONE, b=TWO, standby_until=T0 + 100 + TTL)
    assert change is not None and change.reason == "TurnSecretRotated" and not change.warning
    assert "k1-" not in change.message and "k2-" not in change.message  # no secrets in events
    assert standby_until_text(rotated) == "2027-01-15T09:01:40Z"

    # Within the lifetime nothing moves; at its end the standby adopts the current secret.
    assert advance(rotated, TWO, TTL, T0 + 100 + TTL - 1) == (rotated, None)
    retired, change = advance(rotated, TWO, TTL, T0 + 100 + TTL)
    assert retired == Slots(active="b", a=TWO, b=TWO)
    assert change is not None and change.reason == "PreviousSecretRetired"

    # The next rotation goes back to slot a.
    again, change = advance(retired, THREE, TTL, T0 + 5 * TTL)
    assert again == Slots(active="a", a=THREE, b=TWO, standby_until=T0 + 6 * TTL)
    assert change is not None and not change.warning


def test_a_second_rotation_within_a_lifetime_ends_the_oldest_secret_early_with_a_warning() -> None:
    start, _ = advance(None, ONE, TTL, T0)
    first, _ = advance(start, TWO, TTL, T0)
    second, change = advance(first, THREE, TTL, T0 + 60)
    assert second == Slots(active="a", a=THREE, b=TWO, standby_until=T0 + 60 + TTL)
    assert change is not None and change.warning and "no longer accepted" in change.message


def test_going_back_to_the_previous_secret_is_a_rotation_too() -> None:
    start, _ = advance(None, ONE, TTL, T0)
    first, _ = advance(start, TWO, TTL, T0)
    back, change = advance(first, ONE, TTL, T0 + 60)
    assert back.active == "a" and back.auth("a") == ONE and back.auth("b") == TWO
    assert change is not None


def test_static_credentials_rotate_the_same_way() -> None:
    old, new = StaticAuth("u", "p1"), StaticAuth("u", "p2")
    start, _ = advance(None, old, TTL, T0)
    rotated, _ = advance(start, new, TTL, T0)
    assert (rotated.active, rotated.auth("a"), rotated.auth("b")) == ("b", old, new)
