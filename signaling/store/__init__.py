"""Shared signaling state behind one interface: in process memory, or in Redis for several replicas."""

from voxa.signaling.store.base import (
    CallCommit,
    JoinResult,
    MediaLoad,
    MediaServer,
    MetaFrame,
    PresenceEntry,
    Store,
    StoredCall,
    StoreUnavailable,
)
from voxa.signaling.store.target import RedisTarget

__all__ = [
    "CallCommit",
    "JoinResult",
    "MediaLoad",
    "MediaServer",
    "MetaFrame",
    "PresenceEntry",
    "RedisTarget",
    "Store",
    "StoreUnavailable",
    "StoredCall",
    "create_store",
]


def create_store(redis: str | RedisTarget | None, replica_id: str, replica_ttl_s: float) -> Store:
    """A Redis store when `redis` names one (a URL, or a target: Sentinel, Cluster), else memory."""
    if redis:
        from voxa.signaling.store.redis import RedisStore

        return RedisStore(redis, replica_id, replica_ttl_s)
    from voxa.signaling.store.memory import MemoryStore

    return MemoryStore(replica_id, replica_ttl_s)
