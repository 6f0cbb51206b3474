"""The operator's view of each voice server's media-server registry in Redis.

Signaling owns the registry's key layout (`voxa.signaling.store.redis`); the operator reuses that
store class rather than spelling keys a second time. One connection pool per Redis target (a URL, a
cluster, a Sentinel set) is shared by every VoiceServer that uses it.
"""

from __future__ import annotations

import contextlib

from voxa.operator.scaling import PodLoad
from voxa.signaling.store.redis import RedisStore
from voxa.signaling.store.target import RedisTarget

_stores: dict[RedisTarget, RedisStore] = {}


def store(target: str | RedisTarget) -> RedisStore:
    key = RedisTarget(url=target) if isinstance(target, str) else target
    existing = _stores.get(key)
    if existing is None:
        existing = _stores[key] = RedisStore(key, replica_id="voxa-operator", replica_ttl_s=15.0)
    return existing


async def loads(url: str | RedisTarget, server_id: str) -> dict[str, PodLoad]:
    """Live SFUs of a voice server by id (= pod name). Raises StoreUnavailable."""
    servers = await store(url).media_servers(server_id)
    return {s.id: PodLoad(peers=s.load.peers, draining=s.draining) for s in servers}


async def mark_draining(url: str | RedisTarget, server_id: str, pod: str, draining: bool) -> None:
    await store(url).media_server_mark_draining(server_id, pod, draining)


async def purge(url: str | RedisTarget, server_id: str) -> int:
    return await store(url).purge_server(server_id)


async def close_all() -> None:
    for s in list(_stores.values()):
        with contextlib.suppress(Exception):
            await s.close()
    _stores.clear()
