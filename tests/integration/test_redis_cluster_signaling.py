"""Two `voxa signaling` processes on a real three-primary Redis Cluster (VOXA_REDIS_CLUSTER=true, the URL
naming one node): presence, moderation and user-topic pushes work across replicas, and each voice
server's keys sit in one slot."""

from __future__ import annotations

import asyncio

import pytest

from conftest import RedisClusterSet, SignalingFactory, _redis_client
from tests.integration.conftest import token
from voxa.client.phoenix import PhoenixClient
from voxa.signaling.store.redis import server_tag

TOPIC = "voice:g1:lobby"


@pytest.mark.slow
async def test_signaling_replicas_share_a_redis_cluster(
    signaling_factory: SignalingFactory, redis_cluster: RedisClusterSet
) -> None:
    redis_cluster.flush()
    a = signaling_factory(redis_cluster.url, redis_cluster="true")
    b = signaling_factory(redis_cluster.nodes[1].url.removesuffix("/0"), redis_cluster="true")
    a.wait("/readyz")
    b.wait("/readyz")
    alice = PhoenixClient(a.ws_url, token("alice"))
    bob = PhoenixClient(b.ws_url, token("bob"))
    for c in (alice, bob):
        await c.connect()
    alice_ch, _ = await alice.join(TOPIC)
    bob_ch, _ = await bob.join(TOPIC)
    await alice_ch.wait_presence(lambda m: set(m) == {"alice", "bob"})
    await bob_ch.push("mute")
    await alice_ch.wait_presence(lambda m: m["bob"]["muted"])
    await bob.close()
    await alice_ch.wait_presence(lambda m: set(m) == {"alice"})

    def keys_of_g1() -> list[tuple[int, str]]:
        found = []
        for node in redis_cluster.nodes:
            client = _redis_client(node.port)
            found += [(node.port, k) for k in client.scan_iter(match=f"{server_tag('g1')}:*")]
        return found

    found = await asyncio.to_thread(keys_of_g1)
    assert found and len({port for port, _ in found}) == 1  # one slot, so one node
    await alice.close()
