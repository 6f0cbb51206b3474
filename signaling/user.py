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
from typing import TYPE_CHECKING, Any

from voxa.common.claims import Permission
from voxa.signaling import protocol
from voxa.signaling.calls import Call, CallError, Member
from voxa.signaling.callservice import CallService, call_reply, user_hub_topic
from voxa.signaling.connection import ChannelError
from voxa.signaling.presence import State
from voxa.signaling.rights import Forbidden
from voxa.signaling.store import PresenceEntry, StoreUnavailable

if TYPE_CHECKING:
    from voxa.signaling.connection import Connection
    from voxa.signaling.context import SignalingContext

log = logging.getLogger("voxa.signaling.user")
TOPIC_PREFIX = "user:"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-@]{1,128}$")
DEVICE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


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
        self.index = channel.server_id
        self.key = channel.user_id

    def deliver(self, frame: str) -> None:
        del frame  # nothing is broadcast on user topics: every event is addressed (control)

    def presence_entry(self) -> PresenceEntry | None:
        return None

    def push_presence_state(self, state: State) -> None:
        del state

    async def on_control(self, control: dict[str, Any]) -> None:
        await self.channel.on_call_event(control.get("call") or {})


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
        self.listener = UserListener(self)
        self._held: list[str] | None = []
        self._current: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self) -> None:
        await self.ctx.hub.add(self.listener)
        try:
            self._current = await self.calls.calls_of(self.server_id, self.user_id)
        except BaseException:
            await self.ctx.hub.remove(self.listener)
            raise

    def after_join(self) -> None:
        # A device that (re)connects rebuilds its UI from one call_state per call it is part of.
        for call in self._current:
            self._push(
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
        await self.ctx.hub.remove(self.listener)
        for task in list(self._tasks):
            task.cancel()

    # --- events from the call service ---------------------------------------------------------------
    async def on_call_event(self, call: dict[str, Any]) -> None:
        name, payload = call.get("event"), call.get("payload")
        if not isinstance(name, str) or not isinstance(payload, dict):
            return
        if call.get("exclude_device") == self.device:
            return
        self._push(name, payload)
        if name == "call_started":
            self._ack(str(payload.get("call_id")))

    def _push(self, event: str, payload: dict[str, Any]) -> None:
        frame = protocol.push(self.join_ref, self.topic, event, payload)
        if self._held is not None:
            self._held.append(frame)
        else:
            self.conn.send(frame)

    def _ack(self, call_id: str) -> None:
        """This device rings: the caller hears ringback (once, from the first device)."""
        task = asyncio.create_task(self._ack_soon(call_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
