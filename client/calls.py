"""`CallClient`: one device of a user, placing and answering Voxa calls, speaking only docs/protocol.md.

A device joins its user's topic `user:<user_id>` with a stable device id; every call event of the user
arrives there, and requests (`start_call`, `answer_call`, ...) go there. A call's media is a room like
a voice channel, on the topic `call:<call_id>`: `join_media` gives a `VoiceClient` on it (tones, WAV
files, recording, mute, deafen, as for `voxa client join`).

    async with CallClient(url, alice_token, device_id="alice-laptop") as alice:
        call = await alice.start_call(["bob"])                 # rings every device of bob
        voice = await alice.join_media(call.call_id, tone_hz=440)
        await alice.wait_event("call_accepted", call_id=call.call_id)

    async with CallClient(url, bob_token, device_id="bob-phone") as bob:
        ring = await bob.wait_event("call_started")
        await bob.answer(ring["call_id"])
        voice = await bob.join_media(ring["call_id"], tone_hz=660)

A lost socket is reconnected (capped exponential backoff) and the user topic joined again; the server
then sends a `call_state` for every call the user is part of, so `calls` is rebuilt from one event
per call. Events are delivered in order to `subscribe()` queues and `on_event` callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from voxa.client.phoenix import ClientChannel, PhoenixClient, PushError
from voxa.client.voice import (
    VoiceClient,
    VoiceClientError,
    keep_alive,
    open_channel,
    socket_url,
    token_claims,
)

log = logging.getLogger("voxa.client.calls")

CALL_EVENTS = frozenset(
    {
        "call_started",
        "call_ringing",
        "call_accepted",
        "call_declined",
        "call_left",
        "stop_ringing",
        "call_ended",
        "missed_call",
        "call_state",
    }
)


class CallError(Exception):
    """The server refused a call request; `reason` is its words (`busy`, `no such call`, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CallEvent:
    """A server push on the user topic (`name` one of CALL_EVENTS), or `reconnected`."""

    name: str
    payload: Mapping[str, Any]

    @property
    def call_id(self) -> str | None:
        value = self.payload.get("call_id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class StartedCall:
    call_id: str
    topic: str


@dataclass
class CallView:
    """What this device knows of one call, from the events so far."""

    call_id: str
    state: str = "ringing"
    members: dict[str, str] = field(default_factory=dict)
    caller: str | None = None
    ringing_here: bool = False
    """This device was rung and has not acted (answer, decline) nor been told to stop."""


EventCallback = Callable[[CallEvent], None]


class CallClient:
    """A device on `user:<user_id>` (the token's `sub`). Start with `start()` or `async with`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        device_id: str,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        heartbeat_s: float = 25.0,
        on_event: EventCallback | None = None,
    ) -> None:
        self.url = socket_url(url)
        self.token = token
        sub = token_claims(token).get("sub")
        if not isinstance(sub, str) or not sub:
            raise ValueError("the token has no `sub` claim")
        self.user_id = sub
        self.device_id = device_id
        self.backoff_s = backoff_s
        self.heartbeat_s = heartbeat_s
        self.calls: dict[str, CallView] = {}
        self.missed_calls: list[dict[str, Any]] = []
        self.join_reply: dict[str, Any] = {}
        self.phx: PhoenixClient | None = None
        self.channel: ClientChannel | None = None
        self._callbacks: list[EventCallback] = [on_event] if on_event else []
        self._queues: list[asyncio.Queue[CallEvent]] = []
        self._history: list[CallEvent] = []
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._media: list[VoiceClient] = []
        self._closing = False
        self.closed = asyncio.Event()

    @property
    def topic(self) -> str:
        return f"user:{self.user_id}"

    # --- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> CallClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> dict[str, Any]:
        """Connect and join the user topic; returns the join reply (`missed_calls` in it). Raises
        VoiceClientError when the socket or the join is refused."""
        await self._connect()
        self._tasks.append(asyncio.create_task(self._supervise(), name=f"voxa-calls-{self.user_id}"))
        return self.join_reply

    async def _connect(self) -> None:
        self.phx, self.channel, self.join_reply = await open_channel(
            self.url, self.token, self.topic, {"device_id": self.device_id}
        )
        self.missed_calls = list(self.join_reply.get("missed_calls") or [])

    async def close(self) -> None:
        """End every call media this client joined, leave the user topic, close the socket."""
        self._closing = True
        for voice in self._media:
            await voice.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.phx is not None:
            await self.phx.close()
        self.closed.set()

    async def _supervise(self) -> None:
        while not self._closing:
            phx, channel = self.phx, self.channel
            assert phx is not None and channel is not None
            heartbeat = asyncio.create_task(keep_alive(phx, self.heartbeat_s))
            try:
                await self._pump(phx, channel)
            finally:
                heartbeat.cancel()
            await phx.close()
            if self._closing or not await self._reconnect():
                self.closed.set()
                return
            self._emit(CallEvent("reconnected", {"device_id": self.device_id}))

    async def _pump(self, phx: PhoenixClient, channel: ClientChannel) -> None:
        closed = asyncio.ensure_future(phx.closed.wait())
        try:
            while True:
                get = asyncio.ensure_future(channel.events.get())
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return
                name, payload = get.result()
                if name in ("phx_close", "phx_error"):
                    return
                if name in CALL_EVENTS:
                    self._apply(name, payload)
                    self._emit(CallEvent(name, payload))
        finally:
            closed.cancel()

    async def _reconnect(self) -> bool:
        first, cap = self.backoff_s
        attempt = 0
        while not self._closing:
            attempt += 1
            await asyncio.sleep(min(cap, first * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2))
            try:
                await self._connect()
                return True
            except VoiceClientError as exc:
                if exc.status and not exc.retry:  # a refused socket (bad token): retrying cannot help
                    log.warning("calls.reconnect_refused", extra={"reason": exc.reason})
                    return False
            except (OSError, aiohttp.ClientError, TimeoutError):
                continue
        return False

    # --- the local view of calls ------------------------------------------------------------------
    def _apply(self, name: str, payload: Mapping[str, Any]) -> None:
        call_id = payload.get("call_id")
        if not isinstance(call_id, str):
            return
        view = self.calls.setdefault(call_id, CallView(call_id))
        if name == "call_started":
            caller = payload.get("caller") or {}
            view.caller = caller.get("id")
            view.ringing_here = True
        elif name == "call_state":
            view.state = str(payload.get("state"))
            view.members = dict(payload.get("members") or {})
            if view.members.get(self.user_id) != "ringing":
                view.ringing_here = False
        elif name == "stop_ringing":
            view.ringing_here = False
        elif name == "call_ended":
            view.state = "ended"
            view.ringing_here = False
        elif name == "missed_call":
            self.missed_calls.insert(0, dict(payload))
        if view.state == "ended":
            self.calls.pop(call_id, None)

    def _emit(self, event: CallEvent) -> None:
        self._history.append(event)
        for queue in self._queues:
            queue.put_nowait(event)
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("calls.callback_failed")

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def subscribe(self) -> asyncio.Queue[CallEvent]:
        """Every event from now on, in order."""
        queue: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def on_event(self, callback: EventCallback) -> None:
        self._callbacks.append(callback)

    async def wait_event(
        self, name: str, *, call_id: str | None = None, since: int = 0, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first event `name` (of `call_id`, if given) at or after position `since` of this
        client's history (`mark()`), waiting for it if it has not come yet."""

        def found() -> CallEvent | None:
            for event in self._history[since:]:
                if event.name == name and (call_id is None or event.call_id == call_id):
                    return event
            return None

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        event = found()
        assert event is not None
        return dict(event.payload)

    def mark(self) -> int:
        """A position in the event history, for `wait_event(since=...)`."""
        return len(self._history)

    # --- requests -----------------------------------------------------------------------------------
    async def _push(self, event: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        if self.channel is None:
            raise CallError("not connected")
        try:
            return await self.channel.push(event, payload, timeout=15.0)
        except PushError as exc:
            raise CallError(exc.reason) from None

    async def start_call(self, invitees: Sequence[str], *, video: bool = False) -> StartedCall:
        """Ring `invitees` (one: a 1:1 call; more: a group call). In glare (the one invitee is ringing
        us already) the server answers their call instead and returns its id."""
        reply = await self._push("start_call", {"invitees": list(invitees), "video": video})
        return StartedCall(str(reply["call_id"]), str(reply["topic"]))

    async def answer(self, call_id: str) -> dict[str, Any]:
        """`{"call_id", "topic", "ice_servers", "ice_transport_policy"}`; the first device wins."""
        return await self._push("answer_call", {"call_id": call_id})

    async def decline(self, call_id: str, reason: str = "declined") -> None:
        await self._push("decline_call", {"call_id": call_id, "reason": reason})

    async def end(self, call_id: str) -> None:
        """Cancel a call we placed that still rings, or leave one we are in."""
        await self._push("end_call", {"call_id": call_id})

    async def invite(self, call_id: str, invitees: Sequence[str]) -> None:
        await self._push("invite_to_call", {"call_id": call_id, "invitees": list(invitees)})

    async def join_media(self, call_id: str, **voice: Any) -> VoiceClient:
        """A started VoiceClient on `call:<call_id>` (keywords as for VoiceClient: tone_hz, play,
        record, muted, ...). Closed with this client, or earlier by the caller."""
        client = VoiceClient(self.url, self.token, None, topic=f"call:{call_id}", **voice)
        await client.start()
        self._media.append(client)
        return client
