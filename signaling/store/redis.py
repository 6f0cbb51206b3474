"""Redis store: presence, broadcast, member state and the media-server registry shared by replicas.

One key layout serves a single Redis, a primary found through Sentinel and a Redis Cluster
(`voxa.signaling.store.target.RedisTarget`). Every key of a voice server carries its hash tag
``{<server>}``, so each Lua script touches one slot and names every key it touches in KEYS; the few
keys that span servers have tags of their own. ``S`` below is a voice server id; a topic's server is
`topic_server(topic)` (``voice:S:<channel>``, ``user:S:<user>``), an index's `index_server(index)`.

  voxa:{replicas}:<replica>       liveness of a signaling replica (PX replica_ttl); one slot, so a
                                  presence read checks every replica of a topic in one MGET
  voxa:{calls}:servers            set of the voice servers that have scheduled calls (calls_due reads it)
  voxa:{S}:presence:<topic>       hash "<replica>|<phx_ref>" -> JSON [key, meta]
  voxa:{S}:subs:<topic>           set of the replicas subscribed to the topic
  voxa:{S}:bc:<topic>             pub/sub channel: "<origin replica>\\x1f<payload>" (sharded on a cluster)
  voxa:{S}:channels:<index>       set of topics with presence (index = S, or users:S for user topics)
  voxa:{S}:member:<user>          hash of persistent member flags (server_muted, server_deafened)
  voxa:{S}:ms                     set of media-server ids; voxa:{S}:ms:<id> JSON (PX ttl)
  voxa:{S}:drain:<id>             the operator's drain mark
  voxa:{S}:assign:<channel>       the SFU a channel is assigned to
  voxa:{S}:call:<call>            hash {v: version, d: the call as JSON}
  voxa:{S}:ucalls:<user>          set of the ids of the calls a user is part of
  voxa:{S}:calldue                sorted set of call ids by next deadline (any replica expires)
  voxa:{S}:missed:<user>          list of recent missed-call records (newest first, EX ttl)
  voxa:{S}:pushdev:<user>         hash "<device>|<kind>" -> a push registration (JSON), no expiry
  voxa:{S}:pushrung:<call>:<user> the devices pushed a ring for that call (JSON, EX ttl)

Whether a presence entry's replica is alive is read outside the scripts (the liveness keys live in
another slot): a sweep reads the topic's fields and the replicas' keys, then removes exactly the fields
it found dead in one script; a join into a full topic does the same before its second attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError
from redis.retry import Retry

from voxa.signaling.store.base import (
    CALL_TTL_S,
    MISSED_CALLS_KEPT,
    CallCommit,
    JoinResult,
    MediaServer,
    MetaFrame,
    PresenceEntry,
    Store,
    StoredCall,
    StoreUnavailable,
    check_topic,
    index_server,
    topic_server,
)
from voxa.signaling.store.target import RedisTarget

log = logging.getLogger("voxa.signaling.store")
SEP = "\x1f"
ASSIGNMENT_TTL_S = 86400
POOL_SIZE = 64
CALL_TIMEOUT_S = 2.0
MEMBER_TTL_S = 30 * 86400
CALL_SERVERS = "voxa:{calls}:servers"


def server_tag(server: str) -> str:
    """The prefix of every key of a voice server: ``voxa:{<server>}``."""
    if "{" in server or "}" in server or not server:
        raise ValueError(f"a voice server id cannot be a hash tag: {server!r}")
    return f"voxa:{{{server}}}"


def replica_key(replica: str) -> str:
    return f"voxa:{{replicas}}:{replica}"


def presence_key(topic: str) -> str:
    return f"{server_tag(topic_server(topic))}:presence:{topic}"


def subs_key(topic: str) -> str:
    return f"{server_tag(topic_server(topic))}:subs:{topic}"


def broadcast_channel(topic: str) -> str:
    return f"{server_tag(topic_server(topic))}:bc:{topic}"


def channels_key(index: str) -> str:
    return f"{server_tag(index_server(index))}:channels:{index}"


def _topic_of_channel(channel: str) -> str | None:
    # voxa:{S}:bc:<topic>; S holds no '}', so the first "}:bc:" ends the prefix.
    if not channel.startswith("voxa:{"):
        return None
    _, sep, topic = channel.partition("}:bc:")
    return topic if sep else None


# Publishes only when a replica other than the sender listens on the topic (the subs set, a declared
# key, holds the subscribed replicas), so a lone replica does not receive its own broadcasts back.
# PUBLISH becomes SPUBLISH on a cluster: the channel shares the server's slot.
_PUBLISH_LUA = """
local function publish_to_others(subs, channel, rid, message)
  local n = redis.call('SCARD', subs)
  if n == 0 or (n == 1 and redis.call('SISMEMBER', subs, rid) == 1) then return 0 end
  return redis.call('PUBLISH', channel, message)
end
"""

# KEYS: subs. ARGV: channel, replica, message.
PUBLISH_LUA = _PUBLISH_LUA + "return publish_to_others(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"

# KEYS: the subs set of each message's topic. ARGV: replica, then channel and message of each.
PUBLISH_MANY_LUA = (
    _PUBLISH_LUA
    + """
local n = 0
for i = 1, #KEYS do n = n + publish_to_others(KEYS[i], ARGV[2 * i], ARGV[1], ARGV[2 * i + 1]) end
return n
"""
)

# KEYS: presence hash, index set, subs set, then the member hash (absent when none).
# ARGV: field, key as JSON, meta as JSON, capacity, topic, replica, message prefix, message suffix,
# channel, then fields of dead replicas to remove first.
# The member hash's fields ('1'/'0') override the meta's. Returns {1, meta, all entries}, or, when the
# topic is full, {0, every field} (the caller finds the dead ones and tries again).
JOIN_LUA = (
    _PUBLISH_LUA
    + """
for i = 10, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
local cap = tonumber(ARGV[4])
if redis.call('HLEN', KEYS[1]) >= cap then return {0, redis.call('HKEYS', KEYS[1])} end
local meta = ARGV[3]
if #KEYS >= 4 then
  local flags = redis.call('HGETALL', KEYS[4])
  if #flags > 0 then
    local m = cjson.decode(meta)
    for i = 1, #flags, 2 do m[flags[i]] = (flags[i + 1] == '1') end
    meta = cjson.encode(m)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], '[' .. ARGV[2] .. ',' .. meta .. ']')
redis.call('SADD', KEYS[2], ARGV[5])
publish_to_others(KEYS[3], ARGV[9], ARGV[6], ARGV[7] .. meta .. ARGV[8])
return {1, meta, redis.call('HVALS', KEYS[1])}
"""
)

# KEYS: presence hash, index set, subs set. ARGV: field, topic, replica, message ('' for none), channel.
LEAVE_LUA = (
    _PUBLISH_LUA
    + """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
if ARGV[4] ~= '' then publish_to_others(KEYS[3], ARGV[5], ARGV[3], ARGV[4]) end
return 1
"""
)

# KEYS: presence hash, subs set. ARGV: old field, new field, value, replica, message, channel.
UPDATE_LUA = (
    _PUBLISH_LUA
    + """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
publish_to_others(KEYS[2], ARGV[6], ARGV[4], ARGV[5])
return 1
"""
)

# KEYS: presence hash, index set. ARGV: topic, then the fields of dead replicas. Returns their values.
SWEEP_LUA = """
local removed = {}
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    table.insert(removed, v)
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return removed
"""

# KEYS: presence hash, index set. ARGV: "<replica>|", topic, then field/value pairs.
RESYNC_LUA = """
local prefix = ARGV[1]
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2])
else redis.call('SADD', KEYS[2], ARGV[2]) end
return 1
"""


# KEYS: assignment. ARGV: new SFU, the stale SFU that may be replaced, ttl.
ASSIGN_REPLACE_LUA = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return ARGV[1]
end
return v
"""


CALL_COMMIT_LUA = """
-- KEYS: call hash, the server's due set, then the members' call indexes.
-- ARGV: expected version ('' = new call), data ('' = delete), due ('' = none), call id, ttl.
local v = redis.call('HGET', KEYS[1], 'v')
if (ARGV[1] == '' and v) or (ARGV[1] ~= '' and v ~= ARGV[1]) then
  return false
end
local version = (tonumber(v) or 0) + 1
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  for i = 3, #KEYS do redis.call('SREM', KEYS[i], ARGV[4]) end
  return version
end
redis.call('HSET', KEYS[1], 'v', version, 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[4])
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
end
return version
"""

# KEYS: presence hash, assignment.
RELEASE_IF_IDLE_LUA = """
if redis.call('HLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""

MISSED_ADD_LUA = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""

PUSH_DEVICE_PUT_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: member hash. ARGV: ttl, then field/value pairs.
MEMBER_SET_LUA = """
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
"""

# KEYS: the server's SFU set, this SFU's record. ARGV: id, record, ttl ms.
MS_UPSERT_LUA = """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
"""

# KEYS: the server's SFU set, this SFU's record, its drain mark. ARGV: id.
MS_REMOVE_LUA = """
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[1], ARGV[1])
"""


# A resumable voice session: KEYS: its hash (u user, c channel, h token hash, o owner replica).
# ARGV: user, channel, token hash, owner, ttl ms.
SESSION_PUT_LUA = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'c', ARGV[2], 'h', ARGV[3], 'o', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
"""

# KEYS: the session. ARGV: user, channel, token hash, new token hash, new owner, ttl ms.
SESSION_TAKE_LUA = """
local v = redis.call('HMGET', KEYS[1], 'u', 'c', 'h')
if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] or v[3] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'h', ARGV[4], 'o', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""

# KEYS: sessions of one voice server (one slot). ARGV: owner, ttl ms.
SESSION_REFRESH_LUA = """
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'o') == ARGV[1] then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
"""

# KEYS: the session. ARGV: owner, token hash. Compare-and-delete.
SESSION_RELEASE_LUA = """
local v = redis.call('HMGET', KEYS[1], 'o', 'h')
if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def _decode_entry(raw: str | bytes) -> PresenceEntry:
    key, meta = orjson.loads(raw)
    return PresenceEntry(key, meta)


def _encode_entry(entry: PresenceEntry) -> str:
    return orjson.dumps([entry.key, entry.meta]).decode()


def _replica_of(field: str) -> str:
    return field.rpartition("|")[0]


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The primary's pool as Sentinel names it, waiting for a free connection like the single-Redis pool."""


def _client(target: RedisTarget) -> aioredis.Redis | RedisCluster:
    # Timeouts are one asyncio.timeout per call in _call (redis-py's socket_timeout costs a Task per
    # command), and the hub's probe replaces redis-py's per-command health checks.
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 1.0,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
    }
    if target.sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
            list(target.sentinels),
            sentinel_kwargs={
                "password": target.sentinel_password,
                "socket_connect_timeout": 1.0,
                "socket_timeout": 1.0,
            },
            password=target.password,
            **common,
        )
        # A blocking pool: a burst of joins waits for a connection instead of failing. On a failover
        # the pool asks the Sentinels again; a connection to the demoted primary fails its next write
        # (READONLY) and is dropped.
        primary: aioredis.Redis = sentinel.master_for(
            target.sentinel_master or "",
            connection_pool_class=_BlockingSentinelPool,
            max_connections=POOL_SIZE,
            timeout=CALL_TIMEOUT_S,
        )
        return primary
    assert target.url is not None
    if target.cluster:
        return RedisCluster.from_url(target.url, max_connections=POOL_SIZE, **common)
    pool = aioredis.BlockingConnectionPool.from_url(
        target.url, max_connections=POOL_SIZE, timeout=CALL_TIMEOUT_S, **common
    )
    return aioredis.Redis(connection_pool=pool)


class _Subscriber:
    """Regular pub/sub on one connection (a single Redis, or the primary Sentinel names)."""

    def __init__(self, redis: aioredis.Redis, keepalive_channel: str, on_message: Callable[[str, str], None]):
        self._pubsub: PubSub = redis.pubsub(ignore_subscribe_messages=True)
        self._keepalive = keepalive_channel
        self._on_message = on_message

    async def connect(self, channels: Iterable[str]) -> None:
        # The replica's own channel keeps the connection subscribed while it has no topics.
        await self._pubsub.subscribe(self._keepalive, *channels)

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._pubsub.unsubscribe(channel)

    async def run(self, closed: Callable[[], bool]) -> None:
        while not closed():
            message = await self._pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                self._on_message(message["channel"], message["data"])

    async def aclose(self) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]


class _ShardedSubscriber:
    """Sharded pub/sub on a cluster: SSUBSCRIBE on one connection per primary that owns a subscribed
    channel's slot, each read by its own task (redis-py's ClusterPubSub reads its nodes in turn, so a
    message would wait for the other nodes' read timeouts). A channel whose slot moves (Redis sends an
    unasked SUNSUBSCRIBE) or a lost node connection fails `run`, and the store builds a new subscriber
    from a fresh slot map."""

    def __init__(self, cluster: RedisCluster, on_message: Callable[[str, str], None], refresh: bool) -> None:
        self._cluster = cluster
        self._refresh = refresh
        self._on_message = on_message
        self._nodes: dict[str, tuple[aioredis.Redis, PubSub]] = {}
        self._wanted: set[str] = set()
        self._leaving: dict[str, int] = defaultdict(int)  # our own SUNSUBSCRIBEs not yet confirmed
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _pubsub_for(self, channel: str) -> PubSub:
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise ConnectionError(f"no node serves {channel}")
        found = self._nodes.get(node.name)
        if found is None:
            kwargs = {k: v for k, v in node.connection_kwargs.items() if k != "event_dispatcher"}
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, max_connections=2, **kwargs
            )
            client = aioredis.Redis(connection_pool=pool)
            found = self._nodes[node.name] = (client, client.pubsub())
        return found[1]

    def _start_reader(self, name: str, pubsub: PubSub) -> None:
        if name not in self._readers:
            task = asyncio.create_task(self._read(pubsub), name=f"voxa-redis-shard-{name}")
            self._readers[name] = task
            task.add_done_callback(self._reader_done)

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if self._failed.done():
            return
        if task.cancelled():
            self._failed.set_exception(ConnectionError("shard reader cancelled"))
        else:
            self._failed.set_exception(task.exception() or ConnectionError("shard reader ended"))

    async def connect(self, channels: Iterable[str]) -> None:
        await self._cluster.initialize()
        if self._refresh:  # a fresh slot map after a failover or a resharding
            await self._cluster.nodes_manager.initialize()
        by_slot: dict[int, list[str]] = defaultdict(list)
        for channel in channels:
            by_slot[key_slot(channel.encode())].append(channel)
        for group in by_slot.values():  # SSUBSCRIBE takes channels of one slot
            self._wanted.update(group)
            await self._pubsub_for(group[0]).ssubscribe(*group)
        self._start_all()

    def _start_all(self) -> None:
        for name, (_, pubsub) in self._nodes.items():
            if pubsub.subscribed:
                self._start_reader(name, pubsub)

    async def subscribe(self, channel: str) -> None:
        self._wanted.add(channel)
        await self._pubsub_for(channel).ssubscribe(channel)
        self._start_all()

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._leaving[channel] += 1
        await self._pubsub_for(channel).sunsubscribe(channel)

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "smessage":
                self._on_message(channel, message["data"])
            elif kind == "sunsubscribe":
                if self._leaving.get(channel, 0) > 0:
                    self._leaving[channel] -= 1
                    if not self._leaving[channel]:
                        del self._leaving[channel]
                elif channel in self._wanted:
                    raise ConnectionError(f"shard channel {channel} moved")

    async def run(self, closed: Callable[[], bool]) -> None:
        while not closed():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._failed)

    async def aclose(self) -> None:
        for task in self._readers.values():
            task.cancel()
        for task in self._readers.values():
            with contextlib.suppress(BaseException):
                await task
        if not self._failed.done():
            self._failed.cancel()
        with contextlib.suppress(BaseException):
            self._failed.exception()
        for client, pubsub in self._nodes.values():
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            with contextlib.suppress(Exception):
                await client.aclose()
        self._nodes.clear()


class RedisStore(Store):
    def __init__(self, target: str | RedisTarget, replica_id: str, replica_ttl_s: float) -> None:
        super().__init__(replica_id, replica_ttl_s)
        self.target = RedisTarget(url=target) if isinstance(target, str) else target
        self._redis: Any = _client(self.target)
        self._cluster = self.target.cluster
        publish = "SPUBLISH" if self._cluster else "PUBLISH"

        def script(source: str) -> Any:
            return self._redis.register_script(source.replace("'PUBLISH'", f"'{publish}'"))

        self._join = script(JOIN_LUA)
        self._leave = script(LEAVE_LUA)
        self._update = script(UPDATE_LUA)
        self._sweep = script(SWEEP_LUA)
        self._resync = script(RESYNC_LUA)
        self._publish = script(PUBLISH_LUA)
        self._publish_many = script(PUBLISH_MANY_LUA)
        self._call_commit = script(CALL_COMMIT_LUA)
        self._release_if_idle = script(RELEASE_IF_IDLE_LUA)
        self._missed_add = script(MISSED_ADD_LUA)
        self._assign_replace = script(ASSIGN_REPLACE_LUA)
        self._push_device_put = script(PUSH_DEVICE_PUT_LUA)
        self._member_set = script(MEMBER_SET_LUA)
        self._ms_upsert = script(MS_UPSERT_LUA)
        self._ms_remove = script(MS_REMOVE_LUA)
        self._session_put = script(SESSION_PUT_LUA)
        self._session_take = script(SESSION_TAKE_LUA)
        self._session_refresh = script(SESSION_REFRESH_LUA)
        self._session_release = script(SESSION_RELEASE_LUA)
        self._topics: set[str] = set()
        self._left_unrecorded: set[str] = set()
        """Topics left while the store was out: our id is still in their subs sets until a reconnect
        removes it (else the set, and its key, would name this live replica for ever)."""
        self._subscriber: _Subscriber | _ShardedSubscriber | None = None
        self._pubsub_lock = asyncio.Lock()
        self._pubsub_task: asyncio.Task[None] | None = None
        self._closed = False
        self._replica_channel = f"voxa:replica-bc:{replica_id}"

    async def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await make()
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    async def start(self) -> None:
        log.info("store.redis", extra={"target": self.target.describe()})
        self._pubsub_task = asyncio.create_task(self._pubsub_loop(), name="voxa-redis-pubsub")

    async def close(self) -> None:
        self._closed = True
        if self._pubsub_task is not None:
            self._pubsub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pubsub_task
        if self._subscriber is not None:
            with contextlib.suppress(Exception):
                await self._subscriber.aclose()
        await self._redis.aclose()

    async def ping(self) -> None:
        if self._cluster:
            # Every primary must answer: a voice server's keys live on one of them.
            await self._call(lambda: self._redis.ping(target_nodes=RedisCluster.PRIMARIES))
        else:
            await self._call(self._redis.ping)

    # --- replicas ---------------------------------------------------------------------------------
    async def replica_heartbeat(self) -> None:
        ttl_ms = int(self.replica_ttl_s * 1000)
        await self._call(lambda: self._redis.set(replica_key(self.replica_id), "1", px=ttl_ms))

    async def replica_remove(self) -> None:
        await self._call(lambda: self._redis.delete(replica_key(self.replica_id)))

    async def _dead_fields(self, fields: Iterable[str]) -> list[str]:
        """The fields whose replica's liveness key is gone."""
        by_replica: dict[str, list[str]] = defaultdict(list)
        for f in fields:
            by_replica[_replica_of(f)].append(f)
        if not by_replica:
            return []
        replicas = sorted(by_replica)
        alive = await self._call(lambda: self._redis.mget([replica_key(r) for r in replicas]))
        return [f for r, a in zip(replicas, alive, strict=True) if a is None for f in by_replica[r]]

    # --- presence ---------------------------------------------------------------------------------
    def _field(self, ref: str) -> str:
        return f"{self.replica_id}|{ref}"

    def _message(self, payload: str) -> str:
        return f"{self.replica_id}{SEP}{payload}"

    async def presence_join(
        self,
        topic: str,
        index: str,
        entry: PresenceEntry,
        capacity: int,
        frame: MetaFrame,
        member: tuple[str, str] | None = None,
    ) -> JoinResult | None:
        check_topic(topic, index)
        keys = [presence_key(topic), channels_key(index), subs_key(topic)]
        if member is not None:
            keys.append(self._member_key(*member))
        args: list[Any] = [
            self._field(entry.meta["phx_ref"]),
            orjson.dumps(entry.key).decode(),
            orjson.dumps(entry.meta).decode(),
            capacity,
            topic,
            self.replica_id,
            self._message(frame.prefix),
            frame.suffix,
            broadcast_channel(topic),
        ]
        raw = await self._call(lambda: self._join(keys=keys, args=args))
        if raw[0] == 0:  # full: remove the entries of dead replicas, then try once more
            dead = await self._dead_fields(raw[1])
            if not dead:
                return None
            retry = args + dead
            raw = await self._call(lambda: self._join(keys=keys, args=retry))
            if raw[0] == 0:
                return None
        _, meta_json, values = raw
        stored = PresenceEntry(entry.key, orjson.loads(meta_json))
        return JoinResult(stored, frame.render(meta_json), [_decode_entry(v) for v in values])

    async def presence_leave(self, topic: str, index: str, ref: str, frame: str | None) -> None:
        check_topic(topic, index)
        keys = [presence_key(topic), channels_key(index), subs_key(topic)]
        args = [
            self._field(ref),
            topic,
            self.replica_id,
            self._message(frame) if frame else "",
            broadcast_channel(topic),
        ]
        await self._call(lambda: self._leave(keys=keys, args=args))

    async def presence_update(self, topic: str, old_ref: str, entry: PresenceEntry, frame: str) -> None:
        args = [
            self._field(old_ref),
            self._field(entry.meta["phx_ref"]),
            _encode_entry(entry),
            self.replica_id,
            self._message(frame),
            broadcast_channel(topic),
        ]
        await self._call(lambda: self._update(keys=[presence_key(topic), subs_key(topic)], args=args))

    async def presence_list(self, topic: str) -> list[PresenceEntry]:
        raw: dict[str, str] = await self._call(lambda: self._redis.hgetall(presence_key(topic)))
        if not raw:
            return []
        dead = set(await self._dead_fields(raw))
        return [_decode_entry(v) for f, v in raw.items() if f not in dead]

    async def presence_sweep(self, topic: str, index: str) -> list[PresenceEntry]:
        check_topic(topic, index)
        key = presence_key(topic)
        fields: list[str] = await self._call(lambda: self._redis.hkeys(key))
        dead = await self._dead_fields(fields)
        args = [topic, *dead]
        raw = await self._call(lambda: self._sweep(keys=[key, channels_key(index)], args=args))
        return [_decode_entry(v) for v in raw]

    async def presence_resync(self, topic: str, index: str, entries: list[PresenceEntry]) -> None:
        check_topic(topic, index)
        args: list[Any] = [f"{self.replica_id}|", topic]
        for entry in entries:
            args += [self._field(entry.meta["phx_ref"]), _encode_entry(entry)]
        await self._call(lambda: self._resync(keys=[presence_key(topic), channels_key(index)], args=args))

    async def channels(self, index: str) -> list[str]:
        members: set[str] = await self._call(lambda: self._redis.smembers(channels_key(index)))
        return sorted(members)

    # --- broadcast --------------------------------------------------------------------------------
    async def subscribe(self, topic: str) -> None:
        async with self._pubsub_lock:
            self._topics.add(topic)
            self._left_unrecorded.discard(topic)
            if self._subscriber is not None:
                subscriber = self._subscriber
                await self._call(lambda: subscriber.subscribe(broadcast_channel(topic)))
            await self._call(lambda: self._redis.sadd(subs_key(topic), self.replica_id))

    async def unsubscribe(self, topic: str) -> None:
        async with self._pubsub_lock:
            self._topics.discard(topic)
            try:
                await self._call(lambda: self._redis.srem(subs_key(topic), self.replica_id))
                await self._forget_dead_subscribers(topic)
            except StoreUnavailable:
                self._left_unrecorded.add(topic)
            with contextlib.suppress(StoreUnavailable):
                if self._subscriber is not None:
                    subscriber = self._subscriber
                    await self._call(lambda: subscriber.unsubscribe(broadcast_channel(topic)))

    async def _forget_dead_subscribers(self, topic: str) -> None:
        """Drop replicas that died subscribed to `topic` from its subs set, so the set (and its key)
        goes with the last live subscriber instead of naming a dead replica forever."""
        key = subs_key(topic)
        others: set[str] = await self._call(lambda: self._redis.smembers(key))
        if not others:
            return
        replicas = sorted(others)
        alive = await self._call(lambda: self._redis.mget([replica_key(r) for r in replicas]))
        dead = [r for r, a in zip(replicas, alive, strict=True) if a is None]
        if dead:
            await self._call(lambda: self._redis.srem(key, *dead))

    async def publish(self, topic: str, payload: str) -> None:
        args = [broadcast_channel(topic), self.replica_id, self._message(payload)]
        await self._call(lambda: self._publish(keys=[subs_key(topic)], args=args))

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        if len(messages) == 1:
            await self.publish(*messages[0])
            return
        # One script call per slot: all messages on one Redis; on a cluster, one call per voice server
        # (their topics share its slot), the servers' calls at once. Order holds within a server.
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for topic, payload in messages:
            groups[topic_server(topic) if self._cluster else ""].append((topic, payload))

        async def send(group: list[tuple[str, str]]) -> None:
            args: list[str] = [self.replica_id]
            for topic, payload in group:
                args += [broadcast_channel(topic), self._message(payload)]
            keys = [subs_key(topic) for topic, _ in group]
            await self._call(lambda: self._publish_many(keys=keys, args=args))

        await asyncio.gather(*(send(group) for group in groups.values()))

    async def renew_broadcast(self) -> None:
        task = self._pubsub_task
        if task is None or self._closed:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self._pubsub_task = asyncio.create_task(self._pubsub_loop(), name="voxa-redis-pubsub")

    def _new_subscriber(self, refresh: bool) -> _Subscriber | _ShardedSubscriber:
        if self._cluster:
            return _ShardedSubscriber(self._redis, self._dispatch, refresh)
        return _Subscriber(self._redis, self._replica_channel, self._dispatch)

    async def _pubsub_loop(self) -> None:
        """Receive broadcasts; on any connection loss, reconnect and resubscribe every topic."""
        delay = 0.05
        refresh = False
        while not self._closed:
            subscriber = self._new_subscriber(refresh)
            refresh = True
            try:
                async with self._pubsub_lock:
                    await subscriber.connect(broadcast_channel(t) for t in self._topics)
                    left = self._left_unrecorded - self._topics
                    if self._topics or left:  # Redis may have restarted empty: announce our topics again
                        async with self._redis.pipeline(transaction=False) as pipe:
                            for topic in self._topics:
                                pipe.sadd(subs_key(topic), self.replica_id)
                            for topic in left:
                                pipe.srem(subs_key(topic), self.replica_id)
                            await pipe.execute()
                        self._left_unrecorded -= left
                    self._subscriber = subscriber
                delay = 0.05
                await subscriber.run(lambda: self._closed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store.pubsub_lost", extra={"error": type(exc).__name__})
            finally:
                self._subscriber = None
                with contextlib.suppress(Exception):
                    await subscriber.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _dispatch(self, channel: str, data: str) -> None:
        origin, _, payload = data.partition(SEP)
        topic = _topic_of_channel(channel)
        if origin == self.replica_id or topic is None:
            return
        try:
            self.on_remote(topic, payload)
        except Exception:
            log.exception("store.remote_handler_failed")

    # --- members ----------------------------------------------------------------------------------
    @staticmethod
    def _member_key(server_id: str, user_id: str) -> str:
        return f"{server_tag(server_id)}:member:{user_id}"

    async def member_get(self, server_id: str, user_id: str) -> dict[str, bool]:
        key = self._member_key(server_id, user_id)
        raw: dict[str, str] = await self._call(lambda: self._redis.hgetall(key))
        return {k: v == "1" for k, v in raw.items()}

    async def member_set(self, server_id: str, user_id: str, flags: dict[str, bool]) -> None:
        args: list[Any] = [MEMBER_TTL_S]
        for k, v in flags.items():
            args += [k, "1" if v else "0"]
        key = self._member_key(server_id, user_id)
        await self._call(lambda: self._member_set(keys=[key], args=args))

    # --- media-server registry --------------------------------------------------------------------
    async def media_server_upsert(self, server: MediaServer, ttl_s: float) -> None:
        tag = server_tag(server.server_id)
        keys = [f"{tag}:ms", f"{tag}:ms:{server.id}"]
        args = [server.id, server.model_dump_json(), int(ttl_s * 1000)]
        await self._call(lambda: self._ms_upsert(keys=keys, args=args))

    async def media_server_remove(self, server_id: str, media_server_id: str) -> None:
        tag = server_tag(server_id)
        keys = [f"{tag}:ms", f"{tag}:ms:{media_server_id}", f"{tag}:drain:{media_server_id}"]
        await self._call(lambda: self._ms_remove(keys=keys, args=[media_server_id]))

    async def media_servers(self, server_id: str) -> list[MediaServer]:
        tag = server_tag(server_id)
        ids = sorted(await self._call(lambda: self._redis.smembers(f"{tag}:ms")))
        if not ids:
            return []
        keys = [f"{tag}:ms:{i}" for i in ids] + [f"{tag}:drain:{i}" for i in ids]
        values = await self._call(lambda: self._redis.mget(keys))
        infos, marks = values[: len(ids)], values[len(ids) :]
        out: list[MediaServer] = []
        gone: list[str] = []
        for media_id, info, mark in zip(ids, infos, marks, strict=True):
            if info is None:
                gone.append(media_id)
                continue
            server = MediaServer.model_validate_json(info)
            if mark is not None and not server.draining:
                server = server.model_copy(update={"draining": True})
            out.append(server)
        if gone:
            await self._call(lambda: self._redis.srem(f"{tag}:ms", *gone))
        return out

    async def media_server_mark_draining(self, server_id: str, media_server_id: str, draining: bool) -> None:
        key = f"{server_tag(server_id)}:drain:{media_server_id}"
        if draining:
            await self._call(lambda: self._redis.set(key, "1", ex=ASSIGNMENT_TTL_S))
        else:
            await self._call(lambda: self._redis.delete(key))

    @staticmethod
    def _assign_key(server_id: str, channel_id: str) -> str:
        return f"{server_tag(server_id)}:assign:{channel_id}"

    async def assignment_get(self, server_id: str, channel_id: str) -> str | None:
        value: str | None = await self._call(lambda: self._redis.get(self._assign_key(server_id, channel_id)))
        return value

    async def assignment_set(
        self, server_id: str, channel_id: str, media_server_id: str, replace: str | None
    ) -> str:
        key = self._assign_key(server_id, channel_id)
        if replace is not None:
            # Compare-and-set: only overwrite the assignment we know is stale.
            args = [media_server_id, replace, str(ASSIGNMENT_TTL_S)]
            result: str = await self._call(lambda: self._assign_replace(keys=[key], args=args))
            return result
        created = await self._call(
            lambda: self._redis.set(key, media_server_id, nx=True, ex=ASSIGNMENT_TTL_S)
        )
        if created:
            return media_server_id
        current: str | None = await self._call(lambda: self._redis.get(key))
        return current or media_server_id

    async def assignment_clear(self, server_id: str, channel_id: str) -> None:
        await self._call(lambda: self._redis.delete(self._assign_key(server_id, channel_id)))

    async def assignment_release_if_idle(self, server_id: str, channel_id: str, topic: str) -> bool:
        check_topic(topic, server_id)
        keys = [presence_key(topic), self._assign_key(server_id, channel_id)]
        released = await self._call(lambda: self._release_if_idle(keys=keys))
        return bool(released)

    # --- calls ------------------------------------------------------------------------------------
    async def call_get(self, server_id: str, call_id: str) -> StoredCall | None:
        found: list[str | None] = await self._call(
            lambda: self._redis.hmget(f"{server_tag(server_id)}:call:{call_id}", ["v", "d"])
        )
        version, data = found
        if version is None or data is None:
            return None
        return StoredCall(data, int(version))

    async def call_commit(self, server_id: str, call_id: str, commit: CallCommit) -> int | None:
        tag = server_tag(server_id)
        if commit.due is not None:
            # Before the commit, so a scheduled call is always found by calls_due; a server stays
            # listed until it is purged (an empty due set costs calls_due one command).
            await self._call(lambda: self._redis.sadd(CALL_SERVERS, server_id))
        keys = [f"{tag}:call:{call_id}", f"{tag}:calldue", *(f"{tag}:ucalls:{user}" for user in commit.users)]
        args = [
            "" if commit.version is None else str(commit.version),
            commit.data or "",
            "" if commit.due is None else repr(commit.due),
            call_id,
            str(CALL_TTL_S),
        ]
        version = await self._call(lambda: self._call_commit(keys=keys, args=args))
        return None if version is None else int(version)

    async def calls_of(self, server_id: str, user_id: str) -> list[str]:
        key = f"{server_tag(server_id)}:ucalls:{user_id}"
        ids: set[str] = await self._call(lambda: self._redis.smembers(key))
        return sorted(ids)

    async def calls_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        servers = sorted(await self._call(lambda: self._redis.smembers(CALL_SERVERS)))
        if not servers:
            return []

        async def read() -> list[list[tuple[str, float]]]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for server in servers:
                    pipe.zrangebyscore(
                        f"{server_tag(server)}:calldue", "-inf", now, start=0, num=limit, withscores=True
                    )
                result: list[list[tuple[str, float]]] = await pipe.execute()
                return result

        found = await self._call(read)
        due = sorted(
            (score, server, call_id)
            for server, members in zip(servers, found, strict=True)
            for call_id, score in members
        )
        return [(server, call_id) for _, server, call_id in due[:limit]]

    async def missed_add(self, server_id: str, user_id: str, record: str, ttl_s: float) -> None:
        key = f"{server_tag(server_id)}:missed:{user_id}"
        args = [record, str(MISSED_CALLS_KEPT), str(max(1, round(ttl_s)))]
        await self._call(lambda: self._missed_add(keys=[key], args=args))

    async def missed_list(self, server_id: str, user_id: str) -> list[str]:
        records: list[str] = await self._call(
            lambda: self._redis.lrange(f"{server_tag(server_id)}:missed:{user_id}", 0, -1)
        )
        return records

    # --- push -------------------------------------------------------------------------------------
    async def push_device_put(self, server_id: str, user_id: str, key: str, record: str, cap: int) -> bool:
        name = f"{server_tag(server_id)}:pushdev:{user_id}"
        stored = await self._call(lambda: self._push_device_put(keys=[name], args=[key, record, str(cap)]))
        return bool(stored)

    async def push_device_remove(self, server_id: str, user_id: str, keys: list[str]) -> int:
        if not keys:
            return 0
        name = f"{server_tag(server_id)}:pushdev:{user_id}"
        gone: int = await self._call(lambda: self._redis.hdel(name, *keys))
        return gone

    async def push_devices(self, server_id: str, user_id: str) -> dict[str, str]:
        found: dict[str, str] = await self._call(
            lambda: self._redis.hgetall(f"{server_tag(server_id)}:pushdev:{user_id}")
        )
        return found

    async def push_rung_set(
        self, server_id: str, call_id: str, user_id: str, record: str, ttl_s: float
    ) -> None:
        key = f"{server_tag(server_id)}:pushrung:{call_id}:{user_id}"
        await self._call(lambda: self._redis.set(key, record, px=max(1, int(ttl_s * 1000))))

    async def push_rung_take(self, server_id: str, call_id: str, user_id: str) -> str | None:
        key = f"{server_tag(server_id)}:pushrung:{call_id}:{user_id}"
        record: str | None = await self._call(lambda: self._redis.getdel(key))
        return record

    # --- resumable voice sessions -------------------------------------------------------------------
    @staticmethod
    def _session_key(server_id: str, session_id: str) -> str:
        return f"{server_tag(server_id)}:session:{session_id}"

    async def session_put(
        self, server_id: str, session_id: str, user_id: str, channel_id: str, token_hash: str, ttl_s: float
    ) -> None:
        keys = [self._session_key(server_id, session_id)]
        args = [user_id, channel_id, token_hash, self.replica_id, max(1, int(ttl_s * 1000))]
        await self._call(lambda: self._session_put(keys=keys, args=args))

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
        keys = [self._session_key(server_id, session_id)]
        ttl_ms = max(1, int(ttl_s * 1000))
        args = [user_id, channel_id, token_hash, new_token_hash, self.replica_id, ttl_ms]
        taken = await self._call(lambda: self._session_take(keys=keys, args=args))
        return bool(taken)

    async def session_refresh(self, server_id: str, session_ids: Sequence[str], ttl_s: float) -> None:
        if not session_ids:
            return
        keys = [self._session_key(server_id, s) for s in session_ids]
        args = [self.replica_id, max(1, int(ttl_s * 1000))]
        await self._call(lambda: self._session_refresh(keys=keys, args=args))

    async def session_release(self, server_id: str, session_id: str, token_hash: str) -> bool:
        keys = [self._session_key(server_id, session_id)]
        args = [self.replica_id, token_hash]
        released = await self._call(lambda: self._session_release(keys=keys, args=args))
        return bool(released)

    async def presence_evict_session(
        self, topic: str, index: str, session_id: str, keep_ref: str
    ) -> list[PresenceEntry]:
        check_topic(topic, index)
        key = presence_key(topic)
        raw: dict[str, str] = await self._call(lambda: self._redis.hgetall(key))
        keep = self._field(keep_ref)
        found = [
            f for f, v in raw.items() if f != keep and _decode_entry(v).meta.get("session_id") == session_id
        ]
        if not found:
            return []
        args = [topic, *found]
        removed = await self._call(lambda: self._sweep(keys=[key, channels_key(index)], args=args))
        return [_decode_entry(v) for v in removed]

    async def purge_server(self, server_id: str) -> int:
        # Every key of the server carries its tag; SCAN, not KEYS: a shared Redis keeps serving other
        # voice servers while this runs (on a cluster, SCAN visits every primary).
        match = f"{server_tag(server_id)}:*"

        async def scan() -> list[str]:
            return [key async for key in self._redis.scan_iter(match=match, count=500)]

        keys: list[str] = await self._call(scan)
        await self._call(lambda: self._redis.srem(CALL_SERVERS, server_id))
        deleted = 0
        for i in range(0, len(keys), 500):
            batch = keys[i : i + 500]
            gone: int = await self._call(lambda batch=batch: self._redis.unlink(*batch))  # type: ignore[misc]
            deleted += gone
        return deleted
