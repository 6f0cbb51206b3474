"""The media-server registry: which SFUs serve a voice server, and which SFU hosts each channel.

SFUs register and heartbeat over HTTP (see app.py); entries expire when an SFU falls silent. The
choice of SFU for a new channel is a pure function so it is tested apart from any store.
"""

from __future__ import annotations

import time

from voxa.signaling.store import MediaServer, Store


def choose_media_server(servers: list[MediaServer]) -> MediaServer | None:
    """The least-utilised SFU that is not draining and has room; ties go to the lowest id.

    With one SFU per voice server (the default deployment) every channel lands on it.
    """
    candidates = [s for s in servers if not s.draining and s.load.peers < s.capacity]
    if not candidates:
        return None
    return min(candidates, key=lambda s: (s.utilisation, s.id))


class MediaRegistry:
    """Registry operations. The join path reads the SFU list through a short cache (`cache_s`),
    because SFUs heartbeat every few seconds anyway; a channel's assignment is always read from the
    store (one round trip), since a replica's remembered copy may name an SFU the channel has left
    (released by its last participant on another replica) and would split the channel."""

    def __init__(self, store: Store, ttl_s: float, cache_s: float = 1.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.cache_s = cache_s
        self._servers: dict[str, tuple[float, list[MediaServer]]] = {}

    async def heartbeat(self, server: MediaServer) -> None:
        await self.store.media_server_upsert(server, self.ttl_s)

    async def remove(self, server_id: str, media_server_id: str) -> None:
        await self.store.media_server_remove(server_id, media_server_id)

    async def servers(self, server_id: str) -> list[MediaServer]:
        return await self.store.media_servers(server_id)

    async def mark_draining(self, server_id: str, media_server_id: str, draining: bool) -> None:
        await self.store.media_server_mark_draining(server_id, media_server_id, draining)

    async def _live(self, server_id: str, cached: bool) -> list[MediaServer]:
        now = time.monotonic()
        hit = self._servers.get(server_id)
        if cached and hit is not None and hit[0] > now:
            return hit[1]
        servers = await self.store.media_servers(server_id)
        self._servers[server_id] = (now + self.cache_s, servers)
        if len(self._servers) > 10_000:
            self._servers = {k: v for k, v in self._servers.items() if v[0] > now}
        return servers

    async def assign(self, server_id: str, channel_id: str, *, cached: bool = False) -> MediaServer | None:
        """The SFU hosting the channel: the remembered one while it lives (even draining, so a call in
        progress stays put), else a newly chosen one. None when the voice server has no usable SFU.
        With `cached`, the SFU list this replica read less than `cache_s` ago may be used."""
        servers = await self._live(server_id, cached)
        current = await self.store.assignment_get(server_id, channel_id)
        if cached and current is not None and current not in {s.id for s in servers}:
            # Perhaps an SFU registered since this replica's list: look again before calling the
            # assignment stale (replacing it would split the channel).
            servers = await self._live(server_id, cached=False)
        if not servers:
            return None
        by_id = {s.id: s for s in servers}
        if current is None or current not in by_id:
            chosen = choose_media_server(servers)
            if chosen is None:
                return None
            current = await self.store.assignment_set(server_id, channel_id, chosen.id, replace=current)
            if current not in by_id:  # another replica's choice, newer than our list
                by_id = {s.id: s for s in await self._live(server_id, cached=False)}
        return by_id.get(current)

    async def current(self, server_id: str, channel_id: str) -> MediaServer | None:
        """The SFU the channel is assigned to, if it lives; never assigns (a resume only checks that
        its session's room is still where its peer is)."""
        assigned = await self.store.assignment_get(server_id, channel_id)
        if assigned is None:
            return None
        for server in await self._live(server_id, cached=True):
            if server.id == assigned:
                return server
        return None

    async def move_off(self, server_id: str, channel_id: str, media_server_id: str) -> MediaServer | None:
        """The channel's SFU refused to host it (it is draining and its router for the channel is
        gone, so nobody is left there): choose another SFU and move the assignment, unless another
        replica moved it first (compare-and-set), in which case its choice is returned."""
        servers = await self._live(server_id, cached=False)
        chosen = choose_media_server([s for s in servers if s.id != media_server_id])
        if chosen is None:
            return None
        current = await self.store.assignment_set(server_id, channel_id, chosen.id, replace=media_server_id)
        return {s.id: s for s in servers}.get(current)

    async def release_if_idle(self, server_id: str, channel_id: str, topic: str) -> bool:
        """Forget the channel's SFU if nobody is present in it, in one atomic step with the check
        (a participant joining on another replica keeps it). True when released."""
        return await self.store.assignment_release_if_idle(server_id, channel_id, topic)

    async def release(self, server_id: str, channel_id: str) -> None:
        await self.store.assignment_clear(server_id, channel_id)
