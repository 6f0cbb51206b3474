"""Web Push (RFC 8030 delivery, RFC 8291 aes128gcm encryption, RFC 8292 VAPID) through pywebpush's
async API, with our own aiohttp session so connections to a push service are reused.

The VAPID key is the P-256 key in VOXA_PUSH_VAPID_PRIVATE_KEY_FILE; browsers subscribe with its public
half (`GET /push/vapid-public-key`), and push services accept only pushes signed by the key a
subscription was made with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPushException, webpush_async

from voxa.signaling.push.http import HttpSession
from voxa.signaling.push.models import PushMessage, Registration, b64url_encode
from voxa.signaling.push.result import SendResult, Status, parse_retry_after, status_of_http

log = logging.getLogger("voxa.signaling.push")


def load_vapid_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The VAPID private key, refused unless it is a P-256 key (RFC 8292 requires ES256)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the VAPID key must be a P-256 (prime256v1) EC private key")
    return key


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as browsers' `applicationServerKey` takes it: the uncompressed point, base64url."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url_encode(point)


def webpush_headers(message: PushMessage) -> dict[str, str]:
    """Headers besides TTL (pywebpush sets it): a ring is urgent, and a later push on the same Topic
    replaces one the push service still holds, so a follow-up wipes an undelivered ring."""
    return {
        "Urgency": "high",
        "Topic": message.collapse_id,
        "Content-Type": "application/octet-stream",
    }


class WebPushSender:
    kind = "webpush"

    def __init__(self, key_file: str, subject: str, timeout_s: float = 10.0) -> None:
        self._key = load_vapid_key(key_file)
        self._vapid = Vapid02(private_key=self._key)
        self.public_key = application_server_key(self._key)
        self.subject = subject
        self.timeout_s = timeout_s
        self._http = HttpSession(timeout_s)

    async def close(self) -> None:
        await self._http.close()

    async def send(self, registration: Registration, message: PushMessage) -> SendResult:
        assert registration.subscription is not None
        subscription: dict[str, Any] = registration.subscription
        now = time.time()
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await webpush_async(
                    subscription_info=subscription,
                    data=json.dumps(message.payload(), separators=(",", ":")),
                    vapid_private_key=self._vapid,
                    # A fresh dict each time: pywebpush writes `aud` and `exp` into it.
                    vapid_claims={"sub": self.subject},
                    ttl=message.ttl_s(now),
                    headers=dict(webpush_headers(message)),
                    aiohttp_session=self._http(),
                )
        except WebPushException as exc:
            answer = exc.response
            code = getattr(answer, "status", None)
            if not isinstance(code, int):
                return SendResult(Status.RETRY, "error")
            retry_after = parse_retry_after(answer.headers.get("Retry-After")) if answer is not None else None
            return SendResult(status_of_http(code), f"http_{code}", retry_after)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return SendResult(Status.RETRY, type(exc).__name__)
        code = getattr(response, "status", None)
        if not isinstance(code, int):
            return SendResult(Status.RETRY, "error")
        return SendResult(status_of_http(code), f"http_{code}")
