"""Calls against the store: each request is a pure transition (`voxa.signaling.calls`) applied to the
stored call and committed by compare-and-set, so callers and callees on different replicas, and
several replicas expiring the same deadline, cannot both win. The replica whose commit wins delivers
the transition's events, to every device of their users on whichever replica holds them (through
the hub's control messages on `user:` topics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from voxa.signaling import calls
from voxa.signaling.calls import Call, CallError, Member, Outcome, Policy, State
from voxa.signaling.hub import Hub
from voxa.signaling.store import CallCommit, Store, StoredCall, StoreUnavailable

log = logging.getLogger("voxa.signaling.calls")
COMMIT_ATTEMPTS = 8
KNOWN_CALLS = 10_000
"""Snapshots of calls this replica keeps to transition without reading first (see `transact`)."""
EXPIRY_INTERVAL_S = 0.25
EXPIRY_BATCH = 200
MISSED_CALL_TTL_S = 24 * 3600


def user_hub_topic(server_id: str, user_id: str) -> str:
    """The hub's (and the store's pub/sub) topic for a user's devices; clients know it as `user:<id>`."""
    return f"user:{server_id}:{user_id}"


def new_call_id() -> str:
    return secrets.token_urlsafe(12)


class PushNotifier(Protocol):
    def notify(self, server_id: str, outcome: Outcome) -> None:
        """Queue the pushes an outcome asks for, without waiting (signaling/push/)."""


class CallService:
    def __init__(
        self,
        store: Store,
        hub: Hub,
        policy: Policy,
        clock: Callable[[], float] = time.time,
        push: PushNotifier | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.policy = policy
        self.clock = clock
        self.push = push
        self._expiry: asyncio.Task[None] | None = None
        self._known: OrderedDict[tuple[str, str], StoredCall] = OrderedDict()
        """The latest stored form of recent calls this replica saw (its own commits, and the
        commits of others, which come with their events): a hint, never the truth."""

    # --- the transaction --------------------------------------------------------------------------
    async def transact(
        self,
        server_id: str,
        call_id: str,
        transition: Callable[[Call | None], Outcome],
        *,
        new: bool = False,
    ) -> Outcome:
        """Transition the call and commit it if nobody changed it meanwhile (else redo), deliver.

        The first attempt starts from the replica's latest snapshot of the call when it has one
        (`new`: the id was just drawn, so the call cannot exist yet), saving a read. A snapshot can be
        stale: a commit from it fails on the version and is redone from a fresh read, and a refusal
        or a no-op decided on it is decided again on a fresh read, so only the store's state ever
        decides."""
        key = (server_id, call_id)
        stored: StoredCall | None
        if new:
            stored, hint = None, True
        elif (known := self._known.get(key)) is not None:
            stored, hint = known, True
        else:
            stored, hint = await self._read(key), False
        for _ in range(COMMIT_ATTEMPTS):
            before = calls.decode(stored.data) if stored is not None else None
            try:
                outcome = transition(before)
            except CallError:
                if not hint:
                    raise
                stored, hint = await self._read(key), False
                continue
            if outcome.call == before and not outcome.events:
                if not hint:
                    return outcome
                stored, hint = await self._read(key), False
                continue
            after = outcome.call
            users = tuple(
                dict.fromkeys([*(before.members if before else ()), *(after.members if after else ())])
            )
            data = calls.encode(after) if after is not None else None
            commit = CallCommit(
                version=stored.version if stored is not None else None,
                data=data,
                users=users,
                due=after.next_deadline() if after is not None else None,
            )
            version = await self.store.call_commit(server_id, call_id, commit)
            if version is None:
                stored, hint = await self._read(key), False
                continue
            self.learn(server_id, call_id, version, data)
            await self._deliver(server_id, outcome, (version, data))
            return outcome
        raise StoreUnavailable("call changed by others too often")

    async def _read(self, key: tuple[str, str]) -> StoredCall | None:
        stored = await self.store.call_get(*key)
        if stored is None:
            self._known.pop(key, None)
        else:
            self.learn(key[0], key[1], stored.version, stored.data)
        return stored

    def learn(self, server_id: str, call_id: str, version: int, data: str | None) -> None:
        """Keep the call's stored form at `version` (None data: it ended) unless a newer one is known."""
        key = (server_id, call_id)
        known = self._known.get(key)
        if known is not None and known.version >= version:
            return
        if data is None:
            self._known.pop(key, None)
            return
        self._known[key] = StoredCall(data, version)
        self._known.move_to_end(key)
        while len(self._known) > KNOWN_CALLS:
            self._known.popitem(last=False)

    async def _deliver(
        self, server_id: str, outcome: Outcome, stored: tuple[int, str | None] | None = None
    ) -> None:
        """The outcome's events, in order, as one control message per user (each device of the user
        takes the events not excluded for it), all in one round trip to the store. The messages carry
        the call as committed (`stored`: version and data), so the replicas of its members can
        transition it next without reading it first."""
        if self.push is not None:
            self.push.notify(server_id, outcome)  # only queues: pushes never delay signaling
        per_user: dict[str, list[dict[str, Any]]] = {}
        for event in outcome.events:
            item: dict[str, Any] = {"event": event.name, "payload": dict(event.payload)}
            if event.exclude_device is not None:
                item["exclude_device"] = event.exclude_device
            for user in event.users:
                per_user.setdefault(user, []).append(item)
        for missed in outcome.missed:
            record = {
                "call_id": missed.call_id,
                "caller": {"id": missed.caller, "name": missed.caller_name},
                "at": int(missed.at * 1000),
            }
            with contextlib.suppress(StoreUnavailable):
                await self.store.missed_add(server_id, missed.user, json.dumps(record), MISSED_CALL_TTL_S)
            per_user.setdefault(missed.user, []).append({"event": "missed_call", "payload": record})
        call_id = outcome.events[0].payload.get("call_id") if outcome.events else None
        snapshot = {"id": call_id, "v": stored[0], "d": stored[1]} if stored is not None and call_id else None
        controls = [
            (user_hub_topic(server_id, user), {"user": user, "calls": items, "stored": snapshot})
            for user, items in per_user.items()
        ]
        if controls:
            with contextlib.suppress(StoreUnavailable):
                await self.hub.control_many(controls)
        if outcome.ended is not None:
            log.info("call.ended", extra={"reason": str(outcome.ended)})

    @staticmethod
    def _existing(call: Call | None) -> Call:
        if call is None:
            raise CallError("no such call")
        return call

    # --- requests -----------------------------------------------------------------------------------
    async def start(
        self, server_id: str, caller: str, caller_name: str, invitees: list[str], video: bool
    ) -> Call:
        """A new call, or, in glare (the one invitee is ringing us already), that call answered."""
        if len(invitees) == 1:
            (callee,) = invitees
            theirs = await self.calls_of(server_id, callee)
            glare = await self._answer_glare(theirs, callee, caller)
            if glare is not None:
                return glare
            busy = frozenset(invitees) if any(_in(call, callee) for call in theirs) else frozenset()
        else:
            busy = await self._busy(server_id, invitees)
        call_id = new_call_id()
        now = self.clock()

        def begin(existing: Call | None) -> Outcome:
            if existing is not None:  # a 72-bit random id: only a replay of this very commit
                raise CallError("call id collision")
            return calls.start(
                call_id,
                server_id,
                caller,
                caller_name,
                invitees,
                video=video,
                now=now,
                policy=self.policy,
                busy=busy,
            )

        outcome = await self.transact(server_id, call_id, begin, new=True)
        ended = outcome.call is None
        if ended:
            raise CallError("busy")
        assert outcome.call is not None
        return outcome.call

    async def _answer_glare(self, theirs: list[Call], callee: str, caller: str) -> Call | None:
        """A ringing 1:1 call from `callee` to `caller` (among the callee's calls), answered on the
        spot: glare."""
        for call in theirs:
            member = call.members.get(caller)
            if (
                call.caller == callee
                and not call.group
                and member is not None
                and member.state is Member.RINGING
            ):
                outcome = await self.transact(
                    call.server_id,
                    call.id,
                    lambda c: calls.answer(self._existing(c), caller, "", self.clock()),
                )
                return outcome.call
        return None

    async def in_active_call(self, server_id: str, user: str) -> bool:
        return any(_in(call, user) for call in await self.calls_of(server_id, user))

    async def _busy(self, server_id: str, invitees: list[str]) -> frozenset[str]:
        return frozenset([u for u in invitees if await self.in_active_call(server_id, u)])

    async def answer(self, server_id: str, call_id: str, user: str, device: str) -> Call:
        outcome = await self.transact(
            server_id, call_id, lambda c: calls.answer(self._existing(c), user, device, self.clock())
        )
        assert outcome.call is not None
        return outcome.call

    async def decline(self, server_id: str, call_id: str, user: str, device: str, reason: str) -> None:
        await self.transact(
            server_id, call_id, lambda c: calls.decline(self._existing(c), user, device, reason, self.clock())
        )

    async def end(self, server_id: str, call_id: str, user: str) -> None:
        await self.transact(server_id, call_id, lambda c: calls.end(self._existing(c), user, self.clock()))

    async def invite(self, server_id: str, call_id: str, user: str, invitees: list[str]) -> None:
        busy = await self._busy(server_id, invitees)
        await self.transact(
            server_id,
            call_id,
            lambda c: calls.invite(self._existing(c), user, invitees, self.clock(), self.policy, busy),
        )

    async def ring_acked(self, server_id: str, call_id: str, user: str) -> None:
        await self.transact(
            server_id, call_id, lambda c: calls.ring_acked(c, user) if c is not None else Outcome(None)
        )

    async def caller_presence(self, server_id: str, call_id: str, connected: bool) -> None:
        """The caller's last device left (or one came back) while the call rings."""
        await self.transact(
            server_id,
            call_id,
            lambda c: calls.caller_presence(c, connected, self.clock()) if c is not None else Outcome(None),
        )

    async def calls_of(self, server_id: str, user: str) -> list[Call]:
        found = []
        for call_id in await self.store.calls_of(server_id, user):
            stored = await self.store.call_get(server_id, call_id)
            if stored is not None:
                found.append(calls.decode(stored.data))
        return found

    async def missed(self, server_id: str, user: str) -> list[dict[str, Any]]:
        """The user's recent missed calls, newest first."""
        return [json.loads(record) for record in await self.store.missed_list(server_id, user)]

    async def get(self, server_id: str, call_id: str) -> Call | None:
        stored = await self.store.call_get(server_id, call_id)
        return calls.decode(stored.data) if stored is not None else None

    # --- deadlines ----------------------------------------------------------------------------------
    def start_expiry(self) -> None:
        if self._expiry is None:
            self._expiry = asyncio.create_task(self._expire_loop(), name="voxa-call-expiry")

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
            self._expiry = None

    async def expire_due(self) -> int:
        """Expire every call whose deadline has come, whichever replica placed it. Returns how many."""
        now = self.clock()
        due = await self.store.calls_due(now, EXPIRY_BATCH)
        for server_id, call_id in due:
            outcome = await self.transact(
                server_id, call_id, lambda c: calls.expire(c, now) if c is not None else Outcome(None)
            )
            if outcome.call is None and outcome.ended is None:
                # The call is gone but its deadline stayed (its key outlived by the safety TTL):
                # a delete of what does not exist clears the deadline.
                await self.store.call_commit(server_id, call_id, CallCommit(None, None, (), None))
        return len(due)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL_S)
            try:
                await self.expire_due()
            except StoreUnavailable:
                continue
            except Exception:
                log.exception("call.expiry_failed")


def _in(call: Call, user: str) -> bool:
    """`user` is in `call`, which is live: they count as busy for others."""
    member = call.members.get(user)
    return call.state is State.ACTIVE and member is not None and member.state is Member.JOINED


def call_reply(call: Call) -> dict[str, Any]:
    return {"call_id": call.id, "topic": call.topic}
