"""Reading Secret values the operator needs (Redis URLs, TURN secrets, TLS keys), briefly cached.

Values are read from the API on demand and kept SECRET_TTL_S, shared by every object that references
the same Secret, never in the watch caches; a change (a rotation) is seen within that time. Secrets the
operator only mounts into pods (push keys) are read for their shape alone: which keys they have and
their resourceVersion, never their values.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

from voxa.operator.kube import KubeClient, path_for

SECRET_TTL_S = 10.0

_values: dict[tuple[str, str], tuple[float, dict[str, str] | None]] = {}


@dataclass(frozen=True)
class SecretShape:
    """What a mounted Secret looks like, without its values."""

    resource_version: str
    keys: frozenset[str]


_shapes: dict[tuple[str, str], tuple[float, SecretShape | None]] = {}


async def read_shape(kube: KubeClient, namespace: str, name: str) -> SecretShape | None:
    """A Secret's keys and resourceVersion, or None if it does not exist."""
    key = (namespace, name)
    hit = _shapes.get(key)
    if hit is not None and time.monotonic() - hit[0] < SECRET_TTL_S:
        return hit[1]
    body = await kube.get(path_for("v1", "Secret", namespace, name))
    shape = None
    if body is not None:
        keys = set(body.get("data") or {}) | set(body.get("stringData") or {})
        shape = SecretShape(str((body.get("metadata") or {}).get("resourceVersion", "")), frozenset(keys))
    _shapes[key] = (time.monotonic(), shape)
    return shape


async def read_secret(kube: KubeClient, namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's decoded data, or None if it does not exist."""
    key = (namespace, name)
    hit = _values.get(key)
    if hit is not None and time.monotonic() - hit[0] < SECRET_TTL_S:
        return hit[1]
    body = await kube.get(path_for("v1", "Secret", namespace, name))
    data = None if body is None else decode(body)
    _values[key] = (time.monotonic(), data)
    return data


def decode(body: dict[str, Any]) -> dict[str, str]:
    """A Secret object's data, base64-decoded."""
    return {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
