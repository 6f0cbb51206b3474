"""A small asyncio Phoenix Channels v2 client (the wire protocol of docs/protocol.md).

Used by Voxa's tests, load generators and the Python SDK. It keeps the same semantics as the phoenix
JS client where they matter: refs are strings, replies resolve the push that carries the same ref,
heartbeats go to topic ``phoenix``, and frames for an earlier join of a topic are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from voxa.signaling.presence import PRESENCE_DIFF, PRESENCE_STATE, State, sync_diff


class PushError(Exception):
    """The server answered a push with status error."""

    def __init__(self, response: dict[str, Any]) -> None:
        super().__init__(response.get("reason", "error"))
        self.response = response
        self.reason = str(response.get("reason", "error"))


class ConnectRefused(aiohttp.WSServerHandshakeError):
    """The server refused the WebSocket upgrade; `reason` is its plain-text body (docs/protocol.md:
    `bad token signature`, `token expired`, `origin not allowed` ...), `status` the HTTP status."""

    def __init__(self, error: aiohttp.WSServerHandshakeError, reason: str) -> None:
        super().__init__(
            error.request_info,
            error.history,
            status=error.status,
            message=reason or error.message,
            headers=error.headers,
        )
        self.reason = reason or error.message

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.reason}"


class ClientChannel:
    """One joined topic: its events and, for Presence topics, the synced presence state."""

    def __init__(self, client: PhoenixClient, topic: str, join_ref: str) -> None:
        self.client = client
        self.topic = topic
        self.join_ref = join_ref
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.presence: State = {}
        self.presence_synced = asyncio.Event()
        self._pending_diffs: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self.changed = asyncio.Condition()

    def _on_event(self, event: str, payload: dict[str, Any]) -> None:
        if event == PRESENCE_STATE:
            self.presence = payload
            for diff in self._pending_diffs:
                self.presence = sync_diff(self.presence, diff)
            self._pending_diffs.clear()
            self.presence_synced.set()
        elif event == PRESENCE_DIFF:
            if self.presence_synced.is_set():
                self.presence = sync_diff(self.presence, payload)
            else:
                self._pending_diffs.append(payload)
        elif event in ("phx_close", "phx_error"):
            self.closed.set()
        self.events.put_nowait((event, payload))
        self.client._notify(self)

    async def push(
        self, event: str, payload: Mapping[str, Any] | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        return await self.client.push(
            self.topic, event, payload or {}, join_ref=self.join_ref, timeout=timeout
        )

    async def leave(self, timeout: float = 5.0) -> None:
        await self.client.push(self.topic, "phx_leave", {}, join_ref=self.join_ref, timeout=timeout)
        self.client.channels.pop(self.topic, None)

    async def wait_event(self, event: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                name, payload = await self.events.get()
                if name == event:
                    return payload

    def members(self) -> dict[str, dict[str, Any]]:
        """user id -> latest meta."""
        return {key: entry["metas"][-1] for key, entry in self.presence.items() if entry["metas"]}

    async def wait_presence(self, predicate: Any, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        """Wait until predicate(members()) is true."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: self.presence_synced.is_set() and predicate(self.members()))
        return self.members()


class PhoenixClient:
    def __init__(
        self, url: str, token: str | None = None, *, params: Mapping[str, str] | None = None
    ) -> None:
        query = {"vsn": "2.0.0", **(params or {})}
        if token is not None:
            query["token"] = token
        self.url = url.rstrip("/") + "/websocket"
        self.query = query
        self._refs = itertools.count(1)
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.channels: dict[str, ClientChannel] = {}
        self.unmatched: asyncio.Queue[list[Any]] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None

    async def connect(
        self, *, headers: Mapping[str, str] | None = None, protocols: tuple[str, ...] = ()
    ) -> None:
        self._session = aiohttp.ClientSession()
        try:
            self.ws = await self._session.ws_connect(
                self.url,
                params=self.query,
                headers=headers,
                protocols=protocols,
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # aiohttp drops the body of a refused upgrade; the reason is in it, so ask once more.
            reason = await self._refusal_reason(headers, exc.status)
            await self._session.close()
            raise ConnectRefused(exc, reason) from None
        except BaseException:
            await self._session.close()
            raise
        self._reader = asyncio.create_task(self._read())

    async def _refusal_reason(self, headers: Mapping[str, str] | None, status: int) -> str:
        """The plain-text body the server refuses this upgrade with: signaling checks the version, origin
        and token before it looks for the upgrade, so a plain GET gets the same refusal, with its body."""
        assert self._session is not None
        http_url = "http" + self.url.removeprefix("ws") if self.url.startswith("ws") else self.url
        try:
            async with self._session.get(
                http_url, params=self.query, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                if resp.status != status:  # refused for another reason by now: do not guess
                    return ""
                return (await resp.content.read(1024)).decode(errors="replace").strip()
        except (aiohttp.ClientError, TimeoutError):
            return ""

    async def __aenter__(self) -> PhoenixClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()

    def next_ref(self) -> str:
        return str(next(self._refs))

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def push(
        self,
        topic: str,
        event: str,
        payload: Mapping[str, Any],
        *,
        join_ref: str | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Send a push and wait for its reply; raise PushError on status error."""
        ref = self.next_ref()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        try:
            await self.send_raw(orjson.dumps([join_ref, ref, topic, event, payload]).decode())
            async with asyncio.timeout(timeout):
                reply = await future
        finally:
            self._replies.pop(ref, None)
        if reply.get("status") != "ok":
            raise PushError(reply.get("response") or {})
        response: dict[str, Any] = reply.get("response") or {}
        return response

    async def join(
        self, topic: str, payload: Mapping[str, Any] | None = None, timeout: float = 5.0
    ) -> tuple[ClientChannel, dict[str, Any]]:
        ref = self.next_ref()
        channel = ClientChannel(self, topic, ref)
        self.channels[topic] = channel
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ref] = future
        try:
            await self.send_raw(orjson.dumps([ref, ref, topic, "phx_join", payload or {}]).decode())
            async with asyncio.timeout(timeout):
                reply = await future
        finally:
            self._replies.pop(ref, None)
        if reply.get("status") != "ok":
            self.channels.pop(topic, None)
            raise PushError(reply.get("response") or {})
        return channel, reply.get("response") or {}

    async def heartbeat(self, timeout: float = 5.0) -> None:
        await self.push("phoenix", "heartbeat", {}, timeout=timeout)

    def _notify(self, channel: ClientChannel) -> None:
        async def notify() -> None:
            async with channel.changed:
                channel.changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = orjson.loads(msg.data)
                join_ref, ref, topic, event, payload = frame
                if event == "phx_reply" and ref is not None and ref in self._replies:
                    future = self._replies[ref]
                    if not future.done():
                        future.set_result(payload)
                    continue
                channel = self.channels.get(topic)
                if channel is None or (join_ref is not None and join_ref != channel.join_ref):
                    self.unmatched.put_nowait(frame)
                    continue
                channel._on_event(event, payload)
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            for channel in self.channels.values():
                channel.closed.set()
