"""The aiohttp application: the Phoenix socket, operations endpoints, ICE credentials and the
media-server registry API."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from voxa.common.auth import bearer_matches, bearer_token
from voxa.signaling import protocol
from voxa.signaling.auth import AuthError
from voxa.signaling.connection import Connection
from voxa.signaling.context import SignalingContext
from voxa.signaling.push.routes import add_routes as add_push_routes
from voxa.signaling.settings import SignalingSettings
from voxa.signaling.store import MediaServer, Store, StoreUnavailable

log = logging.getLogger("voxa.signaling.app")
CTX = web.AppKey("ctx", SignalingContext)


def _json_error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status)


async def socket_handler(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    settings = ctx.settings
    if not ctx.accepting:
        return web.Response(status=503, text="server is shutting down\n")
    if not settings.origin_allowed(request.headers.get("Origin")):
        ctx.metrics.connects.labels("bad_origin").inc()
        return web.Response(status=403, text="origin not allowed\n")
    vsn = request.query.get("vsn", "2.0.0")
    if not vsn.startswith("2."):
        ctx.metrics.connects.labels("bad_version").inc()
        return web.Response(status=400, text=f"unsupported protocol version {vsn!r}; use vsn=2.0.0\n")
    sub_token, wants_phoenix = protocol.token_from_subprotocols(request.headers.get("Sec-WebSocket-Protocol"))
    token = request.query.get("token") or sub_token
    try:
        claims = ctx.verifier.verify(token)
    except AuthError as exc:
        ctx.metrics.connects.labels("unauthorized").inc()
        return web.Response(status=403, text=f"{exc}\n")
    ws = web.WebSocketResponse(
        protocols=("phoenix",) if wants_phoenix else (),
        max_msg_size=settings.max_frame_bytes,
        autoping=True,
        compress=False,
    )
    if not ws.can_prepare(request).ok:
        return web.Response(status=400, text="expected a WebSocket upgrade\n")
    await ws.prepare(request)
    conn = Connection(ws, claims, ctx)
    ctx.connections.add(conn)
    ctx.metrics.sockets.inc()
    ctx.metrics.connects.labels("ok").inc()
    try:
        await conn.serve()
    finally:
        ctx.connections.discard(conn)
        ctx.metrics.sockets.dec()
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = {"ready": ctx.ready, "store": ctx.hub.ready, "accepting": ctx.accepting}
    return web.json_response(body, status=200 if ctx.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[CTX].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def ice(request: web.Request) -> web.Response:
    """TURN credentials in the STUNner auth-service shape, for a client holding a valid token."""
    ctx = request.app[CTX]
    header = request.headers.get("Authorization", "")
    token = bearer_token(header)
    try:
        claims = ctx.verifier.verify(token)
    except AuthError as exc:
        return _json_error(401, str(exc))
    config = ctx.settings.ice_for(claims.sub)
    return web.json_response(config.model_dump(exclude_none=True))


STATIC = Path(__file__).resolve().parent / "static"


def phoenix_js_path() -> Path | None:
    """The official phoenix client's ES module, from VOXA_PHOENIX_JS or the repository's node_modules."""
    explicit = os.environ.get("VOXA_PHOENIX_JS")
    candidates = [Path(explicit)] if explicit else []
    for parent in Path(__file__).resolve().parents:
        candidates.append(parent / "node_modules" / "phoenix" / "priv" / "static" / "phoenix.mjs")
    return next((c for c in candidates if c.is_file()), None)


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC / "index.html"
    if page.is_file():
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})
    text = (
        "Voxa signaling.\n"
        "Connect a Phoenix Channels v2 client to ws://<host>:<port>/socket/websocket?vsn=2.0.0&token=<JWT>\n"
        "and join topic voice:<server_id>:<channel_id>. See docs/protocol.md.\n"
    )
    return web.Response(text=text)


async def service_worker(request: web.Request) -> web.StreamResponse:
    """The browser client's service worker at the root, so its scope covers the page at `/`."""
    path = STATIC / "sw.js"
    if not path.is_file():
        raise web.HTTPNotFound()
    headers = {"Content-Type": "text/javascript", "Cache-Control": "no-cache"}
    return web.FileResponse(path, headers=headers)


async def phoenix_js(request: web.Request) -> web.StreamResponse:
    path = phoenix_js_path()
    if path is None:
        return web.Response(status=404, text="phoenix.mjs not found: run `npm ci` or set VOXA_PHOENIX_JS\n")
    headers = {"Content-Type": "text/javascript", "Cache-Control": "max-age=3600"}
    return web.FileResponse(path, headers=headers)


# --- media-server registry API (SFUs, operator) ---------------------------------------------------
@web.middleware
async def internal_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/internal/"):
        secret = request.app[CTX].settings.sfu_secret
        if not secret:
            return _json_error(404, "the registry API is disabled (VOXA_SFU_SECRET unset)")
        if not bearer_matches(request.headers.get("Authorization"), secret):
            return _json_error(401, "bad or missing bearer secret")
        try:
            response: web.StreamResponse = await handler(request)
        except StoreUnavailable:
            return _json_error(503, "store unavailable", retry=True)
        return response
    passthrough: web.StreamResponse = await handler(request)
    return passthrough


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise web.HTTPUnprocessableEntity(
            text=web.json_response({"error": "invalid body", "details": errors}).text,
            content_type="application/json",
        ) from None


async def media_server_put(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    server: MediaServer = await _body(request, MediaServer)
    if server.id != request.match_info["id"] or server.server_id != request.match_info["server_id"]:
        return _json_error(400, "id and server_id in the body must match the path")
    await ctx.registry.heartbeat(server)
    current = {s.id: s for s in await ctx.registry.servers(server.server_id)}.get(server.id)
    ttl = ctx.settings.media_server_ttl_s
    return web.json_response(
        {
            "ttl_s": ttl,
            "heartbeat_interval_s": ttl / 3,
            "draining": bool(current and current.draining),
        }
    )


async def media_server_delete(request: web.Request) -> web.Response:
    await request.app[CTX].registry.remove(request.match_info["server_id"], request.match_info["id"])
    return web.json_response({"removed": True})


async def media_server_list(request: web.Request) -> web.Response:
    servers = await request.app[CTX].registry.servers(request.match_info["server_id"])
    return web.json_response({"media_servers": [s.model_dump(mode="json") for s in servers]})


class DrainBody(BaseModel):
    draining: bool


async def media_server_drain(request: web.Request) -> web.Response:
    body: DrainBody = await _body(request, DrainBody)
    await request.app[CTX].registry.mark_draining(
        request.match_info["server_id"], request.match_info["id"], body.draining
    )
    return web.json_response({"draining": body.draining})


async def assignment_get(request: web.Request) -> web.Response:
    server_id = request.match_info["server_id"]
    media = await request.app[CTX].registry.assign(server_id, request.match_info["channel_id"])
    if media is None:
        return _json_error(503, "no media server available for this voice server")
    return web.json_response({"media_server": media.model_dump(mode="json")})


def create_app(settings: SignalingSettings, store: Store | None = None) -> web.Application:
    app = web.Application(middlewares=[internal_auth], client_max_size=256 * 1024)
    ctx = SignalingContext(settings, store)
    app[CTX] = ctx
    base = "/internal/servers/{server_id}"
    app.add_routes(
        [
            web.get("/", index),
            web.get("/vendor/phoenix.mjs", phoenix_js),
            web.get("/sw.js", service_worker),
            web.get("/socket/websocket", socket_handler),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/ice", ice),
            web.get(f"{base}/media-servers", media_server_list),
            web.put(f"{base}/media-servers/{{id}}", media_server_put),
            web.delete(f"{base}/media-servers/{{id}}", media_server_delete),
            web.put(f"{base}/media-servers/{{id}}/drain", media_server_drain),
            web.get(f"{base}/channels/{{channel_id}}/media-server", assignment_get),
        ]
    )

    async def on_startup(app: web.Application) -> None:
        await app[CTX].start()

    async def on_shutdown(app: web.Application) -> None:
        await app[CTX].shutdown()

    add_push_routes(app, ctx.push, ctx.verifier)
    if STATIC.is_dir():
        app.router.add_static("/static/", STATIC, show_index=False, append_version=False)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
