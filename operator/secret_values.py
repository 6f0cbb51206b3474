"""Reading Secret values the operator needs (Redis URLs, TURN secrets, TLS keys), briefly cached.

Values are read from the API on demand and kept SECRET_TTL_S, shared by every object that references
the same Secret, never in the watch caches; a change (a rotation) is seen within that time.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from voxa.operator.kube import KubeClient, path_for

SECRET_TTL_S = 10.0

_values: dict[tuple[str, str], tuple[float, dict[str, str] | None]] = {}


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
