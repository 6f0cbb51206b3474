"""Phoenix Presence data format, pure.

State: ``{key: {"metas": [meta, ...]}}``; every meta carries a unique ``phx_ref``. Changes travel as
``presence_diff`` ``{"joins": state, "leaves": state}``. An update of a meta is a leave of the old
meta plus a join of the new one whose ``phx_ref_prev`` names the old ref; the phoenix JS ``Presence``
helper (and :func:`sync_diff` here, used by Voxa's Python client and tests) apply joins before leaves,
so an updated meta never disappears in between.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

Meta = dict[str, Any]
State = dict[str, dict[str, list[Meta]]]
Diff = dict[str, State]

PRESENCE_STATE = "presence_state"
PRESENCE_DIFF = "presence_diff"


def state_of(entries: Iterable[tuple[str, Meta]]) -> State:
    """Group (key, meta) pairs into Presence state."""
    out: State = {}
    for key, meta in entries:
        out.setdefault(key, {"metas": []})["metas"].append(meta)
    return out


def join_diff(key: str, meta: Meta) -> Diff:
    return {"joins": {key: {"metas": [meta]}}, "leaves": {}}


def leave_diff(key: str, meta: Meta) -> Diff:
    return {"joins": {}, "leaves": {key: {"metas": [meta]}}}


def leaves_diff(entries: Iterable[tuple[str, Meta]]) -> Diff:
    return {"joins": {}, "leaves": state_of(entries)}


def updated_meta(old: Meta, changes: dict[str, Any], new_ref: str) -> Meta:
    """The meta that replaces `old` after `changes`, linked to it by ``phx_ref_prev``."""
    new = {k: v for k, v in old.items() if k != "phx_ref_prev"}
    new.update(changes)
    new["phx_ref"] = new_ref
    new["phx_ref_prev"] = old["phx_ref"]
    return new


def update_diff(key: str, old: Meta, new: Meta) -> Diff:
    return {"joins": {key: {"metas": [new]}}, "leaves": {key: {"metas": [old]}}}


def sync_diff(state: State, diff: Diff) -> State:
    """Apply a diff the way the phoenix JS client does: joins (merged by phx_ref) first, then leaves."""
    out = copy.deepcopy(state)
    for key, entry in diff.get("joins", {}).items():
        current = out.get(key)
        metas = [copy.deepcopy(m) for m in entry["metas"]]
        if current is not None:
            joined = {m["phx_ref"] for m in metas}
            metas = [m for m in current["metas"] if m["phx_ref"] not in joined] + metas
        out[key] = {"metas": metas}
    for key, entry in diff.get("leaves", {}).items():
        current = out.get(key)
        if current is None:
            continue
        gone = {m["phx_ref"] for m in entry["metas"]}
        remaining = [m for m in current["metas"] if m["phx_ref"] not in gone]
        if remaining:
            out[key] = {"metas": remaining}
        else:
            del out[key]
    return out


def sync_state(state: State, new_state: State) -> State:
    """Replace the whole state (what a client does on ``presence_state``)."""
    del state
    return copy.deepcopy(new_state)


def refs(state: State) -> set[str]:
    return {m["phx_ref"] for entry in state.values() for m in entry["metas"]}
