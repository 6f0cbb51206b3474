"""Redis store: presence, broadcast, member state and the media-server registry shared by replicas.

Keys (one Redis, or a primary with Sentinel; the Lua scripts touch replica keys they do not declare,
so Redis Cluster is not supported):
  voxa:replica:<replica>            liveness of a signaling replica (PX replica_ttl)
  voxa:presence:<topic>             hash "<replica>|<phx_ref>" -> JSON [key, meta]
  voxa:channels:<server>            set of topics with presence (per voice server)
  voxa:bc:<topic>                   pub/sub channel: "<origin replica>\\x1f<payload>"
  voxa:member:<server>:<user>       hash of persistent member flags (server_muted, server_deafened)
  voxa:ms:<server>                  set of media-server ids; voxa:ms:<server>:<id> JSON (PX ttl)
  voxa:drain:<server>:<id>          the operator's drain mark
  voxa:assign:<server>:<channel>    the SFU a channel is assigned to
  voxa:call:<server>:<call>         hash {v: version, d: the call as JSON}
  voxa:ucalls:<server>:<user>       set of the ids of the calls a user is part of
  voxa:calldue                      sorted set "<server>\x1f<call>" by next deadline (any replica expires)
  voxa:missed:<server>:<user>       list of recent missed-call records (newest first, EX ttl)
  voxa:pushdev:<server>:<user>      hash "<device>|<kind>" -> a push registration (JSON), no expiry
  voxa:pushrung:<server>:<call>:<user>  the devices pushed a ring for that call (JSON, EX ttl)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, RedisError
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
)

log = logging.getLogger("voxa.signaling.store")
SEP = "\x1f"
ASSIGNMENT_TTL_S = 86400
POOL_SIZE = 64
CALL_TIMEOUT_S = 2.0
MEMBER_TTL_S = 30 * 86400

# Removes entries whose replica key has expired; shared by join (when full) and sweep.
_SWEEP_LUA = """
local function sweep(hash)
  local removed = {}
  local alive = {}
  for _, f in ipairs(redis.call('HKEYS', hash)) do
    local rid = string.match(f, '^(.*)|')
    if alive[rid] == nil then alive[rid] = redis.call('EXISTS', 'voxa:replica:' .. rid) == 1 end
    if not alive[rid] then
      table.insert(removed, redis.call('HGET', hash, f))
      redis.call('HDEL', hash, f)
    end
  end
  return removed
end
"""

# Publishes only when a replica other than the sender listens on the topic (voxa:subs:<topic> holds
# the subscribed replicas), so a lone replica does not receive its own broadcasts back.
_PUBLISH_LUA = """
local function publish_to_others(topic, rid, message)
  local subs = 'voxa:subs:' .. topic
  local n = redis.call('SCARD', subs)
  if n == 0 or (n == 1 and redis.call('SISMEMBER', subs, rid) == 1) then return 0 end
  return redis.call('PUBLISH', 'voxa:bc:' .. topic, message)
end
"""

# ARGV: topic, replica, message.
PUBLISH_LUA = _PUBLISH_LUA + "return publish_to_others(ARGV[1], ARGV[2], ARGV[3])"

# KEYS: presence hash, index set, member hash ('' when none).
# ARGV: field, key as JSON, meta as JSON, capacity, topic, replica, message prefix, message suffix.
# The member hash's fields ('1'/'0') override the meta's; returns {meta, all entries}.
JOIN_LUA = (
    _SWEEP_LUA
    + _PUBLISH_LUA
    + """
local cap = tonumber(ARGV[4])
if redis.call('HLEN', KEYS[1]) >= cap then
  sweep(KEYS[1])
  if redis.call('HLEN', KEYS[1]) >= cap then return false end
end
local meta = ARGV[3]
if KEYS[3] ~= '' then
  local flags = redis.call('HGETALL', KEYS[3])
  if #flags > 0 then
    local m = cjson.decode(meta)
    for i = 1, #flags, 2 do m[flags[i]] = (flags[i + 1] == '1') end
    meta = cjson.encode(m)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], '[' .. ARGV[2] .. ',' .. meta .. ']')
redis.call('SADD', KEYS[2], ARGV[5])
publish_to_others(ARGV[5], ARGV[6], ARGV[7] .. meta .. ARGV[8])
return {meta, redis.call('HVALS', KEYS[1])}
"""
)

# KEYS: presence hash, index set. ARGV: field, topic, replica, message ('' for none).
LEAVE_LUA = (
    _PUBLISH_LUA
    + """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
if ARGV[4] ~= '' then publish_to_others(ARGV[2], ARGV[3], ARGV[4]) end
return 1
"""
)

# KEYS: presence hash. ARGV: old field, new field, value, topic, replica, message.
UPDATE_LUA = (
    _PUBLISH_LUA
    + """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
publish_to_others(ARGV[4], ARGV[5], ARGV[6])
return 1
"""
)

# KEYS: presence hash, index set. ARGV: topic.
SWEEP_LUA = (
    _SWEEP_LUA
    + """
local removed = sweep(KEYS[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return removed
"""
)

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
-- KEYS: call hash, due set, then the members' call indexes.
-- ARGV: expected version ('' = new call), data ('' = delete), due ('' = none), due member, call id, ttl.
local v = redis.call('HGET', KEYS[1], 'v')
if (ARGV[1] == '' and v) or (ARGV[1] ~= '' and v ~= ARGV[1]) then
  return false
end
local version = (tonumber(v) or 0) + 1
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  for i = 3, #KEYS do redis.call('SREM', KEYS[i], ARGV[5]) end
  return version
end
redis.call('HSET', KEYS[1], 'v', version, 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[5])
  redis.call('EXPIRE', KEYS[i], ARGV[6])
end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
end
return version
"""

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


def _decode_entry(raw: str | bytes) -> PresenceEntry:
    key, meta = orjson.loads(raw)
    return PresenceEntry(key, meta)


def _encode_entry(entry: PresenceEntry) -> str:
    return orjson.dumps([entry.key, entry.meta]).decode()


class RedisStore(Store):
    def __init__(self, url: str, replica_id: str, replica_ttl_s: float) -> None:
        super().__init__(replica_id, replica_ttl_s)
        # A blocking pool: a burst of joins waits for a connection instead of failing. Timeouts are one
        # asyncio.timeout per call in _call (redis-py's socket_timeout costs a Task per command), and the
        # hub's probe replaces redis-py's per-command health checks.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=CALL_TIMEOUT_S,
            decode_responses=True,
            socket_connect_timeout=1.0,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._join = self._redis.register_script(JOIN_LUA)
        self._leave = self._redis.register_script(LEAVE_LUA)
        self._update = self._redis.register_script(UPDATE_LUA)
        self._sweep = self._redis.register_script(SWEEP_LUA)
        self._resync = self._redis.register_script(RESYNC_LUA)
        self._publish = self._redis.register_script(PUBLISH_LUA)
        self._call_commit = self._redis.register_script(CALL_COMMIT_LUA)
        self._release_if_idle = self._redis.register_script(RELEASE_IF_IDLE_LUA)
        self._missed_add = self._redis.register_script(MISSED_ADD_LUA)
        self._topics: set[str] = set()
        self._pubsub: PubSub | None = None
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
        self._pubsub_task = asyncio.create_task(self._pubsub_loop(), name="voxa-redis-pubsub")

    async def close(self) -> None:
        self._closed = True
        if self._pubsub_task is not None:
            self._pubsub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pubsub_task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    # --- replicas ---------------------------------------------------------------------------------
    async def replica_heartbeat(self) -> None:
        ttl_ms = int(self.replica_ttl_s * 1000)
        await self._call(lambda: self._redis.set(f"voxa:replica:{self.replica_id}", "1", px=ttl_ms))

    async def replica_remove(self) -> None:
        await self._call(lambda: self._redis.delete(f"voxa:replica:{self.replica_id}"))

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
        keys = [
            f"voxa:presence:{topic}",
            f"voxa:channels:{index}",
            f"voxa:member:{member[0]}:{member[1]}" if member is not None else "",
        ]
        args: list[Any] = [
            self._field(entry.meta["phx_ref"]),
            orjson.dumps(entry.key).decode(),
            orjson.dumps(entry.meta).decode(),
            capacity,
            topic,
            self.replica_id,
            self._message(frame.prefix),
            frame.suffix,
        ]
        raw = await self._call(lambda: self._join(keys=keys, args=args))
        if raw is None:
            return None
        meta_json, values = raw
        stored = PresenceEntry(entry.key, orjson.loads(meta_json))
        return JoinResult(stored, frame.render(meta_json), [_decode_entry(v) for v in values])

    async def presence_leave(self, topic: str, index: str, ref: str, frame: str | None) -> None:
        args = [self._field(ref), topic, self.replica_id, self._message(frame) if frame else ""]
        await self._call(
            lambda: self._leave(keys=[f"voxa:presence:{topic}", f"voxa:channels:{index}"], args=args)
        )

    async def presence_update(self, topic: str, old_ref: str, entry: PresenceEntry, frame: str) -> None:
        args = [
            self._field(old_ref),
            self._field(entry.meta["phx_ref"]),
            _encode_entry(entry),
            topic,
            self.replica_id,
            self._message(frame),
        ]
        await self._call(lambda: self._update(keys=[f"voxa:presence:{topic}"], args=args))

    async def presence_list(self, topic: str) -> list[PresenceEntry]:
        raw: dict[str, str] = await self._call(lambda: self._redis.hgetall(f"voxa:presence:{topic}"))
        if not raw:
            return []
        replicas = sorted({f.rpartition("|")[0] for f in raw})
        alive = await self._call(lambda: self._redis.mget([f"voxa:replica:{r}" for r in replicas]))
        live = {r for r, a in zip(replicas, alive, strict=True) if a is not None}
        return [_decode_entry(v) for f, v in raw.items() if f.rpartition("|")[0] in live]

    async def presence_sweep(self, topic: str, index: str) -> list[PresenceEntry]:
        raw = await self._call(
            lambda: self._sweep(keys=[f"voxa:presence:{topic}", f"voxa:channels:{index}"], args=[topic])
        )
        return [_decode_entry(v) for v in raw]

    async def presence_resync(self, topic: str, index: str, entries: list[PresenceEntry]) -> None:
        args: list[Any] = [f"{self.replica_id}|", topic]
        for entry in entries:
            args += [self._field(entry.meta["phx_ref"]), _encode_entry(entry)]
        await self._call(
            lambda: self._resync(keys=[f"voxa:presence:{topic}", f"voxa:channels:{index}"], args=args)
        )

    async def channels(self, index: str) -> list[str]:
        members: set[str] = await self._call(lambda: self._redis.smembers(f"voxa:channels:{index}"))
        return sorted(members)

    # --- broadcast --------------------------------------------------------------------------------
    async def subscribe(self, topic: str) -> None:
        async with self._pubsub_lock:
            self._topics.add(topic)
            if self._pubsub is not None:
                await self._call(lambda: self._pubsub.subscribe(f"voxa:bc:{topic}"))  # type: ignore[union-attr]
            await self._call(lambda: self._redis.sadd(f"voxa:subs:{topic}", self.replica_id))

    async def unsubscribe(self, topic: str) -> None:
        async with self._pubsub_lock:
            self._topics.discard(topic)
            with contextlib.suppress(StoreUnavailable):
                await self._call(lambda: self._redis.srem(f"voxa:subs:{topic}", self.replica_id))
                if self._pubsub is not None:
                    await self._call(lambda: self._pubsub.unsubscribe(f"voxa:bc:{topic}"))  # type: ignore[union-attr]

    async def publish(self, topic: str, payload: str) -> None:
        await self._call(lambda: self._publish(args=[topic, self.replica_id, self._message(payload)]))

    async def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        if len(messages) == 1:
            await self.publish(*messages[0])
            return

        async def send() -> None:
            # EVALSHA straight into the pipeline: a script object there would first ask Redis
            # whether the script exists (one more round trip each time). `publish` loaded it.
            async with self._redis.pipeline(transaction=False) as pipe:
                for topic, payload in messages:
                    pipe.evalsha(self._publish.sha, 0, topic, self.replica_id, self._message(payload))
                await pipe.execute()

        try:
            await self._call(send)
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, NoScriptError):  # Redis restarted empty: reload
                raise
            for topic, payload in messages:
                await self.publish(topic, payload)

    async def _pubsub_loop(self) -> None:
        """Receive broadcasts; on any connection loss, reconnect and resubscribe every topic."""
        delay = 0.05
        while not self._closed:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                async with self._pubsub_lock:
                    channels = [self._replica_channel, *(f"voxa:bc:{t}" for t in self._topics)]
                    await pubsub.subscribe(*channels)
                    if self._topics:  # Redis may have restarted empty: announce our topics again
                        async with self._redis.pipeline(transaction=False) as pipe:
                            for topic in self._topics:
                                pipe.sadd(f"voxa:subs:{topic}", self.replica_id)
                            await pipe.execute()
                    self._pubsub = pubsub
                delay = 0.05
                while not self._closed:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message["type"] != "message":
                        continue
                    self._dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store.pubsub_lost", extra={"error": type(exc).__name__})
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _dispatch(self, channel: str, data: str) -> None:
        origin, _, payload = data.partition(SEP)
        if origin == self.replica_id or not channel.startswith("voxa:bc:"):
            return
        try:
            self.on_remote(channel[8:], payload)
        except Exception:
            log.exception("store.remote_handler_failed")

    # --- members ----------------------------------------------------------------------------------
    async def member_get(self, server_id: str, user_id: str) -> dict[str, bool]:
        raw: dict[str, str] = await self._call(
            lambda: self._redis.hgetall(f"voxa:member:{server_id}:{user_id}")
        )
        return {k: v == "1" for k, v in raw.items()}

    async def member_set(self, server_id: str, user_id: str, flags: dict[str, bool]) -> None:
        key = f"voxa:member:{server_id}:{user_id}"
        mapping = {k: "1" if v else "0" for k, v in flags.items()}

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.expire(key, MEMBER_TTL_S)
                await pipe.execute()

        await self._call(write)

    # --- media-server registry --------------------------------------------------------------------
    async def media_server_upsert(self, server: MediaServer, ttl_s: float) -> None:
        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(
                    f"voxa:ms:{server.server_id}:{server.id}", server.model_dump_json(), px=int(ttl_s * 1000)
                )
                pipe.sadd(f"voxa:ms:{server.server_id}", server.id)
                await pipe.execute()

        await self._call(write)

    async def media_server_remove(self, server_id: str, media_server_id: str) -> None:
        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(
                    f"voxa:ms:{server_id}:{media_server_id}", f"voxa:drain:{server_id}:{media_server_id}"
                )
                pipe.srem(f"voxa:ms:{server_id}", media_server_id)
                await pipe.execute()

        await self._call(write)

    async def media_servers(self, server_id: str) -> list[MediaServer]:
        ids = sorted(await self._call(lambda: self._redis.smembers(f"voxa:ms:{server_id}")))
        if not ids:
            return []
        keys = [f"voxa:ms:{server_id}:{i}" for i in ids] + [f"voxa:drain:{server_id}:{i}" for i in ids]
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
            await self._call(lambda: self._redis.srem(f"voxa:ms:{server_id}", *gone))
        return out

    async def media_server_mark_draining(self, server_id: str, media_server_id: str, draining: bool) -> None:
        key = f"voxa:drain:{server_id}:{media_server_id}"
        if draining:
            await self._call(lambda: self._redis.set(key, "1", ex=ASSIGNMENT_TTL_S))
        else:
            await self._call(lambda: self._redis.delete(key))

    async def assignment_get(self, server_id: str, channel_id: str) -> str | None:
        value: str | None = await self._call(lambda: self._redis.get(f"voxa:assign:{server_id}:{channel_id}"))
        return value

    async def assignment_set(
        self, server_id: str, channel_id: str, media_server_id: str, replace: str | None
    ) -> str:
        key = f"voxa:assign:{server_id}:{channel_id}"
        if replace is not None:
            # Compare-and-set: only overwrite the assignment we know is stale.
            script = ASSIGN_REPLACE_LUA
            result: str = await self._call(
                lambda: self._redis.eval(script, 1, key, media_server_id, replace, str(ASSIGNMENT_TTL_S))
            )
            return result
        created = await self._call(
            lambda: self._redis.set(key, media_server_id, nx=True, ex=ASSIGNMENT_TTL_S)
        )
        if created:
            return media_server_id
        current: str | None = await self._call(lambda: self._redis.get(key))
        return current or media_server_id

    async def assignment_clear(self, server_id: str, channel_id: str) -> None:
        await self._call(lambda: self._redis.delete(f"voxa:assign:{server_id}:{channel_id}"))

    async def assignment_release_if_idle(self, server_id: str, channel_id: str, topic: str) -> bool:
        keys = (f"voxa:presence:{topic}", f"voxa:assign:{server_id}:{channel_id}")
        released = await self._call(lambda: self._release_if_idle(keys=keys))
        return bool(released)

    async def call_get(self, server_id: str, call_id: str) -> StoredCall | None:
        found: list[str | None] = await self._call(
            lambda: self._redis.hmget(f"voxa:call:{server_id}:{call_id}", ["v", "d"])
        )
        version, data = found
        if version is None or data is None:
            return None
        return StoredCall(data, int(version))

    async def call_commit(self, server_id: str, call_id: str, commit: CallCommit) -> int | None:
        keys = [
            f"voxa:call:{server_id}:{call_id}",
            "voxa:calldue",
            *(f"voxa:ucalls:{server_id}:{user}" for user in commit.users),
        ]
        args = [
            "" if commit.version is None else str(commit.version),
            commit.data or "",
            "" if commit.due is None else repr(commit.due),
            f"{server_id}{SEP}{call_id}",
            call_id,
            str(CALL_TTL_S),
        ]
        version = await self._call(lambda: self._call_commit(keys=keys, args=args))
        return None if version is None else int(version)

    async def calls_of(self, server_id: str, user_id: str) -> list[str]:
        ids: set[str] = await self._call(lambda: self._redis.smembers(f"voxa:ucalls:{server_id}:{user_id}"))
        return sorted(ids)

    async def calls_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        members: list[str] = await self._call(
            lambda: self._redis.zrangebyscore("voxa:calldue", "-inf", now, start=0, num=limit)
        )
        out = []
        for member in members:
            server_id, _, call_id = member.partition(SEP)
            out.append((server_id, call_id))
        return out

    async def missed_add(self, server_id: str, user_id: str, record: str, ttl_s: float) -> None:
        key = f"voxa:missed:{server_id}:{user_id}"
        args = [record, str(MISSED_CALLS_KEPT), str(max(1, round(ttl_s)))]
        await self._call(lambda: self._missed_add(keys=[key], args=args))

    async def missed_list(self, server_id: str, user_id: str) -> list[str]:
        records: list[str] = await self._call(
            lambda: self._redis.lrange(f"voxa:missed:{server_id}:{user_id}", 0, -1)
        )
        return records

    async def push_device_put(self, server_id: str, user_id: str, key: str, record: str, cap: int) -> bool:
        name = f"voxa:pushdev:{server_id}:{user_id}"
        stored = await self._call(
            lambda: self._redis.eval(PUSH_DEVICE_PUT_LUA, 1, name, key, record, str(cap))
        )
        return bool(stored)

    async def push_device_remove(self, server_id: str, user_id: str, keys: list[str]) -> int:
        if not keys:
            return 0
        gone: int = await self._call(lambda: self._redis.hdel(f"voxa:pushdev:{server_id}:{user_id}", *keys))
        return gone

    async def push_devices(self, server_id: str, user_id: str) -> dict[str, str]:
        found: dict[str, str] = await self._call(
            lambda: self._redis.hgetall(f"voxa:pushdev:{server_id}:{user_id}")
        )
        return found

    async def push_rung_set(
        self, server_id: str, call_id: str, user_id: str, record: str, ttl_s: float
    ) -> None:
        key = f"voxa:pushrung:{server_id}:{call_id}:{user_id}"
        await self._call(lambda: self._redis.set(key, record, px=max(1, int(ttl_s * 1000))))

    async def push_rung_take(self, server_id: str, call_id: str, user_id: str) -> str | None:
        key = f"voxa:pushrung:{server_id}:{call_id}:{user_id}"
        record: str | None = await self._call(lambda: self._redis.getdel(key))
        return record

    async def purge_server(self, server_id: str) -> int:
        # SCAN, not KEYS: a shared Redis keeps serving other voice servers while this runs.
        topics: set[str] = await self._call(lambda: self._redis.smembers(f"voxa:channels:{server_id}"))
        keys = {f"voxa:channels:{server_id}", f"voxa:ms:{server_id}"}
        keys.update(f"voxa:{kind}:{topic}" for topic in topics for kind in ("presence", "subs"))
        due: list[str] = await self._call(lambda: self._redis.zrange("voxa:calldue", 0, -1))
        mine = [m for m in due if m.startswith(f"{server_id}{SEP}")]
        if mine:
            await self._call(lambda: self._redis.zrem("voxa:calldue", *mine))
        for pattern in ("ms", "drain", "assign", "member", "call", "ucalls", "missed", "pushdev", "pushrung"):
            match = f"voxa:{pattern}:{server_id}:*"

            async def scan(match: str = match) -> list[str]:
                return [key async for key in self._redis.scan_iter(match=match, count=500)]

            keys.update(await self._call(scan))
        deleted: int = await self._call(lambda: self._redis.unlink(*keys))
        return deleted + len(mine)
