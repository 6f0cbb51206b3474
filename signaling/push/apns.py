"""Apple Push Notification service: token-based auth (an ES256 provider JWT from the team's .p8 key)
over HTTP/2, which APNs requires and aiohttp does not speak, hence httpx.

Two kinds of registration: `apns-voip` (a PushKit token) is only ever sent a VoIP push for a new
ringing call, because iOS terminates an app that does not report a VoIP push to CallKit as a call;
`apns` (the app's regular token) gets an alert push, which is how an iOS device hears that a ring
ended (docs/push.md).
"""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import httpx
import jwt

from voxa.signaling.push.models import PushKind, PushMessage, Registration
from voxa.signaling.push.result import SendResult, Status, parse_retry_after, status_of_http

TOKEN_LIFETIME_S = 50 * 60
"""APNs refuses provider tokens older than an hour and throttles ones renewed more often than every
20 minutes: renew after 50."""
GONE_REASONS = {"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"}
STALE_TOKEN_REASONS = {"ExpiredProviderToken", "InvalidProviderToken"}


def provider_claims(team_id: str, now: float) -> dict[str, Any]:
    return {"iss": team_id, "iat": int(now)}


def apns_headers(
    kind: PushKind, topic: str, message: PushMessage, provider_token: str, now: float
) -> dict[str, str]:
    voip = kind == "apns-voip"
    return {
        "authorization": f"bearer {provider_token}",
        "apns-push-type": "voip" if voip else "alert",
        "apns-topic": f"{topic}.voip" if voip else topic,
        # Seconds since the epoch after which APNs stops trying: the ring's end.
        "apns-expiration": str(max(int(now), int(message.expires_at))),
        "apns-priority": "10",
        "apns-collapse-id": message.collapse_id,
    }


def apns_body(kind: PushKind, message: PushMessage) -> dict[str, Any]:
    """The JSON payload: the call under `voxa` for the app; an alert for regular pushes."""
    payload = message.payload()
    if kind == "apns-voip":
        return {"aps": {}, "voxa": payload}
    if message.type == "call_started":
        caller = (message.caller or {}).get("name") or (message.caller or {}).get("id") or "Someone"
        what = "video call" if message.video else "call"
        alert = {"title": str(caller), "body": f"Incoming {what}"}
        return {"aps": {"alert": alert, "sound": "default", "content-available": 1}, "voxa": payload}
    return {
        "aps": {"alert": {"title": "Call ended", "body": "The call stopped ringing"}, "content-available": 1},
        "voxa": payload,
    }


def classify(code: int, reason: str | None) -> Status:
    if code == 410 or reason in GONE_REASONS:
        return Status.GONE
    if reason in STALE_TOKEN_REASONS:
        return Status.RETRY
    return status_of_http(code)


class ApnsSender:
    kinds: tuple[PushKind, ...] = ("apns", "apns-voip")

    def __init__(
        self,
        key_file: str,
        key_id: str,
        team_id: str,
        topic: str,
        base_url: str,
        ca_file: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        with open(key_file) as f:
            self._key = f.read()
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self.base_url = base_url.rstrip("/")
        self._verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._token_at = 0.0
        self._client: httpx.AsyncClient | None = None
        self.provider_token(time.time())  # a bad key fails at startup, not at the first ring

    def provider_token(self, now: float) -> str:
        if self._token is None or now - self._token_at >= TOKEN_LIFETIME_S:
            headers = {"kid": self.key_id}
            self._token = jwt.encode(
                provider_claims(self.team_id, now), self._key, algorithm="ES256", headers=headers
            )
            self._token_at = now
        return self._token

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(http2=True, verify=self._verify, timeout=self.timeout_s)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def send(self, registration: Registration, message: PushMessage) -> SendResult:
        assert registration.token is not None
        now = time.time()
        headers = apns_headers(registration.kind, self.topic, message, self.provider_token(now), now)
        body = json.dumps(apns_body(registration.kind, message), separators=(",", ":"))
        try:
            resp = await self._http().post(
                f"{self.base_url}/3/device/{registration.token}", content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            return SendResult(Status.RETRY, type(exc).__name__)
        if resp.status_code == 200:
            return SendResult(Status.SENT, "http_200")
        try:
            reason = resp.json().get("reason")
        except (ValueError, AttributeError):
            reason = None
        if reason in STALE_TOKEN_REASONS:
            self._token = None
        status = classify(resp.status_code, reason if isinstance(reason, str) else None)
        label = reason if isinstance(reason, str) else f"http_{resp.status_code}"
        return SendResult(status, label, parse_retry_after(resp.headers.get("retry-after")))
