"""Kubernetes events on the objects the operator handles (kopf posts them in the background, batched)."""

from __future__ import annotations

from typing import Any, cast

import kopf


def info(body: dict[str, Any], *, reason: str, message: str) -> None:
    kopf.info(cast(kopf.Body, body), reason=reason, message=message[:1000])


def warn(body: dict[str, Any], *, reason: str, message: str) -> None:
    kopf.warn(cast(kopf.Body, body), reason=reason, message=message[:1000])
