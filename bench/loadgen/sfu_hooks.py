"""`voxa sfu` with one bench-only control route, for the simulcast benchmark's layer-switch probe.

``PUT /bench/v1/routers/{router}/peers/{peer}/bandwidth`` ``{"bps": int}`` calls the native data plane's
test/bench hook ``set_peer_bandwidth`` (0 = back to the estimator) for that peer and answers
``{"bps", "source"}`` (``peer_bandwidth``). The SFU's control API has no such route (it is a hook,
not a product feature), and the load peers send no transport-cc feedback that a real link limit could
act through, so bench/sfu.py runs the SFU through this module when ``--simulcast`` is given: the same
process and settings as ``voxa sfu``, with the route added to its application before it starts, behind
the same bearer check. Nothing of the SFU's own modules is changed.

Usage: ``python bench/loadgen/sfu_hooks.py --workers 1 --port P --host 127.0.0.1`` (``voxa sfu``'s
arguments).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from aiohttp import web

from voxa.sfu import control, server
from voxa.sfu.peer import NotFound
from voxa.sfu.worker import SfuWorker

ROUTE = "/bench/v1/routers/{router}/peers/{peer}/bandwidth"


async def put_bandwidth(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        bps = int(body["bps"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'body must be {"bps": int}'}, status=400)
    if bps < 0:
        return web.json_response({"error": "bps must be >= 0"}, status=400)
    worker: SfuWorker = request.app[control.WORKER]
    if worker.server is None:
        return web.json_response({"error": "not the native data plane"}, status=400)
    try:
        peer = worker.router(request.match_info["router"]).peer(request.match_info["peer"])
    except NotFound:
        return web.json_response({"error": "unknown router or peer"}, status=404)
    native = getattr(peer.transport, "peer", None)
    if not isinstance(native, int):
        return web.json_response({"error": "the peer has no native transport"}, status=409)
    engine = worker.server.engine
    engine.set_peer_bandwidth(native, bps)
    now, source = engine.peer_bandwidth(native)
    return web.json_response({"bps": now, "source": source})


def main(argv: Sequence[str]) -> int:
    original = control.create_app

    def create_app(worker: SfuWorker) -> web.Application:
        app = original(worker)
        app.router.add_put(ROUTE, put_bandwidth)
        return app

    # serve_worker looks `create_app` up in its own module's namespace at call time.
    setattr(server, "create_app", create_app)  # noqa: B010
    from voxa.common.cli import main as voxa_main

    return voxa_main(["sfu", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
