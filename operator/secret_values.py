"""Reading Secret values the operator needs (Redis URLs, TURN secrets, TLS keys), briefly cached.

Values are read from the API on demand and kept SECRET_TTL_S, shared by every object that references
the same Secret, never in the watch caches; a change (a rotation) is seen within that time. Secrets the
operator only mounts into pods (push keys) are read for their shape alone: which keys they have, their
resourceVersion and whether the keys a caller expects are usable; their values are checked and dropped,
never kept.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
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
    problems: tuple[tuple[str, str], ...] = ()
    """(key, what is wrong with its value) for the expected keys that are unusable."""


Expected = frozenset[tuple[str, str]]
"""(key, kind) pairs: the keys a caller needs and what each must be (the `check` function's kind)."""

_shapes: dict[tuple[str, str, Expected], tuple[float, SecretShape | None]] = {}


async def read_shape(
    kube: KubeClient,
    namespace: str,
    name: str,
    expected: Expected = frozenset(),
    check: Callable[[str, bytes], str | None] | None = None,
) -> SecretShape | None:
    """A Secret's keys and resourceVersion, or None if it does not exist; with `check(kind, value)`,
    each expected key that is present is checked and what is wrong with it recorded."""
    cache_key = (namespace, name, expected)
    hit = _shapes.get(cache_key)
    if hit is not None and time.monotonic() - hit[0] < SECRET_TTL_S:
        return hit[1]
    body = await kube.get(path_for("v1", "Secret", namespace, name))
    shape = None
    if body is not None:
        data: dict[str, str] = body.get("data") or {}
        problems: list[tuple[str, str]] = []
        for key, kind in sorted(expected):
            if check is not None and key in data:
                problem = check(kind, base64.b64decode(data[key]))
                if problem is not None:
                    problems.append((key, problem))
        version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        shape = SecretShape(version, frozenset(data), tuple(problems))
    _shapes[cache_key] = (time.monotonic(), shape)
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
