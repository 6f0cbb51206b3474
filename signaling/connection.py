"""One client WebSocket: reads Phoenix frames, routes them to channels, and enforces the limits.

Frames a socket must send go through a bounded outbound queue written by one task, so a broadcast
never waits on a slow client; a client that stops reading is closed (1013) instead of growing memory.
The queue is bounded in frames and in bytes, so one socket's backlog costs at most
`outbound_queue_bytes` however large its frames are (a presence snapshot of a full channel is).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web

from voxa.common.claims import VoiceClaims
from voxa.signaling import protocol
from voxa.signaling.rights import Forbidden
from voxa.signaling.store import StoreUnavailable

if TYPE_CHECKING:
    from voxa.signaling.context import SignalingContext

log = logging.getLogger("voxa.signaling.connection")
MAX_PROTOCOL_ERRORS = 20


class ChannelError(Exception):
    """A push or join that is refused; `reason` (and details) go to the client in the error reply."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class Channel(Protocol):
    topic: str
    join_ref: str | None

    async def handle_in(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Handle a push; return the ok reply's response or raise ChannelError/Forbidden."""
        ...

    async def leave(self, reason: str) -> None:
        """Release everything the join took (presence, subscriptions)."""
        ...

    def after_join(self) -> None:
        """Send what follows the join reply (presence_state)."""
        ...


class ChannelSpec(Protocol):
    def matches(self, topic: str) -> bool: ...

    async def join(
        self, conn: Connection, topic: str, join_ref: str | None, payload: dict[str, Any]
    ) -> tuple[Channel, dict[str, Any]]:
        """Create the channel and return it with the join reply's response, or raise ChannelError."""
        ...


class TokenBucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, now: float) -> bool:
        tokens = self.tokens + (now - self.last) * self.rate
        self.last = now
        tokens = min(tokens, self.burst)
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class Connection:
    def __init__(self, ws: web.WebSocketResponse, claims: VoiceClaims, ctx: SignalingContext) -> None:
        self.ws = ws
        self.claims = claims
        self.ctx = ctx
        self.channels: dict[str, Channel] = {}
        loop = asyncio.get_running_loop()
        self._loop = loop
        now = loop.time()
        self.last_seen = now
        settings = ctx.settings
        self._messages = TokenBucket(settings.messages_per_s, settings.message_burst, now)
        self._joins = TokenBucket(settings.joins_per_10s / 10.0, settings.joins_per_10s, now)
        self._queue: collections.deque[str] = collections.deque()
        self._queue_limit = settings.outbound_queue_frames
        self._queued_bytes = 0
        self._bytes_limit = settings.outbound_queue_bytes
        self._wake = asyncio.Event()
        self._closing = False
        self._protocol_errors = 0
        self._dropped = 0

    # --- output -----------------------------------------------------------------------------------
    def send(self, frame: str) -> None:
        if self._closing:
            return
        size = len(frame)
        if len(self._queue) >= self._queue_limit or self._queued_bytes + size > self._bytes_limit:
            self.ctx.metrics.errors.labels("slow_consumer").inc()
            self.close_soon(protocol.CLOSE_TRY_AGAIN, "slow consumer")
            return
        self._queue.append(frame)
        self._queued_bytes += size
        self._wake.set()

    def _pop(self) -> str:
        """The oldest queued frame, its bytes given back to the budget."""
        frame = self._queue.popleft()
        self._queued_bytes -= len(frame)
        return frame

    async def _writer(self) -> None:
        queue = self._queue
        ws = self.ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                await ws.send_str(self._pop())

    def close_soon(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.ctx.metrics.closes.labels(str(code)).inc()
        self._loop.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            # Flush what is queued (e.g. the error that explains the close) before the close frame.
            while self._queue:
                await self.ws.send_str(self._pop())
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=reason.encode()[:120])

    # --- input ------------------------------------------------------------------------------------
    async def serve(self) -> None:
        writer = self._loop.create_task(self._writer())
        try:
            async for msg in self.ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self.ctx.metrics.errors.labels("binary_frame").inc()
                    self.close_soon(protocol.CLOSE_UNSUPPORTED, "binary frames are not supported")
                elif msg.type is WSMsgType.ERROR:
                    self.ctx.metrics.errors.labels("ws_error").inc()
                    break
                if self._closing:
                    break
        finally:
            self._closing = True
            for topic in list(self.channels):
                await self._drop_channel(topic, "closed")
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    async def _on_text(self, data: str) -> None:
        ctx = self.ctx
        ctx.metrics.messages.inc()
        now = self._loop.time()
        self.last_seen = now
        if not self._messages.take(now):
            self._dropped += 1
            ctx.metrics.errors.labels("rate_limited").inc()
            if self._dropped > self._messages.burst:
                self.close_soon(protocol.CLOSE_POLICY, "message rate limit exceeded")
            else:
                self.send(protocol.error(None, None, protocol.PHOENIX_TOPIC, "rate limited"))
            return
        self._dropped = 0
        try:
            msg = protocol.decode(data)
        except protocol.ProtocolError as exc:
            self._protocol_error(exc)
            return
        topic = msg.topic
        event = msg.event
        if topic == protocol.PHOENIX_TOPIC:
            if event == protocol.HEARTBEAT:
                self.send(protocol.ok(None, msg.ref, topic))
            else:
                self.send(protocol.error(msg.join_ref, msg.ref, topic, f"unknown event {event!r}"))
            return
        if event == protocol.PHX_JOIN:
            await self._join(msg)
            return
        channel = self.channels.get(topic)
        if channel is None:
            self.send(protocol.error(msg.join_ref, msg.ref, topic, "unmatched topic"))
            return
        if msg.join_ref is not None and msg.join_ref != channel.join_ref:
            return  # a push meant for an earlier join of this topic: Phoenix ignores it
        if event == protocol.PHX_LEAVE:
            await self._drop_channel(topic, "left")
            self.send(protocol.ok(channel.join_ref, msg.ref, topic))
            self.send(protocol.close(channel.join_ref, topic))
            return
        try:
            response = await channel.handle_in(event, msg.payload)
        except ChannelError as exc:
            ctx.metrics.errors.labels("refused").inc()
            self.send(protocol.error(channel.join_ref, msg.ref, topic, exc.reason, **exc.details))
        except Forbidden as exc:
            ctx.metrics.errors.labels("forbidden").inc()
            self.send(protocol.error(channel.join_ref, msg.ref, topic, exc.reason))
        except StoreUnavailable:
            ctx.metrics.errors.labels("unavailable").inc()
            self.send(protocol.error(channel.join_ref, msg.ref, topic, "unavailable", retry=True))
        except Exception:
            # Like a crashed Phoenix channel: tell the client (it rejoins), keep the socket.
            log.exception("channel.crashed", extra={"topic": topic, "event": event})
            ctx.metrics.errors.labels("crash").inc()
            await self._drop_channel(topic, "error")
            self.send(protocol.channel_error(channel.join_ref, topic))
        else:
            self.send(protocol.ok(channel.join_ref, msg.ref, topic, response))

    def _protocol_error(self, exc: protocol.ProtocolError) -> None:
        self.ctx.metrics.errors.labels("protocol").inc()
        self._protocol_errors += 1
        if self._protocol_errors > MAX_PROTOCOL_ERRORS:
            self.close_soon(protocol.CLOSE_POLICY, "too many malformed frames")
            return
        topic = exc.topic or protocol.PHOENIX_TOPIC
        self.send(protocol.error(exc.join_ref, exc.ref, topic, exc.reason))

    async def _join(self, msg: protocol.Message) -> None:
        ctx = self.ctx
        topic = msg.topic
        join_ref = msg.join_ref if msg.join_ref is not None else msg.ref
        existing = self.channels.get(topic)
        if existing is not None:
            # A duplicate join replaces the earlier one, as in Phoenix.
            await self._drop_channel(topic, "rejoined")
            self.send(protocol.close(existing.join_ref, topic))
        if len(self.channels) >= ctx.settings.max_channels_per_socket:
            ctx.metrics.joins.labels("too_many_channels").inc()
            self.send(protocol.error(join_ref, msg.ref, topic, "too many channels on this socket"))
            return
        if not self._joins.take(self._loop.time()):
            ctx.metrics.joins.labels("rate_limited").inc()
            self.send(protocol.error(join_ref, msg.ref, topic, "join rate limit exceeded"))
            return
        spec = ctx.channel_spec(topic)
        if spec is None:
            ctx.metrics.joins.labels("unmatched").inc()
            self.send(protocol.error(join_ref, msg.ref, topic, "unmatched topic"))
            return
        try:
            channel, response = await spec.join(self, topic, join_ref, msg.payload)
        except ChannelError as exc:
            ctx.metrics.joins.labels("refused").inc()
            self.send(protocol.error(join_ref, msg.ref, topic, exc.reason, **exc.details))
            return
        except Forbidden as exc:
            ctx.metrics.joins.labels("forbidden").inc()
            self.send(protocol.error(join_ref, msg.ref, topic, exc.reason))
            return
        except StoreUnavailable:
            ctx.metrics.joins.labels("unavailable").inc()
            self.send(protocol.error(join_ref, msg.ref, topic, "unavailable", retry=True))
            return
        if self._closing:
            await channel.leave("closed")
            return
        self.channels[topic] = channel
        ctx.metrics.joins.labels("ok").inc()
        self.send(protocol.ok(join_ref, msg.ref, topic, response))
        channel.after_join()

    async def _drop_channel(self, topic: str, reason: str) -> None:
        channel = self.channels.pop(topic, None)
        if channel is None:
            return
        try:
            await channel.leave(reason)
        except Exception:
            log.exception("channel.leave_failed", extra={"topic": topic})

    async def kick(self, topic: str, reason: str) -> None:
        """Remove the socket from a channel on the server's initiative (moderation) and tell the client."""
        channel = self.channels.get(topic)
        if channel is None:
            return
        await self._drop_channel(topic, reason)
        self.send(protocol.close(channel.join_ref, topic))
