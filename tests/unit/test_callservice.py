"""CallService's snapshots: a replica transitions a call from the latest stored form it saw, and a
stale one never decides anything (two replicas on one memory backend, explicit clock)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from voxa.signaling import calls
from voxa.signaling.calls import Call, CallError, Invitee, Member, Policy
from voxa.signaling.callservice import CallService
from voxa.signaling.hub import Hub
from voxa.signaling.metrics import SignalingMetrics
from voxa.signaling.store import StoredCall
from voxa.signaling.store.memory import MemoryBackend, MemoryStore

SERVER = "g1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replicas() -> tuple[CallService, CallService, Clock]:
    backend, clock = MemoryBackend(), Clock()
    metrics = SignalingMetrics()

    def replica(name: str) -> CallService:
        store = MemoryStore(name, 15.0, backend)
        return CallService(store, Hub(store, metrics), Policy(ring_timeout_s=30.0), clock=clock)

    return replica("a"), replica("b"), clock


def plant(service: CallService, call: Call, version: int) -> None:
    """A snapshot the replica believes is the call at `version`."""
    service._known[(SERVER, call.id)] = StoredCall(calls.encode(call), version)


async def test_a_stale_snapshot_commits_nothing_and_the_fresh_state_decides(
    replicas: tuple[CallService, CallService, Clock],
) -> None:
    a, b, _ = replicas
    call = await a.start(SERVER, "alice", "Alice", ["bob"], video=False)  # a knows version 1
    await b.answer(SERVER, call.id, "bob", "bob-phone")  # b read it; version 2, active
    # On a's snapshot the call still rings, where the caller's end would cancel it; it is active.
    outcome = await a.transact(SERVER, call.id, lambda c: calls.end(a._existing(c), "alice", 0.0))
    assert outcome.ended is calls.EndReason.HANGUP
    assert await a.get(SERVER, call.id) is None and await b.get(SERVER, call.id) is None


async def test_a_refusal_read_on_a_snapshot_is_decided_again_on_the_store(
    replicas: tuple[CallService, CallService, Clock],
) -> None:
    a, b, _ = replicas
    call = await b.start(SERVER, "alice", "Alice", ["bob", "carol"], video=False)
    stale = replace(call, members={**call.members, "bob": Invitee(Member.DECLINED, deadline=0.0)})
    plant(a, stale, 1)  # a believes bob declined: answering would be refused there
    answered = await a.answer(SERVER, call.id, "bob", "bob-phone")
    assert answered.members["bob"].state is Member.JOINED
    with pytest.raises(CallError, match="already answered"):  # refused on the store's state too
        await a.answer(SERVER, call.id, "bob", "bob-laptop")


async def test_a_no_op_read_on_a_snapshot_is_decided_again_on_the_store(
    replicas: tuple[CallService, CallService, Clock],
) -> None:
    a, b, clock = replicas
    call = await b.start(SERVER, "alice", "Alice", ["bob"], video=False)
    later = {u: replace(m, deadline=m.deadline + 3600) for u, m in call.members.items()}
    plant(a, replace(call, members=later), 1)  # a believes nothing is due for an hour
    clock.now += 31
    assert await a.expire_due() == 1
    assert await b.get(SERVER, call.id) is None  # the ring timed out: the 1:1 call ended


async def test_snapshots_move_forward_only_and_an_ended_call_is_forgotten(
    replicas: tuple[CallService, CallService, Clock],
) -> None:
    a, _, _ = replicas
    call = await a.start(SERVER, "alice", "Alice", ["bob"], video=False)
    newer = a._known[(SERVER, call.id)]
    a.learn(SERVER, call.id, newer.version - 1, "{}")
    assert a._known[(SERVER, call.id)] == newer
    a.learn(SERVER, call.id, newer.version + 1, None)
    assert (SERVER, call.id) not in a._known
