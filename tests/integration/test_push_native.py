"""FCM and APNs pushes from a real `voxa signaling` process (on real Redis) to local stand-ins that
check what the real services check (tests/support/push_standins.py): the OAuth2 assertion and access
token for FCM; HTTP/2, TLS, the ES256 provider token and the headers for APNs."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import RedisServer, SignalingFactory, SignalingProcess
from tests.integration.conftest import token
from tests.support.push_helpers import api, metric
from tests.support.push_standins import ApnsStandIn, FcmStandIn
from voxa.client.phoenix import ClientChannel, PhoenixClient
from voxa.common.testing.wait import eventually_async

pytestmark = pytest.mark.slow
RING_S = 30
FCM_TOKEN = "dGVzdC10b2tlbi0x:APA91bH-voxa_test_registration_token_0001"
VOIP_TOKEN = "a" * 64
ALERT_TOKEN = "b" * 64
IPAD_TOKEN = "c" * 64


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[FcmStandIn]:
    standin = FcmStandIn(tmp_path)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[ApnsStandIn]:
    standin = ApnsStandIn(tmp_path)
    await standin.start()
    yield standin
    await standin.stop()


@pytest.fixture
def replica(
    fcm: FcmStandIn, apns: ApnsStandIn, signaling_factory: SignalingFactory, redis_server: RedisServer
) -> SignalingProcess:
    """Set up after the stand-ins, so it is stopped before them (open HTTP/2 connections go first)."""
    return signaling_factory(
        redis_server.url,
        call_ring_timeout_s=str(RING_S),
        push_fcm_service_account_file=str(fcm.service_account_file()),
        push_fcm_url=fcm.url,
        push_apns_key_file=str(apns.key_file),
        push_apns_key_id=apns.key_id,
        push_apns_team_id=apns.team_id,
        push_apns_topic=apns.topic,
        push_apns_url=apns.url,
        push_apns_ca_file=str(apns.ca_file),
    )


@pytest.fixture
async def alice(replica: SignalingProcess) -> AsyncIterator[ClientChannel]:
    client = PhoenixClient(replica.ws_url, token("alice", grant="connect,speak,call"))
    await client.connect()
    channel, _ = await client.join("user:alice", {"device_id": "alice-laptop"})
    yield channel
    await client.close()


async def register(replica: SignalingProcess, device_id: str, kind: str, push_token: str) -> None:
    body = {"device_id": device_id, "kind": kind, "token": push_token}
    status, reply = await api(replica, "POST", "/push/devices", "bob", body)
    assert (status, reply) == (201, {"device_id": device_id, "kind": kind}), reply


async def arrived(found: list[Any], count: int) -> list[Any]:
    async def enough() -> list[Any] | None:
        return found if len(found) >= count else None

    result: list[Any] = await eventually_async(enough, 30, f"{count} pushes", poll=0.1)
    return result


async def test_fcm_rings_an_offline_android_device_and_follows_up(
    replica: SignalingProcess, fcm: FcmStandIn, alice: ClientChannel
) -> None:
    await register(replica, "bob-android", "fcm", FCM_TOKEN)
    call_id = (await alice.push("start_call", {"invitees": ["bob"]}))["call_id"]
    [ring] = await arrived(fcm.messages, 1)
    assert ring["token"] == FCM_TOKEN
    assert ring["data"]["type"] == "call_started" and ring["data"]["call_id"] == call_id
    assert json.loads(ring["data"]["caller"]) == {"id": "alice", "name": "Alice"}
    assert ring["data"]["video"] == "false"
    android = ring["android"]
    assert android["priority"] == "high" and android["collapse_key"] == f"call-{call_id}"[:32]
    assert RING_S - 5 <= int(android["ttl"].removesuffix("s")) <= RING_S
    await alice.push("end_call", {"call_id": call_id})
    _, stop = await arrived(fcm.messages, 2)
    assert stop["data"] == {"type": "stop_ringing", "call_id": call_id, "reason": "cancelled"}
    assert fcm.token_grants == 1 and fcm.refusals == []  # the access token was cached
    # A token FCM calls UNREGISTERED is removed.
    fcm.unregistered.add(FCM_TOKEN)
    await alice.push("start_call", {"invitees": ["bob"]})

    async def removed() -> bool:
        devices: list[dict[str, str]] = (await api(replica, "GET", "/push/devices"))[1]["devices"]
        return devices == []

    await eventually_async(removed, 30, "the unregistered FCM token to go", poll=0.1)
    assert await metric(replica, "voxa_signaling_push_removed_total", kind="fcm") == 1


async def test_apns_rings_by_voip_and_cancels_by_alert_only(
    replica: SignalingProcess, apns: ApnsStandIn, alice: ClientChannel
) -> None:
    """An iPhone with a PushKit token and a regular token: the ring is one VoIP push, the cancel an
    alert push to the regular token, never a VoIP push. An iPad with only a regular token gets both
    as alerts."""
    await register(replica, "bob-iphone", "apns-voip", VOIP_TOKEN)
    await register(replica, "bob-iphone", "apns", ALERT_TOKEN)
    await register(replica, "bob-ipad", "apns", IPAD_TOKEN)
    started = time.time()
    call_id = (await alice.push("start_call", {"invitees": ["bob"], "video": True}))["call_id"]
    rings = await arrived(apns.requests, 2)
    by_device = {r["device"]: r for r in rings}
    assert set(by_device) == {VOIP_TOKEN, IPAD_TOKEN}, "one ring per device, VoIP for the iPhone"
    voip = by_device[VOIP_TOKEN]
    assert (
        voip["headers"]["apns-push-type"] == "voip" and voip["headers"]["apns-topic"] == "dev.voxa.app.voip"
    )
    assert voip["payload"]["voxa"]["type"] == "call_started" and voip["payload"]["voxa"]["call_id"] == call_id
    expiration = int(voip["headers"]["apns-expiration"])
    assert started + RING_S - 5 <= expiration <= started + RING_S + 5  # the ring's end
    assert voip["headers"]["apns-collapse-id"] == f"call-{call_id}"[:32]
    ipad = by_device[IPAD_TOKEN]
    assert ipad["headers"]["apns-push-type"] == "alert" and ipad["headers"]["apns-topic"] == "dev.voxa.app"
    assert ipad["payload"]["aps"]["alert"]["title"] == "Alice"
    await alice.push("end_call", {"call_id": call_id})
    everything = await arrived(apns.requests, 4)
    follow_ups = everything[2:]
    assert {r["device"] for r in follow_ups} == {ALERT_TOKEN, IPAD_TOKEN}
    for request in follow_ups:
        assert request["headers"]["apns-push-type"] == "alert"
        assert request["payload"]["voxa"] == {
            "type": "stop_ringing",
            "call_id": call_id,
            "reason": "cancelled",
        }
    assert apns.refusals == []
    assert [r["headers"]["apns-push-type"] for r in everything].count("voip") == 1
    # 410 Unregistered removes the registration.
    apns.unregistered.add(IPAD_TOKEN)
    await alice.push("start_call", {"invitees": ["bob"]})

    async def removed() -> bool:
        devices = (await api(replica, "GET", "/push/devices"))[1]["devices"]
        return {"device_id": "bob-ipad", "kind": "apns"} not in devices and len(devices) == 2

    await eventually_async(removed, 30, "the unregistered APNs token to go", poll=0.1)
    assert await metric(replica, "voxa_signaling_push_removed_total", kind="apns") == 1
