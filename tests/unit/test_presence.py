"""Phoenix Presence format: diffs as the JS helper expects them, and its sync semantics."""

from __future__ import annotations

from voxa.signaling.presence import (
    join_diff,
    leave_diff,
    leaves_diff,
    refs,
    state_of,
    sync_diff,
    update_diff,
    updated_meta,
)


def meta(ref: str, **kw: object) -> dict[str, object]:
    return {"phx_ref": ref, "muted": False, **kw}


def test_state_groups_metas_by_key() -> None:
    state = state_of([("a", meta("1")), ("b", meta("2")), ("a", meta("3"))])
    assert state == {"a": {"metas": [meta("1"), meta("3")]}, "b": {"metas": [meta("2")]}}


def test_join_then_leave() -> None:
    state = sync_diff({}, join_diff("a", meta("1")))
    assert state == {"a": {"metas": [meta("1")]}}
    assert sync_diff(state, leave_diff("a", meta("1"))) == {}


def test_update_is_leave_plus_join_linked_by_prev_ref() -> None:
    old = meta("1")
    new = updated_meta(old, {"muted": True}, "2")
    assert new == {"phx_ref": "2", "phx_ref_prev": "1", "muted": True}
    diff = update_diff("a", old, new)
    assert diff == {"joins": {"a": {"metas": [new]}}, "leaves": {"a": {"metas": [old]}}}
    state = sync_diff({"a": {"metas": [old]}}, diff)
    assert state == {"a": {"metas": [new]}}


def test_second_update_drops_stale_prev_ref() -> None:
    first = updated_meta(meta("1"), {"muted": True}, "2")
    second = updated_meta(first, {"muted": False}, "3")
    assert second["phx_ref_prev"] == "2"


def test_multiple_devices_keep_separate_metas() -> None:
    state = sync_diff({"a": {"metas": [meta("1")]}}, join_diff("a", meta("9")))
    assert refs(state) == {"1", "9"}
    state = sync_diff(state, leave_diff("a", meta("1")))
    assert refs(state) == {"9"}


def test_leave_of_unknown_key_or_ref_is_harmless() -> None:
    state = {"a": {"metas": [meta("1")]}}
    assert sync_diff(state, leave_diff("zz", meta("5"))) == state
    assert sync_diff(state, leave_diff("a", meta("5"))) == state


def test_replayed_join_does_not_duplicate() -> None:
    """A diff that happened before a presence_state snapshot may arrive after it: no duplicates."""
    state = {"a": {"metas": [meta("1")]}}
    assert sync_diff(state, join_diff("a", meta("1"))) == state


def test_leaves_diff_of_many() -> None:
    diff = leaves_diff([("a", meta("1")), ("b", meta("2"))])
    assert diff == {"joins": {}, "leaves": {"a": {"metas": [meta("1")]}, "b": {"metas": [meta("2")]}}}


def test_sync_does_not_mutate_input() -> None:
    state = {"a": {"metas": [meta("1")]}}
    sync_diff(state, leave_diff("a", meta("1")))
    assert state == {"a": {"metas": [meta("1")]}}
