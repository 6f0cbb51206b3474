"""The `call:<call_id>` topic: a call's media, negotiated, muted and deafened exactly as in a voice
channel (a room with the same presence and the same MediaSession, on an SFU router of its own that the
first join creates and the last leave closes). What a call adds is its membership rule: only the
call's members who are in it (the caller, and invitees who answered) may join; and what it takes
away: moderation, which moves people between a voice server's channels, has no place in a call."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from voxa.signaling import protocol
from voxa.signaling.calls import Member
from voxa.signaling.callservice import CallService, user_hub_topic
from voxa.signaling.connection import ChannelError
from voxa.signaling.presence import State
from voxa.signaling.rights import Forbidden
from voxa.signaling.store import PresenceEntry
from voxa.signaling.user import devices_index
from voxa.signaling.voice import VoiceChannel

if TYPE_CHECKING:
    from voxa.signaling.connection import Connection
    from voxa.signaling.context import SignalingContext

TOPIC_PREFIX = "call:"
CALL_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def call_channel_id(call_id: str) -> str:
    """The channel id a call's media runs under (its SFU router is `<server>.call.<id>`)."""
    return f"call.{call_id}"


class CallMediaSpec:
    def __init__(self, ctx: SignalingContext, calls: CallService) -> None:
        self.ctx = ctx
        self.calls = calls

    def matches(self, topic: str) -> bool:
        return topic.startswith(TOPIC_PREFIX)

    async def join(
        self, conn: Connection, topic: str, join_ref: str | None, payload: dict[str, Any]
    ) -> tuple[CallMediaChannel, dict[str, Any]]:
        call_id = topic[len(TOPIC_PREFIX) :]
        if not CALL_ID.match(call_id):
            raise ChannelError("invalid call topic; expected call:<call_id>")
        server_id = conn.claims.server
        call = await self.calls.get(server_id, call_id)
        if call is None:
            raise ChannelError("no such call")
        member = call.members.get(conn.claims.sub)
        if member is None or member.state is not Member.JOINED:
            raise Forbidden("only the call's members who answered may join its media")
        channel = CallMediaChannel(self.ctx, conn, topic, join_ref, server_id, call_channel_id(call_id))
        channel.call_id = call_id
        channel.topic = call_hub_topic(server_id, call_id)
        response = await channel.join(payload)
        return channel, {**response, "call_id": call_id}


def call_hub_topic(server_id: str, call_id: str) -> str:
    """Where a call's media presence lives in the store: clients join `call:<call_id>`, which does not
    name the voice server, but every key of a server must carry its hash tag (docs/store.md)."""
    return f"call:{server_id}:{call_id}"


class CallMediaChannel(VoiceChannel):
    call_id = ""

    async def join(self, payload: dict[str, Any]) -> dict[str, Any]:
        # The member's call events reach this channel too: when the call ends, or the member leaves
        # it (from any device), the server closes its media here, whatever the client does.
        self._ends = CallEndListener(self)
        await self.ctx.hub.add(self._ends)
        try:
            return await super().join(payload)
        except BaseException:
            await self.ctx.hub.remove(self._ends)
            raise

    async def leave(self, reason: str) -> None:
        await self.ctx.hub.remove(self._ends)
        await super().leave(reason)

    async def handle_in(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        if event == "moderate":
            raise ChannelError("no moderation in a call")
        return await super().handle_in(event, payload)

    async def call_over(self, reason: str) -> None:
        payload = {"call_id": self.call_id, "reason": reason}
        self.conn.send(protocol.push(self.join_ref, self.wire_topic, "call_ended", payload))
        await self.conn.kick(self.wire_topic, reason)


class CallEndListener:
    """A member of the user's hub topic (where call events travel) for one call's media channel."""

    def __init__(self, channel: CallMediaChannel) -> None:
        self.channel = channel
        self.topic = user_hub_topic(channel.server_id, channel.key)
        self.wire_topic = f"user:{channel.key}"  # as the user's devices know it (hub sweeps use it)
        self.index = devices_index(channel.server_id)
        self.key = channel.key

    def deliver(self, frame: str) -> None:
        del frame  # the user's device presence is not this channel's business

    def presence_entry(self) -> PresenceEntry | None:
        return None

    def push_presence_state(self, state: State) -> None:
        del state

    async def on_control(self, control: dict[str, Any]) -> None:
        for call in control.get("calls") or ():
            payload = call.get("payload") or {}
            if call.get("event") != "call_state" or payload.get("call_id") != self.channel.call_id:
                continue
            if payload.get("state") == "ended":
                await self.channel.call_over("call ended")
            elif (payload.get("members") or {}).get(self.key) != Member.JOINED.value:
                await self.channel.call_over("left the call")
            return
