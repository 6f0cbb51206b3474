"""A scripted stand-in for signaling + SFU, speaking docs/protocol.md, for VoiceClient unit tests.

One aiohttp app on loopback: the Phoenix v2 socket (heartbeats, joins, self-state pushes, leave), a
fixed presence with a fake participant "bob" (session "s-bob"), and per client session an aiortc
RTCPeerConnection playing the SFU: it answers the client's first offer, then offers bob's tone
(660 Hz, stream id "s-bob") the way the SFU offers consumers. Tests script what real servers only do
under rare conditions: glare (`glare_next`), `media_reset`, a dropped socket, refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import jwt
import orjson
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from voxa.client.media import SineTrack

SECRET = "fake-secret-0123456789-abcdefghijkl"
BOB = "s-bob"
CAROL = "s-carol"


def meta(session: str, name: str, **state: bool) -> dict[str, Any]:
    base = dict.fromkeys(
        ("muted", "deafened", "server_muted", "server_deafened", "speaking", "video", "suppressed"), False
    )
    return {"phx_ref": session, "session_id": session, "name": name, **base, **state}


class FakeSfuPeer:
    """The SFU side of one client session: an aiortc peer that sends tones with chosen stream ids."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.offers_made = 0
        self.answers_received = 0
        self.tones: list[SineTrack] = []

    def add_tone(self, stream_id: str, hz: float) -> None:
        tone = SineTrack(hz)
        self.tones.append(tone)
        # A new m-section per track, as the SFU offers consumers (addTrack would reuse the client's).
        sender = self.pc.addTransceiver(tone, direction="sendonly").sender
        sender._stream_id = stream_id  # the SFU's msid: the sender's presence session id

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offers_made += 1
        return str(self.pc.localDescription.sdp)

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)


class FakeSignaling:
    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/socket/websocket", self._socket)
        self.server = TestServer(self.app, host="127.0.0.1")
        self.sockets: dict[str, web.WebSocketResponse] = {}  # session -> socket
        self.topics: dict[str, tuple[str, str]] = {}  # session -> (topic, join_ref)
        self.peers: dict[str, FakeSfuPeer] = {}
        self.frames: list[list[Any]] = []  # every frame received
        self.joins: list[dict[str, Any]] = []  # join payloads
        self.glare_next = False
        self.fail_next_answer = False
        self.undeafen_keeps_mute = False
        self.muted: dict[str, bool] = {}
        self.muted_before_deafen: dict[str, bool] = {}
        self.sdp_replies: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._sessions = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/socket"

    async def start(self) -> None:
        await self.server.start_server()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for peer in self.peers.values():
            await peer.pc.close()
        for ws in list(self.sockets.values()):
            await ws.close()
        await self.server.close()

    # --- scripting ------------------------------------------------------------------------------------
    async def push(self, session: str, event: str, payload: dict[str, Any]) -> None:
        topic, join_ref = self.topics[session]
        await self.sockets[session].send_str(orjson.dumps([join_ref, None, topic, event, payload]).decode())

    async def media_reset(self, session: str) -> None:
        peer = self.peers.pop(session, None)
        if peer is not None:
            await peer.pc.close()
        await self.push(session, "media_reset", {"reason": "media server lost"})

    async def drop_sockets(self) -> None:
        for session, ws in list(self.sockets.items()):
            peer = self.peers.pop(session, None)
            if peer is not None:
                await peer.pc.close()
            await ws.close()
        self.sockets.clear()

    # --- the socket -----------------------------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token", "")
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            return web.Response(status=403, text="bad token signature\n")
        ws = web.WebSocketResponse(protocols=("phoenix",))
        await ws.prepare(request)
        current = [""]  # this socket's session: a new one per join, as signaling does
        user = str(claims["sub"])
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            frame = orjson.loads(msg.data)
            self.frames.append(frame)
            join_ref, _ref, topic, event, payload = frame

            async def reply(response: dict[str, Any], status: str = "ok", *, _f: Any = frame) -> None:
                body = {"status": status, "response": response}
                await ws.send_str(orjson.dumps([_f[0], _f[1], _f[2], "phx_reply", body]).decode())

            try:
                if event == "phx_join":
                    current[0] = f"s{next(self._sessions)}"
                await self._handle(ws, current[0], user, claims, join_ref, topic, event, payload, reply)
            except Exception as exc:  # surfaced by the tests
                self.errors.append(f"{event}: {type(exc).__name__}: {exc}")
                await reply({"reason": str(exc)}, "error")
        return ws

    async def _handle(
        self,
        ws: web.WebSocketResponse,
        session: str,
        user: str,
        claims: dict[str, Any],
        join_ref: str | None,
        topic: str,
        event: str,
        payload: dict[str, Any],
        reply: Any,
    ) -> None:
        if topic == "phoenix" and event == "heartbeat":
            await reply({})
        elif event == "phx_join":
            self.joins.append(payload)
            if "connect" not in claims.get("perms", []):
                await reply({"reason": "missing permission 'connect'"}, "error")
                return
            self.sockets[session] = ws
            self.topics[session] = (topic, str(join_ref))
            await reply(
                {
                    "session_id": session,
                    "user": {"id": user, "name": user},
                    "permissions": claims.get("perms", []),
                    "state": meta(session, user, muted=bool(payload.get("muted"))) | {"phx_ref": None},
                    "ice_servers": [],
                    "ice_transport_policy": "all",
                    "media_server": "fake-sfu",
                }
            )
            presence = {
                user: {"metas": [meta(session, user, muted=bool(payload.get("muted")))]},
                "bob": {"metas": [meta(BOB, "Bob")]},
                "carol": {"metas": [meta(CAROL, "Carol")]},
            }
            await self.push(session, "presence_state", presence)
        elif event in ("mute", "unmute", "deafen", "undeafen"):
            # Like signaling: undeafen restores the mute from before the deafen (unless told not to).
            muted = self.muted.get(session, False)
            if event == "deafen":
                self.muted_before_deafen[session] = muted
            muted = {
                "mute": True,
                "unmute": False,
                "deafen": True,
                "undeafen": self.undeafen_keeps_mute or self.muted_before_deafen.get(session, False),
            }[event]
            self.muted[session] = muted
            await reply({"state": {"muted": muted}})
        elif event == "phx_leave":
            await reply({})
            await self.push(session, "phx_close", {})
            peer = self.peers.pop(session, None)  # signaling removes the member's SFU peer
            if peer is not None:
                await peer.pc.close()
        elif event == "sdp":
            await self._sdp(session, payload, reply)
        elif event == "video_quality":  # bob publishes no video here: only the reply's shape matters
            if payload.get("track") == f"{BOB}:1":
                await reply({})
            else:
                await reply({"reason": "unknown track"}, "error")
        else:
            await reply({"reason": f"unknown event {event!r}"}, "error")

    async def _sdp(self, session: str, payload: dict[str, Any], reply: Any) -> None:
        kind, sdp = payload["type"], payload["sdp"]
        peer = self.peers.get(session)
        if kind == "answer":
            assert peer is not None, "answer without an SFU offer"
            if self.fail_next_answer:
                self.fail_next_answer = False
                await reply({"reason": "SDP must start with v=0"}, "error")
                return
            await peer.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
            peer.answers_received += 1
            self.sdp_replies.append({})
            await reply({})
            return
        if peer is None:
            # First offer: answer it, then offer bob's track like the SFU offers a consumer.
            peer = self.peers[session] = FakeSfuPeer()
            answer = await peer.answer(sdp)
            await self.push(session, "sdp", {"type": "answer", "sdp": answer})
            self.sdp_replies.append({})
            await reply({})
            peer.add_tone(BOB, 660.0)
            await self.push(session, "sdp", {"type": "offer", "sdp": await peer.offer()})
            return
        if self.glare_next or peer.pc.signalingState != "stable":
            # Impolite: our own offer (carol's track) goes out, the client's is ignored.
            self.glare_next = False
            if peer.pc.signalingState == "stable":
                peer.add_tone(CAROL, 880.0)
                await self.push(session, "sdp", {"type": "offer", "sdp": await peer.offer()})
            self.sdp_replies.append({"ignored": True})
            await reply({"ignored": True})
            return
        answer = await peer.answer(sdp)
        await self.push(session, "sdp", {"type": "answer", "sdp": answer})
        self.sdp_replies.append({})
        await reply({})


def fake_token(user: str = "alice", perms: tuple[str, ...] = ("connect", "speak"), server: str = "g1") -> str:
    return jwt.encode({"sub": user, "server": server, "perms": list(perms)}, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def fake_signaling() -> Any:
    fake = FakeSignaling()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
