"""Voice channels: topic ``voice:<server_id>:<channel_id>``.

A socket's join of a voice channel is a VoiceChannel. Participant state (muted, deafened,
server_muted, server_deafened, speaking, video, suppressed, and the published tracks and streaming that
the SFU reports) lives in the participant's presence meta, so every change reaches the channel as a
``presence_diff``. Moderation of another participant travels
as a control message to whichever replica holds that participant's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from voxa.common.claims import Permission, permission_names
from voxa.signaling import protocol, resume, video
from voxa.signaling.connection import ChannelError
from voxa.signaling.presence import (
    PRESENCE_DIFF,
    PRESENCE_STATE,
    Meta,
    State,
    leave_diff,
    leaves_diff,
    state_of,
    update_diff,
    updated_meta,
)
from voxa.signaling.rights import Action, Forbidden, allowed, check
from voxa.signaling.session import MediaSession
from voxa.signaling.store import MediaServer, MetaFrame, PresenceEntry, StoreUnavailable

if TYPE_CHECKING:
    from voxa.signaling.connection import Connection
    from voxa.signaling.context import SignalingContext

log = logging.getLogger("voxa.signaling.voice")
TOPIC_PREFIX = "voice:"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
SELF_EVENTS = {
    "mute": {"muted": True},
    "unmute": {"muted": False},
    "deafen": {"deafened": True},
    "undeafen": {"deafened": False},
}
MODERATION = {
    Action.MUTE: {"server_muted": True},
    Action.UNMUTE: {"server_muted": False},
    Action.DEAFEN: {"server_deafened": True},
    Action.UNDEAFEN: {"server_deafened": False},
}
# The joining meta is completed by the store (member flags merged in); the join diff is built around it.
META_SLOT = "\x00meta\x00"
META_SLOT_JSON = '"\\u0000meta\\u0000"'
STATE_FIELDS = ("muted", "deafened", "server_muted", "server_deafened", "speaking", "video", "suppressed")


def parse_topic(topic: str) -> tuple[str, str] | None:
    """(server_id, channel_id) of a voice topic, or None."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    server_id, sep, channel_id = topic[len(TOPIC_PREFIX) :].partition(":")
    if not sep or not ID_PATTERN.match(server_id) or not ID_PATTERN.match(channel_id):
        return None
    return server_id, channel_id


def voice_topic(server_id: str, channel_id: str) -> str:
    return f"{TOPIC_PREFIX}{server_id}:{channel_id}"


def new_ref() -> str:
    return secrets.token_urlsafe(9)


def _bool(payload: dict[str, Any], name: str) -> bool | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ChannelError(f"{name} must be a boolean")
    return value


class VoiceSpec:
    """Routes ``voice:*`` topics to VoiceChannel."""

    def __init__(self, ctx: SignalingContext) -> None:
        self.ctx = ctx

    def matches(self, topic: str) -> bool:
        return topic.startswith(TOPIC_PREFIX)

    async def join(
        self, conn: Connection, topic: str, join_ref: str | None, payload: dict[str, Any]
    ) -> tuple[VoiceChannel, dict[str, Any]]:
        parsed = parse_topic(topic)
        if parsed is None:
            raise ChannelError("invalid voice topic; expected voice:<server_id>:<channel_id>")
        server_id, channel_id = parsed
        check(conn.claims, server_id, channel_id, Action.JOIN)
        channel = VoiceChannel(self.ctx, conn, topic, join_ref, server_id, channel_id)
        response = await channel.join(payload)
        return channel, response


class VoiceChannel:
    """One socket's participation in one voice channel."""

    def __init__(
        self,
        ctx: SignalingContext,
        conn: Connection,
        topic: str,
        join_ref: str | None,
        server_id: str,
        channel_id: str,
    ) -> None:
        self.ctx = ctx
        self.conn = conn
        self.topic = self.wire_topic = topic
        """`topic`: where the hub and the store know this channel's presence and broadcasts; `wire_topic`:
        the topic its client joined, in every frame it is sent. The same for a voice channel (it names
        its voice server); a call's media differs (callmedia.py)."""
        self.join_ref = join_ref
        self.server_id = server_id
        self.channel_id = channel_id
        self.index = server_id
        self.key = conn.claims.sub
        self.meta: Meta | None = None
        self._state: State | None = None
        # Frames for this member are held until its join reply and presence_state are out, as in
        # Phoenix, so a client never sees diffs before the state they apply to.
        self._held: list[str] | None = []
        self._lock = asyncio.Lock()
        self._left = False
        self._muted_before_deafen = False
        self.session: MediaSession | None = None
        """This member's media on the channel's SFU (from its join on)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._token_hash = ""
        """The SHA-256 of this join's resume token (the store's compare-and-delete names it)."""

    # --- hub Member protocol ----------------------------------------------------------------------
    def deliver(self, frame: str) -> None:
        if self._held is not None:
            self._held.append(frame)
        else:
            self.conn.send(frame)

    def presence_entry(self) -> PresenceEntry | None:
        return PresenceEntry(self.key, self.meta) if self.meta is not None else None

    def push_presence_state(self, state: State) -> None:
        self.conn.send(protocol.push(self.join_ref, self.wire_topic, PRESENCE_STATE, state))

    async def on_control(self, control: dict[str, Any]) -> None:
        kind = control.get("type")
        if kind == "member":
            flags = {
                k: bool(v)
                for k, v in control.get("flags", {}).items()
                if k in ("server_muted", "server_deafened")
            }
            if flags:
                await self._update(flags)
        elif kind == "resumed":
            # Our session was resumed by a newer join (another socket, perhaps on another replica)
            # while this socket looked alive (half-open): this join goes, its peer stays.
            meta = self.meta or {}
            session = self.session
            if (
                session is not None
                and control.get("session_id") == session.session_id
                and control.get("ref") != meta.get("phx_ref")
            ):
                await self.conn.kick(self.wire_topic, "resumed")
        elif kind == "disconnect":
            self.conn.send(
                protocol.push(
                    self.join_ref,
                    self.wire_topic,
                    "disconnected",
                    {"by": control.get("by"), "reason": "moderator"},
                )
            )
            await self.conn.kick(self.wire_topic, "disconnected")
        elif kind == "move":
            dest = str(control.get("channel", ""))
            target_topic = voice_topic(self.server_id, dest)
            if not allowed(self.conn.claims, self.server_id, dest, Action.JOIN):
                return  # the target may not enter the destination; stay put
            self.conn.send(
                protocol.push(
                    self.join_ref,
                    self.wire_topic,
                    "moved",
                    {"by": control.get("by"), "channel_id": dest, "topic": target_topic},
                )
            )
            await self.conn.kick(self.wire_topic, "moved")

    # --- lifecycle --------------------------------------------------------------------------------
    async def join(self, payload: dict[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        claims = self.conn.claims
        muted = _bool(payload, "muted") or False
        deafened = _bool(payload, "deafened") or False
        ref = new_ref()
        session_id = ref
        token: str | None = None
        resumed: dict[str, Any] | None = None  # the SFU's view of the resumed peer
        if ctx.sessions.enabled:
            token, hashed = resume.new_token()
            self._token_hash = hashed
            taken = await self._take_over(resume.parse_resume(payload), hashed)
            if taken is not None:
                session_id, resumed = taken
            else:
                await ctx.store.session_put(
                    self.server_id, session_id, self.key, self.channel_id, hashed, ctx.sessions.ttl_s
                )
        tracks = video.presence_tracks(resumed.get("tracks")) if resumed is not None else []
        meta: Meta = {
            "phx_ref": ref,
            "session_id": session_id,
            "name": claims.display_name,
            "muted": muted or deafened,
            "deafened": deafened,
            "server_muted": False,  # persistent member flags are merged in by the store
            "server_deafened": False,
            "speaking": False,
            "video": False,
            "suppressed": not claims.can(Permission.SPEAK, self.channel_id),
            "priority_speaker": claims.can(Permission.PRIORITY_SPEAKER, self.channel_id),
            "tracks": tracks,  # what the SFU forwards of this participant (its `tracks` events)
            "streaming": video.streaming(tracks),
            "joined_at": int(time.time() * 1000),
        }
        session = self.session
        if session is None:
            session = self.session = self._new_session(session_id)
        await ctx.hub.add(self)
        diff = {"joins": {self.key: {"metas": [META_SLOT]}}, "leaves": {}}
        template = protocol.broadcast(self.wire_topic, PRESENCE_DIFF, diff)
        prefix, suffix = template.split(META_SLOT_JSON)
        try:
            result = await ctx.store.presence_join(
                self.topic,
                self.index,
                PresenceEntry(self.key, meta),
                ctx.settings.max_channel_members,
                MetaFrame(prefix, suffix),
                member=(self.server_id, self.key),
            )
        except BaseException:
            await self._abandon(session)
            raise
        if result is None:
            await self._abandon(session)
            raise ChannelError("channel is full", capacity=ctx.settings.max_channel_members)
        if token is not None:
            ctx.sessions.own(self.server_id, session_id, self._token_hash)
        meta = self.meta = result.entry.meta
        entries = result.entries
        if resumed is not None:
            entries = await self._evict_stale(session_id, ref, entries)
        self._state = state_of((e.key, e.meta) for e in entries)
        media = session.media if resumed is not None else await session.assign()
        ctx.hub.deliver(self.topic, result.frame, exclude=self)
        if resumed is not None:
            with contextlib.suppress(StoreUnavailable):  # only a half-open older socket needs it
                await ctx.hub.control(
                    self.topic, {"type": "resumed", "user": self.key, "session_id": session_id, "ref": ref}
                )
            # The SFU kept the peer's state from the lost join; this join's flags (its mute state,
            # its rights, server mute) are what holds now. No renegotiation.
            session.set_state(self._flags())
            offer = resumed.get("pending_offer")
            if isinstance(offer, str) and offer and self._held is not None:
                # The SFU's offer that went to the lost socket (or nowhere) is still unanswered: the
                # client gets it again after its join reply and presence_state, and answers here.
                self._held.append(
                    protocol.push(self.join_ref, self.wire_topic, "sdp", {"type": "offer", "sdp": offer})
                )
            log.info("voice.resumed", extra={"session_id": session_id, "topic": self.topic})
        ice = ctx.settings.ice_for(self.key)
        reply: dict[str, Any] = {
            "server_id": self.server_id,
            "channel_id": self.channel_id,
            "user": {"id": self.key, "name": claims.display_name},
            "session_id": session_id,
            "permissions": permission_names(claims.permissions_in(self.channel_id)),
            "state": {k: meta[k] for k in STATE_FIELDS},
            "ice_servers": [s.model_dump(exclude_none=True) for s in ice.iceServers],
            "ice_transport_policy": ice.iceTransportPolicy,
            "media_server": media.id if media is not None else None,
        }
        if token is not None:
            reply["resume_token"] = token
            reply["resumed"] = resumed is not None
        return reply

    def _new_session(self, session_id: str) -> MediaSession:
        return MediaSession(
            self.ctx,
            self.server_id,
            self.channel_id,
            session_id,
            self._send,
            self._flags,
            self._speaking,
            self._tracks,
        )

    async def _take_over(
        self, request: tuple[str, str] | None, new_hash: str
    ) -> tuple[str, dict[str, Any]] | None:
        """Resume the session `request` names when the store says it is this user's in this channel
        with that token (atomically taking it over, the token rotated to `new_hash`) and the room's
        SFU still has its peer: (session id, the SFU's view of the peer). None: a fresh join."""
        if request is None:
            return None
        ctx = self.ctx
        session_id, token = request
        taken = await ctx.store.session_take(
            self.server_id,
            session_id,
            self.key,
            self.channel_id,
            resume.token_hash(token),
            new_hash,
            ctx.sessions.ttl_s,
        )
        if not taken:
            # Unknown, expired, another user's or a wrong token: never logged with the token.
            log.info("voice.resume_refused", extra={"topic": self.topic, "why": "no such session"})
            return None
        media: MediaServer | None = None
        with contextlib.suppress(StoreUnavailable):
            media = await ctx.registry.current(self.server_id, self.channel_id)
        session = self._new_session(session_id)
        info = await session.resume_peer(media) if media is not None else None
        if info is None:
            # The SFU lost the peer, or the room moved: the record was taken for nothing.
            await ctx.sessions.release(self.server_id, session_id, new_hash)
            log.info("voice.resume_refused", extra={"topic": self.topic, "why": "no media peer"})
            return None
        self.session = session
        return session_id, info

    async def _abandon(self, session: MediaSession) -> None:
        """The join failed after the session was recorded (or taken over): undo both."""
        await self.ctx.hub.remove(self)
        if self.ctx.sessions.enabled:
            with contextlib.suppress(StoreUnavailable):
                await self.ctx.sessions.release(self.server_id, session.session_id, self._token_hash)
        session.detach()

    async def _evict_stale(
        self, session_id: str, ref: str, entries: list[PresenceEntry]
    ) -> list[PresenceEntry]:
        """A resumed session's entry from its lost join (a dead replica leaves it until the sweep):
        removed now and announced, so presence shows the participant once."""
        if not any(e.meta.get("session_id") == session_id and e.meta.get("phx_ref") != ref for e in entries):
            return entries
        try:
            stale = await self.ctx.store.presence_evict_session(self.topic, self.index, session_id, ref)
        except StoreUnavailable:
            return entries
        if stale:
            diff = leaves_diff((e.key, e.meta) for e in stale)
            frame = protocol.broadcast(self.wire_topic, PRESENCE_DIFF, diff)
            await self.ctx.hub.broadcast(self.topic, frame)
        gone = {e.meta.get("phx_ref") for e in stale}
        return [e for e in entries if e.meta.get("phx_ref") not in gone]

    def after_join(self) -> None:
        if self._state is not None:
            self.push_presence_state(self._state)
            self._state = None
        held, self._held = self._held or [], None
        for frame in held:
            self.conn.send(frame)

    async def leave(self, reason: str) -> None:
        if self._left:
            return
        self._left = True
        ctx = self.ctx
        await ctx.hub.remove(self)
        for task in list(self._tasks):
            task.cancel()
        session = self.session
        # A lost socket (not a leave, a kick or a moderator's move) may come back and resume: its SFU
        # peer stays for the resume window. Anything else ends the session now.
        linger = reason == "closed" and ctx.sessions.enabled and session is not None and session.peer
        if session is not None:
            if reason == "resumed":
                session.detach()  # the session, its record and its peer are the newer join's
            elif linger:
                session.detach()
            else:
                await session.close()
                if ctx.sessions.enabled:
                    await ctx.sessions.release(self.server_id, session.session_id, self._token_hash)
        async with self._lock:
            meta, self.meta = self.meta, None
        if meta is None:
            return
        frame = protocol.broadcast(self.wire_topic, PRESENCE_DIFF, leave_diff(self.key, meta))
        ctx.hub.deliver(self.topic, frame)
        try:
            await ctx.store.presence_leave(self.topic, self.index, meta["phx_ref"], frame)
        except StoreUnavailable:
            ctx.hub.mark_dirty(self.topic, self.index)
            if linger and session is not None:
                ctx.sessions.linger(self.server_id, session.session_id, self._token_hash, self._window_ended)
            return
        if linger and session is not None:
            ctx.sessions.linger(self.server_id, session.session_id, self._token_hash, self._window_ended)
        elif session is not None and reason != "resumed":
            await session.close_router_if_idle(self.topic)

    async def _window_ended(self, ours: bool) -> None:
        """The resume window of a lost socket is over: remove the peer unless a resume took it over."""
        if not ours or self.session is None:
            return
        await self.session.remove_peer()
        await self.session.close_router_if_idle(self.topic)

    # --- pushes -----------------------------------------------------------------------------------
    async def handle_in(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        changes = SELF_EVENTS.get(event)
        if changes is not None:
            meta = self.meta or {}
            if event == "deafen" and not meta.get("deafened"):
                # Deafening also mutes; undeafening restores the mute state from before.
                self._muted_before_deafen = bool(meta.get("muted"))
                changes = {"deafened": True, "muted": True}
            elif event == "undeafen" and meta.get("deafened"):
                changes = {"deafened": False, "muted": self._muted_before_deafen}
            return await self._update(changes)
        if event == "video":
            enabled = _bool(payload, "enabled")
            if enabled is None:
                raise ChannelError("video needs {enabled: boolean}")
            if enabled:
                check(self.conn.claims, self.server_id, self.channel_id, Action.VIDEO)
            return await self._update({"video": enabled})
        if event == "moderate":
            return await self._moderate(payload)
        if event in ("sdp", "ice", "video_quality"):
            if self.session is None:
                raise ChannelError("not joined")
            if event == "ice":
                return await self.session.ice(payload)
            if event == "video_quality":
                track, body = video.parse_video_quality(payload)
                return await self.session.video_quality(track, body)
            sources = video.parse_sources(payload.get("sources")) if payload.get("type") == "offer" else None
            if sources and video.streams(sources):
                # Screen share is its own right (Go Live): refused before the SFU sees the offer.
                check(self.conn.claims, self.server_id, self.channel_id, Action.STREAM)
            return await self.session.sdp(payload, sources)
        raise ChannelError(f"unknown event {event!r}")

    async def _update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change this participant's meta: a presence_diff leave+join linked by phx_ref_prev."""
        async with self._lock:
            old = self.meta
            if old is None:
                raise ChannelError("not joined")
            if all(old.get(k) == v for k, v in changes.items()):
                return {"state": {k: old[k] for k in STATE_FIELDS}}
            new = updated_meta(old, changes, new_ref())
            frame = protocol.broadcast(self.wire_topic, PRESENCE_DIFF, update_diff(self.key, old, new))
            await self.ctx.store.presence_update(
                self.topic, old["phx_ref"], PresenceEntry(self.key, new), frame
            )
            self.meta = new
            self.ctx.hub.deliver(self.topic, frame)
        sfu_flags = {k: bool(v) for k, v in changes.items() if k in ("muted", "server_muted")}
        if "deafened" in changes or "server_deafened" in changes:
            sfu_flags["deafened"] = bool(new.get("deafened") or new.get("server_deafened"))
        if self.session is not None:
            self.session.set_state(sfu_flags)
        return {"state": {k: new[k] for k in STATE_FIELDS}}

    async def _moderate(self, payload: dict[str, Any]) -> dict[str, Any]:
        target = payload.get("target")
        action_name = payload.get("action")
        if not isinstance(target, str) or not target:
            raise ChannelError("moderate needs a target user id")
        try:
            action = Action(str(action_name))
        except ValueError:
            raise ChannelError(
                "action must be one of mute, unmute, deafen, undeafen, disconnect, move"
            ) from None
        if action in (Action.JOIN, Action.SPEAK, Action.VIDEO, Action.STREAM):
            raise ChannelError("action must be one of mute, unmute, deafen, undeafen, disconnect, move")
        claims = self.conn.claims
        check(claims, self.server_id, self.channel_id, action)
        present = {e.key for e in await self.ctx.store.presence_list(self.topic)}
        if target not in present:
            raise ChannelError("target is not in this channel")
        control: dict[str, Any] = {"user": target, "by": self.key}
        if action == Action.MOVE:
            dest = payload.get("channel")
            if not isinstance(dest, str) or not ID_PATTERN.match(dest):
                raise ChannelError("move needs a destination channel id")
            if not allowed(claims, self.server_id, dest, Action.JOIN):
                raise Forbidden("you cannot connect to the destination channel", Permission.CONNECT)
            control.update(type="move", channel=dest)
        elif action == Action.DISCONNECT:
            control["type"] = "disconnect"
        else:
            flags = MODERATION[action]
            await self.ctx.store.member_set(self.server_id, target, flags)
            control.update(type="member", flags=flags)
        await self.ctx.hub.control(self.topic, control)
        return {"target": target, "action": action.value}

    # --- media ------------------------------------------------------------------------------------
    def _send(self, event: str, payload: dict[str, Any]) -> None:
        self.conn.send(protocol.push(self.join_ref, self.wire_topic, event, payload))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _speaking(self, speaking: bool) -> None:
        self._spawn(self._update({"speaking": speaking}))

    def _tracks(self, tracks: list[dict[str, Any]]) -> None:
        self._spawn(self._update({"tracks": tracks, "streaming": video.streaming(tracks)}))

    def _flags(self) -> dict[str, bool]:
        """What the SFU enforces for this member: its rights here and its mute state."""
        claims = self.conn.claims
        meta = self.meta or {}
        return {
            "can_speak": claims.can(Permission.SPEAK, self.channel_id),
            "can_video": claims.can(Permission.VIDEO, self.channel_id),
            "can_stream": claims.can(Permission.STREAM, self.channel_id),
            "muted": bool(meta.get("muted")),
            "server_muted": bool(meta.get("server_muted")),
            "deafened": bool(meta.get("deafened") or meta.get("server_deafened")),
        }
