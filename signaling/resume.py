"""Resumable voice sessions: a client whose socket was lost rejoins (on any replica) with the
`resume` it got in its join reply and keeps its SFU peer, so media never stops.

The store holds one record per session (user, channel, the SHA-256 of its resume token, the owning
replica) with a TTL; this replica refreshes the records it owns in the hub's maintenance loop, one
call per voice server, so a crashed replica's records expire by themselves. A socket lost on a live
replica keeps its SFU peer for `VOXA_SESSION_RESUME_S`; then the peer goes only if the record is
still this replica's (compare-and-delete): a resume elsewhere took it over otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from voxa.signaling.store import Store, StoreUnavailable

log = logging.getLogger("voxa.signaling.resume")
TOKEN_BYTES = 24
"""192 random bits per resume token (url-safe base64, 32 characters)."""
MAX_TOKEN_CHARS = 128
MAX_SESSION_ID_CHARS = 64


def new_token() -> tuple[str, str]:
    """A fresh resume token and the hash the store keeps (the token itself is never stored)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_resume(payload: dict[str, Any]) -> tuple[str, str] | None:
    """(session_id, token) of a join's `resume`, or None when absent or malformed: a bad `resume` is
    never an error, the join is then simply a fresh one."""
    resume = payload.get("resume")
    if not isinstance(resume, dict):
        return None
    session_id, token = resume.get("session_id"), resume.get("token")
    if not isinstance(session_id, str) or not isinstance(token, str):
        return None
    if not 0 < len(session_id) <= MAX_SESSION_ID_CHARS or not 0 < len(token) <= MAX_TOKEN_CHARS:
        return None
    return session_id, token


class SessionKeeper:
    """This replica's resumable sessions: the ones it owns (live or lingering after a lost socket)."""

    def __init__(self, store: Store, resume_s: float, replica_ttl_s: float) -> None:
        self.store = store
        self.resume_s = resume_s
        self.ttl_s = resume_s + replica_ttl_s
        """A record outlives the last refresh by the resume window plus a heartbeat period or more, so
        it stays while its owner lives, and a client of a dead owner has the whole window to resume."""
        self.owned: dict[str, dict[str, str]] = {}
        """server id -> session id -> token hash of the sessions this replica refreshes."""
        self._lingering: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.resume_s > 0

    def own(self, server_id: str, session_id: str, token_hash: str) -> None:
        self.owned.setdefault(server_id, {})[session_id] = token_hash

    def disown(self, server_id: str, session_id: str, token_hash: str) -> None:
        """Stop refreshing the session unless it was resumed here since (its token rotated)."""
        ids = self.owned.get(server_id)
        if ids is not None and ids.get(session_id) == token_hash:
            del ids[session_id]
            if not ids:
                del self.owned[server_id]

    async def refresh(self) -> None:
        """The hub's maintenance duty: extend every owned record's TTL, one store call per server."""
        for server_id, ids in list(self.owned.items()):
            await self.store.session_refresh(server_id, sorted(ids), self.ttl_s)

    async def release(self, server_id: str, session_id: str, token_hash: str) -> bool:
        """Forget the session if it is still ours with this token; True when it was (its SFU peer is
        then ours to remove)."""
        self.disown(server_id, session_id, token_hash)
        try:
            return await self.store.session_release(server_id, session_id, token_hash)
        except StoreUnavailable:
            # We cannot tell whether a resume took it over: keep the peer (the record expires, and
            # the SFU removes a peer whose client is gone when ICE consent lapses).
            return False

    def linger(
        self, server_id: str, session_id: str, token_hash: str, end: Callable[[bool], Awaitable[None]]
    ) -> None:
        """The socket is gone but the client may resume: after the window, `end(still_ours)`."""
        task = asyncio.get_running_loop().create_task(self._linger(server_id, session_id, token_hash, end))
        self._lingering.add(task)
        task.add_done_callback(self._lingering.discard)

    async def _linger(
        self, server_id: str, session_id: str, token_hash: str, end: Callable[[bool], Awaitable[None]]
    ) -> None:
        await asyncio.sleep(self.resume_s)
        ours = await self.release(server_id, session_id, token_hash)
        log.info("resume.window_ended", extra={"session_id": session_id, "resumed_elsewhere": not ours})
        try:
            await end(ours)
        except Exception:
            log.exception("resume.end_failed")

    async def close(self) -> None:
        """Shutdown: lingering peers stay on the SFU; their records expire unless a client resumes."""
        for task in list(self._lingering):
            task.cancel()
        for task in list(self._lingering):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
