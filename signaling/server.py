"""Running `voxa signaling`: uvloop, the aiohttp runner, and a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from voxa.common import logging as voxa_logging
from voxa.signaling.app import create_app
from voxa.signaling.settings import SignalingSettings

log = logging.getLogger("voxa.signaling")


async def serve(settings: SignalingSettings, stop: asyncio.Event | None = None) -> None:
    app = create_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_grace_s
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096, reuse_address=True)
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
