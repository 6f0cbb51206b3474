"""The media-server registry: which SFUs serve a voice server, and which SFU hosts each channel.

SFUs register and heartbeat over HTTP (see app.py); entries expire when an SFU falls silent. The
choice of SFU for a new channel is a pure function so it is tested apart from any store.
"""

from __future__ import annotations

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
    def __init__(self, store: Store, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s

    async def heartbeat(self, server: MediaServer) -> None:
        await self.store.media_server_upsert(server, self.ttl_s)

    async def remove(self, server_id: str, media_server_id: str) -> None:
        await self.store.media_server_remove(server_id, media_server_id)

    async def list(self, server_id: str) -> list[MediaServer]:
        return await self.store.media_servers(server_id)

    async def mark_draining(self, server_id: str, media_server_id: str, draining: bool) -> None:
        await self.store.media_server_mark_draining(server_id, media_server_id, draining)

    async def assign(self, server_id: str, channel_id: str) -> MediaServer | None:
        """The SFU hosting the channel: the remembered one while it lives (even draining, so a call in
        progress stays put), else a newly chosen one. None when the voice server has no usable SFU."""
        servers = await self.store.media_servers(server_id)
        by_id = {s.id: s for s in servers}
        current = await self.store.assignment_get(server_id, channel_id)
        if current is not None and current in by_id:
            return by_id[current]
        chosen = choose_media_server(servers)
        if chosen is None:
            return None
        winner = await self.store.assignment_set(server_id, channel_id, chosen.id, replace=current)
        return by_id.get(winner, chosen)

    async def release(self, server_id: str, channel_id: str) -> None:
        await self.store.assignment_clear(server_id, channel_id)
