"""Helpers the push tests share: a well-formed Web Push registration body, calls of signaling's push
API with a user's token, and reading a replica's metrics."""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import token
from voxa.signaling.push.models import b64url_encode

POINT = b64url_encode(
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
)
"""A browser's p256dh: a real uncompressed P-256 point."""
AUTH = b64url_encode(b"0123456789abcdef")


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


def webpush_body(endpoint: str = "https://push.example.net/p/abc", **extra: object) -> dict[str, object]:
    return {
        "device_id": "bob-browser",
        "kind": "webpush",
        "subscription": {"endpoint": endpoint, "keys": {"p256dh": POINT, "auth": AUTH}},
        **extra,
    }


async def api(
    replica: HasUrl, method: str, path: str, user: str = "bob", body: Any = None
) -> tuple[int, Any]:
    """(status, JSON answer) of a push API request with `user`'s token."""
    headers = {"Authorization": f"Bearer {token(user)}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, replica.url + path, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def metric(replica: HasUrl, name: str, **labels: str) -> float:
    """The sum of a replica's /metrics samples of `name` that carry these labels (0 when none)."""
    async with aiohttp.ClientSession() as http, http.get(replica.url + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.partition("{")[0] == name and all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total
