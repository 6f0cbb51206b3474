"""The push HTTP API: devices register where they can be pushed, with the same bearer JWT they open
the socket with (the registration belongs to the token's voice server and `sub`).

  POST   /push/devices               register (or replace) one device's registration of one kind
  GET    /push/devices               the caller's registrations (device id and kind only)
  DELETE /push/devices/{device_id}   forget every registration of a device
  GET    /push/vapid-public-key      the Web Push application server key browsers subscribe with
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from voxa.common.auth import bearer_token
from voxa.common.claims import VoiceClaims
from voxa.signaling.auth import AuthError, TokenVerifier
from voxa.signaling.push.models import (
    DEVICE_ID_PATTERN,
    MAX_BODY_BYTES,
    RegistrationRequest,
    validation_reasons,
)
from voxa.signaling.push.service import PushRefused, PushService
from voxa.signaling.store import StoreUnavailable

PUSH = web.AppKey("push", PushService)
VERIFIER = web.AppKey("push_verifier", TokenVerifier)


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


def _claims(request: web.Request) -> VoiceClaims:
    try:
        return request.app[VERIFIER].verify(bearer_token(request.headers.get("Authorization", "")))
    except AuthError as exc:
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": str(exc)}), content_type="application/json"
        ) from exc


async def register(request: web.Request) -> web.Response:
    claims = _claims(request)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _error(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        return _error(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body must be a JSON object")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    try:
        wanted = RegistrationRequest.model_validate(body)
    except ValidationError as exc:
        return _error(400, "invalid push registration", reasons=validation_reasons(exc))
    try:
        registration = await request.app[PUSH].register(claims.server, claims.sub, wanted)
    except PushRefused as exc:
        return _error(exc.status, exc.reason)
    except StoreUnavailable:
        return _error(503, "the store is unavailable; try again")
    return web.json_response(registration.public(), status=201)


async def list_devices(request: web.Request) -> web.Response:
    claims = _claims(request)
    try:
        found = await request.app[PUSH].registrations(claims.server, claims.sub)
    except StoreUnavailable:
        return _error(503, "the store is unavailable; try again")
    return web.json_response({"devices": [r.public() for r in found]})


async def unregister(request: web.Request) -> web.Response:
    claims = _claims(request)
    device_id = request.match_info["device_id"]
    if not re.match(DEVICE_ID_PATTERN, device_id):
        return _error(400, "device_id must be 1-64 letters, digits, _ . -")
    try:
        removed = await request.app[PUSH].unregister(claims.server, claims.sub, device_id)
    except PushRefused as exc:
        return _error(exc.status, exc.reason)
    except StoreUnavailable:
        return _error(503, "the store is unavailable; try again")
    return web.json_response({"device_id": device_id, "removed": removed})


async def vapid_public_key(request: web.Request) -> web.Response:
    key = request.app[PUSH].vapid_public_key
    if key is None:
        return _error(404, "Web Push is not configured on this server (VOXA_PUSH_VAPID_PRIVATE_KEY_FILE)")
    return web.json_response({"public_key": key})


def add_routes(app: web.Application, push: PushService, verifier: TokenVerifier) -> None:
    app[PUSH] = push
    app[VERIFIER] = verifier
    app.add_routes(
        [
            web.post("/push/devices", register),
            web.get("/push/devices", list_devices),
            web.delete("/push/devices/{device_id}", unregister),
            web.get("/push/vapid-public-key", vapid_public_key),
        ]
    )
