"""Push services on loopback for the push tests.

- `WebPushTestService`: the npm package web-push-testing, a real RFC 8030/8291 push service that
  checks VAPID and decrypts what it receives (run by web_push_service.cjs, bound to 127.0.0.1).
- `FcmStandIn` and `ApnsStandIn`: no local emulator exists for FCM or APNs, so these stand-ins check
  what the real services check — the OAuth2 assertion's RS256 signature and claims, the access token
  and the message body for FCM; HTTP/2 over TLS, the ES256 provider token and the headers for APNs —
  and answer as they do (200, or the errors of a dead registration).
- `BrokenPushService`: a Web Push endpoint that hangs or answers 500, counting the tries.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from voxa.common.ports import free_port
from voxa.common.testing.procs import Proc
from voxa.common.testing.wait import eventually_async
from voxa.signaling.push.models import b64url_encode

HERE = Path(__file__).resolve().parent
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
READY_TIMEOUT_S = 30.0


def p256_pem(path: Path) -> ec.EllipticCurvePrivateKey:
    """A new P-256 key written as PKCS#8 PEM (a VAPID key, an APNs .p8 key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key


# --- Web Push ---------------------------------------------------------------------------------------
class WebPushTestService:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "web-push-testing.log"
        self.proc: Proc | None = None

    async def start(self) -> None:
        node = shutil.which("node")
        assert node, "node is needed for web-push-testing (.ci/setup.sh installs it)"
        argv = [node, str(HERE / "web_push_service.cjs"), str(self.port)]
        proc = self.proc = Proc("web-push-testing", argv, None, self.log_path).start()

        async def up() -> bool:
            proc.check_alive()
            try:
                async with aiohttp.ClientSession() as http, http.post(f"{self.url}/status") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually_async(up, READY_TIMEOUT_S, "web-push-testing to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        async with aiohttp.ClientSession() as http, http.post(f"{self.url}{path}", json=body or {}) as resp:
            text = await resp.text()
            assert resp.status == 200, f"{path}: {resp.status} {text}"
            return json.loads(text) if text and text != "OK" else None

    async def subscribe(self, application_server_key: str) -> dict[str, Any]:
        """A subscription as a browser's PushManager gives it, plus the service's `clientHash`."""
        found = await self._post("/subscribe", {"applicationServerKey": application_server_key})
        return dict(found["data"])

    async def notifications(self, client_hash: str) -> list[dict[str, Any]]:
        """The decrypted pushes the subscription received, as JSON."""
        found = await self._post("/get-notifications", {"clientHash": client_hash})
        return [json.loads(m) for m in found["data"]["messages"]]

    async def headers(self, client_hash: str) -> list[dict[str, Any]]:
        found = await self._post("/voxa/headers", {"clientHash": client_hash})
        return list(found["data"])

    async def expire(self, client_hash: str) -> None:
        await self._post(f"/expire-subscription/{client_hash}")


# --- in-process HTTP stand-ins ----------------------------------------------------------------------
class _AiohttpService:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class FcmStandIn(_AiohttpService):
    workdir: Path
    project_id: str = "voxa-test"
    client_email: str = "voxa-push@voxa-test.iam.gserviceaccount.com"
    unregistered: set[str] = field(default_factory=set)
    messages: list[dict[str, Any]] = field(default_factory=list)
    token_grants: int = 0
    refusals: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._tokens: set[str] = set()
        self.token_uri = f"{self.url}/token"

    def service_account_file(self) -> Path:
        """The service-account JSON key as the Firebase console hands it out."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        path = self.workdir / "fcm-service-account.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": self.project_id,
                    "private_key_id": "k1",
                    "private_key": pem,
                    "client_email": self.client_email,
                    "token_uri": self.token_uri,
                }
            )
        )
        return path

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.post("/token", self._token),
                web.post("/v1/projects/{project}/messages:send", self._send),
            ]
        )
        return app

    def _refuse(self, status: int, why: str, code: str = "INVALID_ARGUMENT") -> web.Response:
        self.refusals.append(why)
        return web.json_response({"error": {"code": status, "message": why, "status": code}}, status=status)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(
                str(form.get("assertion", "")),
                self._key.public_key(),
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=self.client_email,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.PyJWTError as exc:
            self.refusals.append(f"assertion: {exc}")
            return web.json_response({"error": "invalid_grant", "error_description": str(exc)}, status=400)
        if claims["scope"] != FCM_SCOPE or not 0 < claims["exp"] - claims["iat"] <= 3600:
            self.refusals.append("assertion: scope or lifetime")
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        self.token_grants += 1
        return web.json_response({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    async def _send(self, request: web.Request) -> web.Response:
        if request.match_info["project"] != self.project_id:
            return self._refuse(404, "unknown project", "NOT_FOUND")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self._tokens:
            return self._refuse(401, "bad access token", "UNAUTHENTICATED")
        body = await request.json()
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("token"), str):
            return self._refuse(400, "message.token missing")
        data, android = message.get("data"), message.get("android")
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return self._refuse(400, "data values must be strings")
        if not isinstance(android, dict) or android.get("priority") not in (
            "high",
            "normal",
            "HIGH",
            "NORMAL",
        ):
            return self._refuse(400, "android.priority")
        ttl = android.get("ttl")
        if not isinstance(ttl, str) or not ttl.endswith("s") or not ttl[:-1].replace(".", "", 1).isdigit():
            return self._refuse(400, 'android.ttl must be a duration like "30s"')
        if message["token"] in self.unregistered:
            body = {
                "error": {
                    "code": 404,
                    "message": "Requested entity was not found.",
                    "status": "NOT_FOUND",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                            "errorCode": "UNREGISTERED",
                        }
                    ],
                }
            }
            return web.json_response(body, status=404)
        self.messages.append(message)
        name = f"projects/{self.project_id}/messages/{secrets.token_hex(8)}"
        return web.json_response({"name": name})


@dataclass
class BrokenPushService(_AiohttpService):
    """A Web Push endpoint that answers 500, or never answers at all (`hang`)."""

    hang: bool = False
    ttls: list[int] = field(default_factory=list)
    """The TTL header of every try, in order."""

    def __post_init__(self) -> None:
        super().__init__()
        self._release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.post("/push/{id}", self._push)])
        return app

    async def _push(self, request: web.Request) -> web.Response:
        self.ttls.append(int(request.headers.get("TTL", "-1")))
        await request.read()
        if self.hang:
            await self._release.wait()
        return web.Response(status=500, text="internal error")

    async def stop(self) -> None:
        self._release.set()
        await super().stop()

    def subscription(self) -> dict[str, Any]:
        """A well-formed subscription (a real P-256 point and auth secret) pointing here."""
        point = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        return {
            "endpoint": f"{self.url}/push/{secrets.token_hex(8)}",
            "keys": {"p256dh": b64url_encode(point), "auth": b64url_encode(secrets.token_bytes(16))},
        }


# --- APNs: HTTP/2 over TLS (hypercorn), checking the provider token and headers --------------------
@dataclass
class ApnsStandIn:
    workdir: Path
    key_id: str = "ABC123DEFG"
    team_id: str = "DEF123GHIJ"
    topic: str = "dev.voxa.app"
    unregistered: set[str] = field(default_factory=set)
    requests: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.key_file = self.workdir / "apns-key.p8"
        self._key = p256_pem(self.key_file)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.workdir / "apns-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._cert_file = self.workdir / "apns-cert.pem"
        self._key_pem = self.workdir / "apns-cert-key.pem"
        cert.private_key_pem.write_to_path(str(self._key_pem))
        cert.cert_chain_pems[0].write_to_path(str(self._cert_file))
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.certfile = str(self._cert_file)
        config.keyfile = str(self._key_pem)
        config.alpn_protocols = ["h2"]
        config.accesslog = None
        config.graceful_timeout = 1.0
        config.errorlog = str(self.workdir / "apns-standin.log")
        self._task = asyncio.create_task(serve(self._asgi, config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    def _check(self, scope: dict[str, Any], headers: dict[str, str], body: bytes) -> tuple[int, str | None]:
        if scope.get("http_version") != "2":
            return 400, "HTTP/2 required"
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith("/3/device/"):
            return 405, "MethodNotAllowed"
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return 403, "MissingProviderToken"
        token = auth[len("bearer ") :]
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["ES256"],
                options={"require": ["iss", "iat"], "verify_aud": False},
            )
        except jwt.PyJWTError:
            return 403, "InvalidProviderToken"
        if header.get("kid") != self.key_id or claims["iss"] != self.team_id:
            return 403, "InvalidProviderToken"
        if claims["iat"] < time.time() - 3600:
            return 403, "ExpiredProviderToken"
        kind = headers.get("apns-push-type")
        if kind not in ("alert", "voip", "background"):
            return 400, "InvalidPushType"
        want_topic = f"{self.topic}.voip" if kind == "voip" else self.topic
        if headers.get("apns-topic") != want_topic:
            return 400, "DeviceTokenNotForTopic" if headers.get("apns-topic") else "MissingTopic"
        if not headers.get("apns-expiration", "").isdigit():
            return 400, "BadExpirationDate"
        if headers.get("apns-priority") not in (None, "5", "10", "1"):
            return 400, "BadPriority"
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return 400, "BadCollapseId"
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "PayloadEmpty"
        if not isinstance(payload, dict) or "aps" not in payload:
            return 400, "PayloadEmpty"
        device = path[len("/3/device/") :]
        if device in self.unregistered:
            return 410, "Unregistered"
        self.requests.append({"device": device, "headers": headers, "payload": payload})
        return 200, None

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, reason = self._check(scope, headers, body)
        if reason is not None:
            self.refusals.append(reason)
        out = json.dumps({"reason": reason}).encode() if reason else b""
        reply_headers = [(b"apns-id", secrets.token_hex(16).encode())]
        if out:
            reply_headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": reply_headers})
        await send({"type": "http.response.body", "body": out})
