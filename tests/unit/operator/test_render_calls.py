"""`spec.calls`: call settings and push keys rendered into signaling (no API server involved)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from tests.unit.operator.conftest import voiceserver
from voxa.operator.models import VoiceServer
from voxa.operator.render import Inputs, PushSecrets, calls, signaling, voiceserver_children

VAPID = {"vapidPrivateKeyRef": {"name": "push-keys", "key": "vapid.pem"}, "subject": "mailto:ops@example.com"}
FCM = {"serviceAccountRef": {"name": "push-keys", "key": "fcm.json"}}
APNS = {
    "keyRef": {"name": "apns", "key": "AuthKey.p8"},
    "keyId": "ABC123DEFG",
    "teamId": "TEAM456789",
    "topic": "com.example.voice",
}


def with_push(**push: Any) -> VoiceServer:
    return voiceserver({"calls": {"push": push}})


def pod_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def fingerprint(vs: VoiceServer, push: PushSecrets | None = None) -> str:
    deployment = signaling.deployment(vs, None, push)
    return str(deployment["spec"]["template"]["metadata"]["annotations"]["voxa.dev/config-hash"])


def test_default_calls_render_nothing_extra() -> None:
    plain = voiceserver()
    # What the API server stores after defaulting, and the defaults written out: the same children.
    defaulted = voiceserver({"calls": {}})
    explicit = voiceserver(
        {
            "calls": {
                "ringTimeoutSeconds": 30,
                "maxInvitees": 16,
                "reconnectGraceSeconds": 10,
                "callWaiting": False,
            }
        }
    )
    expected = voiceserver_children(plain, Inputs(sfu_replicas=1))
    for vs in (defaulted, explicit):
        assert voiceserver_children(vs, Inputs(sfu_replicas=1)) == expected
    data = signaling.config_data(plain)
    assert not [k for k in data if k.startswith(("VOXA_CALL_", "VOXA_PUSH_"))]
    assert [v["name"] for v in pod_of(signaling.deployment(plain))["volumes"]] == ["tmp"]
    assert calls.key_files(plain) == [] and calls.secret_names(plain) == []


def test_call_settings_become_signaling_variables() -> None:
    vs = voiceserver(
        {
            "calls": {
                "ringTimeoutSeconds": 45,
                "maxInvitees": 4,
                "reconnectGraceSeconds": 0,
                "callWaiting": True,
            }
        }
    )
    data = signaling.config_data(vs)
    assert {k: v for k, v in data.items() if k.startswith("VOXA_CALL_")} == {
        "VOXA_CALL_RING_TIMEOUT_S": "45",
        "VOXA_CALL_MAX_INVITEES": "4",
        "VOXA_CALL_RECONNECT_GRACE_S": "0",
        "VOXA_CALL_WAITING": "true",
    }
    # A changed setting rolls signaling (the ConfigMap is read at start).
    assert fingerprint(vs) != fingerprint(voiceserver())


def test_push_keys_are_mounted_read_only_from_one_projected_volume() -> None:
    vs = with_push(webPush=VAPID, fcm=FCM, apns={**APNS, "environment": "sandbox"})
    data = signaling.config_data(vs)
    assert {k: v for k, v in data.items() if k.startswith("VOXA_PUSH_")} == {
        "VOXA_PUSH_VAPID_PRIVATE_KEY_FILE": "/etc/voxa/push/vapid-private-key.pem",
        "VOXA_PUSH_VAPID_SUBJECT": "mailto:ops@example.com",
        "VOXA_PUSH_FCM_SERVICE_ACCOUNT_FILE": "/etc/voxa/push/fcm-service-account.json",
        "VOXA_PUSH_APNS_KEY_FILE": "/etc/voxa/push/apns-key.p8",
        "VOXA_PUSH_APNS_KEY_ID": "ABC123DEFG",
        "VOXA_PUSH_APNS_TEAM_ID": "TEAM456789",
        "VOXA_PUSH_APNS_TOPIC": "com.example.voice",
        "VOXA_PUSH_APNS_URL": "https://api.sandbox.push.apple.com",
    }
    pod = pod_of(signaling.deployment(vs, None, PushSecrets("apns=7,push-keys=9")))
    (volume,) = [v for v in pod["volumes"] if v["name"] == "push-keys"]
    # One source per Secret (two keys of push-keys in one), fixed file names, owner-read only.
    assert volume == {
        "name": "push-keys",
        "projected": {
            "defaultMode": 0o400,
            "sources": [
                {"secret": {"name": "apns", "items": [{"key": "AuthKey.p8", "path": "apns-key.p8"}]}},
                {
                    "secret": {
                        "name": "push-keys",
                        "items": [
                            {"key": "vapid.pem", "path": "vapid-private-key.pem"},
                            {"key": "fcm.json", "path": "fcm-service-account.json"},
                        ],
                    }
                },
            ],
        },
    }
    container = pod["containers"][0]
    assert {"name": "push-keys", "mountPath": "/etc/voxa/push", "readOnly": True} in container["volumeMounts"]
    # No key material reaches an environment variable: the env is what it was without push.
    assert container["env"] == pod_of(signaling.deployment(voiceserver()))["containers"][0]["env"]
    # The production APNs endpoint by default; FCM's URL only when set.
    assert signaling.config_data(with_push(apns=APNS))["VOXA_PUSH_APNS_URL"] == "https://api.push.apple.com"
    assert "VOXA_PUSH_FCM_URL" not in data
    fcm_url = with_push(fcm={**FCM, "url": "https://fcm.internal.example:8443"})
    assert signaling.config_data(fcm_url)["VOXA_PUSH_FCM_URL"] == "https://fcm.internal.example:8443"


def test_a_single_provider_mounts_only_its_key() -> None:
    vs = with_push(webPush=VAPID)
    data = signaling.config_data(vs)
    assert "VOXA_PUSH_FCM_SERVICE_ACCOUNT_FILE" not in data and "VOXA_PUSH_APNS_KEY_ID" not in data
    volume = calls.volume(vs)
    assert volume is not None
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "push-keys", "items": [{"key": "vapid.pem", "path": "vapid-private-key.pem"}]}}
    ]


def test_a_changed_push_secret_rolls_signaling_without_its_content_in_the_template() -> None:
    vs = with_push(webPush=VAPID)
    before = fingerprint(vs, PushSecrets("push-keys=100"))
    assert fingerprint(vs, PushSecrets("push-keys=100")) == before
    assert fingerprint(vs, PushSecrets("push-keys=101")) != before
    # The pod template names Secrets and paths, never a value or a digest of one.
    text = json.dumps(signaling.deployment(vs, None, PushSecrets("push-keys=101")))
    assert "BEGIN" not in text and "push-keys=101" not in text
    # Children go through the same inputs.
    children = voiceserver_children(vs, Inputs(sfu_replicas=1, push=PushSecrets("push-keys=101")))
    (deployment,) = [
        c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == "lobby-signaling"
    ]
    assert deployment == signaling.deployment(vs, None, PushSecrets("push-keys=101"))


def test_missing_secrets_and_keys_are_named_with_the_field_that_references_them() -> None:
    vs = with_push(webPush=VAPID, fcm=FCM, apns=APNS)
    assert calls.secret_names(vs) == ["apns", "push-keys"]
    assert (
        calls.missing_keys(
            vs, {"apns": frozenset({"AuthKey.p8"}), "push-keys": frozenset({"vapid.pem", "fcm.json"})}
        )
        == []
    )
    assert calls.missing_keys(vs, {"apns": None, "push-keys": frozenset({"vapid.pem"})}) == [
        "Secret apns (spec.calls.push.apns.keyRef) not found",
        "Secret push-keys has no key 'fcm.json' (spec.calls.push.fcm.serviceAccountRef)",
    ]
    # A Secret that is missing altogether is named once, with every field that references it.
    assert calls.missing_keys(vs, {"apns": frozenset({"AuthKey.p8"})}) == [
        "Secret push-keys (spec.calls.push.webPush.vapidPrivateKeyRef, "
        "spec.calls.push.fcm.serviceAccountRef) not found"
    ]


@pytest.mark.parametrize(
    ("calls_spec", "field"),
    [
        ({"ringTimeoutSeconds": 0}, "ringTimeoutSeconds"),
        ({"ringTimeoutSeconds": 601}, "ringTimeoutSeconds"),
        ({"maxInvitees": 0}, "maxInvitees"),
        ({"maxInvitees": 257}, "maxInvitees"),
        ({"reconnectGraceSeconds": -1}, "reconnectGraceSeconds"),
        ({"reconnectGraceSeconds": 301}, "reconnectGraceSeconds"),
        ({"ringTimeout": 30}, "ringTimeout"),
        ({"push": {"webPush": {**VAPID, "subject": "ops@example.com"}}}, "subject"),
        ({"push": {"webPush": {"subject": "mailto:ops@example.com"}}}, "vapidPrivateKeyRef"),
        ({"push": {"fcm": {**FCM, "url": "ftp://fcm.example"}}}, "url"),
        ({"push": {"apns": {**APNS, "keyId": "short"}}}, "keyId"),
        ({"push": {"apns": {**APNS, "teamId": "team456789"}}}, "teamId"),
        ({"push": {"apns": {**APNS, "environment": "staging"}}}, "environment"),
        ({"push": {"apns": {**APNS, "topic": "com.example voice"}}}, "topic"),
        ({"push": {"apns": {**APNS, "keyRef": {"name": "Bad_Name", "key": "k"}}}}, "name"),
    ],
)
def test_invalid_call_settings_are_refused_by_the_model(calls_spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        voiceserver({"calls": calls_spec})
    assert any(field in map(str, error["loc"]) for error in info.value.errors()), info.value


def test_the_crd_carries_the_rules_the_model_cannot_check() -> None:
    from voxa.operator import crdgen

    crd = crdgen.all_crds()["voiceservers.yaml"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    push = schema["calls"]["properties"]["push"]
    assert [r["message"] for r in push["x-kubernetes-validations"]] == [
        "push needs at least one of webPush, fcm or apns"
    ]
    assert [r["message"] for r in push["properties"]["apns"]["x-kubernetes-validations"]] == [
        "topic is the app's bundle id, without .voip (VoIP pushes add it)"
    ]
    assert push["properties"]["apns"]["properties"]["environment"]["enum"] == ["production", "sandbox"]
