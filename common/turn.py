"""Short-lived TURN credentials in the TURN REST API scheme (coturn `use-auth-secret`, STUNner `ephemeral`).

username = "<expiry-unix>:<user-id>", credential = base64(HMAC-SHA1(secret, username)).
The TURN server recomputes the credential from the username with the same shared secret, so no
per-user state is stored anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from pydantic import BaseModel, Field


class IceServer(BaseModel):
    """One entry of RTCConfiguration.iceServers, in the shape browsers and STUNner's auth service use."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceConfig(BaseModel):
    """The STUNner auth-service answer shape: ``{"iceServers": [...], "iceTransportPolicy": "all"}``."""

    iceServers: list[IceServer] = Field(default_factory=list)
    iceTransportPolicy: str = "all"


def turn_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def turn_credentials(secret: str, user_id: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    """Return (username, credential) valid until now + ttl_s."""
    expiry = int(now if now is not None else time.time()) + ttl_s
    username = f"{expiry}:{user_id}"
    return username, turn_password(secret, username)


def verify_credential(secrets: list[str], username: str, credential: str, now: float | None = None) -> bool:
    """True if `credential` was issued for `username` with any of `secrets` and has not expired: the
    check a TURN server makes (coturn with several secrets accepts any of them; stunnerd holds one,
    which is why a StunnerGateway runs two slots, see docs/turn.md)."""
    expiry_text, sep, _user = username.partition(":")
    if not sep or not expiry_text.isdigit():
        return False
    if int(expiry_text) < int(now if now is not None else time.time()):
        return False
    return any(hmac.compare_digest(turn_password(s, username), credential) for s in secrets if s)


def ice_config(
    secret: str | None,
    uris: list[str],
    user_id: str,
    ttl_s: int,
    now: float | None = None,
    transport_policy: str = "all",
) -> IceConfig:
    """ICE servers for one user: TURN URIs with fresh credentials, STUN URIs as they are. The policy
    is passed on only with TURN servers to relay through ("relay" without them would connect nothing)."""
    if not uris:
        return IceConfig()
    turn = [u for u in uris if u.startswith(("turn:", "turns:"))]
    stun = [u for u in uris if not u.startswith(("turn:", "turns:"))]
    servers: list[IceServer] = []
    if stun:
        servers.append(IceServer(urls=stun))
    if turn and secret:
        username, credential = turn_credentials(secret, user_id, ttl_s, now)
        servers.append(IceServer(urls=turn, username=username, credential=credential))
        return IceConfig(iceServers=servers, iceTransportPolicy=transport_policy)
    return IceConfig(iceServers=servers)
