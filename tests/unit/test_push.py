"""The pure parts of push: registration validation, what a push says and carries per platform (payload,
headers, TTL, JWT claims), the retry decision, and the push service's choices with fake senders on the
memory store (who is rung, who gets the follow-up, removals, bounded retries, a full queue)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from tests.support.push_helpers import AUTH, POINT, webpush_body
from tests.support.push_standins import p256_pem
from voxa.signaling import calls
from voxa.signaling.metrics import SignalingMetrics
from voxa.signaling.push import apns, fcm
from voxa.signaling.push.models import (
    PushMessage,
    Registration,
    RegistrationRequest,
    b64url_decode,
    b64url_encode,
    validation_reasons,
)
from voxa.signaling.push.result import MAX_ATTEMPTS, SendResult, Status, retry_delay, status_of_http
from voxa.signaling.push.service import STOPPED_KEPT_S, PushService, jobs_of, ring_targets
from voxa.signaling.push.webpush import application_server_key, load_vapid_key, webpush_headers
from voxa.signaling.store.memory import MemoryStore

NOW = 1_800_000_000.0


# --- registrations ----------------------------------------------------------------------------------
def test_a_web_push_registration_is_accepted_and_stored_without_loss() -> None:
    request = RegistrationRequest.model_validate(webpush_body())
    registration = Registration.from_request(request, NOW)
    assert Registration.decode(registration.encode()) == registration
    assert registration.key == "bob-browser|webpush"
    assert registration.public() == {"device_id": "bob-browser", "kind": "webpush"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (webpush_body("http://push.example.net/p"), "https://"),
        (webpush_body("ftp://127.0.0.1/p"), "https://"),
        (webpush_body("not a url"), "absolute URL"),
        (webpush_body("https://x/" + "a" * 3000), "at most 2048"),
        ({**webpush_body(), "token": "abc"}, 'no "token"'),
        ({"device_id": "d", "kind": "webpush"}, "subscription"),
        ({"device_id": "d", "kind": "fcm"}, 'takes a "token"'),
        ({"device_id": "d", "kind": "apns", "token": "not-hex"}, "not a valid apns"),
        ({"device_id": "d", "kind": "carrier-pigeon", "token": "x"}, "kind"),
        ({"device_id": "bad id!", "kind": "fcm", "token": "a" * 40}, "device_id"),
        ({"device_id": "d", "kind": "fcm", "token": "a" * 40, "extra": 1}, "extra"),
    ],
)
def test_malformed_registrations_are_refused_with_reasons(body: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        RegistrationRequest.model_validate(body)
    assert any(reason in line for line in validation_reasons(info.value)), validation_reasons(info.value)


def test_bad_subscription_keys_are_refused() -> None:
    for keys, reason in (
        ({"p256dh": b64url_encode(b"\x04" + b"x" * 10), "auth": AUTH}, "uncompressed P-256"),
        ({"p256dh": POINT, "auth": b64url_encode(b"short")}, "16 bytes"),
        ({"p256dh": "***", "auth": AUTH}, "base64url"),
    ):
        body = webpush_body()
        body["subscription"] = {"endpoint": "https://push.example.net/p", "keys": keys}
        with pytest.raises(ValidationError) as info:
            RegistrationRequest.model_validate(body)
        assert any(reason in line for line in validation_reasons(info.value))


def test_plain_http_is_allowed_to_loopback_push_services_only() -> None:
    for endpoint in ("http://127.0.0.1:8090/notify/x", "http://localhost/x", "http://[::1]:9/x"):
        RegistrationRequest.model_validate(webpush_body(endpoint))


def test_base64url_round_trips_with_or_without_padding() -> None:
    for raw in (b"a", b"ab", b"abc", bytes(range(256))):
        assert b64url_decode(b64url_encode(raw)) == raw
    assert b64url_decode("YQ==") == b"a"


# --- what a push says -------------------------------------------------------------------------------
RING = PushMessage(
    "call_started", "Abc_-123xyz", NOW + 30, caller={"id": "alice", "name": "Alice"}, video=True
)
STOP = PushMessage("stop_ringing", "Abc_-123xyz", NOW + 60, reason="answered_elsewhere")


def test_payloads_ttl_and_collapse_id() -> None:
    assert RING.payload() == {
        "type": "call_started",
        "call_id": "Abc_-123xyz",
        "caller": {"id": "alice", "name": "Alice"},
        "video": True,
        "expires_at": int((NOW + 30) * 1000),
    }
    assert STOP.payload() == {
        "type": "stop_ringing",
        "call_id": "Abc_-123xyz",
        "reason": "answered_elsewhere",
    }
    assert RING.ttl_s(NOW) == 30 and RING.ttl_s(NOW + 29.5) == 0 and RING.ttl_s(NOW + 100) == 0
    assert RING.collapse_id == "call-Abc_-123xyz"
    long = PushMessage("stop_ringing", "a.b/c" + "x" * 40, NOW)
    assert long.collapse_id == ("call-abc" + "x" * 40)[:32]


def test_web_push_headers_and_vapid_public_key(tmp_path: Path) -> None:
    assert webpush_headers(RING) == {
        "Urgency": "high",
        "Topic": "call-Abc_-123xyz",
        "Content-Type": "application/octet-stream",
    }
    key = p256_pem(tmp_path / "vapid.pem")
    public = b64url_decode(application_server_key(load_vapid_key(str(tmp_path / "vapid.pem"))))
    assert len(public) == 65 and public[0] == 4
    assert public == key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="P-256"):
        load_vapid_key(str(tmp_path / "rsa.pem"))


def test_fcm_assertion_and_message(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    account = fcm.ServiceAccount("svc@p.iam.gserviceaccount.com", pem, "https://oauth2.example/token", "p")
    claims = jwt.decode(
        fcm.sign_assertion(account, NOW),
        key.public_key(),
        algorithms=["RS256"],
        audience="https://oauth2.example/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "svc@p.iam.gserviceaccount.com",
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": "https://oauth2.example/token",
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
    }
    message = fcm.fcm_message("tok", RING, NOW + 10)["message"]
    assert message["token"] == "tok"
    assert message["android"] == {"priority": "high", "ttl": "20s", "collapse_key": "call-Abc_-123xyz"}
    assert all(isinstance(v, str) for v in message["data"].values())
    assert json.loads(message["data"]["caller"]) == {"id": "alice", "name": "Alice"}
    (tmp_path / "sa.json").write_text(json.dumps({"client_email": "x"}))
    with pytest.raises(ValueError, match="private_key, token_uri, project_id"):
        fcm.ServiceAccount.load(str(tmp_path / "sa.json"))


def test_fcm_and_apns_answers_are_classified() -> None:
    unregistered = {"error": {"status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}
    assert fcm.classify(404, unregistered) is Status.GONE
    assert fcm.classify(400, {"error": {"status": "INVALID_ARGUMENT"}}) is Status.FAILED
    assert fcm.classify(503, None) is Status.RETRY and fcm.classify(429, None) is Status.RETRY
    assert apns.classify(410, "Unregistered") is Status.GONE
    assert apns.classify(400, "BadDeviceToken") is Status.GONE
    assert apns.classify(403, "ExpiredProviderToken") is Status.RETRY
    assert apns.classify(400, "BadCollapseId") is Status.FAILED
    assert [status_of_http(c) for c in (201, 404, 410, 413, 500)] == [
        Status.SENT,
        Status.GONE,
        Status.GONE,
        Status.FAILED,
        Status.RETRY,
    ]


def test_apns_headers_body_and_provider_token() -> None:
    headers = apns.apns_headers("apns-voip", "dev.voxa.app", RING, "JWT", NOW)
    assert headers == {
        "authorization": "bearer JWT",
        "apns-push-type": "voip",
        "apns-topic": "dev.voxa.app.voip",
        "apns-expiration": str(int(NOW + 30)),
        "apns-priority": "10",
        "apns-collapse-id": "call-Abc_-123xyz",
    }
    alert = apns.apns_headers("apns", "dev.voxa.app", STOP, "JWT", NOW)
    assert alert["apns-push-type"] == "alert" and alert["apns-topic"] == "dev.voxa.app"
    assert apns.apns_body("apns-voip", RING) == {"aps": {}, "voxa": RING.payload()}
    ring_alert = apns.apns_body("apns", RING)
    assert ring_alert["aps"]["alert"] == {"title": "Alice", "body": "Incoming video call"}
    assert apns.apns_body("apns", STOP)["voxa"] == STOP.payload()
    assert apns.provider_claims("TEAM", NOW) == {"iss": "TEAM", "iat": int(NOW)}


# --- retries ------------------------------------------------------------------------------------------
def test_retries_back_off_within_the_window_and_stop() -> None:
    retry = SendResult(Status.RETRY, "http_503")
    delays = [retry_delay(retry, attempt, NOW, NOW + 60) for attempt in range(1, MAX_ATTEMPTS + 1)]
    assert delays == [0.5, 1.0, 2.0, None]
    assert retry_delay(retry, 1, NOW, NOW + 0.4) is None  # the next try would be after the ring
    assert retry_delay(SendResult(Status.RETRY, "429", retry_after_s=5), 1, NOW, NOW + 60) == 5
    assert retry_delay(SendResult(Status.RETRY, "429", retry_after_s=5), 1, NOW, NOW + 4) is None
    for status in (Status.SENT, Status.GONE, Status.FAILED):
        assert retry_delay(SendResult(status), 1, NOW, NOW + 60) is None


# --- what outcomes ask of push ----------------------------------------------------------------------
def test_jobs_follow_the_call_events() -> None:
    policy = calls.Policy(ring_timeout_s=30)
    started = calls.start("c1", "g", "alice", "Alice", ["bob", "carol"], video=False, now=NOW, policy=policy)
    rings = jobs_of("g", started)
    assert [(j.user, j.message.type, j.message.expires_at) for j in rings] == [  # type: ignore[union-attr]
        ("bob", "call_started", NOW + 30),
        ("carol", "call_started", NOW + 30),
    ]
    assert started.call is not None
    answered = calls.answer(started.call, "bob", "bob-phone", NOW + 1)
    stops = jobs_of("g", answered)
    assert [(j.user, j.reason, j.exclude_device) for j in stops] == [  # type: ignore[union-attr]
        ("bob", "answered_elsewhere", "bob-phone")
    ]


@pytest.mark.parametrize("ending", ["cancel", "decline", "timeout"])
def test_every_end_of_a_ring_asks_one_follow_up_per_ringing_user_and_no_more(ending: str) -> None:
    policy = calls.Policy(ring_timeout_s=30)
    started = calls.start("c1", "g", "alice", "Alice", ["bob"], video=False, now=NOW, policy=policy)
    assert started.call is not None
    if ending == "cancel":
        ended = calls.end(started.call, "alice", NOW + 1)
    elif ending == "decline":
        ended = calls.decline(started.call, "bob", "bob-phone", "declined", NOW + 1)
    else:
        ended = calls.expire(started.call, NOW + 31)
    assert ended.ended is not None  # the 1:1 call is over: call_ended went to alice and bob
    assert [(j.user, j.call_id) for j in jobs_of("g", ended)] == [("bob", "c1")]  # type: ignore[union-attr]


def reg(device: str, kind: str) -> Registration:
    return Registration(device, kind, token="a" * 64)  # type: ignore[arg-type]


def test_ring_targets_skip_online_devices_and_keep_voip_for_rings() -> None:
    everyone = {"webpush", "fcm", "apns", "apns-voip"}
    regs = [
        reg("iphone", "apns-voip"),
        reg("iphone", "apns"),
        reg("ipad", "apns"),
        reg("pixel", "fcm"),
        reg("laptop", "webpush"),
        reg("voip-only", "apns-voip"),
    ]
    ring, follow = ring_targets(regs, online={"laptop"}, kinds=everyone)
    assert sorted(r.key for r in ring) == [
        "ipad|apns",
        "iphone|apns-voip",
        "pixel|fcm",
        "voip-only|apns-voip",
    ]
    assert sorted(follow) == ["ipad|apns", "iphone|apns", "pixel|fcm"]  # never a VoIP follow-up
    ring, follow = ring_targets(regs, online=set(), kinds={"fcm"})
    assert [r.key for r in ring] == ["pixel|fcm"] and follow == ["pixel|fcm"]


# --- the service, with fake senders -----------------------------------------------------------------
@dataclass
class FakeSender:
    answers: list[SendResult] = field(default_factory=list)
    sent: list[tuple[str, str]] = field(default_factory=list)
    hang: bool = False

    async def send(self, registration: Registration, message: PushMessage) -> SendResult:
        self.sent.append((registration.key, message.type))
        if self.hang:
            await asyncio.Event().wait()
        return self.answers.pop(0) if self.answers else SendResult(Status.SENT)

    async def close(self) -> None:
        return None


async def make_service(
    sender: FakeSender,
    online: frozenset[str] = frozenset(),
    queue_size: int = 100,
) -> tuple[PushService, MemoryStore]:
    store = MemoryStore("r1", 10.0)

    async def presence(server_id: str, user_id: str) -> list[str]:
        return sorted(online)

    service = PushService(store, SignalingMetrics(), {"fcm": sender}, presence, queue_size)
    service.start()
    return service, store


async def put(service: PushService, device: str) -> None:
    body = {"device_id": device, "kind": "fcm", "token": f"{device}-token-0123456789"}
    await service.register("g", "bob", RegistrationRequest.model_validate(body))


def ring_outcome(now: float, ring_s: float = 30) -> calls.Outcome:
    policy = calls.Policy(ring_timeout_s=ring_s)
    return calls.start("c1", "g", "alice", "Alice", ["bob"], video=False, now=now, policy=policy)


async def test_offline_devices_are_rung_and_the_follow_up_reaches_them_once() -> None:
    sender = FakeSender()
    service, _ = await make_service(sender, online=frozenset({"phone"}))
    await put(service, "phone")
    await put(service, "tablet")
    started = ring_outcome(time.time())
    service.notify("g", started)
    await service.wait_idle()
    assert sender.sent == [("tablet|fcm", "call_started")]
    assert started.call is not None
    ended = calls.end(started.call, "alice", time.time())  # cancel: stop_ringing, then call_ended
    service.notify("g", ended)
    await service.wait_idle()
    assert sender.sent[1:] == [("tablet|fcm", "stop_ringing")]
    await service.stop()


async def test_a_gone_registration_is_removed_and_a_refused_one_kept() -> None:
    sender = FakeSender([SendResult(Status.GONE, "UNREGISTERED"), SendResult(Status.FAILED, "http_400")])
    service, store = await make_service(sender)
    await put(service, "a")
    await put(service, "b")
    service.notify("g", ring_outcome(time.time()))
    await service.wait_idle()
    assert len(await store.push_devices("g", "bob")) == 1
    assert service.metrics.push_removed.labels("fcm")._value.get() == 1
    await service.stop()


async def test_retries_are_bounded_and_a_full_queue_drops_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("voxa.signaling.push.result.BACKOFF_BASE_S", 0.01)
    sender = FakeSender([SendResult(Status.RETRY, "http_503")] * 10)
    service, _ = await make_service(sender)
    await put(service, "a")
    service.notify("g", ring_outcome(time.time()))
    await service.wait_idle()
    assert sender.sent == [("a|fcm", "call_started")] * MAX_ATTEMPTS
    assert service.metrics.push_failed.labels("fcm", "gave_up")._value.get() == 1
    await service.stop()
    full, _ = await make_service(FakeSender(), queue_size=1)
    await full.stop()  # no planner: the queue fills
    for _ in range(3):
        full.notify("g", ring_outcome(time.time()))
    assert full.metrics.push_dropped._value.get() == 2


async def test_a_hanging_push_service_is_given_up_at_the_rings_end() -> None:
    sender = FakeSender(hang=True)
    service, _ = await make_service(sender)
    await put(service, "a")
    service.notify("g", ring_outcome(time.time(), ring_s=1.0))
    await service.wait_idle(timeout=20)
    assert sender.sent == [("a|fcm", "call_started")]
    assert service.metrics.push_failed.labels("fcm", "gave_up")._value.get() == 1
    await service.stop()


async def test_registration_limits_and_unconfigured_kinds() -> None:
    from voxa.signaling.push.models import MAX_DEVICES_PER_USER
    from voxa.signaling.push.service import PushRefused

    service, _ = await make_service(FakeSender())
    for i in range(MAX_DEVICES_PER_USER):
        await put(service, f"d{i}")
    with pytest.raises(PushRefused) as info:
        await put(service, "one-too-many")
    assert info.value.status == 409
    await put(service, "d0")  # replacing is not adding
    with pytest.raises(PushRefused, match='"webpush" is not configured'):
        await service.register("g", "bob", RegistrationRequest.model_validate(webpush_body()))
    with pytest.raises(PushRefused) as info:
        await service.unregister("g", "bob", "nobody")
    assert info.value.status == 404
    await service.stop()


def test_push_settings_that_cannot_work_are_refused_at_startup(tmp_path: Path) -> None:
    from voxa.signaling.settings import SignalingSettings

    base: dict[str, Any] = {"jwt_secret": "s" * 32}
    with pytest.raises(ValidationError, match="VOXA_PUSH_VAPID_SUBJECT"):
        SignalingSettings(**base, push_vapid_private_key_file="/k.pem")
    with pytest.raises(ValidationError, match="VOXA_PUSH_VAPID_SUBJECT"):
        SignalingSettings(**base, push_vapid_private_key_file="/k.pem", push_vapid_subject="ops@x")
    with pytest.raises(ValidationError, match="VOXA_PUSH_APNS_KEY_ID"):
        SignalingSettings(**base, push_apns_key_file="/k.p8", push_apns_team_id="T")
    ok = SignalingSettings(**base, push_vapid_private_key_file="/k.pem", push_vapid_subject="mailto:ops@x")
    assert (
        ok.push_fcm_url == "https://fcm.googleapis.com" and ok.push_apns_url == "https://api.push.apple.com"
    )
    assert ok.push_queue_size == 1000


async def test_old_stops_are_forgotten_oldest_first() -> None:
    service, _ = await make_service(FakeSender())
    now = [1000.0]
    service.clock = lambda: now[0]
    started = ring_outcome(now[0])
    assert started.call is not None
    for i in range(3):
        now[0] += 100
        service.notify("g", calls.end(started.call, "alice", now[0]))
        service._stopped[("g", f"other{i}", "bob")] = now[0]
    now[0] += STOPPED_KEPT_S - 50  # the first two rounds are older than the window now
    service._prune_stopped()
    assert sorted(k[1:] for k in service._stopped) == [("c1", "bob"), ("other2", "bob")]
    await service.stop()
