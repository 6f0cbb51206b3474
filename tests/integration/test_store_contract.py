"""One contract, every backend: the in-memory store and Redis behave the same, and Redis the same in
each deployment: one redis-server, a primary with a replica and three Sentinels, and a Redis Cluster of
three primaries (real processes on loopback; the Sentinel set and the cluster are started once per
module and flushed between tests).

Each test gets a factory of replica stores sharing one backend, so multi-replica behaviour (pub/sub,
liveness, sweeping a dead replica's presence) is part of the contract. Topics name their voice server
as signaling's do (`voice:<server>:<channel>`), which a cluster needs: a topic's keys share the slot of
its server's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from conftest import RedisClusterSet, RedisSentinelSet
from voxa.common.testing.wait import eventually_async
from voxa.signaling.store import (
    CallCommit,
    MediaLoad,
    MediaServer,
    MetaFrame,
    PresenceEntry,
    RedisTarget,
    Store,
)
from voxa.signaling.store.base import MISSED_CALLS_KEPT
from voxa.signaling.store.memory import MemoryBackend, MemoryStore
from voxa.signaling.store.redis import RedisStore

StoreFactory = Callable[[str], Awaitable[Store]]
TTL = 0.6


def redis_target(request: pytest.FixtureRequest) -> RedisTarget | None:
    if request.param == "redis":
        return RedisTarget(url=request.getfixturevalue("redis_server").url)
    if request.param in ("sentinel", "cluster"):
        shared: RedisSentinelSet | RedisClusterSet = request.getfixturevalue(
            "redis_sentinel_shared" if request.param == "sentinel" else "redis_cluster"
        )
        shared.flush()
        return shared.target
    return None


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    created: list[Store] = []
    backend = MemoryBackend()
    target = redis_target(request)

    async def factory(replica: str) -> Store:
        store: Store = (
            RedisStore(target, replica, TTL) if target is not None else MemoryStore(replica, TTL, backend)
        )
        await store.start()
        await store.replica_heartbeat()
        created.append(store)
        return store

    yield factory
    for store in created:
        await store.close()


def entry(key: str, ref: str, **meta: object) -> PresenceEntry:
    return PresenceEntry(key, {"phx_ref": ref, **meta})


def frame(name: str) -> MetaFrame:
    return MetaFrame(f"[{name!r},", "]")


async def join(
    store: Store, topic: str, e: PresenceEntry, capacity: int = 10, name: str = "f"
) -> list[PresenceEntry] | None:
    result = await store.presence_join(topic, "g", e, capacity, frame(name))
    return None if result is None else result.entries


def keys(entries: list[PresenceEntry]) -> list[tuple[str, str]]:
    return sorted((e.key, e.meta["phx_ref"]) for e in entries)


async def test_join_returns_all_entries_and_indexes_topic(make_store: StoreFactory) -> None:
    a = await make_store("a")
    assert await join(a, "voice:g:c", entry("alice", "r1"), 10, "f1") == [entry("alice", "r1")]
    got = await join(a, "voice:g:c", entry("bob", "r2", muted=True), 10, "f2")
    assert keys(got or []) == [("alice", "r1"), ("bob", "r2")]
    assert await a.channels("g") == ["voice:g:c"]
    listed = await a.presence_list("voice:g:c")
    assert {e.key: e.meta for e in listed}["bob"] == {"phx_ref": "r2", "muted": True}


async def test_capacity(make_store: StoreFactory) -> None:
    a = await make_store("a")
    assert await join(a, "voice:g:t", entry("u1", "1"), 2, "f") is not None
    assert await join(a, "voice:g:t", entry("u2", "2"), 2, "f") is not None
    assert await join(a, "voice:g:t", entry("u3", "3"), 2, "f") is None
    assert keys(await a.presence_list("voice:g:t")) == [("u1", "1"), ("u2", "2")]


async def test_leave_and_index_cleanup(make_store: StoreFactory) -> None:
    a = await make_store("a")
    await join(a, "voice:g:t", entry("u1", "1"), 10, "f")
    await a.presence_leave("voice:g:t", "g", "1", "bye")
    assert await a.presence_list("voice:g:t") == []
    assert await a.channels("g") == []


async def test_update_replaces_entry(make_store: StoreFactory) -> None:
    a = await make_store("a")
    await join(a, "voice:g:t", entry("u1", "1", muted=False), 10, "f")
    await a.presence_update("voice:g:t", "1", entry("u1", "2", muted=True), "f")
    assert [(e.key, e.meta) for e in await a.presence_list("voice:g:t")] == [
        ("u1", {"phx_ref": "2", "muted": True})
    ]


async def test_replicas_only_remove_their_own_entries(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    await join(a, "voice:g:t", entry("u1", "same"), 10, "f")
    await join(b, "voice:g:t", entry("u2", "same"), 10, "f")
    await a.presence_leave("voice:g:t", "g", "same", None)
    assert keys(await b.presence_list("voice:g:t")) == [("u2", "same")]


async def test_pubsub_reaches_other_replicas_only(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    got_a: list[tuple[str, str]] = []
    got_b: list[tuple[str, str]] = []
    a.on_remote = lambda t, p: got_a.append((t, p))
    b.on_remote = lambda t, p: got_b.append((t, p))
    await a.subscribe("voice:g:t")
    await b.subscribe("voice:g:t")
    await join(a, "voice:g:t", entry("u1", "1"), 10, "join-frame")
    await a.publish("voice:g:t", "plain")
    await a.presence_update("voice:g:t", "1", entry("u1", "2"), "update-frame")
    await a.presence_leave("voice:g:t", "g", "2", "leave-frame")

    async def all_arrived() -> bool:
        return len(got_b) == 4

    await eventually_async(all_arrived, 5.0, "all arrived")
    assert got_b == [
        ("voice:g:t", """['join-frame',{"phx_ref":"1"}]"""),
        ("voice:g:t", "plain"),
        ("voice:g:t", "update-frame"),
        ("voice:g:t", "leave-frame"),
    ]
    assert got_a == []
    await b.unsubscribe("voice:g:t")
    await a.publish("voice:g:t", "after")
    await a.subscribe("voice:g:t2")
    await b.subscribe("voice:g:t2")
    await a.publish("voice:g:t2", "marker")  # once the marker arrives, "after" would have arrived too

    async def marker() -> bool:
        return ("voice:g:t2", "marker") in got_b

    await eventually_async(marker, 5.0, "marker")
    assert ("voice:g:t", "after") not in got_b


async def test_publish_many_keeps_order_and_skips_topics_nobody_else_hears(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    got_b: list[tuple[str, str]] = []
    b.on_remote = lambda t, p: got_b.append((t, p))
    await a.subscribe("voice:g:only-a")
    await b.subscribe("voice:g:x")
    await b.subscribe("voice:g:y")
    await a.publish_many(
        [("voice:g:x", "1"), ("voice:g:only-a", "lost"), ("voice:g:y", "2"), ("voice:g:x", "3")]
    )
    await a.publish_many([("voice:g:y", "4")])
    if isinstance(a, RedisStore):  # a Redis that restarted has forgotten the scripts
        await a._redis.script_flush()
    await a.publish_many([("voice:g:x", "5"), ("voice:g:y", "6")])

    async def arrived() -> bool:
        return len(got_b) == 6

    await eventually_async(arrived, 5.0, "arrived")
    assert got_b == [
        ("voice:g:x", "1"),
        ("voice:g:y", "2"),
        ("voice:g:x", "3"),
        ("voice:g:y", "4"),
        ("voice:g:x", "5"),
        ("voice:g:y", "6"),
    ]


async def test_broadcasts_of_many_voice_servers_arrive_and_survive_quick_resubscribes(
    make_store: StoreFactory,
) -> None:
    """On a cluster the servers' channels spread over the primaries (one reader each); a topic left
    and joined again at once stays subscribed."""
    a, b = await make_store("a"), await make_store("b")
    got_b: list[tuple[str, str]] = []
    b.on_remote = lambda t, p: got_b.append((t, p))
    topics = [f"user:s{i}:bob" for i in range(12)]
    for topic in topics:
        await b.subscribe(topic)
    for _ in range(3):
        await b.unsubscribe(topics[0])
        await b.subscribe(topics[0])
    for topic in topics:
        await a.publish(topic, "hi")

    async def arrived() -> bool:
        return sorted(got_b) == sorted((t, "hi") for t in topics)

    await eventually_async(arrived, 5.0, "arrived")
    await a.publish(topics[0], "again")

    async def again() -> bool:
        return (topics[0], "again") in got_b

    await eventually_async(again, 5.0, "again")


async def test_topics_and_indexes_of_different_servers_are_refused(make_store: StoreFactory) -> None:
    a = await make_store("a")
    with pytest.raises(ValueError, match="voice server"):
        await a.presence_join("voice:g:c", "h", entry("alice", "1"), 10, frame("f"))
    with pytest.raises(ValueError, match="voice server"):
        await a.assignment_release_if_idle("h", "c", "voice:g:c")
    await a.presence_join("user:g:alice", "users:g", entry("phone", "2"), 10, frame("f"))
    assert await a.channels("users:g") == ["user:g:alice"]


async def test_dead_replica_entries_are_hidden_and_swept(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    await join(a, "voice:g:t", entry("alive", "1"), 10, "f")
    await join(b, "voice:g:t", entry("doomed", "2"), 10, "f")

    async def b_expired() -> bool:
        await a.replica_heartbeat()  # a stays alive; b stops heartbeating
        return keys(await a.presence_list("voice:g:t")) == [("alive", "1")]

    await eventually_async(b_expired, 5.0, "b expired")
    removed = await a.presence_sweep("voice:g:t", "g")
    assert keys(removed) == [("doomed", "2")]
    assert await a.presence_sweep("voice:g:t", "g") == []


async def test_capacity_counts_only_live_replicas(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    await join(b, "voice:g:t", entry("ghost", "1"), 1, "f")
    await b.replica_remove()
    assert keys(await join(a, "voice:g:t", entry("new", "2"), 1, "f") or []) == [("new", "2")]


async def test_resync_replaces_this_replicas_entries(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    await join(a, "voice:g:t", entry("stale", "1"), 10, "f")
    await join(b, "voice:g:t", entry("other", "2"), 10, "f")
    await a.presence_resync("voice:g:t", "g", [entry("fresh", "3")])
    assert keys(await a.presence_list("voice:g:t")) == [("fresh", "3"), ("other", "2")]
    await a.presence_resync("voice:g:t2", "g", [entry("x", "4")])
    assert await a.channels("g") == ["voice:g:t", "voice:g:t2"]
    await a.presence_resync("voice:g:t2", "g", [])
    assert await a.channels("g") == ["voice:g:t"]


async def test_join_merges_member_flags_into_meta_and_frame(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    got_b: list[str] = []
    b.on_remote = lambda t, p: got_b.append(p)
    await b.subscribe("voice:g:t")
    await a.member_set("g", "bob", {"server_muted": True, "server_deafened": False})
    meta = {
        "phx_ref": "1",
        "name": "Bob \u00e9/",
        "server_muted": False,
        "server_deafened": True,
        "n": 1795255085123,
    }
    result = await a.presence_join(
        "voice:g:t", "g", PresenceEntry("bob", meta), 10, frame("j"), member=("g", "bob")
    )
    assert result is not None
    expected = {**meta, "server_muted": True, "server_deafened": False}
    assert result.entry == PresenceEntry("bob", expected)
    assert result.entries == [PresenceEntry("bob", expected)]
    assert result.frame.startswith("['j',") and orjson.loads(result.frame[5:-1]) == expected
    plain = await a.presence_join(
        "voice:g:t", "g", entry("carol", "2", server_muted=False), 10, frame("k"), member=("g", "carol")
    )
    assert plain is not None and plain.entry.meta == {"phx_ref": "2", "server_muted": False}

    async def arrived() -> bool:
        return len(got_b) == 2

    await eventually_async(arrived, 5.0, "arrived")
    assert got_b[0] == result.frame


async def test_member_flags_persist(make_store: StoreFactory) -> None:
    a = await make_store("a")
    assert await a.member_get("g", "bob") == {}
    await a.member_set("g", "bob", {"server_muted": True})
    await a.member_set("g", "bob", {"server_deafened": False})
    assert await a.member_get("g", "bob") == {"server_muted": True, "server_deafened": False}


def sfu(id_: str, peers: int = 0, draining: bool = False) -> MediaServer:
    return MediaServer(
        id=id_,
        server_id="g",
        url=f"http://{id_}:9000",
        capacity=50,
        draining=draining,
        load=MediaLoad(peers=peers),
    )


async def test_registry_upsert_list_expire(make_store: StoreFactory) -> None:
    a = await make_store("a")
    await a.media_server_upsert(sfu("s1", peers=3), ttl_s=30)
    await a.media_server_upsert(sfu("s2"), ttl_s=0.3)
    assert [m.id for m in await a.media_servers("g")] == ["s1", "s2"]
    assert (await a.media_servers("g"))[0].load.peers == 3

    async def s2_gone() -> bool:
        return [m.id for m in await a.media_servers("g")] == ["s1"]

    await eventually_async(s2_gone, 5.0, "s2 gone")
    await a.media_server_remove("g", "s1")
    assert await a.media_servers("g") == []


async def test_drain_mark_survives_heartbeats(make_store: StoreFactory) -> None:
    a = await make_store("a")
    await a.media_server_upsert(sfu("s1"), ttl_s=30)
    await a.media_server_mark_draining("g", "s1", True)
    await a.media_server_upsert(sfu("s1", peers=1), ttl_s=30)
    assert (await a.media_servers("g"))[0].draining is True
    await a.media_server_mark_draining("g", "s1", False)
    assert (await a.media_servers("g"))[0].draining is False
    await a.media_server_upsert(sfu("s1", draining=True), ttl_s=30)
    assert (await a.media_servers("g"))[0].draining is True


async def test_assignment_first_writer_wins_and_stale_is_replaced(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    assert await a.assignment_get("g", "c") is None
    assert await a.assignment_set("g", "c", "s1", replace=None) == "s1"
    assert await b.assignment_set("g", "c", "s2", replace=None) == "s1"
    assert await b.assignment_set("g", "c", "s2", replace="s9") == "s1"
    assert await b.assignment_set("g", "c", "s2", replace="s1") == "s2"
    await a.assignment_clear("g", "c")
    assert await b.assignment_get("g", "c") is None


async def test_purge_server_forgets_one_server_and_keeps_the_others(make_store: StoreFactory) -> None:
    a = await make_store("a")
    for server in ("g", "h"):
        await a.presence_join(f"voice:{server}:c", server, entry("alice", "r1"), 10, frame("f"))
        await a.member_set(server, "alice", {"server_muted": True})
        await a.media_server_upsert(sfu("s1").model_copy(update={"server_id": server}), ttl_s=30)
        await a.media_server_mark_draining(server, "s1", True)
        await a.assignment_set(server, "c", "s1", replace=None)
        await a.call_commit(server, "k1", CallCommit(None, "{}", ("alice", "bob"), due=10.0))
        await a.missed_add(server, "bob", "m", ttl_s=60)
    assert await a.purge_server("g") > 0
    assert await a.call_get("g", "k1") is None and await a.calls_of("g", "alice") == []
    assert await a.calls_due(100, 10) == [("h", "k1")]
    assert await a.missed_list("g", "bob") == []
    assert await a.missed_list("h", "bob") == ["m"]
    assert await a.channels("g") == []
    assert await a.presence_list("voice:g:c") == []
    assert await a.member_get("g", "alice") == {}
    assert await a.media_servers("g") == []
    assert await a.assignment_get("g", "c") is None
    # The other server is untouched.
    assert await a.channels("h") == ["voice:h:c"]
    assert await a.member_get("h", "alice") == {"server_muted": True}
    assert [m.draining for m in await a.media_servers("h")] == [True]
    assert await a.assignment_get("h", "c") == "s1"
    assert await a.purge_server("g") == 0


async def test_a_call_is_committed_by_compare_and_set_across_replicas(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    assert await a.call_get("g", "k1") is None
    first = await a.call_commit("g", "k1", CallCommit(None, '{"n":1}', ("alice", "bob"), due=130.0))
    assert first == 1
    # A second "new call" under the same id loses: it exists already.
    assert await b.call_commit("g", "k1", CallCommit(None, '{"n":9}', ("alice",), due=None)) is None
    stored = await b.call_get("g", "k1")
    assert stored is not None and (stored.data, stored.version) == ('{"n":1}', 1)
    assert await b.calls_of("g", "bob") == ["k1"]
    assert await b.calls_due(129.9, 10) == []
    assert await b.calls_due(130.0, 10) == [("g", "k1")]
    # Two replicas race on version 1: one wins, the other must read again.
    won = await a.call_commit("g", "k1", CallCommit(1, '{"n":2}', ("alice", "bob", "carol"), due=None))
    lost = await b.call_commit("g", "k1", CallCommit(1, '{"n":3}', ("alice", "bob"), due=200.0))
    assert (won, lost) == (2, None)
    assert await b.calls_due(1e12, 10) == []  # the winner cleared the deadline
    assert await b.calls_of("g", "carol") == ["k1"]
    # Ending deletes the call and every index entry of it.
    assert await b.call_commit("g", "k1", CallCommit(2, None, ("alice", "bob", "carol"), due=None)) == 3
    assert await a.call_get("g", "k1") is None
    for user in ("alice", "bob", "carol"):
        assert await a.calls_of("g", user) == []


async def test_calls_due_come_oldest_first_and_bounded(make_store: StoreFactory) -> None:
    a = await make_store("a")
    for i, due in enumerate((30.0, 10.0, 20.0)):
        await a.call_commit("g", f"k{i}", CallCommit(None, "{}", ("u",), due=due))
    assert await a.calls_due(25.0, 10) == [("g", "k1"), ("g", "k2")]
    assert await a.calls_due(100.0, 2) == [("g", "k1"), ("g", "k2")]


async def test_missed_calls_are_kept_newest_first_and_bounded(make_store: StoreFactory) -> None:
    a = await make_store("a")
    for i in range(MISSED_CALLS_KEPT + 5):
        await a.missed_add("g", "bob", f"m{i}", ttl_s=60)
    kept = await a.missed_list("g", "bob")
    assert len(kept) == MISSED_CALLS_KEPT and kept[0] == f"m{MISSED_CALLS_KEPT + 4}"
    assert await a.missed_list("g", "alice") == []


async def test_an_assignment_is_released_only_while_nobody_is_present(make_store: StoreFactory) -> None:
    """The last leaver's release and a new joiner on another replica cannot split a channel: the
    release checks presence and clears the assignment in one step."""
    a, b = await make_store("a"), await make_store("b")
    await a.assignment_set("g", "c", "s1", replace=None)
    await b.presence_join("voice:g:c", "g", entry("bob", "r2"), 10, frame("f"))
    assert await a.assignment_release_if_idle("g", "c", "voice:g:c") is False
    assert await a.assignment_get("g", "c") == "s1"
    await b.presence_leave("voice:g:c", "g", "r2", None)
    assert await a.assignment_release_if_idle("g", "c", "voice:g:c") is True
    assert await a.assignment_get("g", "c") is None


async def test_push_registrations_are_shared_capped_and_replaced_by_key(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    assert await a.push_devices("g", "bob") == {}
    assert await a.push_device_put("g", "bob", "phone|fcm", "r1", cap=2)
    assert await b.push_device_put("g", "bob", "laptop|webpush", "r2", cap=2)
    # Full: a third key is refused and changes nothing; the same key is replaced.
    assert not await a.push_device_put("g", "bob", "tablet|fcm", "r3", cap=2)
    assert await b.push_device_put("g", "bob", "phone|fcm", "r1b", cap=2)
    assert await a.push_devices("g", "bob") == {"phone|fcm": "r1b", "laptop|webpush": "r2"}
    # Per voice server and user.
    assert await a.push_devices("h", "bob") == {} and await a.push_devices("g", "alice") == {}
    assert await b.push_device_remove("g", "bob", ["phone|fcm", "nothing|fcm"]) == 1
    assert await a.push_devices("g", "bob") == {"laptop|webpush": "r2"}
    assert await a.push_device_remove("g", "bob", []) == 0
    await a.push_device_put("h", "bob", "phone|fcm", "x", cap=2)
    await a.purge_server("g")
    assert await a.push_devices("g", "bob") == {}
    assert await a.push_devices("h", "bob") == {"phone|fcm": "x"}


async def test_push_rung_records_are_taken_once_and_expire(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    await a.push_rung_set("g", "k1", "bob", '{"devices":["p"]}', ttl_s=30)
    assert await b.push_rung_take("g", "k1", "alice") is None
    assert await b.push_rung_take("g", "k1", "bob") == '{"devices":["p"]}'
    assert await a.push_rung_take("g", "k1", "bob") is None  # one replica sends the follow-ups
    await a.push_rung_set("g", "k2", "bob", "short", ttl_s=0.2)
    await asyncio.sleep(0.4)  # past the record's TTL
    assert await b.push_rung_take("g", "k2", "bob") is None


async def test_a_session_is_resumed_only_by_its_user_in_its_channel_with_its_token(
    make_store: StoreFactory,
) -> None:
    a, b = await make_store("a"), await make_store("b")
    await a.session_put("g", "s1", "alice", "lobby", "h1", ttl_s=30)
    assert not await b.session_take("g", "s1", "mallory", "lobby", "h1", "h2", ttl_s=30)  # wrong user
    assert not await b.session_take("g", "s1", "alice", "afk", "h1", "h2", ttl_s=30)  # wrong channel
    assert not await b.session_take("g", "s1", "alice", "lobby", "bad", "h2", ttl_s=30)  # wrong token
    assert not await b.session_take("h", "s1", "alice", "lobby", "h1", "h2", ttl_s=30)  # other server
    assert not await b.session_take("g", "s9", "alice", "lobby", "h1", "h2", ttl_s=30)  # unknown
    assert await b.session_take("g", "s1", "alice", "lobby", "h1", "h2", ttl_s=30)
    # The token rotated: the old one no longer resumes, the new one does.
    assert not await a.session_take("g", "s1", "alice", "lobby", "h1", "h3", ttl_s=30)
    assert await a.session_take("g", "s1", "alice", "lobby", "h2", "h3", ttl_s=30)


async def test_a_session_is_released_only_by_its_owner(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    await a.session_put("g", "s1", "alice", "lobby", "h1", ttl_s=30)
    assert await b.session_take("g", "s1", "alice", "lobby", "h1", "h2", ttl_s=30)
    assert not await a.session_release("g", "s1", "h1")  # taken over: not a's to remove any more
    assert not await a.session_release("g", "s1", "h2")
    assert await b.session_take("g", "s1", "alice", "lobby", "h2", "h3", ttl_s=30)  # still there
    # Resumed on the same replica: the lost join's release (the old token) leaves it alone.
    assert not await b.session_release("g", "s1", "h2")
    assert await b.session_release("g", "s1", "h3")
    assert not await b.session_release("g", "s1", "h3")
    assert not await b.session_take("g", "s1", "alice", "lobby", "h3", "h4", ttl_s=30)


async def test_sessions_expire_unless_their_owner_refreshes_them(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    await a.session_put("g", "kept", "alice", "lobby", "h", ttl_s=0.3)
    await a.session_put("g", "left", "bob", "lobby", "h", ttl_s=0.3)
    await b.session_put("g", "other", "carol", "lobby", "h", ttl_s=0.3)
    await a.session_refresh("g", ["kept", "other", "missing"], ttl_s=30)  # only its own are extended

    put_at = time.monotonic()
    # Expiry is a matter of time: wait for the TTL to pass (a probing take would refresh it).
    await eventually_async(lambda: time.monotonic() - put_at > 0.5, 5.0, "the TTL to pass")
    assert not await b.session_take("g", "left", "bob", "lobby", "h", "h", ttl_s=30)
    assert not await a.session_take("g", "other", "carol", "lobby", "h", "h", ttl_s=30)  # b's: expired too
    assert await b.session_take("g", "kept", "alice", "lobby", "h", "h", ttl_s=30)


async def test_a_resumed_sessions_old_presence_entry_is_evicted(make_store: StoreFactory) -> None:
    a, b = await make_store("a"), await make_store("b")
    topic = "voice:g:lobby"
    await join(a, topic, entry("alice", "r1", session_id="s1"))
    await join(a, topic, entry("bob", "r2", session_id="s2"))
    await join(b, topic, entry("alice", "r3", session_id="s1"))
    removed = await b.presence_evict_session(topic, "g", "s1", keep_ref="r3")
    assert keys(removed) == [("alice", "r1")]
    assert keys(await b.presence_list(topic)) == [("alice", "r3"), ("bob", "r2")]
    assert await b.presence_evict_session(topic, "g", "s1", keep_ref="r3") == []


async def test_purge_server_forgets_its_sessions(make_store: StoreFactory) -> None:
    a = await make_store("a")
    await a.session_put("g", "s1", "alice", "lobby", "h", ttl_s=30)
    await a.session_put("h", "s1", "alice", "lobby", "h", ttl_s=30)
    assert await a.purge_server("g") >= 1
    assert not await a.session_take("g", "s1", "alice", "lobby", "h", "h", ttl_s=30)
    assert await a.session_take("h", "s1", "alice", "lobby", "h", "h", ttl_s=30)
