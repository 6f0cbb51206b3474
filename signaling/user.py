"""The `user:<user_id>` channel: one per device of a user, carrying that user's calls.

A device joins its user's topic with a stable, client-chosen `device_id`; the token's `sub` must be
that user. Requests (`start_call`, `answer_call`, ...) go to the call service; call events reach every
device of a user, on whichever replica holds its socket, as hub control messages on the user's hub
topic (`user:<server>:<user>`, so equal user ids of two voice servers never meet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from voxa.common.claims import Permission
from voxa.signaling import protocol
from voxa.signaling.calls import Call, CallError, Member
from voxa.signaling.calls import State as CallState
from voxa.signaling.callservice import CallService, call_reply, user_hub_topic
from voxa.signaling.connection import ChannelError
from voxa.signaling.presence import PRESENCE_DIFF, PRESENCE_STATE, Meta, State, leave_diff, state_of
from voxa.signaling.rights import Forbidden
from voxa.signaling.store import MetaFrame, PresenceEntry, StoreUnavailable

if TYPE_CHECKING:
    from voxa.signaling.connection import Connection
    from voxa.signaling.context import SignalingContext

log = logging.getLogger("voxa.signaling.user")
TOPIC_PREFIX = "user:"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-@]{1,128}$")
DEVICE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_DEVICES = 32
"""Sockets one user may have on their user topic at once (every device of a user rings)."""
META_SLOT = "\x00meta\x00"
META_SLOT_JSON = '"\\u0000meta\\u0000"'


def devices_index(server_id: str) -> str:
    """The store index of a voice server's user topics, apart from its voice channels' index (the
    server id), so device presence never shows up as a voice channel."""
    return f"users:{server_id}"


def _call_id(payload: dict[str, Any]) -> str:
    call_id = payload.get("call_id")
    if not isinstance(call_id, str) or not call_id or len(call_id) > 64:
        raise ChannelError("call_id must be a string")
    return call_id


def _user_ids(payload: dict[str, Any], limit: int) -> list[str]:
    invitees = payload.get("invitees")
    if not isinstance(invitees, list) or not invitees:
        raise ChannelError("invitees must be a non-empty list of user ids")
    if len(invitees) > limit:
        raise ChannelError(f"at most {limit} invitees")
    if not all(isinstance(u, str) and ID_PATTERN.match(u) for u in invitees):
        raise ChannelError("invitees must be user ids")
    return list(dict.fromkeys(invitees))


class UserSpec:
    """Routes `user:*` topics to UserChannel."""

    def __init__(self, ctx: SignalingContext, calls: CallService) -> None:
        self.ctx = ctx
        self.calls = calls

    def matches(self, topic: str) -> bool:
        return topic.startswith(TOPIC_PREFIX)

    async def join(
        self, conn: Connection, topic: str, join_ref: str | None, payload: dict[str, Any]
    ) -> tuple[UserChannel, dict[str, Any]]:
        user_id = topic[len(TOPIC_PREFIX) :]
        if not ID_PATTERN.match(user_id):
            raise ChannelError("invalid user topic; expected user:<user_id>")
        if conn.claims.sub != user_id:
            raise Forbidden("a device joins only its own user's topic")
        device = payload.get("device_id")
        if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
            raise ChannelError("join needs {device_id: string of letters, digits, _ . -}")
        channel = UserChannel(self.ctx, self.calls, conn, topic, join_ref, user_id, device)
        await channel.join()
        missed = await self.calls.missed(conn.claims.server, user_id)
        return channel, {"user_id": user_id, "device_id": device, "missed_calls": missed}


class UserListener:
    """The channel as the hub sees it: a member of the user's hub topic, reached by control messages."""

    def __init__(self, channel: UserChannel) -> None:
        self.channel = channel
        self.topic = user_hub_topic(channel.server_id, channel.user_id)
        self.wire_topic = channel.topic
        self.index = devices_index(channel.server_id)
        self.key = channel.user_id  # control messages are addressed to the user, all their devices

    def deliver(self, frame: str) -> None:
        """Presence diffs of the user's devices (call events come as control messages)."""
        self.channel.send(frame)

    def presence_entry(self) -> PresenceEntry | None:
        meta = self.channel.meta
        return PresenceEntry(self.channel.device, meta) if meta is not None else None

    def push_presence_state(self, state: State) -> None:
        self.channel.send(protocol.push(self.channel.join_ref, self.channel.topic, PRESENCE_STATE, state))

    async def on_control(self, control: dict[str, Any]) -> None:
        stored = control.get("stored")
        if isinstance(stored, dict) and isinstance(stored.get("v"), int):
            data = stored.get("d")
            self.channel.calls.learn(
                self.channel.server_id,
                str(stored.get("id")),
                stored["v"],
                data if isinstance(data, str) else None,
            )
        for call in control.get("calls") or ():
            await self.channel.on_call_event(call)


class UserChannel:
    def __init__(
        self,
        ctx: SignalingContext,
        calls: CallService,
        conn: Connection,
        topic: str,
        join_ref: str | None,
        user_id: str,
        device: str,
    ) -> None:
        self.ctx = ctx
        self.calls = calls
        self.conn = conn
        self.topic = topic
        self.join_ref = join_ref
        self.user_id = user_id
        self.device = device
        self.server_id = conn.claims.server
        self.meta: Meta | None = None
        self.listener = UserListener(self)
        self._held: list[str] | None = []
        self._state: State | None = None
        self._current: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._left = False

    @property
    def hub_topic(self) -> str:
        return self.listener.topic

    async def join(self) -> None:
        """Presence of this device on the user's topic (so the user's other devices, and pushes,
        know it is online), then the calls it is part of."""
        ctx = self.ctx
        ref = secrets.token_urlsafe(9)
        meta: Meta = {"phx_ref": ref, "device_id": self.device, "online_at": int(time.time() * 1000)}
        await ctx.hub.add(self.listener)
        diff = {"joins": {self.device: {"metas": [META_SLOT]}}, "leaves": {}}
        prefix, suffix = protocol.broadcast(self.topic, PRESENCE_DIFF, diff).split(META_SLOT_JSON)
        try:
            result = await ctx.store.presence_join(
                self.hub_topic,
                self.listener.index,
                PresenceEntry(self.device, meta),
                MAX_DEVICES,
                MetaFrame(prefix, suffix),
            )
            if result is None:
                raise ChannelError(f"at most {MAX_DEVICES} devices of a user at once")
            self.meta = result.entry.meta
            self._state = state_of((e.key, e.meta) for e in result.entries)
            ctx.hub.deliver(self.hub_topic, result.frame, exclude=self.listener)
            self._current = await self.calls.calls_of(self.server_id, self.user_id)
        except BaseException:
            await self._leave_presence()
            await ctx.hub.remove(self.listener)
            raise
        for call in self._current:
            if call.caller == self.user_id and call.caller_gone_since is not None:
                self._spawn(self._caller_present(call.id, True))

    def after_join(self) -> None:
        if self._state is not None:
            self.conn.send(protocol.push(self.join_ref, self.topic, PRESENCE_STATE, self._state))
            self._state = None
        # A device that (re)connects rebuilds its UI from one call_state per call it is part of.
        for call in self._current:
            self.push(
                "call_state", {"call_id": call.id, "state": str(call.state), "members": call.member_states()}
            )
            member = call.members.get(self.user_id)
            if member is not None and member.state is Member.RINGING:
                self._ack(call.id)
        self._current = []
        held, self._held = self._held or [], None
        for frame in held:
            self.conn.send(frame)

    async def leave(self, reason: str) -> None:
        del reason
        if self._left:
            return
        self._left = True
        for task in list(self._tasks):
            task.cancel()
        await self.ctx.hub.remove(self.listener)
        if not await self._leave_presence():
            return
        # The caller's last device gone while their call rings: the call is cancelled after a grace
        # unless a device comes back (the expiry, on any replica, fires it).
        with contextlib.suppress(StoreUnavailable):
            if await self.ctx.store.presence_list(self.hub_topic):
                return
            for call in await self.calls.calls_of(self.server_id, self.user_id):
                if call.caller == self.user_id and call.state is CallState.RINGING:
                    with contextlib.suppress(CallError):
                        await self._caller_present(call.id, False)

    async def _leave_presence(self) -> bool:
        """Remove this device's presence entry; True when it was written."""
        meta, self.meta = self.meta, None
        if meta is None:
            return False
        frame = protocol.broadcast(self.topic, PRESENCE_DIFF, leave_diff(self.device, meta))
        self.ctx.hub.deliver(self.hub_topic, frame, exclude=self.listener)
        try:
            await self.ctx.store.presence_leave(self.hub_topic, self.listener.index, meta["phx_ref"], frame)
        except StoreUnavailable:
            self.ctx.hub.mark_dirty(self.hub_topic, self.listener.index)
            return False
        return True

    async def _caller_present(self, call_id: str, connected: bool) -> None:
        await self.calls.caller_presence(self.server_id, call_id, connected)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send(self, frame: str) -> None:
        """A frame for this device, held until its join reply and presence_state are out."""
        if self._held is not None:
            self._held.append(frame)
        else:
            self.conn.send(frame)

    # --- events from the call service ---------------------------------------------------------------
    async def on_call_event(self, call: dict[str, Any]) -> None:
        name, payload = call.get("event"), call.get("payload")
        if not isinstance(name, str) or not isinstance(payload, dict):
            return
        if call.get("exclude_device") == self.device:
            return
        self.push(name, payload)
        if name == "call_started":
            self._ack(str(payload.get("call_id")))

    def push(self, event: str, payload: dict[str, Any]) -> None:
        self.send(protocol.push(self.join_ref, self.topic, event, payload))

    def _ack(self, call_id: str) -> None:
        """This device rings: the caller hears ringback (once, from the first device)."""
        self._spawn(self._ack_soon(call_id))

    async def _ack_soon(self, call_id: str) -> None:
        with contextlib.suppress(StoreUnavailable, CallError):
            await self.calls.ring_acked(self.server_id, call_id, self.user_id)

    # --- requests -----------------------------------------------------------------------------------
    async def handle_in(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._handle(event, payload)
        except CallError as exc:
            raise ChannelError(exc.reason) from None

    async def _handle(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        calls = self.calls
        if event == "start_call":
            claims = self.conn.claims
            if Permission.CALL not in claims.perms:
                raise Forbidden("missing permission 'call'", Permission.CALL)
            invitees = _user_ids(payload, calls.policy.max_invitees)
            video = payload.get("video", False)
            if not isinstance(video, bool):
                raise ChannelError("video must be a boolean")
            call = await calls.start(self.server_id, self.user_id, claims.display_name, invitees, video)
            return call_reply(call)
        if event == "answer_call":
            call = await calls.answer(self.server_id, _call_id(payload), self.user_id, self.device)
            ice = self.ctx.settings.ice_for(self.user_id)
            return {
                **call_reply(call),
                "ice_servers": [s.model_dump(exclude_none=True) for s in ice.iceServers],
                "ice_transport_policy": ice.iceTransportPolicy,
            }
        if event == "decline_call":
            reason = payload.get("reason", "declined")
            if reason not in ("declined", "busy"):
                raise ChannelError('reason must be "declined" or "busy"')
            await calls.decline(self.server_id, _call_id(payload), self.user_id, self.device, reason)
            return {}
        if event == "end_call":
            await calls.end(self.server_id, _call_id(payload), self.user_id)
            return {}
        if event == "invite_to_call":
            invitees = _user_ids(payload, calls.policy.max_invitees)
            await calls.invite(self.server_id, _call_id(payload), self.user_id, invitees)
            return {}
        raise ChannelError(f"unknown event {event!r}")
