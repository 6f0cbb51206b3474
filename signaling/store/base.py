"""The state store contract. Both backends pass one contract suite (tests/integration/test_store_contract.py).

Presence entries belong to the replica that holds the member's socket. Each replica refreshes a
liveness key; entries of a replica whose key expired are swept by any surviving replica, so a crashed
replica's participants disappear. Presence writes also publish a pre-encoded frame to the topic so
other replicas can hand it to their sockets unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from voxa.signaling.presence import Meta

RemoteHandler = Callable[[str, str], None]
"""Called with (topic, payload) for each message another replica published on a subscribed topic."""


def topic_server(topic: str) -> str:
    """The voice server a topic belongs to: its second ``:`` field (``voice:<server>:<channel>``,
    ``user:<server>:<user>``); a topic without one is its own. A store that shards (Redis Cluster) keeps
    a topic's presence and broadcasts with the rest of that server's state."""
    _, sep, rest = topic.partition(":")
    server, sep2, _rest = rest.partition(":")
    return server if sep and sep2 and server else topic


def index_server(index: str) -> str:
    """The voice server of a channel index: the index itself (voice channels), or what follows its
    last ``:`` (``users:<server>``, the devices' index)."""
    return index.rpartition(":")[2]


def check_topic(topic: str, index: str) -> None:
    """A topic and the index it is listed in belong to one voice server (every store enforces it, so
    a caller that would break Redis Cluster's one-slot scripts fails with the memory store too)."""
    if topic_server(topic) != index_server(index):
        raise ValueError(f"topic {topic!r} is not of the voice server of index {index!r}")


class StoreUnavailable(Exception):
    """The backend cannot be reached; callers answer `unavailable` and lose nothing already stored."""


@dataclass(slots=True, frozen=True)
class PresenceEntry:
    key: str
    meta: Meta


@dataclass(slots=True, frozen=True)
class MetaFrame:
    """A frame to publish around a meta that the store completes: ``prefix + json(meta) + suffix``.

    The store merges the member's persistent flags into the meta inside the same atomic step that
    stores it, so a join costs one round trip and never shows a server-muted user unmuted.
    """

    prefix: str
    suffix: str

    def render(self, meta_json: str) -> str:
        return self.prefix + meta_json + self.suffix


@dataclass(slots=True, frozen=True)
class JoinResult:
    entry: PresenceEntry
    """The stored entry, member flags merged in."""
    frame: str
    """The published frame, for local delivery."""
    entries: list[PresenceEntry]
    """Every entry of the topic after the join."""


class MediaLoad(BaseModel):
    """Live load an SFU reports with every heartbeat."""

    routers: int = Field(default=0, ge=0)
    peers: int = Field(default=0, ge=0)
    producers: int = Field(default=0, ge=0)
    consumers: int = Field(default=0, ge=0)
    packets_per_s: float = Field(default=0.0, ge=0)
    cpu: float = Field(default=0.0, ge=0, description="CPU use, 1.0 = one core.")


class MediaServer(BaseModel):
    """One SFU instance in the media-server registry."""

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    server_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    url: str = Field(min_length=1, max_length=512, description="Control API base URL.")
    capacity: int = Field(default=500, ge=1, description="Peers this SFU accepts.")
    draining: bool = Field(default=False, description="Reported by the SFU, or marked by the operator.")
    load: MediaLoad = Field(default_factory=MediaLoad)

    @property
    def utilisation(self) -> float:
        return self.load.peers / self.capacity


@dataclass(frozen=True)
class StoredCall:
    data: str
    """The call as `voxa.signaling.calls.encode` wrote it."""
    version: int


@dataclass(frozen=True)
class CallCommit:
    version: int | None
    """The version the transition read (None: a new call)."""
    data: str | None
    """The call after the transition; None deletes it (it ended)."""
    users: tuple[str, ...]
    """The call's members: their call index gains it, or loses it with the call."""
    due: float | None
    """When the call has a deadline next (wall-clock seconds), or None."""


MISSED_CALLS_KEPT = 20
"""Missed-call records kept per user."""
CALL_TTL_S = 12 * 3600
"""A safety net: a call untouched this long is dropped even if no replica ever ended it."""


class Store(abc.ABC):
    """What signaling keeps outside a single socket."""

    def __init__(self, replica_id: str, replica_ttl_s: float) -> None:
        if "|" in replica_id or "\x1f" in replica_id:
            raise ValueError("replica id must not contain '|'")
        self.replica_id = replica_id
        self.replica_ttl_s = replica_ttl_s
        self.on_remote: RemoteHandler = lambda topic, payload: None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; called once before use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""

    # --- replicas ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def replica_heartbeat(self) -> None:
        """Mark this replica alive for replica_ttl_s."""

    @abc.abstractmethod
    async def replica_remove(self) -> None:
        """Forget this replica (clean shutdown)."""

    # --- presence ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def presence_join(
        self,
        topic: str,
        index: str,
        entry: PresenceEntry,
        capacity: int,
        frame: MetaFrame,
        member: tuple[str, str] | None = None,
    ) -> JoinResult | None:
        """Add `entry` unless the topic already has `capacity` entries (None then) and publish `frame`
        around its meta. `member` (server id, user id) names persistent member flags (see member_set)
        that override the meta's fields of the same names. `index` names the voice server whose
        channel list the topic belongs to."""

    @abc.abstractmethod
    async def presence_leave(self, topic: str, index: str, ref: str, frame: str | None) -> None:
        """Remove this replica's entry `ref` and publish `frame`."""

    @abc.abstractmethod
    async def presence_update(self, topic: str, old_ref: str, entry: PresenceEntry, frame: str) -> None:
        """Replace this replica's entry `old_ref` by `entry` and publish `frame`."""

    @abc.abstractmethod
    async def presence_list(self, topic: str) -> list[PresenceEntry]:
        """Every live entry of the topic."""

    @abc.abstractmethod
    async def presence_sweep(self, topic: str, index: str) -> list[PresenceEntry]:
        """Remove and return the entries of replicas that are no longer alive."""

    @abc.abstractmethod
    async def presence_resync(self, topic: str, index: str, entries: list[PresenceEntry]) -> None:
        """Make this replica's entries of `topic` exactly `entries` (the backend lost or missed writes)."""

    @abc.abstractmethod
    async def channels(self, index: str) -> list[str]:
        """Topics of a voice server that have entries."""

    # --- broadcast --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def subscribe(self, topic: str) -> None:
        """Receive other replicas' messages on `topic` through `on_remote`."""

    @abc.abstractmethod
    async def unsubscribe(self, topic: str) -> None: ...

    @abc.abstractmethod
    async def publish(self, topic: str, payload: str) -> None:
        """Send `payload` to the other replicas subscribed to `topic`."""

    async def renew_broadcast(self) -> None:  # noqa: B027 - only a networked store has a connection
        """Start receiving other replicas' messages on a fresh connection. After an outage the old one
        may look alive and still deliver messages sent before the outage ended (a partition's TCP
        retransmissions), which would undo a resync; a new connection delivers only what follows."""

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        """`publish` of each (topic, payload), in order, in as few round trips as the backend can."""
        for topic, payload in messages:
            await self.publish(topic, payload)

    # --- per-member state of a voice server (server mute and deafen survive rejoins) ---------------
    @abc.abstractmethod
    async def member_get(self, server_id: str, user_id: str) -> dict[str, bool]: ...

    @abc.abstractmethod
    async def member_set(self, server_id: str, user_id: str, flags: dict[str, bool]) -> None: ...

    # --- media-server registry --------------------------------------------------------------------
    @abc.abstractmethod
    async def media_server_upsert(self, server: MediaServer, ttl_s: float) -> None:
        """Register or refresh an SFU; it expires unless refreshed within ttl_s."""

    @abc.abstractmethod
    async def media_server_remove(self, server_id: str, media_server_id: str) -> None: ...

    @abc.abstractmethod
    async def media_servers(self, server_id: str) -> list[MediaServer]:
        """Live SFUs of a voice server; `draining` includes the operator's mark."""

    @abc.abstractmethod
    async def media_server_mark_draining(self, server_id: str, media_server_id: str, draining: bool) -> None:
        """The operator's drain mark, kept apart from what the SFU reports so heartbeats do not undo it."""

    @abc.abstractmethod
    async def assignment_get(self, server_id: str, channel_id: str) -> str | None: ...

    @abc.abstractmethod
    async def assignment_set(
        self, server_id: str, channel_id: str, media_server_id: str, replace: str | None
    ) -> str:
        """Assign the channel unless another replica did first (then return theirs). `replace` names an
        assignment that may be overwritten (its SFU is gone)."""

    @abc.abstractmethod
    async def assignment_clear(self, server_id: str, channel_id: str) -> None: ...

    @abc.abstractmethod
    async def assignment_release_if_idle(self, server_id: str, channel_id: str, topic: str) -> bool:
        """Clear the assignment if `topic` has no presence entry, atomically; True when cleared."""

    # --- calls: one stored value per call, written by compare-and-set on its version ----------------
    @abc.abstractmethod
    async def call_get(self, server_id: str, call_id: str) -> StoredCall | None: ...

    @abc.abstractmethod
    async def call_commit(self, server_id: str, call_id: str, commit: CallCommit) -> int | None:
        """Write the call (or delete it when `commit.data` is None) if its version is still
        `commit.version` (None: it must not exist yet), index it under each of `commit.users` and
        schedule it at `commit.due`, all at once. Returns the new version, or None when another
        replica changed the call first (read it again and redo the transition)."""

    @abc.abstractmethod
    async def calls_of(self, server_id: str, user_id: str) -> list[str]:
        """Ids of the calls `user_id` is part of."""

    @abc.abstractmethod
    async def calls_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """(server id, call id) of calls whose next deadline is at or before `now` (wall-clock
        seconds), for any replica to expire."""

    @abc.abstractmethod
    async def missed_add(self, server_id: str, user_id: str, record: str, ttl_s: float) -> None:
        """Keep a missed-call record for a while (the newest first, a bounded number)."""

    @abc.abstractmethod
    async def missed_list(self, server_id: str, user_id: str) -> list[str]: ...

    # --- push: device registrations per voice server and user, and the devices rung for a call --------
    @abc.abstractmethod
    async def push_device_put(self, server_id: str, user_id: str, key: str, record: str, cap: int) -> bool:
        """Keep a push registration under `key` (replacing the one of that key) unless the user holds
        `cap` registrations of other keys already; False then, and nothing changes. Registrations
        do not expire: they go when the device deletes them or a push service says it is gone."""

    @abc.abstractmethod
    async def push_device_remove(self, server_id: str, user_id: str, keys: list[str]) -> int:
        """Forget these registrations; returns how many there were."""

    @abc.abstractmethod
    async def push_devices(self, server_id: str, user_id: str) -> dict[str, str]:
        """Every registration of the user, by key."""

    @abc.abstractmethod
    async def push_rung_set(
        self, server_id: str, call_id: str, user_id: str, record: str, ttl_s: float
    ) -> None:
        """Remember which devices of a user were pushed a ring for a call, for ttl_s, so whichever
        replica ends the ring sends them the follow-up."""

    @abc.abstractmethod
    async def push_rung_take(self, server_id: str, call_id: str, user_id: str) -> str | None:
        """Return and forget that record at once: one replica, once, sends the follow-ups."""

    # --- voice sessions that a reconnecting client may resume (docs/store.md) -----------------------
    @abc.abstractmethod
    async def session_put(
        self, server_id: str, session_id: str, user_id: str, channel_id: str, token_hash: str, ttl_s: float
    ) -> None:
        """Record a voice session owned by this replica: who may resume it (`user_id`, in
        `channel_id`, proving it with the token whose SHA-256 is `token_hash`). It expires after ttl_s
        unless refreshed, so a crashed replica leaks nothing."""

    @abc.abstractmethod
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
        """Resume: atomically, if the session exists for this user and channel and its token hash is
        `token_hash`, make this replica its owner with `new_token_hash` (the token rotates) and a fresh
        ttl_s; True then. Anything else changes nothing and is False."""

    @abc.abstractmethod
    async def session_refresh(self, server_id: str, session_ids: Sequence[str], ttl_s: float) -> None:
        """Extend the TTL of those sessions this replica still owns (one round trip per server)."""

    @abc.abstractmethod
    async def session_release(self, server_id: str, session_id: str, token_hash: str) -> bool:
        """Delete the session if this replica still owns it with this token hash (compare-and-delete);
        True when it did. False means a resume took it over (elsewhere, or here with a rotated
        token) or it expired: its SFU peer is not ours to remove."""

    @abc.abstractmethod
    async def presence_evict_session(
        self, topic: str, index: str, session_id: str, keep_ref: str
    ) -> list[PresenceEntry]:
        """Remove and return the entries of `topic` (of any replica) whose meta's `session_id` is
        `session_id`, except this replica's `keep_ref`: a resumed session's entry that its dead
        replica left behind, so presence does not show it twice until the sweep."""

    @abc.abstractmethod
    async def purge_server(self, server_id: str) -> int:
        """Forget a deleted voice server: presence, member flags, registry, drain marks, assignments,
        calls and push registrations.
        Returns how many keys (or entries) went. The operator's finalizer calls this."""

    def stats(self) -> dict[str, Any]:
        return {}
