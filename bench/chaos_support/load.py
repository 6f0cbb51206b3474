"""The soak's steady load and what it observes.

* `Room`s of `VoiceClient`s (voxa.client: real ICE, DTLS and SRTP with aiortc, a tone each, the
  SDK's own reconnect and resume), all connected through the load balancer.
* `AudioWatch`: every 20 ms, for every (listener, speaker) pair of a room, whether the listener's
  decoded frames from that speaker advanced. A pair that has not advanced for longer than a frame's
  jitter is stalled; every stall is kept as (start, end). The gap figures and the per-client recovery
  times of a fault come from these stalls, so they measure what a listener hears, not what signaling
  believes.
* `presence_errors`: each client's presence view against the ground truth (who is in its room).
* `CallCycler`: two users placing call after call (start -> ring -> answer -> end) on their `user:`
  topics through the load balancer; a failed cycle reconnects both and goes on.
* `SlowClient`: a WebSocket that joins a channel and then stops reading, with a small receive buffer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from voxa.client.phoenix import ClientChannel, PhoenixClient, PushError
from voxa.client.voice import VoiceClient

TICK_S: Final = 0.02
STALL_S: Final = 0.1
"""A pair whose frames have not advanced for this long is stalled (5 frames: more than jitter)."""
EVENT_TIMEOUT_S: Final = 10.0
LATE_S: Final = 0.05


@dataclass
class Member:
    user: str
    tone_hz: float
    client: VoiceClient


@dataclass
class Room:
    channel: str
    members: list[Member] = field(default_factory=list)

    @property
    def users(self) -> set[str]:
        return {m.user for m in self.members}


@dataclass
class Pair:
    """One listener hearing one speaker."""

    listener: Member
    speaker: Member
    sink_id: int = 0
    frames: int = -1
    last_advance: float = 0.0
    stalled_since: float | None = None
    stalls: list[tuple[float, float]] = field(default_factory=list)
    max_interval: float = 0.0
    """The longest time between two advances seen since `reset_interval`."""

    def observe(self, now: float) -> None:
        sink = self.listener.client.audio_from(self.speaker.user)
        if sink is None:
            advanced = False
        else:
            advanced = id(sink) != self.sink_id or sink.frames != self.frames
            if advanced and id(sink) != self.sink_id and sink.frames == 0:
                advanced = False  # a new, still silent receiver: nothing heard yet
            if advanced:
                self.sink_id, self.frames = id(sink), sink.frames
        if advanced:
            if self.last_advance:
                self.max_interval = max(self.max_interval, now - self.last_advance)
            if self.stalled_since is not None:
                self.stalls.append((self.stalled_since, now))
                self.stalled_since = None
            self.last_advance = now
        elif self.stalled_since is None and self.last_advance and now - self.last_advance > STALL_S:
            self.stalled_since = self.last_advance

    def hearing(self, now: float) -> bool:
        return bool(self.last_advance) and now - self.last_advance <= STALL_S


class AudioWatch:
    """Samples every pair of every room each TICK_S on the event loop (a few microseconds a pair)."""

    def __init__(self, rooms: list[Room]) -> None:
        self.pairs = [
            Pair(listener, speaker)
            for room in rooms
            for listener in room.members
            for speaker in room.members
            if listener is not speaker
        ]
        self._task: asyncio.Task[None] | None = None
        self.late: list[tuple[float, float]] = []
        """(when, how late) of every tick that came more than LATE_S late: the soak's own event loop
        was busy, so what its clients heard then says as much about the soak as about Voxa."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chaos-audio-watch")

    async def _run(self) -> None:
        due = time.monotonic()
        while True:
            now = time.monotonic()
            if now - due > LATE_S:
                self.late.append((now, now - due))
            for pair in self.pairs:
                pair.observe(now)
            due = now + TICK_S
            await asyncio.sleep(TICK_S)

    def loop_lag_max(self, start: float, end: float) -> float:
        """The latest the watch's tick came in [start, end], in seconds."""
        return max((lag for t, lag in self.late if start <= t <= end), default=0.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def all_hearing(self) -> bool:
        now = time.monotonic()
        return all(p.hearing(now) for p in self.pairs)

    def not_hearing(self) -> list[str]:
        now = time.monotonic()
        return [f"{p.listener.user}<-{p.speaker.user}" for p in self.pairs if not p.hearing(now)]

    def reset_intervals(self) -> None:
        for pair in self.pairs:
            pair.max_interval = 0.0

    def window(self, start: float, end: float) -> tuple[dict[str, float], float]:
        """Per listener, the recovery after `start`: when its last stall overlapping [start, end]
        ended, relative to `start` (0 when none); and the longest stall or interval of any pair in
        the window, in seconds."""
        recovery: dict[str, float] = {}
        gap = 0.0
        now = time.monotonic()
        for pair in self.pairs:
            spans = list(pair.stalls)
            if pair.stalled_since is not None:
                spans.append((pair.stalled_since, now))
            worst = 0.0
            for s, e in spans:
                if e >= start and s <= end:
                    worst = max(worst, e - start)
                    gap = max(gap, e - max(s, start) if s < start else e - s)
            user = pair.listener.user
            recovery[user] = max(recovery.get(user, 0.0), worst)
            gap = max(gap, pair.max_interval)
        return recovery, gap


def presence_errors(rooms: list[Room]) -> tuple[int, int, list[str]]:
    """(ghosts, missing, details): users a client sees in its room who are not there, and users
    there whom it does not see (itself included: a client must see its own presence)."""
    ghosts = missing = 0
    details: list[str] = []
    for room in rooms:
        truth = room.users
        for member in room.members:
            seen = set(member.client.members())
            extra, absent = seen - truth, truth - seen
            ghosts += len(extra)
            missing += len(absent)
            if extra or absent:
                details.append(f"{member.user}: ghosts {sorted(extra)} missing {sorted(absent)}")
    return ghosts, missing, details


# --- calls -----------------------------------------------------------------------------------------
class CallCycler:
    """Caller and callee cycling calls; `completed` holds the monotonic time each cycle ended."""

    def __init__(self, url: str, token: Callable[[str], str], caller: str, callee: str) -> None:
        self.url = url
        self.token = token
        self.caller, self.callee = caller, callee
        self.completed: list[float] = []
        self.failures: dict[str, int] = {}
        self.open_calls_ended = 0
        self._task: asyncio.Task[None] | None = None
        self._sockets: list[PhoenixClient] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chaos-calls")

    async def _device(self, user: str) -> ClientChannel:
        phx = PhoenixClient(self.url, self.token(user))
        self._sockets.append(phx)
        await phx.connect()
        channel, _ = await phx.join(f"user:{user}", {"device_id": f"{user}-soak"}, timeout=EVENT_TIMEOUT_S)
        return channel

    async def _close(self) -> None:
        sockets, self._sockets = self._sockets, []
        for phx in sockets:
            with contextlib.suppress(Exception):
                await phx.close()

    async def _run(self) -> None:
        while True:
            try:
                caller = await self._device(self.caller)
                callee = await self._device(self.callee)
                await asyncio.sleep(0.3)  # the `call_state` of every call still open follows the join
                for channel in (caller, callee):
                    await self._end_open_calls(channel)
                while True:
                    await self._cycle(caller, callee)
                    self.completed.append(time.monotonic())
                    await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = type(exc).__name__ if not isinstance(exc, PushError) else f"refused: {exc.reason}"
                self.failures[why] = self.failures.get(why, 0) + 1
                await self._close()
                await asyncio.sleep(0.3)

    async def _end_open_calls(self, channel: ClientChannel) -> None:
        """What a device does after a reconnect: hang up the calls `call_state` says are still open
        (a cycle cut by a fault, or a call whose end a failover lost)."""
        while not channel.events.empty():
            event, payload = channel.events.get_nowait()
            if event == "call_state" and payload.get("state") not in ("ended", None):
                self.open_calls_ended += 1
                with contextlib.suppress(PushError, TimeoutError):
                    await channel.push("end_call", {"call_id": payload["call_id"]}, timeout=EVENT_TIMEOUT_S)

    async def _cycle(self, caller: ClientChannel, callee: ClientChannel) -> None:
        reply = await caller.push("start_call", {"invitees": [self.callee]}, timeout=EVENT_TIMEOUT_S)
        call_id = reply["call_id"]
        await _wait_call(callee, "call_started", call_id)
        await callee.push("answer_call", {"call_id": call_id}, timeout=EVENT_TIMEOUT_S)
        await caller.push("end_call", {"call_id": call_id}, timeout=EVENT_TIMEOUT_S)
        await _wait_call(caller, "call_ended", call_id)
        await _wait_call(callee, "call_ended", call_id)
        for channel in (caller, callee):
            while not channel.events.empty():
                channel.events.get_nowait()

    def completed_since(self, since: float) -> bool:
        return any(t >= since for t in self.completed)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()


async def _wait_call(channel: ClientChannel, event: str, call_id: str) -> None:
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            payload = await channel.wait_event(event, timeout=EVENT_TIMEOUT_S)
            if payload.get("call_id") == call_id:
                return


# --- the slow client -------------------------------------------------------------------------------
class SlowClient:
    """A socket with a 4 KiB receive buffer that upgrades, joins `topic` and then never reads until
    `drain()`; which returns the close code the server sent (read from the end of what piled up)."""

    def __init__(self, host: str, port: int, token: str, topic: str) -> None:
        self.host, self.port, self.token, self.topic = host, port, token, topic
        self.sock: socket.socket | None = None

    def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((self.host, self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /socket/websocket?vsn=2.0.0&token={self.token} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the upgrade")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"upgrade refused: {head[:200]!r}")
        sock.sendall(_masked_text(orjson.dumps(["1", "1", self.topic, "phx_join", {}])))
        self.sock = sock

    def drain(self, timeout: float = 30.0) -> int | None:
        """Read everything until the server's close frame; its code (None if the socket ended first)."""
        assert self.sock is not None
        self.sock.settimeout(timeout)
        data = bytearray()
        code: int | None = None
        with contextlib.suppress(OSError):
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        pos = 0
        while pos + 2 <= len(data):
            opcode, size = data[pos] & 0x0F, data[pos + 1] & 0x7F
            pos += 2
            if size == 126:
                size = int.from_bytes(data[pos : pos + 2], "big")
                pos += 2
            elif size == 127:
                size = int.from_bytes(data[pos : pos + 8], "big")
                pos += 8
            if opcode == 0x8 and size >= 2:
                code = int.from_bytes(data[pos : pos + 2], "big")
            pos += size
        self.sock.close()
        return code


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Chatter:
    """Sockets in the slow client's channel toggling mute as fast as the message limit allows: every
    toggle is a presence change every member of the channel is sent.

    The flood runs in a process of its own: on the soak's event loop it would starve the load
    clients (their ICE consent checks and audio decoding), and the soak would measure its own
    starvation instead of signaling's isolation of a slow socket."""

    def __init__(self, url: str, tokens: list[str], topic: str, rate_per_s: float = 40.0) -> None:
        self.url, self.tokens, self.topic, self.rate = url, tokens, topic, rate_per_s
        ctx = multiprocessing.get_context("spawn")
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_chatter_main,
            args=(url, tokens, topic, rate_per_s, self._ready, self._stop),
            name="chaos-chatter",
            daemon=True,
        )

    async def start(self) -> None:
        self._proc.start()
        ready = await asyncio.to_thread(self._ready.wait, EVENT_TIMEOUT_S * len(self.tokens))
        if not ready:
            await self.stop()
            raise RuntimeError("chatter: its sockets did not join in time")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._proc.join, EVENT_TIMEOUT_S)
        if self._proc.is_alive():
            self._proc.kill()
            await asyncio.to_thread(self._proc.join, EVENT_TIMEOUT_S)


def _chatter_main(url: str, tokens: list[str], topic: str, rate: float, ready: Any, stop: Any) -> None:
    asyncio.run(_chatter(url, tokens, topic, rate, ready, stop))


async def _chatter(url: str, tokens: list[str], topic: str, rate: float, ready: Any, stop: Any) -> None:
    sockets: list[PhoenixClient] = []
    channels: list[ClientChannel] = []
    for token in tokens:
        phx = PhoenixClient(url, token)
        sockets.append(phx)
        await phx.connect()
        channel, _ = await phx.join(topic, {}, timeout=EVENT_TIMEOUT_S)
        channels.append(channel)
    tasks = [asyncio.create_task(_toggle(channel, rate)) for channel in channels]
    ready.set()
    await asyncio.to_thread(stop.wait)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for phx in sockets:
        with contextlib.suppress(Exception):
            await phx.close()


async def _toggle(channel: ClientChannel, rate: float) -> None:
    muted = False
    while True:
        muted = not muted
        with contextlib.suppress(PushError, TimeoutError, ConnectionError):
            await channel.push("mute" if muted else "unmute", {}, timeout=EVENT_TIMEOUT_S)
        while not channel.events.empty():
            channel.events.get_nowait()
        await asyncio.sleep(1.0 / rate)
