"""Firebase Cloud Messaging, HTTP v1 API, without an SDK (firebase-admin would pull grpc and the
google-cloud packages into signaling for two HTTP requests).

Auth is Google's OAuth2 JWT bearer grant: an RS256 assertion signed with the service account's
private key, exchanged at its `token_uri` for an access token that is cached until shortly before it
expires. A ring is a data-only message (the app shows its own full-screen call notification) with
high Android priority, a TTL of the remaining ring time and the call as collapse key.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from voxa.signaling.push.http import HttpSession
from voxa.signaling.push.models import PushMessage, Registration
from voxa.signaling.push.result import SendResult, Status, parse_retry_after, status_of_http

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 3600
REFRESH_MARGIN_S = 300
"""An access token is replaced this long before it expires."""
GONE_CODES = {"UNREGISTERED", "NOT_FOUND"}


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    private_key: str
    token_uri: str
    project_id: str
    private_key_id: str | None = None

    @classmethod
    def load(cls, path: str) -> ServiceAccount:
        data = json.loads(Path(path).read_text())
        missing = [k for k in ("client_email", "private_key", "token_uri", "project_id") if not data.get(k)]
        if missing:
            raise ValueError(f"the FCM service account file lacks {', '.join(missing)}")
        return cls(
            client_email=data["client_email"],
            private_key=data["private_key"],
            token_uri=data["token_uri"],
            project_id=data["project_id"],
            private_key_id=data.get("private_key_id"),
        )


def assertion_claims(account: ServiceAccount, now: float) -> dict[str, Any]:
    return {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": account.token_uri,
        "iat": int(now),
        "exp": int(now) + ASSERTION_LIFETIME_S,
    }


def sign_assertion(account: ServiceAccount, now: float) -> str:
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    return jwt.encode(assertion_claims(account, now), account.private_key, algorithm="RS256", headers=headers)


def fcm_message(token: str, message: PushMessage, now: float) -> dict[str, Any]:
    """The messages:send body. FCM data values must be strings, so structured fields are JSON."""
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in message.payload().items()}
    return {
        "message": {
            "token": token,
            "data": data,
            "android": {
                "priority": "high",
                "ttl": f"{message.ttl_s(now)}s",
                "collapse_key": message.collapse_id,
            },
        }
    }


def error_code(body: Any) -> str | None:
    """The FCM error code (`details[].errorCode`, else `status`) of an error answer."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
    status = error.get("status")
    return status if isinstance(status, str) else None


def classify(code: int, body: Any) -> Status:
    fcm_code = error_code(body)
    if fcm_code in GONE_CODES:
        return Status.GONE
    if fcm_code == "INVALID_ARGUMENT":
        return Status.FAILED
    return status_of_http(code)


class FcmSender:
    kind = "fcm"

    def __init__(self, account_file: str, base_url: str, timeout_s: float = 10.0) -> None:
        self.account = ServiceAccount.load(account_file)
        self.url = f"{base_url.rstrip('/')}/v1/projects/{self.account.project_id}/messages:send"
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = asyncio.Lock()
        self._http = HttpSession(timeout_s)

    async def close(self) -> None:
        await self._http.close()

    async def access_token(self) -> str:
        """The cached access token, fetched anew shortly before it expires (one fetch at a time)."""
        async with self._lock:
            now = time.time()
            if self._token is not None and now < self._token_expires - REFRESH_MARGIN_S:
                return self._token
            form = {"grant_type": GRANT_TYPE, "assertion": sign_assertion(self.account, now)}
            async with self._http().post(self.account.token_uri, data=form) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200 or not isinstance(body, dict) or "access_token" not in body:
                    raise TokenRefused(resp.status)
            self._token = str(body["access_token"])
            self._token_expires = now + float(body.get("expires_in", 3600))
            return self._token

    def forget_token(self) -> None:
        self._token = None

    async def send(self, registration: Registration, message: PushMessage) -> SendResult:
        assert registration.token is not None
        try:
            token = await self.access_token()
            body = fcm_message(registration.token, message, time.time())
            headers = {"Authorization": f"Bearer {token}"}
            async with self._http().post(self.url, json=body, headers=headers) as resp:
                answer = await resp.json(content_type=None) if resp.status != 200 else None
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                if resp.status == 401:
                    self.forget_token()  # revoked or expired early: the next try fetches a new one
                    return SendResult(Status.RETRY, "http_401")
                status = classify(resp.status, answer)
                return SendResult(status, error_code(answer) or f"http_{resp.status}", retry_after)
        except TokenRefused as exc:
            return SendResult(Status.RETRY if exc.status >= 500 else Status.FAILED, f"token_{exc.status}")
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            return SendResult(Status.RETRY, type(exc).__name__)


class TokenRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"token endpoint answered {status}")
        self.status = status
