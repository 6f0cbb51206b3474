"""The push registration API on an in-process signaling app: authentication, clear errors for bad
input (with nothing stored), limits, and the VAPID key endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import AppFactory, AppServer, token
from tests.support.push_helpers import AUTH, POINT, webpush_body
from tests.support.push_standins import p256_pem
from voxa.signaling.push.models import MAX_BODY_BYTES, MAX_DEVICES_PER_USER, b64url_decode


@pytest.fixture
async def app(app_factory: AppFactory, tmp_path: Path) -> AppServer:
    key = tmp_path / "vapid.pem"
    p256_pem(key)
    return await app_factory(push_vapid_private_key_file=str(key), push_vapid_subject="mailto:ops@voxa.test")


async def call(
    app: AppServer,
    method: str,
    path: str,
    body: Any = None,
    user: str | None = "bob",
    raw: bytes | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token(user)}"} if user else {}
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with http.request(method, app.http + path, headers=headers, **kwargs) as resp:
            return resp.status, await resp.json()


async def stored(app: AppServer) -> list[dict[str, str]]:
    status, found = await call(app, "GET", "/push/devices")
    assert status == 200
    devices: list[dict[str, str]] = found["devices"]
    return devices


async def test_register_list_replace_and_delete(app: AppServer) -> None:
    browser = webpush_body()  # as PushSubscription.toJSON() gives it, expirationTime included
    browser["subscription"] = {**browser["subscription"], "expirationTime": None}  # type: ignore[dict-item]
    assert await call(app, "POST", "/push/devices", browser) == (
        201,
        {"device_id": "bob-browser", "kind": "webpush"},
    )
    # Registering the same device and kind again replaces the registration.
    assert (await call(app, "POST", "/push/devices", webpush_body("https://push.example.net/p/new")))[
        0
    ] == 201
    assert await stored(app) == [{"device_id": "bob-browser", "kind": "webpush"}]
    # Registrations are the token's user's: alice sees none and cannot delete bob's.
    assert (await call(app, "GET", "/push/devices", user="alice"))[1] == {"devices": []}
    assert (await call(app, "DELETE", "/push/devices/bob-browser", user="alice"))[0] == 404
    assert await call(app, "DELETE", "/push/devices/bob-browser") == (
        200,
        {"device_id": "bob-browser", "removed": 1},
    )
    assert await stored(app) == []


async def test_the_api_needs_a_valid_token(app: AppServer) -> None:
    for method, path in (("GET", "/push/devices"), ("POST", "/push/devices"), ("DELETE", "/push/devices/x")):
        status, body = await call(app, method, path, webpush_body(), user=None)
        assert status == 401 and body["error"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(app.http + "/push/devices", headers={"Authorization": "Bearer nonsense"}) as resp,
    ):
        assert resp.status == 401


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"device_id": "d", "kind": "telegram", "token": "x" * 20}, "kind"),
        (webpush_body("http://push.example.net/p"), "https://"),
        ({"device_id": "d", "kind": "webpush", "subscription": {"endpoint": "https://p.example/x"}}, "keys"),
        (
            {
                "device_id": "d",
                "kind": "webpush",
                "subscription": {"endpoint": "https://p.example/x", "keys": {"p256dh": "AAAA", "auth": AUTH}},
            },
            "P-256",
        ),
        ({"kind": "fcm", "token": "x" * 20}, "device_id"),
        ([1, 2], "JSON object"),
    ],
)
async def test_malformed_registrations_get_400_with_reasons_and_store_nothing(
    app: AppServer, body: Any, reason: str
) -> None:
    status, answer = await call(app, "POST", "/push/devices", body)
    assert status == 400
    assert reason in answer["error"] or any(reason in r for r in answer.get("reasons", [])), answer
    assert await stored(app) == []


async def test_unparsable_oversized_and_unconfigured(app: AppServer) -> None:
    status, answer = await call(app, "POST", "/push/devices", raw=b"{not json")
    assert (status, answer["error"]) == (400, "the body must be a JSON object")
    status, answer = await call(app, "POST", "/push/devices", raw=b" " * (MAX_BODY_BYTES + 1))
    assert status == 413 and str(MAX_BODY_BYTES) in answer["error"]
    body = {"device_id": "bob-pixel", "kind": "fcm", "token": "f" * 40}
    status, answer = await call(app, "POST", "/push/devices", body)
    assert (status, answer["error"]) == (400, 'push kind "fcm" is not configured on this server')
    status, answer = await call(app, "DELETE", "/push/devices/nobody")
    assert status == 404 and "no push registration for device 'nobody'" in answer["error"]
    status, answer = await call(app, "DELETE", "/push/devices/bad%20id")
    assert status == 400
    assert await stored(app) == []


async def test_too_many_devices_are_refused(app: AppServer) -> None:
    for i in range(MAX_DEVICES_PER_USER):
        body = {**webpush_body(), "device_id": f"d{i}"}
        assert (await call(app, "POST", "/push/devices", body))[0] == 201
    status, answer = await call(app, "POST", "/push/devices", {**webpush_body(), "device_id": "extra"})
    assert status == 409 and f"at most {MAX_DEVICES_PER_USER}" in answer["error"]
    assert len(await stored(app)) == MAX_DEVICES_PER_USER


async def test_the_vapid_public_key_and_its_absence(app: AppServer, app_factory: AppFactory) -> None:
    status, found = await call(app, "GET", "/push/vapid-public-key", user=None)
    assert status == 200
    point = b64url_decode(found["public_key"])
    assert len(point) == 65 and point[0] == 4 and found["public_key"] != POINT
    bare = await app_factory()
    status, answer = await call(bare, "GET", "/push/vapid-public-key", user=None)
    assert status == 404 and "Web Push is not configured" in answer["error"]
    status, answer = await call(bare, "POST", "/push/devices", webpush_body())
    assert (status, answer["error"]) == (400, 'push kind "webpush" is not configured on this server')
