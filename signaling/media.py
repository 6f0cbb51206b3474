"""Signaling's side of the media path: the SFUs' control APIs and event streams.

A replica keeps one SfuLink per SFU its local participants use. Requests (create router, add peer,
relay SDP/ICE, mute and rights) go over HTTP; the SFU's events (its offers, speaking, peer states)
arrive on one WebSocket per SFU and are routed to the local channel member whose SFU peer id (its
presence `session_id`) they name. Every replica with members on an SFU holds its own stream, so no
event needs to cross replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import aiohttp
import orjson

from voxa.signaling.registry import MediaRegistry
from voxa.signaling.store import MediaServer, StoreUnavailable

log = logging.getLogger("voxa.signaling.media")
REQUEST_TIMEOUT_S = 10.0
EVENTS_CONNECT_TIMEOUT_S = 3.0
"""Opening an SFU's event socket: a live SFU answers in milliseconds, while a dead pod's address may
swallow the handshake until a timeout, and three of those decide that the SFU is dead."""
RECONNECT_ATTEMPTS_BEFORE_DEAD = 3
EVENTS_READY_TIMEOUT_S = EVENTS_CONNECT_TIMEOUT_S * RECONNECT_ATTEMPTS_BEFORE_DEAD
"""How long a first peer on an SFU waits for the link's event socket to open."""


class MediaError(Exception):
    """The SFU refused or could not be reached; `reason` is safe to show the client."""

    def __init__(self, reason: str, status: int = 0, draining: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.draining = draining
        """The SFU is draining and refused a router it does not host: the channel must move."""


class MediaMember(Protocol):
    """A local participant's media (signaling/session.py's MediaSession)."""

    session_id: str
    server_id: str
    channel_id: str

    def on_media_event(self, event: dict[str, Any]) -> None: ...

    async def media_reset(self, media: MediaServer | None, reason: str) -> None: ...


def router_id(server_id: str, channel_id: str) -> str:
    return f"{server_id}.{channel_id}"


class SfuLink:
    def __init__(self, gateway: MediaGateway, media: MediaServer) -> None:
        self.gateway = gateway
        self.media = media
        self.base = media.url.rstrip("/")
        self.members: dict[str, MediaMember] = {}
        self._events: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.closed = False

    # --- requests ---------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            async with self.gateway.http.request(method, self.base + path, json=body) as resp:
                try:
                    data: dict[str, Any] = (
                        await resp.json(content_type=None) if resp.content_length != 0 else {}
                    )
                except ValueError:
                    if resp.status < 400:
                        raise
                    data = {}  # an error page that is not JSON (an unknown route): the status says enough
                if resp.status >= 400:
                    raise MediaError(
                        str(data.get("error", f"media server answered {resp.status}")),
                        resp.status,
                        draining=data.get("draining") is True,
                    )
                return data
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise MediaError(f"media server unreachable ({type(exc).__name__})") from None

    async def ensure_router(self, router: str) -> None:
        await self._request("PUT", f"/v1/routers/{router}")

    async def events_ready(self) -> None:
        """The SFU sends its renegotiation offers (a new participant's tracks) and peer states on the
        event socket only, and keeps none for a listener that is not there yet: a peer created before
        the socket of a new link is open (an SFU pod that just started) could miss the offer carrying
        the next participant's audio, and would never hear them."""
        if self.connected.is_set():
            return
        try:
            async with asyncio.timeout(EVENTS_READY_TIMEOUT_S):
                await self.connected.wait()
        except TimeoutError:
            raise MediaError("media server events unreachable") from None

    async def add_peer(
        self, router: str, peer: str, offer: str, sources: dict[str, str] | None = None, **flags: bool
    ) -> str:
        """A peer for the client's first offer; `sources` names what each of its m-sections sends
        (`{mid: "microphone" | "camera" | "screen" | "screen_audio"}`; the SFU defaults by kind)."""
        await self.events_ready()
        body: dict[str, Any] = {"sdp": offer, **flags}
        if sources:
            body["sources"] = sources
        for attempt in range(2):
            await self.ensure_router(router)
            try:
                data = await self._request("POST", f"/v1/routers/{router}/peers/{peer}", body)
            except MediaError as exc:
                # The last participant of an earlier session closed the empty router between our
                # PUT and POST: create it again.
                if exc.status == 404 and exc.reason.startswith("no router") and attempt == 0:
                    continue
                raise
            return str(data["sdp"])
        raise AssertionError("unreachable")

    async def description(
        self, router: str, peer: str, kind: str, sdp: str, sources: dict[str, str] | None = None
    ) -> str | None:
        """Relay an offer (returns the answer, or None when the SFU ignored it: glare) or an answer."""
        body: dict[str, Any] = {"type": kind, "sdp": sdp}
        if sources:
            body["sources"] = sources
        try:
            data = await self._request("POST", f"/v1/routers/{router}/peers/{peer}/sdp", body)
        except MediaError as exc:
            if exc.status == 409 and kind == "offer":
                return None
            raise
        return str(data["sdp"]) if kind == "offer" else ""

    async def candidate(self, router: str, peer: str, candidate: dict[str, Any]) -> None:
        await self._request("POST", f"/v1/routers/{router}/peers/{peer}/ice", candidate)

    async def state(self, router: str, peer: str, **flags: bool) -> None:
        await self._request("PUT", f"/v1/routers/{router}/peers/{peer}/state", flags)

    async def quality(self, router: str, peer: str, track: str, body: dict[str, Any]) -> None:
        """What subscriber `peer` wants of `track` (a producer id `<peer>:<mid>`): the size it shows the
        video at (the SFU picks the lowest layer that covers it) or paused. 404: no such track."""
        await self._request("PUT", f"/v1/routers/{router}/peers/{peer}/consumers/{track}/quality", body)

    async def peer_info(self, router: str, peer: str) -> dict[str, Any] | None:
        """The SFU's view of a peer (state and `tracks`), or None when it has no such peer (404) or
        cannot say: a resume then falls back to a fresh negotiation, which is always safe."""
        try:
            return await self._request("GET", f"/v1/routers/{router}/peers/{peer}")
        except MediaError:
            return None

    async def remove_peer(self, router: str, peer: str) -> None:
        with contextlib.suppress(MediaError):
            await self._request("DELETE", f"/v1/routers/{router}/peers/{peer}")

    async def close_router(self, router: str) -> None:
        """Close the router if nobody is in it (a participant may have joined since we looked)."""
        with contextlib.suppress(MediaError):
            await self._request("DELETE", f"/v1/routers/{router}?if_empty=true")

    # --- events -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._events is None:
            self._events = asyncio.create_task(self._run_events(), name=f"voxa-sfu-events-{self.media.id}")

    async def _run_events(self) -> None:
        failures = 0
        lost = False
        while not self.closed:
            try:
                async with asyncio.timeout(EVENTS_CONNECT_TIMEOUT_S):
                    ws = await self.gateway.http.ws_connect(self.base + "/v1/events", heartbeat=10)
                async with ws:
                    failures = 0
                    self.connected.set()
                    if lost:
                        # The SFU came back: a new process knows nothing of our peers.
                        await self.gateway.reset_members(self, "media server restarted")
                        lost = False
                    async for msg in ws:
                        if msg.type is aiohttp.WSMsgType.TEXT:
                            self._dispatch(orjson.loads(msg.data))
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info(
                    "media.events_lost", extra={"media_server": self.media.id, "error": type(exc).__name__}
                )
            if self.stopped():
                return
            self.connected.clear()
            lost = lost or bool(self.members)
            failures += 1
            if failures >= RECONNECT_ATTEMPTS_BEFORE_DEAD and self.members:
                # Gone for good as far as we can tell: move its channels now rather than after the TTL.
                await self.gateway.media_server_dead(self)
                return
            await asyncio.sleep(0.3)

    def stopped(self) -> bool:
        return self.closed

    def _dispatch(self, event: dict[str, Any]) -> None:
        peer = event.get("peer")
        member = self.members.get(peer) if isinstance(peer, str) else None
        if member is not None:
            try:
                member.on_media_event(event)
            except Exception:
                log.exception("media.event_failed", extra={"type": event.get("type")})

    async def close(self) -> None:
        self.closed = True
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._events


class MediaGateway:
    def __init__(self, registry: MediaRegistry, secret: str | None) -> None:
        self.registry = registry
        self.secret = secret or ""
        self.links: dict[str, SfuLink] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.secret}"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            )
        return self._http

    def link(self, media: MediaServer) -> SfuLink:
        link = self.links.get(media.id)
        if link is None or link.closed or link.base != media.url.rstrip("/"):
            link = self.links[media.id] = SfuLink(self, media)
            link.start()
        return link

    def attach(self, media: MediaServer, member: MediaMember) -> SfuLink:
        link = self.link(media)
        link.members[member.session_id] = member
        return link

    def detach(self, link: SfuLink, member: MediaMember) -> None:
        # Only this member: a resumed session's new member (same session id) may have replaced it.
        if link.members.get(member.session_id) is member:
            del link.members[member.session_id]

    async def reset_members(self, link: SfuLink, reason: str, media: MediaServer | None = None) -> None:
        members = list(link.members.values())
        link.members.clear()
        for member in members:
            await member.media_reset(media or link.media, reason)

    async def media_server_dead(self, link: SfuLink) -> None:
        """An SFU stopped answering: drop it from the registry and move its channels to another SFU."""
        log.warning("media.server_dead", extra={"media_server": link.media.id})
        self.links.pop(link.media.id, None)
        link.closed = True
        with contextlib.suppress(StoreUnavailable):
            await self.registry.remove(link.media.server_id, link.media.id)
        members = list(link.members.values())
        link.members.clear()
        for member in members:
            replacement: MediaServer | None = None
            with contextlib.suppress(StoreUnavailable):
                replacement = await self.registry.assign(member.server_id, member.channel_id)
            await member.media_reset(replacement, "media server lost")

    async def close(self) -> None:
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()
        if self._http is not None:
            await self._http.close()
