"""Minting development and test tokens (`voxa token`). Production tokens come from the app's backend."""

from __future__ import annotations

import time
from typing import Any

import jwt

from voxa.common.claims import VoiceClaims


def mint_token(
    claims: VoiceClaims,
    key: str,
    *,
    ttl_s: int = 3600,
    algorithm: str = "HS256",
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
    kid: str | None = None,
) -> str:
    """Sign `claims` with `key` (a shared secret for HS256, a PEM private key otherwise)."""
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = claims.model_dump(mode="json", exclude_defaults=True)
    payload["perms"] = sorted(p.value for p in claims.perms)
    payload.update(iat=issued, nbf=issued, exp=issued + ttl_s)
    if issuer:
        payload["iss"] = issuer
    if audience:
        payload["aud"] = audience
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)
