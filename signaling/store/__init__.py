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

__all__ = [
    "CallCommit",
    "JoinResult",
    "MediaLoad",
    "MediaServer",
    "MetaFrame",
    "PresenceEntry",
    "Store",
    "StoreUnavailable",
    "StoredCall",
    "create_store",
]


def create_store(redis_url: str | None, replica_id: str, replica_ttl_s: float) -> Store:
    if redis_url:
        from voxa.signaling.store.redis import RedisStore

        return RedisStore(redis_url, replica_id, replica_ttl_s)
    from voxa.signaling.store.memory import MemoryStore

    return MemoryStore(replica_id, replica_ttl_s)
