"""One participant's media on its room's SFU router: the negotiation relay, the media flags the SFU
enforces, the reset when the SFU is lost, and the router's lifecycle (the first offer creates it on
the room's SFU, the room's last leave closes it).

A voice channel (`voice:`) and a call (`call:`) are both rooms with this session; each adds only its
own rights and membership rules. The session talks to its client through `send(event, payload)`,
asks its owner for the flags the SFU must apply (`flags()`, rights and mute state live with the
owner), and tells it when the SFU hears the participant speak (`on_speaking`) and what the
participant publishes (`on_tracks`, for presence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voxa.signaling import video
from voxa.signaling.connection import ChannelError
from voxa.signaling.media import MediaError, SfuLink, router_id
from voxa.signaling.store import MediaServer, StoreUnavailable

if TYPE_CHECKING:
    from voxa.signaling.context import SignalingContext

log = logging.getLogger("voxa.signaling.session")
Send = Callable[[str, dict[str, Any]], None]


class MediaSession:
    """The `MediaMember` the SFU's event stream reaches, by `session_id` (the presence session id)."""

    def __init__(
        self,
        ctx: SignalingContext,
        server_id: str,
        channel_id: str,
        session_id: str,
        send: Send,
        flags: Callable[[], dict[str, bool]],
        on_speaking: Callable[[bool], None],
        on_tracks: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.server_id = server_id
        self.channel_id = channel_id
        self.session_id = session_id
        self.router = router_id(server_id, channel_id)
        self._send = send
        self._flags = flags
        self._on_speaking = on_speaking
        self._on_tracks = on_tracks
        self.sources: dict[str, str] = {}
        """What each of the client's sending m-sections carries, as its offers said (merged: a mid keeps
        its source until an offer names it again); sent whole with every offer, so the SFU never
        falls back to a kind's default for a screen share an earlier offer labelled."""
        self.media: MediaServer | None = None
        self.link: SfuLink | None = None
        self.peer = False
        """Whether this session has a peer on the SFU (its first offer was answered)."""
        self.closed = False
        self._lock = asyncio.Lock()
        self._held_offers: list[dict[str, Any]] | None = None
        """The SFU's offers that arrived while a client offer is being answered."""
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- the room's SFU ---------------------------------------------------------------------------
    async def assign(self) -> MediaServer | None:
        """The room's SFU at join time (None while the store is out: the first offer assigns then).
        Called after the presence join: a last participant leaving meanwhile releases the room's SFU
        only while nobody is present (atomically), so every joiner agrees on one SFU."""
        media: MediaServer | None = None
        with contextlib.suppress(StoreUnavailable):
            media = await self.ctx.registry.assign(self.server_id, self.channel_id, cached=True)
        if media is not None:
            self._use(media)
        return media

    def _use(self, media: MediaServer | None) -> None:
        self.media = media
        self.link = self.ctx.media.attach(media, self) if media is not None else None

    # --- client → SFU -----------------------------------------------------------------------------
    async def sdp(self, payload: dict[str, Any], sources: dict[str, str] | None = None) -> dict[str, Any]:
        """Relay the client's offer or answer; `sources` (offers only) are already checked by the owner."""
        kind = payload.get("type")
        sdp = payload.get("sdp")
        if kind not in ("offer", "answer") or not isinstance(sdp, str) or not sdp:
            raise ChannelError("sdp needs {type: 'offer' | 'answer', sdp: string}")
        if self.link is None or self.media is None:
            media = await self.ctx.registry.assign(self.server_id, self.channel_id)
            if media is None:
                raise ChannelError("no media server available", retry=True)
            self._use(media)
        assert self.link is not None
        holds = kind == "offer" and self._held_offers is None
        if holds:
            # The SFU's own offers (a new participant's track) come on its event socket and may
            # overtake the answer to this offer, which comes back on the HTTP reply: hold them until
            # the answer is out, so the client sees answer then offer, as the SFU made them.
            self._held_offers = []
        try:
            return await self._relay(self.link, kind, sdp, sources if kind == "offer" else None)
        finally:
            if holds:
                held, self._held_offers = self._held_offers or [], None
                for offer in held:
                    self._send("sdp", offer)

    async def _relay(
        self, link: SfuLink, kind: str, sdp: str, sources: dict[str, str] | None
    ) -> dict[str, Any]:
        answer: str | None
        async with self._lock:
            try:
                if kind == "offer" and not self.peer:
                    # A new peer connection: its mids start afresh.
                    self.sources = dict(sources or {})
                    answer = await self._add_peer(link, sdp)
                    self.peer = True
                elif kind == "offer":
                    if sources:
                        self.sources.update(sources)
                    answer = await link.description(
                        self.router, self.session_id, "offer", sdp, dict(self.sources) or None
                    )
                    if answer is None:
                        return {"ignored": True}
                else:
                    if not self.peer:
                        raise ChannelError("no offer from the media server is waiting for an answer")
                    await link.description(self.router, self.session_id, "answer", sdp)
                    return {}
            except MediaError as exc:
                raise ChannelError(exc.reason) from None
        self._send("sdp", {"type": "answer", "sdp": answer})
        return {}

    async def _add_peer(self, link: SfuLink, offer: str) -> str:
        """The first offer of this session: a peer on the room's SFU. An SFU that drains keeps the
        routers it hosts but refuses new ones; a room whose router there is gone (everyone left, as
        in a signaling rollout) moves to another SFU instead of failing for good."""
        try:
            return await link.add_peer(
                self.router, self.session_id, offer, dict(self.sources) or None, **self._flags()
            )
        except MediaError as exc:
            if not exc.draining:
                raise
        media = await self.ctx.registry.move_off(self.server_id, self.channel_id, link.media.id)
        if media is None:
            raise ChannelError("no media server available", retry=True)
        log.info("session.room_moved", extra={"from": link.media.id, "to": media.id, "why": "draining"})
        self.ctx.media.detach(link, self)
        self._use(media)
        assert self.link is not None
        return await self.link.add_peer(
            self.router, self.session_id, offer, dict(self.sources) or None, **self._flags()
        )

    async def ice(self, payload: dict[str, Any]) -> dict[str, Any]:
        candidate = payload.get("candidate")
        if not isinstance(candidate, str) or len(candidate) > 1024:
            raise ChannelError("ice needs {candidate: string, sdpMid, sdpMLineIndex}")
        if self.link is None or not self.peer:
            raise ChannelError("send an offer before ICE candidates")
        body = {
            "candidate": candidate,
            "sdpMid": payload.get("sdpMid"),
            "sdpMLineIndex": payload.get("sdpMLineIndex"),
        }
        try:
            await self.link.candidate(self.router, self.session_id, body)
        except MediaError as exc:
            raise ChannelError(exc.reason) from None
        return {}

    async def video_quality(self, track: str, body: dict[str, Any]) -> dict[str, Any]:
        """Relay what the client wants of a video it receives (validated by video.parse_video_quality)."""
        if self.link is None or not self.peer:
            raise ChannelError("unknown track")
        try:
            await self.link.quality(self.router, self.session_id, track, body)
        except MediaError as exc:
            raise ChannelError("unknown track" if exc.status == 404 else exc.reason) from None
        return {}

    def set_state(self, flags: dict[str, bool]) -> None:
        """Mute, server mute, deafen: applied by the SFU without renegotiation."""
        if flags and self.peer:
            self._spawn(self._state(flags))

    async def _state(self, flags: dict[str, bool]) -> None:
        if self.link is None:
            return
        try:
            await self.link.state(self.router, self.session_id, **flags)
        except MediaError as exc:
            log.warning("session.sfu_state_failed", extra={"reason": exc.reason})

    # --- SFU → client (MediaMember) ----------------------------------------------------------------
    def on_media_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "offer":
            offer = {"type": "offer", "sdp": event["sdp"]}
            if self._held_offers is not None:
                self._held_offers.append(offer)
            else:
                self._send("sdp", offer)
        elif kind == "speaking":
            self._on_speaking(bool(event.get("speaking")))
        elif kind == "publish_layers":
            # Dynacast: the layers of this participant's simulcast video that someone receives.
            layers = video.publish_layers(event)
            if layers is not None:
                self._send("publish_layers", layers)
        elif kind == "tracks":
            if self._on_tracks is not None:
                self._on_tracks(video.presence_tracks(event.get("tracks")))
        elif (
            kind == "peer_state"
            and event.get("state") == "closed"
            and event.get("reason") != "removed by signaling"
        ):
            # The transport failed or timed out on the SFU: start over with a fresh peer connection.
            self.peer = False
            self._tracks_gone()
            self._send("media_reset", {"reason": f"media {event.get('reason')}"})

    def _tracks_gone(self) -> None:
        """The SFU peer is gone, and what it published with it (a new peer reports its own tracks)."""
        if self._on_tracks is not None:
            self._on_tracks([])

    async def media_reset(self, media: MediaServer | None, reason: str) -> None:
        """The room's SFU changed (or restarted): the client negotiates from scratch."""
        self.peer = False
        self._use(media)
        if not self.closed:
            self._tracks_gone()
            self._send("media_reset", {"reason": reason})

    # --- resume -----------------------------------------------------------------------------------
    async def resume_peer(self, media: MediaServer) -> dict[str, Any] | None:
        """Take over this session's peer on `media` after the client's socket was lost elsewhere (or
        here): listen to the SFU's events for it, then ask whether the peer still exists. Returns the
        SFU's view of the peer (its `tracks` among it), or None (then nothing is attached)."""
        self._use(media)
        assert self.link is not None
        info: dict[str, Any] | None = None
        try:
            # Events the SFU sends before our event socket is open would be lost (link.events_ready).
            await self.link.events_ready()
            info = await self.link.peer_info(self.router, self.session_id)
        except MediaError:
            info = None
        if info is None:
            self.ctx.media.detach(self.link, self)
            self.media = self.link = None
            return None
        self.peer = True
        return info

    def detach(self) -> None:
        """The socket is gone but the client may resume: stop relaying, keep the SFU peer."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        if self.link is not None:
            self.ctx.media.detach(self.link, self)

    async def remove_peer(self) -> None:
        """The resume window ended and the session is still ours: the peer goes."""
        if self.link is not None and self.peer:
            self.peer = False
            await self.link.remove_peer(self.router, self.session_id)

    # --- end --------------------------------------------------------------------------------------
    async def close(self) -> None:
        """The participant left: its peer goes; the router stays for `close_router_if_idle`."""
        self.closed = True
        link = self.link
        for task in list(self._tasks):
            task.cancel()
        if link is None:
            return
        self.ctx.media.detach(link, self)
        if self.peer:
            self.peer = False
            await link.remove_peer(self.router, self.session_id)

    async def close_router_if_idle(self, topic: str) -> None:
        """Automatic rooms: the router goes with the room's last participant (nobody present on
        `topic`, checked atomically with releasing the room's SFU)."""
        media = self.media
        if media is None:
            return
        try:
            if not await self.ctx.registry.release_if_idle(self.server_id, self.channel_id, topic):
                return
        except StoreUnavailable:
            return
        await self.ctx.media.link(media).close_router(self.router)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
