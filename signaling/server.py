"""Running `voxa signaling`: uvloop, the aiohttp runner, and a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from voxa.common import logging as voxa_logging
from voxa.signaling.admission import AddressLimits, AdmittingSite
from voxa.signaling.app import CTX, create_app
from voxa.signaling.settings import SignalingSettings

log = logging.getLogger("voxa.signaling")


async def serve(settings: SignalingSettings, stop: asyncio.Event | None = None) -> None:
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_s,
        # aiohttp's keep-alive timer runs from the connection's start and from each response until the
        # next request's headers are complete: the bound on slow (slowloris) and half-open clients.
        keepalive_timeout=settings.handshake_timeout_s,
        max_line_size=settings.max_header_bytes,
        max_field_size=settings.max_header_bytes,
    )
    await runner.setup()
    limits = AddressLimits(
        settings.max_connections_per_address,
        settings.connections_per_address_per_s,
        settings.connection_burst_per_address,
        settings.address_limit_exempt,
    )
    refused = app[CTX].metrics.connections_refused

    def on_refused(reason: str) -> None:
        refused.labels(reason).inc()

    site = AdmittingSite(
        runner, settings.host, settings.port, limits, on_refused, backlog=4096, reuse_address=True
    )
    await site.start()
    log.info(
        "signaling.listening",
        extra={"host": settings.host, "port": settings.port, "replica": settings.replica_id},
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signaling.stopping")
    await runner.cleanup()
    log.info("signaling.stopped")


def run(settings: SignalingSettings) -> None:
    voxa_logging.configure(settings.log_level)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(settings))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where available (it is a dependency on Linux), else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return None
    return uvloop.new_event_loop
