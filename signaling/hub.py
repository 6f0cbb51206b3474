"""The replica's local fan-out and its background duties.

A Hub knows which local channel members listen on each topic. A frame for a topic is written to the
local members directly and handed to the store for the other replicas. The hub also keeps the
replica alive in the store, sweeps presence left behind by dead replicas, and, after the store comes
back from an outage, rewrites this replica's presence and re-sends ``presence_state`` so every client
converges without restarting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from voxa.signaling import protocol
from voxa.signaling.metrics import SignalingMetrics
from voxa.signaling.presence import PRESENCE_DIFF, State, leaves_diff, state_of
from voxa.signaling.store import PresenceEntry, Store, StoreUnavailable

log = logging.getLogger("voxa.signaling.hub")
CONTROL_PREFIX = "!"
RESEND_STATE = orjson.dumps({"type": "presence_state"}).decode()
"""The control message a replica back from a store outage sends on each of its topics: every replica
pushes its members of that topic a fresh ``presence_state``."""


class Member(Protocol):
    """A socket's membership of one topic, as the hub sees it."""

    topic: str
    index: str
    key: str
    wire_topic: str
    """The topic clients know (a user's hub topic also names the voice server; its frames do not)."""

    def deliver(self, frame: str) -> None: ...

    def presence_entry(self) -> PresenceEntry | None: ...

    def push_presence_state(self, state: State) -> None: ...

    async def on_control(self, control: dict[str, Any]) -> None: ...


class Hub:
    def __init__(self, store: Store, metrics: SignalingMetrics, *, resync_grace_s: float = 1.0) -> None:
        self.store = store
        self.metrics = metrics
        self.topics: dict[str, dict[Member, None]] = {}
        self.indexes: dict[str, str] = {}
        self.ready = False
        self.resync_grace_s = resync_grace_s
        self._dirty: dict[str, str] = {}  # topics whose leave could not be written: topic -> index
        self._sub_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.maintenance: list[Callable[[], Awaitable[None]]] = []
        """More periodic store writes of this replica (the resumable sessions' TTLs), run with the
        replica heartbeat while the store is up."""
        store.on_remote = self._on_remote

    # --- membership -------------------------------------------------------------------------------
    async def add(self, member: Member) -> None:
        """Listen on the member's topic; the first local member subscribes the replica."""
        members = self.topics.get(member.topic)
        if members is None:
            async with self._sub_lock:
                members = self.topics.get(member.topic)
                if members is None:
                    await self.store.subscribe(member.topic)
                    members = self.topics[member.topic] = {}
                    self.indexes[member.topic] = member.index
        members[member] = None
        self.metrics.channel_members.inc()

    async def remove(self, member: Member) -> None:
        members = self.topics.get(member.topic)
        if members is None or member not in members:
            return
        del members[member]
        self.metrics.channel_members.dec()
        if members:
            return
        async with self._sub_lock:
            if not self.topics.get(member.topic):
                self.topics.pop(member.topic, None)
                self.indexes.pop(member.topic, None)
                with contextlib.suppress(StoreUnavailable):
                    await self.store.unsubscribe(member.topic)

    def mark_dirty(self, topic: str, index: str) -> None:
        """Remember a presence write that failed; the next resync repairs it."""
        self._dirty[topic] = index

    # --- delivery ---------------------------------------------------------------------------------
    def deliver(self, topic: str, frame: str, exclude: Member | None = None) -> None:
        members = self.topics.get(topic)
        if members:
            for member in list(members):
                if member is not exclude:
                    member.deliver(frame)

    async def broadcast(self, topic: str, frame: str) -> None:
        self.deliver(topic, frame)
        await self.store.publish(topic, frame)

    async def control(self, topic: str, control: dict[str, Any]) -> None:
        """Send a control message (moderation) to whichever replica holds the target's socket."""
        await self.store.publish(topic, CONTROL_PREFIX + orjson.dumps(control).decode())
        await self._apply_control(topic, control)

    async def control_many(self, controls: list[tuple[str, dict[str, Any]]]) -> None:
        """`control` of each (topic, control message), in order, in one round trip to the store."""
        await self.store.publish_many([(t, CONTROL_PREFIX + orjson.dumps(c).decode()) for t, c in controls])
        for topic, control in controls:
            await self._apply_control(topic, control)

    def _on_remote(self, topic: str, payload: str) -> None:
        if payload.startswith(CONTROL_PREFIX):
            try:
                control = orjson.loads(payload[1:])
            except orjson.JSONDecodeError:
                log.warning("hub.bad_control", extra={"topic": topic})
                return
            if control.get("type") == "presence_state":
                self._spawn(self._push_states_later([topic]))
            else:
                self._spawn(self._apply_control(topic, control))
        else:
            self.deliver(topic, payload)

    async def _apply_control(self, topic: str, control: dict[str, Any]) -> None:
        user = control.get("user")
        for member in list(self.topics.get(topic, ())):
            if member.key == user:
                try:
                    await member.on_control(control)
                except Exception:
                    log.exception("hub.control_failed", extra={"topic": topic})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- background duties -----------------------------------------------------------------------
    async def start(self, *, probe_interval_s: float = 1.0) -> None:
        await self.store.start()
        try:
            await self.store.replica_heartbeat()
            self.ready = True
        except StoreUnavailable:
            self.ready = False
        self.metrics.store_ready.set(1 if self.ready else 0)
        self._tasks = [
            asyncio.create_task(self._probe_loop(probe_interval_s), name="voxa-hub-probe"),
            asyncio.create_task(self._maintenance_loop(), name="voxa-hub-maintenance"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(StoreUnavailable):
            await self.store.replica_remove()
        await self.store.close()

    async def _probe_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            started = time.perf_counter()
            try:
                await asyncio.wait_for(self.store.ping(), timeout=max(interval, 1.0))
            except (StoreUnavailable, TimeoutError):
                if self.ready:
                    log.warning("hub.store_unavailable")
                self.ready = False
                self.metrics.store_ready.set(0)
                continue
            self.metrics.redis_latency.observe(time.perf_counter() - started)
            if not self.ready:
                try:
                    await self.store.renew_broadcast()
                    await self.resync()
                    # The other replicas' members missed what this replica's did meanwhile (the
                    # others may even have swept it as dead): every replica re-sends the state too.
                    await self.store.publish_many(
                        [(topic, CONTROL_PREFIX + RESEND_STATE) for topic in list(self.topics)]
                    )
                except StoreUnavailable:
                    continue
                log.info("hub.store_recovered", extra={"topics": len(self.topics)})
                self.ready = True
                self.metrics.store_ready.set(1)
                self._spawn(self._push_states_later())

    async def resync(self) -> None:
        """Rewrite this replica's presence from its live sockets (the store may have lost it)."""
        await self.store.replica_heartbeat()
        for topic, members in list(self.topics.items()):
            entries = [e for e in (m.presence_entry() for m in members) if e is not None]
            await self.store.presence_resync(topic, self.indexes[topic], entries)
            self._dirty.pop(topic, None)
        for topic, index in list(self._dirty.items()):
            await self.store.presence_resync(topic, index, [])
            del self._dirty[topic]

    async def _push_states_later(self, topics: list[str] | None = None) -> None:
        """Give the other replicas time to resync too, then send every local member (of `topics`, or
        of every topic) the full state."""
        await asyncio.sleep(self.resync_grace_s)
        for topic in list(self.topics) if topics is None else topics:
            members = self.topics.get(topic)
            if not members:
                continue
            try:
                entries = await self.store.presence_list(topic)
            except StoreUnavailable:
                return
            state = state_of((e.key, e.meta) for e in entries)
            for member in list(members):
                member.push_presence_state(state)

    async def _maintenance_loop(self) -> None:
        interval = max(self.store.replica_ttl_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            if not self.ready:
                continue
            try:
                await self.store.replica_heartbeat()
                for duty in self.maintenance:
                    await duty()
                for topic, index in list(self.indexes.items()):
                    removed = await self.store.presence_sweep(topic, index)
                    if removed:
                        log.info("hub.swept", extra={"topic": topic, "entries": len(removed)})
                        members = self.topics.get(topic)
                        wire = next(iter(members)).wire_topic if members else topic
                        frame = protocol.broadcast(
                            wire, PRESENCE_DIFF, leaves_diff((e.key, e.meta) for e in removed)
                        )
                        await self.broadcast(topic, frame)
            except StoreUnavailable:
                continue
