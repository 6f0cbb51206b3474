"""The Secrets holding push keys: read for their shape only, their changes roll signaling, and while one
is missing signaling is left as it is (a stub API, no cluster)."""

from __future__ import annotations

import base64
import json
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.unit.operator.conftest import voiceserver
from voxa.operator import reconcile, secret_values
from voxa.operator import status as status_mod
from voxa.operator.kube import ApiError, KubeClient
from voxa.operator.reconcile import Reconciler, State
from voxa.operator.render import Inputs, PushSecrets, calls, voiceserver_children

PUSH = {
    "webPush": {
        "vapidPrivateKeyRef": {"name": "push-keys", "key": "vapid.pem"},
        "subject": "https://example.com",
    },
    "apns": {
        "keyRef": {"name": "apns", "key": "key.p8"},
        "keyId": "ABC123DEFG",
        "teamId": "TEAM456789",
        "topic": "a.b",
    },
}


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


P256 = pem(ec.generate_private_key(ec.SECP256R1()))
P256_OTHER = pem(ec.generate_private_key(ec.SECP256R1()))


class StubKube:
    """Secrets by name; every GET and apply is recorded."""

    def __init__(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.secrets = secrets
        self.gets: list[str] = []
        self.applied: list[str] = []
        self.refuse_reads = False

    async def get(self, path: str) -> dict[str, Any] | None:
        self.gets.append(path)
        if self.refuse_reads:
            raise ApiError(403, 'secrets "apns" is forbidden', "Forbidden")
        return self.secrets.get(path.rsplit("/", 1)[-1])

    async def apply(self, manifest: dict[str, Any]) -> None:
        self.applied.append(f"{manifest['kind']}/{manifest['metadata']['name']}")


def stored(version: str, **data: str) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"metadata": {"resourceVersion": version}, "data": encoded}


@pytest.fixture(autouse=True)
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secret_values, "SECRET_TTL_S", 0.0)
    monkeypatch.setattr(reconcile, "info", lambda *a, **k: None)
    monkeypatch.setattr(reconcile, "warn", lambda *a, **k: None)


async def test_the_revision_follows_the_secrets_resource_versions() -> None:
    kube = StubKube(
        {"push-keys": stored("5", **{"vapid.pem": P256}), "apns": stored("8", **{"key.p8": P256})}
    )
    rec = Reconciler(cast(KubeClient, kube))
    vs = voiceserver({"calls": {"push": PUSH}})
    assert await rec.push_secrets(vs) == (PushSecrets("apns=8,push-keys=5"), None)
    kube.secrets["apns"] = stored("9", **{"key.p8": P256_OTHER})
    assert await rec.push_secrets(vs) == (PushSecrets("apns=9,push-keys=5"), None)
    # Without push nothing is read at all.
    before = len(kube.gets)
    assert await rec.push_secrets(voiceserver()) == (None, None)
    assert len(kube.gets) == before


async def test_the_shape_cache_keeps_no_values() -> None:
    kube = StubKube({"push-keys": stored("5", **{"vapid.pem": P256, "other": "x"})})
    expected = frozenset({("vapid.pem", calls.VAPID_FILE)})
    shape = await secret_values.read_shape(
        cast(KubeClient, kube), "games", "push-keys", expected, calls.key_problem
    )
    assert shape == secret_values.SecretShape("5", frozenset({"vapid.pem", "other"}))
    assert "PRIVATE" not in repr(secret_values._shapes)


async def test_an_unusable_key_is_named_and_holds_signaling() -> None:
    rsa_key = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    p384 = pem(ec.generate_private_key(ec.SECP384R1()))
    kube = StubKube(
        {"push-keys": stored("5", **{"vapid.pem": rsa_key}), "apns": stored("8", **{"key.p8": p384})}
    )
    rec = Reconciler(cast(KubeClient, kube))
    vs = voiceserver({"calls": {"push": PUSH}})
    push, error = await rec.push_secrets(vs)
    assert push is None
    assert error == (
        "Secret push-keys key 'vapid.pem' (spec.calls.push.webPush.vapidPrivateKeyRef) is not an EC P-256 "
        "(prime256v1) private key; Secret apns key 'key.p8' (spec.calls.push.apns.keyRef) is not an EC "
        "P-256 (prime256v1) private key; signaling is left as it is until that is fixed"
    )
    assert "PRIVATE" not in error


def test_key_forms_signaling_can_use() -> None:
    public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for file in (calls.VAPID_FILE, calls.APNS_FILE):
        assert calls.key_problem(file, P256.encode()) is None
        # A public key or the base64url form `web-push generate-vapid-keys` prints are common mix-ups.
        assert calls.key_problem(file, public) == "is not an unencrypted PEM private key"
        assert calls.key_problem(file, b"BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA") == (
            "is not an unencrypted PEM private key"
        )
    account = {"client_email": "a@p.iam.gserviceaccount.com", "private_key": "k", "token_uri": "https://t"}
    assert calls.key_problem(calls.FCM_FILE, json.dumps({**account, "project_id": "p"}).encode()) is None
    assert calls.key_problem(calls.FCM_FILE, json.dumps(account).encode()) == "lacks project_id"
    assert calls.key_problem(calls.FCM_FILE, b"[1]") == "is not a JSON object (a service account's key file)"
    assert calls.key_problem(calls.FCM_FILE, b"{") == "is not JSON (a service account's key file)"


async def test_a_missing_secret_or_key_is_reported_and_holds_signaling() -> None:
    kube = StubKube({"push-keys": stored("5", **{"other.pem": P256})})
    rec = Reconciler(cast(KubeClient, kube))
    vs = voiceserver({"calls": {"push": PUSH}})
    push, error = await rec.push_secrets(vs)
    assert push is None
    assert error == (
        "Secret apns (spec.calls.push.apns.keyRef) not found; "
        "Secret push-keys has no key 'vapid.pem' (spec.calls.push.webPush.vapidPrivateKeyRef); "
        "signaling is left as it is until that is fixed"
    )
    kube.refuse_reads = True
    assert await rec.push_secrets(vs) == (None, 'cannot read Secret apns: secrets "apns" is forbidden')

    # Held children are neither written nor pruned; everything else converges.
    rendered = voiceserver_children(vs, Inputs(sfu_replicas=1, push=push))
    held = frozenset({("ConfigMap", "lobby-signaling"), ("Deployment", "lobby-signaling")})
    live = {
        ("Deployment", "lobby-signaling"): reconcile.Child("apps/v1", "Deployment", "lobby-signaling", "old")
    }
    body = {"metadata": {"name": "lobby"}}
    assert await rec.converge(body, "games", rendered, live, State(), held) == []
    assert "ConfigMap/lobby-signaling" not in kube.applied
    assert "Deployment/lobby-signaling" not in kube.applied
    assert "Deployment/lobby-sfu" in kube.applied and "Service/lobby-signaling" in kube.applied


def test_a_secret_error_degrades_the_voiceserver_with_its_message() -> None:
    vs = voiceserver({"calls": {"push": PUSH}})
    seen = status_mod.Observed(secret_error="Secret apns (spec.calls.push.apns.keyRef) not found")
    degraded = next(c for c in status_mod.compute(vs, seen, 0.0).conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "SecretUnavailable")
    assert degraded.message == "Secret apns (spec.calls.push.apns.keyRef) not found"
