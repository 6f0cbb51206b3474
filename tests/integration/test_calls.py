"""Calls between real `voxa signaling` replicas on a real Redis: the caller on one replica, the callee's
devices on the other; ringing, answer on one device, decline, cancel, timeout and busy, as the
`user:` channel of docs/protocol.md carries them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conftest import RedisServer, SignalingFactory, SignalingProcess
from tests.integration.conftest import token
from voxa.client.phoenix import ClientChannel, PhoenixClient, PushError

Device = Callable[..., Awaitable[ClientChannel]]


@pytest.fixture
async def replicas(
    signaling_factory: SignalingFactory, redis_server: RedisServer
) -> tuple[SignalingProcess, SignalingProcess]:
    settings = {"call_ring_timeout_s": "2", "call_reconnect_grace_s": "1"}
    one = signaling_factory(redis_server.url, **settings)
    two = signaling_factory(redis_server.url, **settings)
    return one, two


@pytest.fixture
async def device(replicas: tuple[SignalingProcess, SignalingProcess]) -> AsyncIterator[Device]:
    """device(user, device_id, replica=0, grant=...) -> the joined `user:` channel of a new socket."""
    clients: list[PhoenixClient] = []

    async def open_device(
        user: str, device_id: str, replica: int = 0, grant: str = "connect,speak,call"
    ) -> ClientChannel:
        client = PhoenixClient(replicas[replica].ws_url, token(user, grant=grant))
        await client.connect()
        clients.append(client)
        channel, reply = await client.join(f"user:{user}", {"device_id": device_id})
        assert reply["user_id"] == user and reply["device_id"] == device_id
        return channel

    yield open_device
    for client in clients:
        await client.close()


async def no_event(channel: ClientChannel, name: str, within: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        await channel.wait_event(name, timeout=within)


async def test_answer_on_one_device_stops_the_others_and_tells_the_caller(device: Device) -> None:
    alice = await device("alice", "alice-laptop", replica=0)
    phone = await device("bob", "bob-phone", replica=1)
    laptop = await device("bob", "bob-laptop", replica=0)
    reply = await alice.push("start_call", {"invitees": ["bob"]})
    call_id = reply["call_id"]
    assert reply["topic"] == f"call:{call_id}"
    for bob in (phone, laptop):
        started = await bob.wait_event("call_started")
        assert started["caller"] == {"id": "alice", "name": "Alice"} and started["invitees"] == ["bob"]
        assert started["video"] is False and started["expires_at"] > 0
    assert (await alice.wait_event("call_ringing")) == {"call_id": call_id, "user_id": "bob"}
    answered = await phone.push("answer_call", {"call_id": call_id})
    assert answered["topic"] == f"call:{call_id}" and "ice_servers" in answered
    assert (await alice.wait_event("call_accepted"))["user_id"] == "bob"
    stop = await laptop.wait_event("stop_ringing")
    assert stop == {"call_id": call_id, "reason": "answered_elsewhere"}
    await no_event(phone, "stop_ringing")
    state = await alice.wait_event("call_state")
    while state["state"] != "active":
        state = await alice.wait_event("call_state")
    assert state["members"] == {"alice": "joined", "bob": "joined"}
    # The other device cannot answer too.
    with pytest.raises(PushError) as info:
        await laptop.push("answer_call", {"call_id": call_id})
    assert info.value.response["reason"] == "already answered"
    # Either member's end ends a 1:1 call for both.
    await phone.push("end_call", {"call_id": call_id})
    assert (await alice.wait_event("call_ended")) == {"call_id": call_id, "reason": "hangup"}


async def test_a_decline_on_one_device_declines_for_all_and_reaches_the_caller(device: Device) -> None:
    alice = await device("alice", "a1", replica=1)
    phone = await device("bob", "b1", replica=0)
    laptop = await device("bob", "b2", replica=1)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    await phone.wait_event("call_started")
    await laptop.wait_event("call_started")
    await phone.push("decline_call", {"call_id": call_id, "reason": "declined"})
    assert (await alice.wait_event("call_declined"))["user_id"] == "bob"
    assert (await laptop.wait_event("stop_ringing"))["reason"] == "declined_elsewhere"
    assert (await alice.wait_event("call_ended"))["reason"] == "declined"


async def test_presence_on_the_user_topic_lists_the_online_devices(device: Device) -> None:
    phone = await device("bob", "bob-phone", replica=0)
    await phone.wait_presence(lambda m: set(m) == {"bob-phone"})
    laptop = await device("bob", "bob-laptop", replica=1)
    await laptop.wait_presence(lambda m: set(m) == {"bob-phone", "bob-laptop"}, timeout=20)
    members = await phone.wait_presence(lambda m: set(m) == {"bob-phone", "bob-laptop"}, timeout=20)
    assert members["bob-laptop"]["device_id"] == "bob-laptop" and members["bob-laptop"]["online_at"] > 0
    await laptop.client.close()
    await phone.wait_presence(lambda m: set(m) == {"bob-phone"}, timeout=20)


async def test_a_ringing_call_is_cancelled_when_its_caller_is_gone_past_the_grace(device: Device) -> None:
    alice = await device("alice", "a1", replica=0)
    bob = await device("bob", "b1", replica=1)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    await bob.wait_event("call_started")
    await alice.client.close()
    assert (await bob.wait_event("stop_ringing", timeout=20)) == {"call_id": call_id, "reason": "cancelled"}
    assert (await bob.wait_event("call_ended"))["reason"] == "cancelled"


async def test_a_caller_back_within_the_grace_keeps_the_call_ringing(
    device: Device, signaling_factory: SignalingFactory, redis_server: RedisServer
) -> None:
    # A grace long enough that only the ring timeout (10 s) can end this call.
    slow = signaling_factory(redis_server.url, call_ring_timeout_s="10", call_reconnect_grace_s="30")
    clients = []
    try:

        async def open_device(user: str, device_id: str) -> ClientChannel:
            client = PhoenixClient(slow.ws_url, token(user, grant="connect,speak,call"))
            await client.connect()
            clients.append(client)
            channel, _ = await client.join(f"user:{user}", {"device_id": device_id})
            return channel

        alice = await open_device("alice", "a1")
        bob = await open_device("bob", "b1")
        call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
        await bob.wait_event("call_started")
        await alice.client.close()
        alice = await open_device("alice", "a1")
        state = await alice.wait_event("call_state")
        assert state == {
            "call_id": call_id,
            "state": "ringing",
            "members": {"alice": "joined", "bob": "ringing"},
        }
        await bob.push("answer_call", {"call_id": call_id})
        assert (await alice.wait_event("call_accepted"))["user_id"] == "bob"
    finally:
        for client in clients:
            await client.close()


async def test_the_caller_cancels_and_every_ring_stops(device: Device) -> None:
    alice = await device("alice", "a1", replica=0)
    bob = await device("bob", "b1", replica=1)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    await bob.wait_event("call_started")
    await alice.push("end_call", {"call_id": call_id})
    assert (await bob.wait_event("stop_ringing")) == {"call_id": call_id, "reason": "cancelled"}
    assert (await bob.wait_event("call_ended"))["reason"] == "cancelled"


async def test_an_unanswered_call_times_out(device: Device) -> None:
    alice = await device("alice", "a1", replica=0)
    bob = await device("bob", "b1", replica=1)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    await bob.wait_event("call_started")
    assert (await bob.wait_event("stop_ringing", timeout=10)) == {"call_id": call_id, "reason": "timeout"}
    assert (await alice.wait_event("call_ended", timeout=10)) == {"call_id": call_id, "reason": "timeout"}


async def test_a_missed_call_is_noticed_now_and_listed_on_the_next_join(
    device: Device, replicas: tuple[SignalingProcess, SignalingProcess]
) -> None:
    alice = await device("alice", "a1", replica=0)
    bob = await device("bob", "b1", replica=1)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    missed = await bob.wait_event("missed_call", timeout=10)
    assert missed["call_id"] == call_id and missed["caller"] == {"id": "alice", "name": "Alice"}
    client = PhoenixClient(replicas[0].ws_url, token("bob"))
    await client.connect()
    try:
        _, reply = await client.join("user:bob", {"device_id": "b2"})
        assert [m["call_id"] for m in reply["missed_calls"]] == [call_id]
    finally:
        await client.close()


async def test_a_ringing_call_times_out_even_when_the_replica_that_placed_it_dies(
    device: Device, replicas: tuple[SignalingProcess, SignalingProcess]
) -> None:
    """The deadline lives in Redis: the surviving replica fires it."""
    alice = await device("alice", "a1", replica=0)
    bob = await device("bob", "b1", replica=1)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    await bob.wait_event("call_started")
    replicas[0].stop(kill=True)
    assert (await bob.wait_event("stop_ringing", timeout=15)) == {"call_id": call_id, "reason": "timeout"}
    assert (await bob.wait_event("call_ended", timeout=5))["reason"] == "timeout"


async def test_a_user_already_in_a_call_is_busy(device: Device) -> None:
    alice = await device("alice", "a1", replica=0)
    bob = await device("bob", "b1", replica=1)
    carol = await device("carol", "c1", replica=0)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    await bob.wait_event("call_started")
    await bob.push("answer_call", {"call_id": call_id})
    with pytest.raises(PushError) as info:
        await carol.push("start_call", {"invitees": ["bob"]})
    assert info.value.response["reason"] == "busy"
    assert (await carol.wait_event("call_declined"))["reason"] == "busy"
    await no_event(bob, "call_started")


async def test_glare_answers_the_call_already_ringing(device: Device) -> None:
    alice = await device("alice", "a1", replica=0)
    bob = await device("bob", "b1", replica=1)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    await bob.wait_event("call_started")
    reply = await bob.push("start_call", {"invitees": ["alice"]})
    assert reply["call_id"] == call_id
    assert (await alice.wait_event("call_accepted"))["user_id"] == "bob"


async def test_a_reconnecting_device_gets_the_state_of_its_calls(device: Device) -> None:
    alice = await device("alice", "a1", replica=0)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    bob = await device("bob", "b-late", replica=1)
    state = await bob.wait_event("call_state")
    assert state == {"call_id": call_id, "state": "ringing", "members": {"alice": "joined", "bob": "ringing"}}
    assert (await alice.wait_event("call_ringing"))["user_id"] == "bob"


@pytest.mark.parametrize(
    ("event", "payload", "reason"),
    [
        ("start_call", {"invitees": []}, "invitees must be a non-empty list"),
        ("start_call", {"invitees": ["alice"]}, "you cannot call yourself"),
        ("start_call", {"invitees": [f"u{i}" for i in range(40)]}, "at most 16 invitees"),
        ("start_call", {"invitees": ["bob"], "video": "yes"}, "video must be a boolean"),
        ("answer_call", {"call_id": "nope"}, "no such call"),
        ("answer_call", {}, "call_id must be a string"),
        ("decline_call", {"call_id": "nope", "reason": "meh"}, 'reason must be "declined" or "busy"'),
        ("ring", {}, "unknown event 'ring'"),
    ],
)
async def test_bad_requests_get_clear_errors(
    device: Device, event: str, payload: dict[str, Any], reason: str
) -> None:
    alice = await device("alice", "a1")
    with pytest.raises(PushError) as info:
        await alice.push(event, payload)
    assert info.value.response["reason"].startswith(reason)


async def test_someone_elses_call_and_topic_are_refused(device: Device, replicas: Any) -> None:
    alice = await device("alice", "a1")
    await device("bob", "b1")
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    eve = await device("eve", "e1")
    with pytest.raises(PushError) as info:
        await eve.push("answer_call", {"call_id": call_id})
    assert info.value.response["reason"] == "you are not part of this call"
    client = PhoenixClient(replicas[0].ws_url, token("eve", grant="connect,call"))
    await client.connect()
    try:
        with pytest.raises(PushError) as refused:
            await client.join("user:alice", {"device_id": "x"})
        assert refused.value.response["reason"] == "a device joins only its own user's topic"
        with pytest.raises(PushError) as no_device:
            await client.join("user:eve", {})
        assert "device_id" in no_device.value.response["reason"]
    finally:
        await client.close()


async def test_calling_needs_the_call_permission(device: Device) -> None:
    alice = await device("alice", "a1", grant="connect,speak")
    with pytest.raises(PushError) as info:
        await alice.push("start_call", {"invitees": ["bob"]})
    assert info.value.response["reason"] == "missing permission 'call'"
