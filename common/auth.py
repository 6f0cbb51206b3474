"""Bearer credentials on internal HTTP APIs (signaling's registry, the SFU's control API)."""

from __future__ import annotations

import hmac


def bearer_token(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <token>` header, or None."""
    if header and header[:7].lower() == "bearer ":
        return header[7:]
    return None


def bearer_matches(header: str | None, secret: str | None) -> bool:
    """True when the header carries exactly `secret` (constant-time); never with an empty secret."""
    given = bearer_token(header)
    return bool(secret) and given is not None and hmac.compare_digest(given.encode(), str(secret).encode())
