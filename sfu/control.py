"""The SFU's control API for signaling (aiohttp, bearer `VOXA_SFU_SECRET`), documented in docs/sfu.md.

Requests create routers and peers, relay SDP and ICE, and change a peer's mute state and rights.
What the SFU initiates (its offers, peer states, speaking) streams to signaling over the
`/v1/events` WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from voxa.common.auth import bearer_matches
from voxa.sfu.negotiation import NegotiationError
from voxa.sfu.peer import Conflict, NotFound
from voxa.sfu.router import Preferences
from voxa.sfu.sdp import SdpError
from voxa.sfu.transport import TransportError
from voxa.sfu.worker import SfuWorker

log = logging.getLogger("voxa.sfu.control")
WORKER = web.AppKey("worker", SfuWorker)
EVENT_SOCKETS = web.AppKey("event_sockets", set[web.WebSocketResponse])
ID = r"{name:[A-Za-z0-9_.:\-]{1,128}}"


Source = Literal["microphone", "camera", "screen", "screen_audio"]
Sources = dict[str, Source]


class NewPeer(BaseModel):
    sdp: str = Field(min_length=1, max_length=65536, description="The client's offer.")
    can_speak: bool = True
    can_video: bool = True
    can_stream: bool = False
    muted: bool = False
    server_muted: bool = False
    deafened: bool = False
    sources: Sources | None = Field(default=None, max_length=64, description="mid -> source")


class Description(BaseModel):
    type: str = Field(pattern="^(offer|answer)$")
    sdp: str = Field(min_length=1, max_length=65536)
    sources: Sources | None = Field(default=None, max_length=64, description="mid -> source (offers)")


class Quality(BaseModel):
    """A subscriber's tile of one track: its displayed size (null = no cap) and whether it is hidden."""

    model_config = ConfigDict(extra="forbid")
    max_width: StrictInt | None = Field(default=None, ge=0, le=16384)
    max_height: StrictInt | None = Field(default=None, ge=0, le=16384)
    paused: StrictBool = False


class Candidate(BaseModel):
    candidate: str = Field(max_length=1024)
    sdpMid: str | None = None
    sdpMLineIndex: int | None = None


class PeerState(BaseModel):
    muted: bool | None = None
    server_muted: bool | None = None
    deafened: bool | None = None
    can_speak: bool | None = None
    can_video: bool | None = None
    can_stream: bool | None = None


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        details = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "invalid body", "details": details}), content_type="application/json"
        ) from None


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer auth on /v1, and domain errors turned into clear HTTP answers."""
    if request.path.startswith("/v1/"):
        secret = request.app[WORKER].settings.secret
        if not bearer_matches(request.headers.get("Authorization"), secret):
            return _error(401, "bad or missing bearer secret")
    try:
        response: web.StreamResponse = await handler(request)
    except (NotFound, KeyError) as exc:  # KeyError: the native data plane's not-found
        return _error(404, str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    except Conflict as exc:
        return _error(409, str(exc))
    except (SdpError, NegotiationError, TransportError) as exc:
        return _error(400, str(exc))
    return response


async def put_router(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    router = request.match_info["router"]
    if worker.draining and router not in worker.routers:
        # A router it already hosts stays (a call in progress is not cut); signaling moves a
        # channel whose router is gone to another SFU when it reads `draining`.
        return _error(503, "draining: this SFU takes no new routers", draining=True)
    room = worker.create_router(router)
    return web.json_response({"id": room.router.id})


async def get_router(request: web.Request) -> web.Response:
    return web.json_response(request.app[WORKER].router(request.match_info["router"]).stats())


async def delete_router(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    router = request.match_info["router"]
    room = worker.routers.get(router)
    if request.query.get("if_empty") == "true" and room is not None and room.peers:
        # Signaling closes a channel's router after its last participant left; a participant who
        # joined meanwhile (on any replica) keeps it.
        return web.json_response({"closed": False, "peers": len(room.peers)})
    await worker.close_router(router)
    return web.json_response({"closed": True})


async def post_peer(request: web.Request) -> web.Response:
    body: NewPeer = await _body(request, NewPeer)
    worker = request.app[WORKER]
    room = worker.router(request.match_info["router"])
    peer_id = request.match_info["peer"]
    answer = await room.add_peer(
        peer_id,
        body.sdp,
        can_speak=body.can_speak,
        can_video=body.can_video,
        can_stream=body.can_stream,
        sources=dict(body.sources) if body.sources else None,
    )
    peer = room.peer(peer_id)
    peer.set_muted(muted=body.muted, server_muted=body.server_muted)
    peer.set_deafened(body.deafened)
    return web.json_response({"type": "answer", "sdp": answer})


async def post_sdp(request: web.Request) -> web.Response:
    body: Description = await _body(request, Description)
    peer = request.app[WORKER].router(request.match_info["router"]).peer(request.match_info["peer"])
    if body.type == "answer":
        peer.handle_answer(body.sdp)
        return web.json_response({})
    answer = peer.handle_offer(body.sdp, dict(body.sources) if body.sources else None)
    if answer is None:
        return _error(409, "glare: the SFU's own offer is pending; roll back and answer it", ignored=True)
    return web.json_response({"type": "answer", "sdp": answer})


async def post_ice(request: web.Request) -> web.Response:
    body: Candidate = await _body(request, Candidate)
    peer = request.app[WORKER].router(request.match_info["router"]).peer(request.match_info["peer"])
    await peer.transport.add_candidate(body.candidate)
    return web.json_response({})


async def put_state(request: web.Request) -> web.Response:
    body: PeerState = await _body(request, PeerState)
    peer = request.app[WORKER].router(request.match_info["router"]).peer(request.match_info["peer"])
    peer.set_muted(muted=body.muted, server_muted=body.server_muted)
    peer.set_rights(can_speak=body.can_speak, can_video=body.can_video, can_stream=body.can_stream)
    if body.deafened is not None:
        peer.set_deafened(body.deafened)
    state = {"muted": peer.muted, "server_muted": peer.server_muted, "deafened": peer.deafened}
    rights = {"can_speak": peer.can_speak, "can_video": peer.can_video, "can_stream": peer.can_stream}
    return web.json_response({**state, **rights})


async def put_quality(request: web.Request) -> web.Response:
    """A subscriber's wishes for one track it receives (adaptive stream): 404 unknown, 400 invalid."""
    body: Quality = await _body(request, Quality)
    peer = request.app[WORKER].router(request.match_info["router"]).peer(request.match_info["peer"])
    preferences = Preferences(body.max_width or 0, body.max_height or 0, body.paused)
    return web.json_response(peer.set_quality(request.match_info["track"], preferences))


async def get_peer(request: web.Request) -> web.Response:
    """A peer's state and tracks; 404 when it is gone (signaling asks before resuming a session)."""
    peer = request.app[WORKER].router(request.match_info["router"]).peer(request.match_info["peer"])
    return web.json_response({**peer.stats(), "tracks": peer.tracks(), "pending_offer": peer.pending_offer()})


async def delete_peer(request: web.Request) -> web.Response:
    room = request.app[WORKER].router(request.match_info["router"])
    await room.remove_peer(request.match_info["peer"], reason="removed by signaling")
    return web.json_response({"removed": True})


async def events(request: web.Request) -> web.StreamResponse:
    """Every event of this worker, as JSON text frames, until the socket closes."""
    worker = request.app[WORKER]
    ws = web.WebSocketResponse(heartbeat=15)
    await ws.prepare(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)

    def listener(event: dict[str, Any]) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("sfu.events_overflow")

    worker.listeners.append(listener)
    request.app[EVENT_SOCKETS].add(ws)

    async def pump() -> None:
        while True:
            await ws.send_str(json.dumps(await queue.get()))

    sender = asyncio.create_task(pump())
    try:
        await ws.send_str(
            json.dumps({"type": "hello", "media_server": worker.id, "draining": worker.draining})
        )
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
    finally:
        worker.listeners.remove(listener)
        request.app[EVENT_SOCKETS].discard(ws)
        sender.cancel()
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    ready = not worker.draining
    return web.json_response({"ready": ready, "draining": worker.draining}, status=200 if ready else 503)


def _load_reader(worker: SfuWorker, name: str) -> Callable[[], float]:
    return lambda: float(worker.load()[name])


def _metrics_registry(worker: SfuWorker) -> CollectorRegistry:
    registry = CollectorRegistry()
    for name, doc in (
        ("routers", "Routers on this worker."),
        ("peers", "Peers on this worker."),
        ("producers", "Producers on this worker."),
        ("consumers", "Consumers on this worker."),
    ):
        gauge = Gauge(f"voxa_sfu_{name}", doc, registry=registry)
        gauge.set_function(_load_reader(worker, name))
    Gauge(
        "voxa_sfu_forwarded_packets_per_s", "Forwarded RTP packets per second.", registry=registry
    ).set_function(lambda: worker.meter.packets_per_s)
    Gauge("voxa_sfu_cpu", "CPU use of this worker, 1.0 = one core.", registry=registry).set_function(
        lambda: worker.meter.cpu
    )
    Gauge("voxa_sfu_draining", "1 while draining.", registry=registry).set_function(
        lambda: float(worker.draining)
    )
    Gauge("voxa_sfu_bad_packets", "Garbled RTP/RTCP dropped.", registry=registry).set_function(
        lambda: float(worker.bad_packets)
    )
    return registry


def create_app(worker: SfuWorker) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=128 * 1024)
    app[WORKER] = worker
    app[EVENT_SOCKETS] = set()
    registry = _metrics_registry(worker)

    async def close_event_sockets(app: web.Application) -> None:
        """Subscribers reconnect elsewhere; without this, shutdown would wait for them to hang up."""
        sockets: set[web.WebSocketResponse] = app[EVENT_SOCKETS]
        for ws in tuple(sockets):
            await ws.close(code=1001, message=b"media server stopping")

    app.on_shutdown.append(close_event_sockets)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    router = ID.replace("name", "router")
    peer = ID.replace("name", "peer")
    track = ID.replace("name", "track")
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/v1/events", events),
            web.put(f"/v1/routers/{router}", put_router),
            web.get(f"/v1/routers/{router}", get_router),
            web.delete(f"/v1/routers/{router}", delete_router),
            web.post(f"/v1/routers/{router}/peers/{peer}", post_peer),
            web.post(f"/v1/routers/{router}/peers/{peer}/sdp", post_sdp),
            web.post(f"/v1/routers/{router}/peers/{peer}/ice", post_ice),
            web.put(f"/v1/routers/{router}/peers/{peer}/state", put_state),
            web.put(f"/v1/routers/{router}/peers/{peer}/consumers/{track}/quality", put_quality),
            web.get(f"/v1/routers/{router}/peers/{peer}", get_peer),
            web.delete(f"/v1/routers/{router}/peers/{peer}", delete_peer),
        ]
    )
    return app
