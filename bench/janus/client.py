"""A small asyncio client of the Janus HTTP (REST) API and of the VideoRoom plugin (Janus 1.x, multistream).

One `JanusSession` is one Janus session: it long-polls ``GET /janus/<session>`` for events in a background
task, sends a keepalive every `keepalive_interval` seconds (Janus destroys sessions idle for
``session_timeout``, 60 s by default) and owns any number of `JanusHandle` s (one per PeerConnection).
`VideoRoom` wraps a handle attached to ``janus.plugin.videoroom`` with the requests the benchmark needs.

Janus answers a request either synchronously (``success`` / ``error``) or with an ``ack`` followed by an
``event`` carrying the same transaction on the long poll; `JanusHandle.message` hides the difference.
Errors become exceptions: `JanusApiError` for core errors (``{"janus": "error"}``) and
`JanusPluginError` for plugin errors (``{"videoroom": "event", "error_code": ...}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import aiohttp

VIDEOROOM: Final = "janus.plugin.videoroom"
JsonDict = dict[str, Any]


class JanusError(Exception):
    """Base class of the errors raised by this client."""


class JanusApiError(JanusError):
    """Janus core answered ``{"janus": "error", "error": {"code": ..., "reason": ...}}``."""

    def __init__(self, code: int, reason: str, request: str = "") -> None:
        super().__init__(f"Janus error {code} on {request or 'request'}: {reason}")
        self.code = code
        self.reason = reason


class JanusPluginError(JanusError):
    """A plugin answered with ``error_code`` / ``error`` in its data."""

    def __init__(self, code: int, reason: str, request: str = "") -> None:
        super().__init__(f"plugin error {code} on {request or 'request'}: {reason}")
        self.code = code
        self.reason = reason


class JanusProtocolError(JanusError):
    """An answer that does not have the expected shape (or the session is gone)."""


@dataclass
class Event:
    """An asynchronous event received for a handle (``event``, ``webrtcup``, ``media``, ``hangup``...)."""

    janus: str
    data: JsonDict = field(default_factory=dict)
    jsep: JsonDict | None = None
    raw: JsonDict = field(default_factory=dict)


def _raise_for_error(reply: JsonDict, request: str) -> None:
    if reply.get("janus") == "error":
        err = reply.get("error") or {}
        raise JanusApiError(int(err.get("code", 0)), str(err.get("reason", reply)), request)
    data = (reply.get("plugindata") or {}).get("data") or {}
    if "error_code" in data or "error" in data:
        raise JanusPluginError(int(data.get("error_code", 0)), str(data.get("error", data)), request)


def _plugin_data(reply: JsonDict) -> JsonDict:
    data: JsonDict = (reply.get("plugindata") or {}).get("data") or {}
    return data


class JanusSession:
    """One Janus session over the HTTP API: ``await JanusSession.create(url)`` or ``async with``.

    Pass a shared `http` client session when running many sessions (the default one has no connection limit).
    """

    def __init__(
        self,
        base_url: str,
        *,
        http: aiohttp.ClientSession | None = None,
        keepalive_interval: float = 25.0,
        request_timeout: float = 15.0,
        max_events: int = 10,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.keepalive_interval = keepalive_interval
        self.request_timeout = request_timeout
        self.max_events = max_events
        self._own_http = http is None
        self._http = http
        self.session_id: int | None = None
        self.handles: dict[int, JanusHandle] = {}
        self._pending: dict[str, asyncio.Future[JsonDict]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self.closed = False
        self.failure: BaseException | None = None

    @classmethod
    async def create(cls, base_url: str, **kwargs: Any) -> JanusSession:
        session = cls(base_url, **kwargs)
        await session.open()
        return session

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise JanusProtocolError("session not opened")
        return self._http

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.session_id}"

    def transaction(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    async def post(self, url: str, body: JsonDict) -> JsonDict:
        """POST one Janus API message (a transaction is added) and return Janus's synchronous reply."""
        if self.failure is not None:
            raise JanusProtocolError(f"session failed: {self.failure}")
        body = {**body, "transaction": body.get("transaction") or self.transaction()}
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        try:
            async with self.http.post(url, json=body, timeout=timeout) as resp:
                if resp.status != 200:
                    raise JanusProtocolError(f"HTTP {resp.status} from {url}: {await resp.text()}")
                reply: JsonDict = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JanusProtocolError(f"{body['janus']} to {url} failed: {exc!r}") from exc
        _raise_for_error(reply, str(body["janus"]))
        return reply

    async def open(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            reply = await self.post(self.base_url, {"janus": "create"})
        except BaseException:
            if self._own_http:
                await self._http.close()
            raise
        self.session_id = int(reply["data"]["id"])
        self._tasks = [
            asyncio.create_task(self._poll(), name=f"janus-poll-{self.session_id}"),
            asyncio.create_task(self._keepalive(), name=f"janus-keepalive-{self.session_id}"),
        ]

    async def attach(self, plugin: str = VIDEOROOM) -> JanusHandle:
        reply = await self.post(self.url, {"janus": "attach", "plugin": plugin})
        handle = JanusHandle(self, int(reply["data"]["id"]), plugin)
        self.handles[handle.handle_id] = handle
        return handle

    async def keepalive(self) -> None:
        await self.post(self.url, {"janus": "keepalive"})

    async def _keepalive(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.keepalive_interval)
            try:
                await self.keepalive()
            except JanusError as exc:
                self._fail(exc)
                return

    async def _poll(self) -> None:
        # Janus holds the GET for up to 30 s and answers {"janus": "keepalive"} when nothing happened.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=45.0)
        params = {"maxev": str(self.max_events)}
        while not self.closed:
            try:
                async with self.http.get(self.url, params=params, timeout=timeout) as resp:
                    if resp.status != 200:
                        raise JanusProtocolError(f"HTTP {resp.status} polling {self.url}")
                    payload = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError, JanusProtocolError) as exc:
                if not self.closed:
                    self._fail(JanusProtocolError(f"long poll of {self.url} failed: {exc!r}"))
                return
            for message in payload if isinstance(payload, list) else [payload]:
                self._dispatch(message)

    def _dispatch(self, message: JsonDict) -> None:
        kind = message.get("janus")
        if kind == "keepalive":
            return
        if kind == "error" and message.get("error", {}).get("code") == 458:  # no such session
            self._fail(JanusProtocolError(f"session {self.session_id} is gone: {message}"))
            return
        if kind == "timeout":
            self._fail(JanusProtocolError(f"session {self.session_id} timed out"))
            return
        transaction = str(message.get("transaction") or "")
        future = self._pending.pop(transaction, None) if transaction else None
        if future is not None and kind in ("event", "error"):
            if not future.done():
                future.set_result(message)
            return
        if future is not None:  # not the reply: put it back
            self._pending[transaction] = future
        handle = self.handles.get(int(message.get("sender", 0) or 0))
        if handle is not None:
            handle._deliver(message)

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()
        for handle in self.handles.values():
            handle._deliver({"janus": "session-failed", "reason": str(exc)})

    def expect(self, transaction: str) -> asyncio.Future[JsonDict]:
        """Register interest in the asynchronous event answering `transaction`."""
        if self.failure is not None:
            raise JanusProtocolError(f"session failed: {self.failure}")
        future: asyncio.Future[JsonDict] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        return future

    async def destroy(self) -> None:
        """Destroy the session in Janus (detaching its handles) and stop the background tasks."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.session_id is not None and self.failure is None:
                with contextlib.suppress(JanusError):
                    await self.post(self.url, {"janus": "destroy"})
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for future in self._pending.values():
                future.cancel()
            if self._own_http and self._http is not None:
                await self._http.close()

    async def __aenter__(self) -> JanusSession:
        if self.session_id is None:
            await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.destroy()


class JanusHandle:
    """A handle attached to a plugin; unsolicited events land in `events`."""

    def __init__(self, session: JanusSession, handle_id: int, plugin: str) -> None:
        self.session = session
        self.handle_id = handle_id
        self.plugin = plugin
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.webrtcup = asyncio.Event()
        self.hungup = asyncio.Event()

    @property
    def url(self) -> str:
        return f"{self.session.url}/{self.handle_id}"

    def _deliver(self, message: JsonDict) -> None:
        kind = str(message.get("janus"))
        if kind == "webrtcup":
            self.webrtcup.set()
        elif kind == "hangup":
            self.hungup.set()
        self.events.put_nowait(Event(kind, _plugin_data(message), message.get("jsep"), message))

    async def message(
        self, body: JsonDict, jsep: JsonDict | None = None, *, timeout: float | None = None
    ) -> tuple[JsonDict, JsonDict | None]:
        """Send a plugin message; return (plugin data, JSEP or None) of its reply, sync or async."""
        request = str(body.get("request", "message"))
        transaction = self.session.transaction()
        future = self.session.expect(transaction)
        msg: JsonDict = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            msg["jsep"] = jsep
        try:
            reply = await self.session.post(self.url, msg)
            if reply.get("janus") == "ack":
                reply = await asyncio.wait_for(future, timeout or self.session.request_timeout)
        except TimeoutError as exc:
            raise JanusProtocolError(f"no answer to {request!r} within the timeout") from exc
        finally:
            self.session._pending.pop(transaction, None)
            future.cancel()
        _raise_for_error(reply, request)
        if reply.get("janus") not in ("success", "event"):
            raise JanusProtocolError(f"unexpected reply to {request!r}: {reply}")
        return _plugin_data(reply), reply.get("jsep")

    async def trickle(self, candidate: JsonDict | None) -> None:
        """Trickle one candidate (``{"candidate", "sdpMid", "sdpMLineIndex"}``) or, with None, completion."""
        body: JsonDict = {"janus": "trickle"}
        body["candidate"] = candidate if candidate is not None else {"completed": True}
        await self.session.post(self.url, body)

    async def hangup(self) -> None:
        await self.session.post(self.url, {"janus": "hangup"})

    async def detach(self) -> None:
        await self.session.post(self.url, {"janus": "detach"})
        self.session.handles.pop(self.handle_id, None)

    async def wait_event(
        self, janus: str = "event", *, key: str | None = None, timeout: float = 10.0
    ) -> Event:
        """Wait for the next event of kind `janus` (whose plugin data has `key`, if given); others dropped."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event.janus == "session-failed":
                    raise JanusProtocolError(str(event.raw.get("reason")))
                if event.janus == janus and (key is None or key in event.data):
                    return event


@dataclass
class Joined:
    """Reply to a publisher ``join``: our ids and the publishers already in the room."""

    room: int
    id: int
    private_id: int
    publishers: list[JsonDict]


@dataclass
class Subscription:
    """Reply to a subscriber ``join``: Janus's SDP offer and the streams (mid -> feed) it contains."""

    room: int
    offer_sdp: str
    streams: list[JsonDict]

    def feed_of_mid(self) -> dict[str, int]:
        return {str(s["mid"]): int(s["feed_id"]) for s in self.streams if "feed_id" in s}


def offer(sdp: str) -> JsonDict:
    """A JSEP offer with full (non-trickled) SDP."""
    return {"type": "offer", "sdp": sdp, "trickle": False}


def answer(sdp: str) -> JsonDict:
    """A JSEP answer with full (non-trickled) SDP."""
    return {"type": "answer", "sdp": sdp, "trickle": False}


class VideoRoom:
    """The VideoRoom requests of Janus 1.x (multistream API) on one handle."""

    def __init__(self, handle: JanusHandle) -> None:
        if handle.plugin != VIDEOROOM:
            raise ValueError(f"handle is attached to {handle.plugin}, not {VIDEOROOM}")
        self.handle = handle
        self.room: int | None = None

    @classmethod
    async def attach(cls, session: JanusSession) -> VideoRoom:
        return cls(await session.attach(VIDEOROOM))

    async def create_room(
        self,
        room: int | None = None,
        *,
        publishers: int = 1000,
        audiocodec: str = "opus",
        videocodec: str = "vp8",
        bitrate: int = 0,
        description: str = "voxa-bench",
        extra: JsonDict | None = None,
    ) -> int:
        """Create a non-permanent, non-recorded room; returns its id (Janus picks one if `room` is None)."""
        body: JsonDict = {
            "request": "create",
            "description": description,
            "publishers": publishers,
            "audiocodec": audiocodec,
            "videocodec": videocodec,
            "bitrate": bitrate,
            "record": False,
            "permanent": False,
            "notify_joining": False,
            **(extra or {}),
        }
        if room is not None:
            body["room"] = room
        data, _ = await self.handle.message(body)
        if data.get("videoroom") != "created":
            raise JanusProtocolError(f"unexpected reply to create: {data}")
        return int(data["room"])

    async def destroy_room(self, room: int) -> None:
        await self.handle.message({"request": "destroy", "room": room, "permanent": False})

    async def exists(self, room: int) -> bool:
        data, _ = await self.handle.message({"request": "exists", "room": room})
        return bool(data.get("exists"))

    async def list_participants(self, room: int) -> list[JsonDict]:
        data, _ = await self.handle.message({"request": "listparticipants", "room": room})
        participants: list[JsonDict] = data.get("participants", [])
        return participants

    async def join_publisher(self, room: int, display: str = "", *, id: int | None = None) -> Joined:
        body: JsonDict = {"request": "join", "ptype": "publisher", "room": room, "display": display}
        if id is not None:
            body["id"] = id
        data, _ = await self.handle.message(body)
        if data.get("videoroom") != "joined":
            raise JanusProtocolError(f"unexpected reply to publisher join: {data}")
        self.room = room
        return Joined(room, int(data["id"]), int(data.get("private_id", 0)), list(data.get("publishers", [])))

    async def publish(
        self,
        offer_sdp: str,
        *,
        request: str = "publish",
        jsep_extra: JsonDict | None = None,
        **options: Any,
    ) -> str:
        """Publish with an SDP offer (``publish``, or its older alias ``configure``); returns the SDP answer.

        `options` go into the request body, e.g. ``audiocodec="opus"``, ``bitrate=...``, ``display=...``;
        `jsep_extra` into the JSEP, e.g. ``{"rid_order": "lmh"}`` for simulcast rids listed lowest first.
        """
        data, jsep = await self.handle.message(
            {"request": request, **options}, {**offer(offer_sdp), **(jsep_extra or {})}
        )
        if data.get("configured") != "ok" or jsep is None or jsep.get("type") != "answer":
            raise JanusProtocolError(f"unexpected reply to {request}: {data} / {jsep}")
        return str(jsep["sdp"])

    async def unpublish(self) -> None:
        await self.handle.message({"request": "unpublish"})

    async def join_subscriber(
        self, room: int, feeds: list[int] | None = None, *, streams: list[JsonDict] | None = None
    ) -> Subscription:
        """Subscribe to every stream of `feeds` (or to explicit `streams`); returns Janus's SDP offer."""
        wanted = streams if streams is not None else [{"feed": feed} for feed in feeds or []]
        if not wanted:
            raise ValueError("nothing to subscribe to")
        body: JsonDict = {"request": "join", "ptype": "subscriber", "room": room, "streams": wanted}
        data, jsep = await self.handle.message(body)
        if data.get("videoroom") != "attached" or jsep is None or jsep.get("type") != "offer":
            raise JanusProtocolError(f"unexpected reply to subscriber join: {data} / {jsep}")
        self.room = room
        return Subscription(room, str(jsep["sdp"]), list(data.get("streams", [])))

    async def start(self, answer_sdp: str) -> None:
        """Answer the subscription offer; Janus starts forwarding once ICE/DTLS are up."""
        data, _ = await self.handle.message({"request": "start"}, answer(answer_sdp))
        if data.get("started") != "ok":
            raise JanusProtocolError(f"unexpected reply to start: {data}")

    async def leave(self) -> None:
        await self.handle.message({"request": "leave"})
