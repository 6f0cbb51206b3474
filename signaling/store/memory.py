"""In-process store: the default for `make demo` and development.

Several MemoryStore instances may share one MemoryBackend; they then behave like replicas sharing a
Redis (the contract suite uses this), which keeps the two backends' semantics identical.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from voxa.signaling.store.base import (
    MISSED_CALLS_KEPT,
    CallCommit,
    JoinResult,
    MediaServer,
    MetaFrame,
    PresenceEntry,
    Store,
    StoredCall,
    check_topic,
)


@dataclass
class SessionRecord:
    """A resumable voice session (what the Redis store keeps in ``voxa:{S}:session:<id>``)."""

    user: str
    channel: str
    token_hash: str
    owner: str
    expires: float


@dataclass
class MemoryBackend:
    clock: Callable[[], float] = time.monotonic
    replicas: dict[str, float] = field(default_factory=dict)  # replica -> expires at
    presence: dict[str, dict[tuple[str, str], PresenceEntry]] = field(
        default_factory=dict
    )  # topic -> (replica, ref)
    indexes: dict[str, set[str]] = field(default_factory=dict)
    subscribers: dict[str, dict[str, MemoryStore]] = field(default_factory=dict)  # topic -> replica -> store
    members: dict[tuple[str, str], dict[str, bool]] = field(default_factory=dict)
    media: dict[str, dict[str, tuple[MediaServer, float]]] = field(default_factory=dict)
    drain_marks: set[tuple[str, str]] = field(default_factory=set)
    assignments: dict[tuple[str, str], str] = field(default_factory=dict)
    calls: dict[tuple[str, str], StoredCall] = field(default_factory=dict)
    user_calls: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    calls_due: dict[tuple[str, str], float] = field(default_factory=dict)
    missed: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)  # (expires, record)
    wall_clock: Callable[[], float] = time.time
    push_devices: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    push_rung: dict[tuple[str, str, str], tuple[float, str]] = field(
        default_factory=dict
    )  # (expires, record)
    sessions: dict[tuple[str, str], SessionRecord] = field(default_factory=dict)  # (server, session)

    def alive(self, replica: str) -> bool:
        return self.replicas.get(replica, 0.0) > self.clock()


class MemoryStore(Store):
    def __init__(self, replica_id: str, replica_ttl_s: float, backend: MemoryBackend | None = None) -> None:
        super().__init__(replica_id, replica_ttl_s)
        self.backend = backend or MemoryBackend()

    async def ping(self) -> None:
        return None

    async def replica_heartbeat(self) -> None:
        self.backend.replicas[self.replica_id] = self.backend.clock() + self.replica_ttl_s

    async def replica_remove(self) -> None:
        self.backend.replicas.pop(self.replica_id, None)

    def _publish(self, topic: str, payload: str) -> None:
        for replica, store in list(self.backend.subscribers.get(topic, {}).items()):
            if replica != self.replica_id:
                store.on_remote(topic, payload)

    def _index(self, topic: str, index: str) -> None:
        check_topic(topic, index)
        if self.backend.presence.get(topic):
            self.backend.indexes.setdefault(index, set()).add(topic)
        else:
            self.backend.presence.pop(topic, None)
            topics = self.backend.indexes.get(index)
            if topics is not None:
                topics.discard(topic)
                if not topics:
                    del self.backend.indexes[index]

    def _sweep(self, topic: str) -> list[PresenceEntry]:
        entries = self.backend.presence.get(topic, {})
        dead = [k for k in entries if not self.backend.alive(k[0])]
        return [entries.pop(k) for k in dead]

    async def presence_join(
        self,
        topic: str,
        index: str,
        entry: PresenceEntry,
        capacity: int,
        frame: MetaFrame,
        member: tuple[str, str] | None = None,
    ) -> JoinResult | None:
        entries = self.backend.presence.setdefault(topic, {})
        if len(entries) >= capacity:
            self._sweep(topic)
            if len(entries) >= capacity:
                self._index(topic, index)
                return None
        flags = self.backend.members.get(member, {}) if member is not None else {}
        if flags:
            entry = PresenceEntry(entry.key, {**entry.meta, **flags})
        entries[(self.replica_id, entry.meta["phx_ref"])] = entry
        self._index(topic, index)
        text = frame.render(orjson.dumps(entry.meta).decode())
        self._publish(topic, text)
        return JoinResult(entry, text, list(entries.values()))

    async def presence_leave(self, topic: str, index: str, ref: str, frame: str | None) -> None:
        self.backend.presence.get(topic, {}).pop((self.replica_id, ref), None)
        self._index(topic, index)
        if frame is not None:
            self._publish(topic, frame)

    async def presence_update(self, topic: str, old_ref: str, entry: PresenceEntry, frame: str) -> None:
        entries = self.backend.presence.setdefault(topic, {})
        entries.pop((self.replica_id, old_ref), None)
        entries[(self.replica_id, entry.meta["phx_ref"])] = entry
        self._publish(topic, frame)

    async def presence_list(self, topic: str) -> list[PresenceEntry]:
        return [
            e
            for (replica, _), e in self.backend.presence.get(topic, {}).items()
            if self.backend.alive(replica)
        ]

    async def presence_sweep(self, topic: str, index: str) -> list[PresenceEntry]:
        removed = self._sweep(topic)
        self._index(topic, index)
        return removed

    async def presence_resync(self, topic: str, index: str, entries: list[PresenceEntry]) -> None:
        current = self.backend.presence.setdefault(topic, {})
        for k in [k for k in current if k[0] == self.replica_id]:
            del current[k]
        for entry in entries:
            current[(self.replica_id, entry.meta["phx_ref"])] = entry
        self._index(topic, index)

    async def channels(self, index: str) -> list[str]:
        return sorted(self.backend.indexes.get(index, ()))

    async def subscribe(self, topic: str) -> None:
        self.backend.subscribers.setdefault(topic, {})[self.replica_id] = self

    async def unsubscribe(self, topic: str) -> None:
        subs = self.backend.subscribers.get(topic)
        if subs is not None:
            subs.pop(self.replica_id, None)
            if not subs:
                del self.backend.subscribers[topic]

    async def publish(self, topic: str, payload: str) -> None:
        self._publish(topic, payload)

    async def member_get(self, server_id: str, user_id: str) -> dict[str, bool]:
        return dict(self.backend.members.get((server_id, user_id), {}))

    async def member_set(self, server_id: str, user_id: str, flags: dict[str, bool]) -> None:
        self.backend.members.setdefault((server_id, user_id), {}).update(flags)

    async def media_server_upsert(self, server: MediaServer, ttl_s: float) -> None:
        self.backend.media.setdefault(server.server_id, {})[server.id] = (
            server,
            self.backend.clock() + ttl_s,
        )

    async def media_server_remove(self, server_id: str, media_server_id: str) -> None:
        self.backend.media.get(server_id, {}).pop(media_server_id, None)
        self.backend.drain_marks.discard((server_id, media_server_id))

    async def media_servers(self, server_id: str) -> list[MediaServer]:
        now = self.backend.clock()
        servers = self.backend.media.get(server_id, {})
        for gone in [i for i, (_, exp) in servers.items() if exp <= now]:
            del servers[gone]
        out = []
        for ms, _ in servers.values():
            marked = (server_id, ms.id) in self.backend.drain_marks and not ms.draining
            out.append(ms.model_copy(update={"draining": True}) if marked else ms)
        return sorted(out, key=lambda m: m.id)

    async def media_server_mark_draining(self, server_id: str, media_server_id: str, draining: bool) -> None:
        mark = (server_id, media_server_id)
        if draining:
            self.backend.drain_marks.add(mark)
        else:
            self.backend.drain_marks.discard(mark)

    async def assignment_get(self, server_id: str, channel_id: str) -> str | None:
        return self.backend.assignments.get((server_id, channel_id))

    async def assignment_set(
        self, server_id: str, channel_id: str, media_server_id: str, replace: str | None
    ) -> str:
        key = (server_id, channel_id)
        current = self.backend.assignments.get(key)
        if current is None or current == replace:
            self.backend.assignments[key] = media_server_id
            return media_server_id
        return current

    async def assignment_clear(self, server_id: str, channel_id: str) -> None:
        self.backend.assignments.pop((server_id, channel_id), None)

    async def assignment_release_if_idle(self, server_id: str, channel_id: str, topic: str) -> bool:
        check_topic(topic, server_id)
        if self.backend.presence.get(topic):
            return False
        self.backend.assignments.pop((server_id, channel_id), None)
        return True

    async def call_get(self, server_id: str, call_id: str) -> StoredCall | None:
        return self.backend.calls.get((server_id, call_id))

    async def call_commit(self, server_id: str, call_id: str, commit: CallCommit) -> int | None:
        b = self.backend
        key = (server_id, call_id)
        current = b.calls.get(key)
        if (current.version if current else None) != commit.version:
            return None
        version = (current.version if current else 0) + 1
        if commit.data is None:
            b.calls.pop(key, None)
            b.calls_due.pop(key, None)
            for user in commit.users:
                ids = b.user_calls.get((server_id, user))
                if ids is not None:
                    ids.discard(call_id)
                    if not ids:
                        del b.user_calls[(server_id, user)]
            return version
        b.calls[key] = StoredCall(commit.data, version)
        for user in commit.users:
            b.user_calls.setdefault((server_id, user), set()).add(call_id)
        if commit.due is None:
            b.calls_due.pop(key, None)
        else:
            b.calls_due[key] = commit.due
        return version

    async def calls_of(self, server_id: str, user_id: str) -> list[str]:
        return sorted(self.backend.user_calls.get((server_id, user_id), ()))

    async def calls_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        due = sorted((at, key) for key, at in self.backend.calls_due.items() if at <= now)
        return [key for _, key in due[:limit]]

    async def missed_add(self, server_id: str, user_id: str, record: str, ttl_s: float) -> None:
        kept = self.backend.missed.setdefault((server_id, user_id), [])
        kept.insert(0, (self.backend.wall_clock() + ttl_s, record))
        del kept[MISSED_CALLS_KEPT:]

    async def missed_list(self, server_id: str, user_id: str) -> list[str]:
        now = self.backend.wall_clock()
        return [
            record for expires, record in self.backend.missed.get((server_id, user_id), []) if expires > now
        ]

    async def push_device_put(self, server_id: str, user_id: str, key: str, record: str, cap: int) -> bool:
        held = self.backend.push_devices.setdefault((server_id, user_id), {})
        if key not in held and len(held) >= cap:
            if not held:
                del self.backend.push_devices[(server_id, user_id)]
            return False
        held[key] = record
        return True

    async def push_device_remove(self, server_id: str, user_id: str, keys: list[str]) -> int:
        held = self.backend.push_devices.get((server_id, user_id), {})
        gone = sum(held.pop(key, None) is not None for key in keys)
        if not held:
            self.backend.push_devices.pop((server_id, user_id), None)
        return gone

    async def push_devices(self, server_id: str, user_id: str) -> dict[str, str]:
        return dict(self.backend.push_devices.get((server_id, user_id), {}))

    async def push_rung_set(
        self, server_id: str, call_id: str, user_id: str, record: str, ttl_s: float
    ) -> None:
        self.backend.push_rung[(server_id, call_id, user_id)] = (self.backend.wall_clock() + ttl_s, record)

    async def push_rung_take(self, server_id: str, call_id: str, user_id: str) -> str | None:
        found = self.backend.push_rung.pop((server_id, call_id, user_id), None)
        if found is None or found[0] <= self.backend.wall_clock():
            return None
        return found[1]

    def _session(self, server_id: str, session_id: str) -> SessionRecord | None:
        record = self.backend.sessions.get((server_id, session_id))
        if record is not None and record.expires <= self.backend.clock():
            del self.backend.sessions[(server_id, session_id)]
            return None
        return record

    async def session_put(
        self, server_id: str, session_id: str, user_id: str, channel_id: str, token_hash: str, ttl_s: float
    ) -> None:
        expires = self.backend.clock() + ttl_s
        record = SessionRecord(user_id, channel_id, token_hash, self.replica_id, expires)
        self.backend.sessions[(server_id, session_id)] = record

    async def session_take(
        self,
        server_id: str,
        session_id: str,
        user_id: str,
        channel_id: str,
        token_hash: str,
        new_token_hash: str,
        ttl_s: float,
    ) -> bool:
        record = self._session(server_id, session_id)
        if (
            record is None
            or record.user != user_id
            or record.channel != channel_id
            or not hmac.compare_digest(record.token_hash, token_hash)
        ):
            return False
        record.token_hash, record.owner = new_token_hash, self.replica_id
        record.expires = self.backend.clock() + ttl_s
        return True

    async def session_refresh(self, server_id: str, session_ids: Sequence[str], ttl_s: float) -> None:
        for session_id in session_ids:
            record = self._session(server_id, session_id)
            if record is not None and record.owner == self.replica_id:
                record.expires = self.backend.clock() + ttl_s

    async def session_release(self, server_id: str, session_id: str, token_hash: str) -> bool:
        record = self._session(server_id, session_id)
        if record is None or record.owner != self.replica_id or record.token_hash != token_hash:
            return False
        del self.backend.sessions[(server_id, session_id)]
        return True

    async def presence_evict_session(
        self, topic: str, index: str, session_id: str, keep_ref: str
    ) -> list[PresenceEntry]:
        entries = self.backend.presence.get(topic, {})
        found = [
            k
            for k, e in entries.items()
            if e.meta.get("session_id") == session_id and k != (self.replica_id, keep_ref)
        ]
        removed = [entries.pop(k) for k in found]
        self._index(topic, index)
        return removed

    async def purge_server(self, server_id: str) -> int:
        b = self.backend
        gone = 0
        tables: tuple[dict[tuple[str, str], Any], ...] = (b.calls, b.user_calls, b.calls_due, b.missed)
        for table in tables:
            for key in [k for k in table if k[0] == server_id]:
                del table[key]
                gone += 1
        for push_table in (b.push_devices, b.push_rung):
            for push_key in [k for k in push_table if k[0] == server_id]:
                del push_table[push_key]  # type: ignore[arg-type]
                gone += 1
        for topic in b.indexes.pop(server_id, set()):
            gone += b.presence.pop(topic, None) is not None
            b.subscribers.pop(topic, None)
        for table in (b.members, b.assignments):
            for key in [k for k in table if k[0] == server_id]:
                del table[key]
                gone += 1
        for session_key in [k for k in b.sessions if k[0] == server_id]:
            del b.sessions[session_key]
            gone += 1
        gone += len(b.media.pop(server_id, {}))
        marks = {m for m in b.drain_marks if m[0] == server_id}
        b.drain_marks -= marks
        return gone + len(marks)
