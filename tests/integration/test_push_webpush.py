"""Web Push to offline callees, end to end: two real `voxa signaling` replicas on a real Redis push to a
real RFC 8030/8291 push service on loopback (web-push-testing), which checks VAPID and decrypts, and
the test reads back what a browser's service worker would get."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import RedisServer, SignalingFactory, SignalingProcess
from tests.integration.conftest import token
from tests.support.push_helpers import api, metric
from tests.support.push_standins import BrokenPushService, WebPushTestService, p256_pem
from voxa.client.phoenix import ClientChannel, PhoenixClient
from voxa.common.testing.wait import eventually_async
from voxa.signaling.push.result import MAX_ATTEMPTS

pytestmark = pytest.mark.slow
RING_S = 30
Device = Callable[..., Awaitable[ClientChannel]]


@pytest.fixture
async def web_push(tmp_path: Path) -> AsyncIterator[WebPushTestService]:
    service = WebPushTestService(tmp_path)
    await service.start()
    yield service
    service.stop()


@pytest.fixture
def push_env(tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "vapid.pem"
    p256_pem(key)
    return {"push_vapid_private_key_file": str(key), "push_vapid_subject": "mailto:ops@voxa.test"}


@pytest.fixture
def replicas(
    signaling_factory: SignalingFactory, redis_server: RedisServer, push_env: dict[str, str]
) -> tuple[SignalingProcess, SignalingProcess]:
    settings = {"call_ring_timeout_s": str(RING_S), **push_env}
    return signaling_factory(redis_server.url, **settings), signaling_factory(redis_server.url, **settings)


@pytest.fixture
async def device(replicas: tuple[SignalingProcess, SignalingProcess]) -> AsyncIterator[Device]:
    clients: list[PhoenixClient] = []

    async def open_device(user: str, device_id: str, replica: int = 0) -> ClientChannel:
        client = PhoenixClient(replicas[replica].ws_url, token(user, grant="connect,speak,call"))
        await client.connect()
        clients.append(client)
        channel, _ = await client.join(f"user:{user}", {"device_id": device_id})
        return channel

    yield open_device
    for client in clients:
        await client.close()


async def subscribe_device(
    replica: SignalingProcess, web_push: WebPushTestService, device_id: str, user: str = "bob"
) -> str:
    """Subscribe at the push service with the server's VAPID key, register it; the clientHash."""
    status, found = await api(replica, "GET", "/push/vapid-public-key")
    assert status == 200
    subscription = await web_push.subscribe(found["public_key"])
    body = {
        "device_id": device_id,
        "kind": "webpush",
        "subscription": {"endpoint": subscription["endpoint"], "keys": subscription["keys"]},
    }
    status, reply = await api(replica, "POST", "/push/devices", user, body)
    assert (status, reply) == (201, {"device_id": device_id, "kind": "webpush"})
    return str(subscription["clientHash"])


async def pushes(web_push: WebPushTestService, client_hash: str, count: int) -> list[dict[str, Any]]:
    async def arrived() -> list[dict[str, Any]] | None:
        got = await web_push.notifications(client_hash)
        return got if len(got) >= count else None

    found: list[dict[str, Any]] = await eventually_async(arrived, 30, f"{count} pushes", poll=0.1)
    return found


async def test_an_offline_callee_is_rung_by_web_push_and_told_when_the_caller_cancels(
    replicas: tuple[SignalingProcess, SignalingProcess], web_push: WebPushTestService, device: Device
) -> None:
    client_hash = await subscribe_device(replicas[1], web_push, "bob-browser")
    alice = await device("alice", "alice-laptop", replica=0)
    call_id = (await alice.push("start_call", {"invitees": ["bob"], "video": True}))["call_id"]
    [ring] = await pushes(web_push, client_hash, 1)
    assert ring["type"] == "call_started" and ring["call_id"] == call_id
    assert ring["caller"] == {"id": "alice", "name": "Alice"} and ring["video"] is True
    assert ring["expires_at"] > 0
    [headers] = await web_push.headers(client_hash)
    assert RING_S - 5 <= int(headers["ttl"]) <= RING_S  # the remaining ring time
    assert headers["urgency"] == "high" and headers["topic"] == f"call-{call_id}"[:32]
    assert headers["vapid"] is True
    await alice.push("end_call", {"call_id": call_id})
    ring, stop = await pushes(web_push, client_hash, 2)
    assert stop == {"type": "stop_ringing", "call_id": call_id, "reason": "cancelled"}
    assert [h["topic"] for h in await web_push.headers(client_hash)] == [f"call-{call_id}"[:32]] * 2
    sent = sum([await metric(r, "voxa_signaling_push_sent_total", kind="webpush") for r in replicas])
    assert sent == 2


async def test_an_online_device_rings_on_its_socket_and_only_offline_ones_are_pushed(
    replicas: tuple[SignalingProcess, SignalingProcess], web_push: WebPushTestService, device: Device
) -> None:
    phone_hash = await subscribe_device(replicas[0], web_push, "bob-phone")
    laptop_hash = await subscribe_device(replicas[0], web_push, "bob-laptop")
    phone = await device("bob", "bob-phone", replica=1)
    await phone.wait_presence(lambda m: "bob-phone" in m, timeout=20)
    alice = await device("alice", "alice-laptop", replica=0)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    await phone.wait_event("call_started", timeout=20)
    [ring] = await pushes(web_push, laptop_hash, 1)
    assert ring["type"] == "call_started" and ring["call_id"] == call_id
    await phone.push("answer_call", {"call_id": call_id})
    _, stop = await pushes(web_push, laptop_hash, 2)
    assert stop == {"type": "stop_ringing", "call_id": call_id, "reason": "answered_elsewhere"}
    # The online phone was never pushed: not the ring, not the follow-up.
    assert await web_push.notifications(phone_hash) == []


async def test_an_expired_subscription_is_removed_and_the_call_goes_on(
    replicas: tuple[SignalingProcess, SignalingProcess], web_push: WebPushTestService, device: Device
) -> None:
    client_hash = await subscribe_device(replicas[1], web_push, "bob-browser")
    await web_push.expire(client_hash)
    bob = await device("bob", "bob-other-tab", replica=1)
    alice = await device("alice", "alice-laptop", replica=0)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]

    async def removed() -> bool:
        status, found = await api(replicas[0], "GET", "/push/devices")
        return status == 200 and found["devices"] == []

    await eventually_async(removed, 30, "the 410'd registration to go", poll=0.1)
    assert sum([await metric(r, "voxa_signaling_push_removed_total", kind="webpush") for r in replicas]) == 1
    await bob.wait_event("call_started", timeout=20)
    await bob.push("decline_call", {"call_id": call_id, "reason": "declined"})
    assert (await alice.wait_event("call_ended", timeout=20))["reason"] == "declined"


async def test_registrations_survive_a_signaling_restart_on_redis(
    replicas: tuple[SignalingProcess, SignalingProcess], web_push: WebPushTestService, device: Device
) -> None:
    client_hash = await subscribe_device(replicas[0], web_push, "bob-browser")
    for replica in replicas:
        replica.stop()
        replica.start()
    status, found = await api(replicas[0], "GET", "/push/devices")
    assert (status, found) == (200, {"devices": [{"device_id": "bob-browser", "kind": "webpush"}]})
    alice = await device("alice", "alice-laptop", replica=1)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    [ring] = await pushes(web_push, client_hash, 1)
    assert ring["call_id"] == call_id
    status, reply = await api(replicas[1], "DELETE", "/push/devices/bob-browser")
    assert (status, reply) == (200, {"device_id": "bob-browser", "removed": 1})
    status, reply = await api(replicas[1], "DELETE", "/push/devices/bob-browser")
    assert status == 404 and "no push registration" in reply["error"]


@pytest.mark.parametrize("hang", [False, True], ids=["answers-500", "hangs"])
async def test_a_broken_push_service_neither_delays_nor_sticks_a_call(
    signaling_factory: SignalingFactory, redis_server: RedisServer, push_env: dict[str, str], hang: bool
) -> None:
    """A push service answering 500 gets a bounded number of tries within the ring window; one that
    never answers is given up at the ring's end; meanwhile the call rings online devices and times
    out as usual, and nothing is left behind."""
    ring_s = 8
    replica = signaling_factory(redis_server.url, call_ring_timeout_s=str(ring_s), **push_env)
    broken = BrokenPushService(hang=hang)
    await broken.start()
    clients: list[PhoenixClient] = []
    try:
        body = {"device_id": "bob-tablet", "kind": "webpush", "subscription": broken.subscription()}
        assert (await api(replica, "POST", "/push/devices", "bob", body))[0] == 201
        channels = []
        for user, device_id in (("bob", "bob-phone"), ("alice", "alice-laptop")):
            client = PhoenixClient(replica.ws_url, token(user, grant="connect,speak,call"))
            await client.connect()
            clients.append(client)
            channels.append((await client.join(f"user:{user}", {"device_id": device_id}))[0])
        bob, alice = channels
        call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
        assert (await bob.wait_event("call_started", timeout=5))["call_id"] == call_id

        async def tried() -> bool:
            return bool(broken.ttls)

        await eventually_async(tried, 20, "a push try", poll=0.1)
        # The ring times out as it would without push, for both sides.
        assert (await bob.wait_event("stop_ringing", timeout=30))["reason"] == "timeout"
        assert (await alice.wait_event("call_ended", timeout=30))["reason"] == "timeout"

        async def given_up() -> bool:
            return (
                await metric(replica, "voxa_signaling_push_failed_total", kind="webpush", reason="gave_up")
                >= 1
            )

        await eventually_async(given_up, 30, "the push to be given up", poll=0.1)
        rings = [ttl for ttl in broken.ttls if ttl <= ring_s]  # the follow-up has a longer TTL
        assert 1 <= len(rings) <= (1 if hang else MAX_ATTEMPTS)
        # The registration stays (a 500 or a timeout says nothing about it), and the next call rings.
        assert (await api(replica, "GET", "/push/devices"))[1]["devices"] != []
        second = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
        assert (await bob.wait_event("call_started", timeout=5))["call_id"] == second
    finally:
        for client in clients:
            await client.close()
        await broken.stop()


async def test_a_ring_that_times_out_is_followed_up_by_whichever_replica_expires_it(
    signaling_factory: SignalingFactory,
    redis_server: RedisServer,
    push_env: dict[str, str],
    web_push: WebPushTestService,
) -> None:
    ring_s = 4
    one, two = (
        signaling_factory(redis_server.url, call_ring_timeout_s=str(ring_s), **push_env) for _ in "12"
    )
    client_hash = await subscribe_device(two, web_push, "bob-browser")
    client = PhoenixClient(one.ws_url, token("alice", grant="connect,speak,call"))
    await client.connect()
    try:
        alice, _ = await client.join("user:alice", {"device_id": "alice-laptop"})
        call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
        assert (await alice.wait_event("call_ended", timeout=30))["reason"] == "timeout"
        ring, stop = await pushes(web_push, client_hash, 2)
        assert ring["type"] == "call_started"
        assert stop == {"type": "stop_ringing", "call_id": call_id, "reason": "timeout"}
        ring_headers, stop_headers = await web_push.headers(client_hash)
        assert 0 < int(ring_headers["ttl"]) <= ring_s < int(stop_headers["ttl"])
    finally:
        await client.close()
