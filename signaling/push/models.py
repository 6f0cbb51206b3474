"""What a device registers for push, and what one push says.

Registrations come from clients over HTTP, so everything about them is checked here, once, with
limits on every size: a malformed body is answered with the reasons and nothing is stored. A device
(the `device_id` it also joins its `user:` topic with) may hold one registration per kind; an iOS
device registers `apns-voip` for rings and `apns` for the follow-ups that end them (docs/push.md).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PushKind = Literal["webpush", "fcm", "apns", "apns-voip"]
KINDS: tuple[PushKind, ...] = ("webpush", "fcm", "apns", "apns-voip")
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
"""The same device ids as on `user:` topics, so a registration can be matched with presence."""
MAX_BODY_BYTES = 8192
MAX_ENDPOINT_CHARS = 2048
MAX_DEVICES_PER_USER = 16
"""Registrations one user may hold (every registered device of a callee gets a push)."""
_TOKEN_PATTERNS: dict[str, re.Pattern[str]] = {
    # FCM registration tokens: base64url-ish with a colon-separated prefix.
    "fcm": re.compile(r"^[A-Za-z0-9_:\-.]{16,4096}$"),
    # APNs device tokens are hexadecimal (32 bytes today; Apple says not to assume the length).
    "apns": re.compile(r"^[0-9A-Fa-f]{32,200}$"),
    "apns-voip": re.compile(r"^[0-9A-Fa-f]{32,200}$"),
}


def b64url_decode(value: str) -> bytes:
    """Base64url with or without padding (browsers send it unpadded)."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+={0,2}", value):
        raise ValueError("must be base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be base64url") from exc


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebPushKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p256dh: str = Field(max_length=128, description="The browser's P-256 public key, base64url.")
    auth: str = Field(max_length=64, description="The 16-byte authentication secret, base64url.")

    @field_validator("p256dh")
    @classmethod
    def _point(cls, value: str) -> str:
        raw = b64url_decode(value)
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError("must be an uncompressed P-256 point (65 bytes starting 0x04)")
        return value

    @field_validator("auth")
    @classmethod
    def _secret(cls, value: str) -> str:
        if len(b64url_decode(value)) != 16:
            raise ValueError("must be 16 bytes")
        return value


class WebPushSubscription(BaseModel):
    """A browser's PushSubscription as `subscription.toJSON()` gives it (expirationTime is ignored)."""

    model_config = ConfigDict(extra="ignore")

    endpoint: str = Field(max_length=MAX_ENDPOINT_CHARS)
    keys: WebPushKeys

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if not parts.hostname:
            raise ValueError("must be an absolute URL")
        if parts.scheme == "https":
            return value
        if parts.scheme == "http" and is_loopback_host(parts.hostname):
            return value  # a push service on loopback: the test service, never a real browser's
        raise ValueError("must be an https:// URL (http:// only to a loopback host)")


class RegistrationRequest(BaseModel):
    """The body of `POST /push/devices`."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    kind: PushKind
    subscription: WebPushSubscription | None = None
    token: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _credentials(self) -> RegistrationRequest:
        if self.kind == "webpush":
            if self.subscription is None or self.token is not None:
                raise ValueError('kind "webpush" takes a "subscription" {endpoint, keys} and no "token"')
            return self
        if self.token is None or self.subscription is not None:
            raise ValueError(f'kind "{self.kind}" takes a "token" and no "subscription"')
        if not _TOKEN_PATTERNS[self.kind].match(self.token):
            raise ValueError(f'"token" is not a valid {self.kind} device token')
        return self


def validation_reasons(exc: ValidationError) -> list[str]:
    """pydantic's errors as short "field: message" lines a client can show (never the input value)."""
    reasons = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        reasons.append(f"{where}: {error['msg']}")
    return reasons


@dataclass(frozen=True)
class Registration:
    """One stored registration: a device's address at one push service."""

    device_id: str
    kind: PushKind
    token: str | None = None
    subscription: dict[str, Any] | None = None
    registered_at: float = 0.0

    @property
    def key(self) -> str:
        return registration_key(self.device_id, self.kind)

    def encode(self) -> str:
        return json.dumps(
            {
                "device_id": self.device_id,
                "kind": self.kind,
                "token": self.token,
                "subscription": self.subscription,
                "registered_at": self.registered_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, raw: str) -> Registration:
        data = json.loads(raw)
        return cls(
            device_id=data["device_id"],
            kind=data["kind"],
            token=data.get("token"),
            subscription=data.get("subscription"),
            registered_at=data.get("registered_at", 0.0),
        )

    @classmethod
    def from_request(cls, request: RegistrationRequest, now: float | None = None) -> Registration:
        return cls(
            device_id=request.device_id,
            kind=request.kind,
            token=request.token,
            subscription=request.subscription.model_dump() if request.subscription else None,
            registered_at=time.time() if now is None else now,
        )

    def public(self) -> dict[str, Any]:
        """What the API shows of a registration (never the token or the subscription's secrets)."""
        return {"device_id": self.device_id, "kind": self.kind}


def registration_key(device_id: str, kind: str) -> str:
    """The store's field for a registration: a device has one per kind."""
    return f"{device_id}|{kind}"


def device_of(key: str) -> str:
    return key.partition("|")[0]


@dataclass(frozen=True)
class PushMessage:
    """One push: a ring for a new call, or the follow-up that stops it."""

    type: Literal["call_started", "stop_ringing"]
    call_id: str
    expires_at: float
    """Wall-clock seconds until which the push is worth delivering (the ring's end for a ring)."""
    caller: dict[str, Any] | None = None
    video: bool = False
    reason: str | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON every platform's app receives (docs/push.md)."""
        body: dict[str, Any] = {"type": self.type, "call_id": self.call_id}
        if self.type == "call_started":
            body.update(caller=self.caller, video=self.video, expires_at=int(self.expires_at * 1000))
        else:
            body["reason"] = self.reason
        return body

    def ttl_s(self, now: float) -> int:
        """Seconds a push service should keep it for an unreachable device: what is left of its
        window, never negative."""
        return max(0, int(self.expires_at - now))

    @property
    def collapse_id(self) -> str:
        """`call-<id>` as a Web Push Topic allows it (base64url alphabet, at most 32 characters), also
        FCM's collapse key and APNs' collapse id, so a follow-up replaces an undelivered ring."""
        return re.sub(r"[^A-Za-z0-9_\-]", "", f"call-{self.call_id}")[:32]
