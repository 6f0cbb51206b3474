"""Signaling's call and push settings from `spec.calls`, pure.

Call settings are plain values in signaling's ConfigMap, and only those that differ from signaling's
own defaults: a VoiceServer that says nothing about calls renders exactly what it did before calls
existed, so upgrading the operator rolls no pod.

Push key material (the VAPID private key, the FCM service account, the APNs .p8 key) stays in the
user's Secrets: one projected volume puts each referenced key at a fixed path, read-only and mode
0400, and the ConfigMap passes those paths in the `*_FILE` variables. Nothing secret is in an
environment variable or in the pod template. Fixed file names, not the Secrets' key names, so two
Secrets that both call their key `key.pem` cannot collide in the one volume.

A changed Secret must roll signaling (it reads the files at start), so the pod template's fingerprint
includes `PushSecrets.revision`: the referenced Secrets' resourceVersions, which reveal nothing of
their content (a digest could be tested against guesses).

Signaling refuses to start with a key it cannot use, so the operator checks each key's form first
(`key_problem`: what signaling checks) and holds signaling back with a message rather than rolling
it into pods that would crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from voxa.operator.models import APNS_URLS, CallsSpec, SecretKeyRef, VoiceServer

PUSH_MOUNT = "/etc/voxa/push"
PUSH_VOLUME = "push-keys"
KEY_FILE_MODE = 0o400
"""Owner read only; with the pod's fsGroup the kubelet adds group read, and signaling runs in it."""

VAPID_FILE = "vapid-private-key.pem"
FCM_FILE = "fcm-service-account.json"
APNS_FILE = "apns-key.p8"

FCM_FIELDS = ("client_email", "private_key", "token_uri", "project_id")
"""What signaling needs of a service-account JSON key."""

_DEFAULTS = CallsSpec()


@dataclass(frozen=True)
class KeyFile:
    """One key a Secret provides, where signaling finds it, and the spec field that names it."""

    field: str
    """Where the reference is in the spec (for messages), e.g. `spec.calls.push.fcm.serviceAccountRef`."""
    ref: SecretKeyRef
    file: str
    variable: str


@dataclass(frozen=True)
class PushSecrets:
    """What the operator read of the referenced Secrets: a revision that changes with them."""

    revision: str = ""
    """`name=resourceVersion` of each referenced Secret, sorted; empty without push keys."""


def key_files(vs: VoiceServer) -> list[KeyFile]:
    """The push keys the spec references, in a stable order."""
    push = vs.spec.calls.push
    if push is None:
        return []
    base = "spec.calls.push"
    files: list[KeyFile] = []
    if push.webPush is not None:
        files.append(
            KeyFile(
                f"{base}.webPush.vapidPrivateKeyRef",
                push.webPush.vapidPrivateKeyRef,
                VAPID_FILE,
                "VOXA_PUSH_VAPID_PRIVATE_KEY_FILE",
            )
        )
    if push.fcm is not None:
        files.append(
            KeyFile(
                f"{base}.fcm.serviceAccountRef",
                push.fcm.serviceAccountRef,
                FCM_FILE,
                "VOXA_PUSH_FCM_SERVICE_ACCOUNT_FILE",
            )
        )
    if push.apns is not None:
        files.append(KeyFile(f"{base}.apns.keyRef", push.apns.keyRef, APNS_FILE, "VOXA_PUSH_APNS_KEY_FILE"))
    return files


def secret_names(vs: VoiceServer) -> list[str]:
    """The Secrets signaling's pods mount for push, each once."""
    return sorted({f.ref.name for f in key_files(vs)})


def config_data(vs: VoiceServer) -> dict[str, str]:
    """The VOXA_CALL_* and VOXA_PUSH_* variables (non-secret: paths of key files, ids, URLs)."""
    calls = vs.spec.calls
    data: dict[str, str] = {}
    if calls.ringTimeoutSeconds != _DEFAULTS.ringTimeoutSeconds:
        data["VOXA_CALL_RING_TIMEOUT_S"] = str(calls.ringTimeoutSeconds)
    if calls.maxInvitees != _DEFAULTS.maxInvitees:
        data["VOXA_CALL_MAX_INVITEES"] = str(calls.maxInvitees)
    if calls.reconnectGraceSeconds != _DEFAULTS.reconnectGraceSeconds:
        data["VOXA_CALL_RECONNECT_GRACE_S"] = str(calls.reconnectGraceSeconds)
    if calls.callWaiting != _DEFAULTS.callWaiting:
        data["VOXA_CALL_WAITING"] = "true" if calls.callWaiting else "false"
    for key in key_files(vs):
        data[key.variable] = f"{PUSH_MOUNT}/{key.file}"
    push = calls.push
    if push is not None and push.webPush is not None:
        data["VOXA_PUSH_VAPID_SUBJECT"] = push.webPush.subject
    if push is not None and push.fcm is not None and push.fcm.url:
        data["VOXA_PUSH_FCM_URL"] = push.fcm.url
    if push is not None and push.apns is not None:
        data["VOXA_PUSH_APNS_KEY_ID"] = push.apns.keyId
        data["VOXA_PUSH_APNS_TEAM_ID"] = push.apns.teamId
        data["VOXA_PUSH_APNS_TOPIC"] = push.apns.topic
        data["VOXA_PUSH_APNS_URL"] = APNS_URLS[push.apns.environment]
    return data


def volume(vs: VoiceServer) -> dict[str, Any] | None:
    """One projected volume holding every referenced push key, or None without push keys."""
    files = key_files(vs)
    if not files:
        return None
    by_secret: dict[str, list[dict[str, Any]]] = {}
    for key in files:
        by_secret.setdefault(key.ref.name, []).append({"key": key.ref.key, "path": key.file})
    sources = [{"secret": {"name": name, "items": items}} for name, items in sorted(by_secret.items())]
    return {"name": PUSH_VOLUME, "projected": {"defaultMode": KEY_FILE_MODE, "sources": sources}}


def mount() -> dict[str, Any]:
    return {"name": PUSH_VOLUME, "mountPath": PUSH_MOUNT, "readOnly": True}


def expected_keys(vs: VoiceServer, secret: str) -> frozenset[tuple[str, str]]:
    """The (key, file) pairs signaling's pods take from one Secret."""
    return frozenset((k.ref.key, k.file) for k in key_files(vs) if k.ref.name == secret)


def key_problem(file: str, value: bytes) -> str | None:
    """Why signaling could not use `value` as `file`, or None; never quotes the value."""
    if file in (VAPID_FILE, APNS_FILE):
        # VAPID signs with ES256 (RFC 8292), and so do APNs provider tokens: a P-256 key either way.
        try:
            key = serialization.load_pem_private_key(value, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return "is not an unencrypted PEM private key"
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            return "is not an EC P-256 (prime256v1) private key"
        return None
    if file == FCM_FILE:
        try:
            data = json.loads(value)
        except ValueError:
            return "is not JSON (a service account's key file)"
        if not isinstance(data, dict):
            return "is not a JSON object (a service account's key file)"
        missing = [f for f in FCM_FIELDS if not data.get(f)]
        if missing:
            return f"lacks {', '.join(missing)}"
    return None


def missing_keys(
    vs: VoiceServer,
    found: dict[str, frozenset[str] | None],
    invalid: dict[tuple[str, str], str] | None = None,
) -> list[str]:
    """What the referenced Secrets lack, as messages; `found` maps a Secret's name to its keys (None:
    the Secret does not exist), `invalid` (Secret, key) to what `key_problem` said of its value.
    Without these signaling's pods could not start."""
    absent: dict[str, list[str]] = {}
    problems: list[str] = []
    for key in key_files(vs):
        keys = found.get(key.ref.name)
        if keys is None:
            absent.setdefault(key.ref.name, []).append(key.field)
        elif key.ref.key not in keys:
            problems.append(f"Secret {key.ref.name} has no key {key.ref.key!r} ({key.field})")
        elif (problem := (invalid or {}).get((key.ref.name, key.ref.key))) is not None:
            problems.append(f"Secret {key.ref.name} key {key.ref.key!r} ({key.field}) {problem}")
    missing = [f"Secret {name} ({', '.join(fields)}) not found" for name, fields in absent.items()]
    return missing + list(dict.fromkeys(problems))
