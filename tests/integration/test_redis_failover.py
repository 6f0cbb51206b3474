"""Sentinel failover under load: the primary is SIGKILLed while store operations run, the Sentinels
promote the replica, and the store (then whole signaling replicas) work again on the new primary.

Real processes on loopback: a primary, a replica and three Sentinels (`conftest.RedisSentinelSet`,
down-after 1 s). Every wait is on a condition with a deadline; the bound on recovery is generous for a
busy machine (the failover itself takes about 2-4 s: 1 s to agree the primary is down, an election,
the promotion), and the measured time is printed.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import RedisSentinelSet, SignalingFactory, _redis_client
from tests.integration.conftest import token
from tests.integration.test_replicas_redis import TOPIC, wait_status
from voxa.client.phoenix import PhoenixClient
from voxa.common.testing.wait import eventually_async
from voxa.signaling.store import CallCommit, MetaFrame, PresenceEntry, StoreUnavailable
from voxa.signaling.store.redis import RedisStore

RECOVERY_BOUND_S = 20.0


class Load:
    """Workers that loop over store operations and log each outcome's time."""

    def __init__(self, store: RedisStore, workers: int) -> None:
        self.store = store
        self.ok: list[float] = []
        self.failed: list[float] = []
        self.running = True
        self._tasks = [asyncio.create_task(self._work(i)) for i in range(workers)]

    async def _work(self, worker: int) -> None:
        n = 0
        while self.running:
            n += 1
            topic = f"voice:g:w{worker}"
            try:
                meta = {"phx_ref": f"r{n}"}
                await self.store.presence_join(
                    topic, "g", PresenceEntry(f"u{n}", meta), 1000, MetaFrame("[", "]")
                )
                await self.store.publish(topic, f"m{n}")
                await self.store.call_commit(
                    "g", f"c{worker}-{n}", CallCommit(None, "{}", ("alice",), due=1.0)
                )
                await self.store.presence_leave(topic, "g", f"r{n}", None)
                self.ok.append(time.monotonic())
            except StoreUnavailable:
                self.failed.append(time.monotonic())
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.running = False
        _, pending = await asyncio.wait(self._tasks, timeout=10)
        assert not pending, "load workers did not stop"


@pytest.mark.slow
async def test_store_follows_a_promoted_replica_under_load(redis_sentinel: RedisSentinelSet) -> None:
    old = redis_sentinel.primary_port()
    a = RedisStore(redis_sentinel.target, "a", 30)
    b = RedisStore(redis_sentinel.target, "b", 30)
    got_b: list[str] = []
    b.on_remote = lambda topic, payload: got_b.append(payload)
    for store in (a, b):
        await store.start()
        await store.replica_heartbeat()
    await b.subscribe("voice:g:news")
    await a.publish("voice:g:news", "before")

    async def heard(payload: str) -> bool:
        if payload not in got_b:
            await a.publish("voice:g:news", payload)  # until b's subscription is back
        return payload in got_b

    await eventually_async(lambda: heard("before"), 10, "b hears a before the failover")
    load = Load(a, workers=4)
    try:
        await eventually_async(lambda: asyncio.sleep(0, len(load.ok) >= 20), 10, "the load runs")
        killed_at = time.monotonic()
        redis_sentinel.server(old).kill()

        async def promoted() -> bool:
            port = await asyncio.to_thread(redis_sentinel.primary_port)
            return port not in (0, old)

        await eventually_async(promoted, RECOVERY_BOUND_S, "the Sentinels promote the replica")

        async def recovered() -> bool:
            # Operations failed after the kill and succeed again after the failures.
            return (
                bool(load.failed)
                and load.failed[-1] > killed_at
                and sum(t > load.failed[-1] for t in load.ok) >= 20
            )

        await eventually_async(recovered, RECOVERY_BOUND_S, "store operations succeed again")
        gap = load.failed[-1] - killed_at
        first = load.failed[0] - killed_at
        print(f"failover: first failure {first:.2f} s, last failure {gap:.2f} s after the kill")
    finally:
        await load.stop()
    new = redis_sentinel.primary_port()
    assert new != old
    assert (await asyncio.to_thread(lambda: _redis_client(new).info("replication")))["role"] == "master"
    # The store writes to the new primary, and broadcasts reach the other replica again.
    await a.member_set("g", "bob", {"server_muted": True})
    assert await b.member_get("g", "bob") == {"server_muted": True}
    assert await asyncio.to_thread(lambda: _redis_client(new).exists("voxa:{g}:member:bob")) == 1
    await eventually_async(lambda: heard("after"), RECOVERY_BOUND_S, "b hears a after the failover")
    for store in (a, b):
        await store.close()


@pytest.mark.slow
async def test_signaling_replicas_follow_a_failover(
    signaling_factory: SignalingFactory, redis_sentinel: RedisSentinelSet
) -> None:
    """Two `voxa signaling` processes configured with VOXA_REDIS_SENTINELS: clients stay connected
    through the failover, presence converges, and the channel works across replicas on the new primary."""
    env = {k.removeprefix("VOXA_").lower(): v for k, v in redis_sentinel.env.items()}
    a = signaling_factory(replica_ttl_s="3", **env)
    b = signaling_factory(replica_ttl_s="3", **env)
    a.wait("/readyz")
    b.wait("/readyz")
    alice = PhoenixClient(a.ws_url, token("alice"))
    bob = PhoenixClient(b.ws_url, token("bob"))
    for c in (alice, bob):
        await c.connect()
    alice_ch, _ = await alice.join(TOPIC)
    bob_ch, _ = await bob.join(TOPIC)
    await alice_ch.wait_presence(lambda m: set(m) == {"alice", "bob"})

    old = redis_sentinel.primary_port()
    redis_sentinel.server(old).kill()

    async def promoted() -> bool:
        port = await asyncio.to_thread(redis_sentinel.primary_port)
        return port not in (0, old)

    await eventually_async(promoted, RECOVERY_BOUND_S, "the Sentinels promote the replica")
    await wait_status(a, 200, timeout=RECOVERY_BOUND_S)
    await wait_status(b, 200, timeout=RECOVERY_BOUND_S)
    await alice.heartbeat()
    await bob.heartbeat()
    await bob_ch.push("mute")
    await alice_ch.wait_presence(lambda m: m["bob"]["muted"], timeout=RECOVERY_BOUND_S)
    newcomer = PhoenixClient(a.ws_url, token("dave"))
    await newcomer.connect()
    dave_ch, _ = await newcomer.join(TOPIC)
    await dave_ch.wait_presence(lambda m: set(m) == {"alice", "bob", "dave"}, timeout=RECOVERY_BOUND_S)
    await bob_ch.wait_presence(lambda m: set(m) == {"alice", "bob", "dave"}, timeout=RECOVERY_BOUND_S)
    for c in (alice, bob, newcomer):
        await c.close()
