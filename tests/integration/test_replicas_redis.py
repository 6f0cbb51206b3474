"""Several signaling replicas on one real Redis: shared presence, cross-replica moderation, a replica
that dies, and Redis itself restarting under connected clients."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from conftest import RedisServer, SignalingFactory, SignalingProcess
from tests.integration.conftest import AppFactory, token
from voxa.client.phoenix import PhoenixClient
from voxa.signaling.store.redis import RedisStore

TOPIC = "voice:g1:lobby"


def redis_store(redis: RedisServer, replica: str, ttl: float = 15.0) -> RedisStore:
    return RedisStore(redis.url, replica, ttl)


async def test_presence_and_moderation_cross_replicas(
    app_factory: AppFactory, redis_server: RedisServer
) -> None:
    a = await app_factory(store=redis_store(redis_server, "replica-a"), redis_url=redis_server.url)
    b = await app_factory(store=redis_store(redis_server, "replica-b"), redis_url=redis_server.url)
    mod = PhoenixClient(a.ws, token("mod", grant="connect,mute_members,move_members"))
    bob = PhoenixClient(b.ws, token("bob"))
    await mod.connect()
    await bob.connect()
    mod_ch, _ = await mod.join(TOPIC)
    bob_ch, _ = await bob.join(TOPIC)
    await mod_ch.wait_presence(lambda m: set(m) == {"mod", "bob"})
    await bob_ch.wait_presence(lambda m: set(m) == {"mod", "bob"})
    await bob_ch.push("mute")
    await mod_ch.wait_presence(lambda m: m["bob"]["muted"])
    # A moderator on replica A server-mutes a user whose socket is on replica B.
    await mod_ch.push("moderate", {"target": "bob", "action": "mute"})
    await bob_ch.wait_presence(lambda m: m["bob"]["server_muted"])
    await mod_ch.wait_presence(lambda m: m["bob"]["server_muted"])
    await mod_ch.push("moderate", {"target": "bob", "action": "disconnect"})
    await bob_ch.wait_event("disconnected")
    await mod_ch.wait_presence(lambda m: set(m) == {"mod"})
    await mod.close()
    await bob.close()


async def test_registry_shared_between_replicas(app_factory: AppFactory, redis_server: RedisServer) -> None:
    a = await app_factory(store=redis_store(redis_server, "replica-a"), redis_url=redis_server.url)
    b = await app_factory(store=redis_store(redis_server, "replica-b"), redis_url=redis_server.url)
    from voxa.signaling.store import MediaServer

    await a.ctx.registry.heartbeat(MediaServer(id="sfu-1", server_id="g1", url="http://127.0.0.1:1"))
    assert [m.id for m in await b.ctx.registry.servers("g1")] == ["sfu-1"]
    first = await a.ctx.registry.assign("g1", "lobby")
    second = await b.ctx.registry.assign("g1", "lobby")
    assert first is not None and second is not None and first.id == second.id == "sfu-1"


def ready(proc: SignalingProcess) -> int:
    try:
        with urllib.request.urlopen(proc.url + "/readyz", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def wait_status(proc: SignalingProcess, status: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while await asyncio.to_thread(ready, proc) != status:
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_killed_replica_participants_disappear(
    signaling_factory: SignalingFactory, redis_server: RedisServer
) -> None:
    survivor = signaling_factory(redis_server.url, replica_ttl_s="1.5")
    doomed = signaling_factory(redis_server.url, replica_ttl_s="1.5")
    alice = PhoenixClient(survivor.ws_url, token("alice"))
    bob = PhoenixClient(doomed.ws_url, token("bob"))
    await alice.connect()
    await bob.connect()
    alice_ch, _ = await alice.join(TOPIC)
    await bob.join(TOPIC)
    await alice_ch.wait_presence(lambda m: set(m) == {"alice", "bob"})
    doomed.stop(kill=True)  # SIGKILL: no goodbye, only the TTL in Redis tells
    await alice_ch.wait_presence(lambda m: set(m) == {"alice"}, timeout=15)
    await alice.close()
    await bob.close()


@pytest.mark.slow
async def test_redis_restart_readiness_and_presence_converge(
    signaling_factory: SignalingFactory, redis_server: RedisServer
) -> None:
    a = signaling_factory(redis_server.url, replica_ttl_s="3")
    b = signaling_factory(redis_server.url, replica_ttl_s="3")
    alice = PhoenixClient(a.ws_url, token("alice"))
    bob = PhoenixClient(b.ws_url, token("bob"))
    carol = PhoenixClient(b.ws_url, token("carol"))
    for c in (alice, bob, carol):
        await c.connect()
    alice_ch, _ = await alice.join(TOPIC)
    bob_ch, _ = await bob.join(TOPIC)
    await carol.join(TOPIC)
    await alice_ch.wait_presence(lambda m: set(m) == {"alice", "bob", "carol"})

    redis_server.stop()
    await wait_status(a, 503)
    await wait_status(b, 503)
    # While Redis is away: carol leaves (replica B cannot tell replica A), heartbeats keep sockets up.
    await carol.close()
    await alice.heartbeat()
    await bob.heartbeat()
    redis_server.start()  # empty: the restart lost every key
    await wait_status(a, 200)
    await wait_status(b, 200)
    # Both replicas rewrite their presence and re-send presence_state: everyone converges.
    await alice_ch.wait_presence(lambda m: set(m) == {"alice", "bob"}, timeout=15)
    await bob_ch.wait_presence(lambda m: set(m) == {"alice", "bob"}, timeout=15)
    # And the channel works across replicas again.
    await bob_ch.push("mute")
    await alice_ch.wait_presence(lambda m: m["bob"]["muted"])
    newcomer = PhoenixClient(a.ws_url, token("dave"))
    await newcomer.connect()
    dave_ch, _ = await newcomer.join(TOPIC)
    await dave_ch.wait_presence(lambda m: set(m) == {"alice", "bob", "dave"})
    for c in (alice, bob, newcomer):
        await c.close()
