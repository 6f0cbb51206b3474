"""Running `voxa sfu`: worker processes (one per core), each with its control API, registry heartbeats
to signaling, and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys

import aiohttp
from aiohttp import web

from voxa.common import logging as voxa_logging
from voxa.sfu import aiortc_glue
from voxa.sfu.control import create_app
from voxa.sfu.settings import SfuSettings
from voxa.sfu.worker import SfuWorker

log = logging.getLogger("voxa.sfu")


class RegistryClient:
    """Registers this worker with signaling's media-server registry and heartbeats its load.

    Two things make a worker drain (take no new routers, keep its calls): the operator's mark in the
    registry before a scale-down, and SIGTERM. A mark can be withdrawn (the load came back) and the
    worker takes routers again; SIGTERM is final. Heartbeats report only the worker's own drain, so
    a withdrawn mark is not kept alive by the worker echoing it back.
    """

    def __init__(self, worker: SfuWorker, control_url: str) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.control_url = control_url
        self.interval_s = 3.0
        self.stopping = False
        """Set on SIGTERM: the worker drains for good."""
        self.marked_at: float | None = None
        """When the registry's drain mark was first seen (loop time); None while unmarked."""

    def follow_mark(self, marked: bool, now: float) -> None:
        """Apply the registry's drain mark, as a heartbeat's answer reports it."""
        if marked and self.marked_at is None:
            self.marked_at = now
            self.worker.draining = True
            log.info("sfu.drain_marked", extra={"worker": self.worker.id})
        elif not marked and self.marked_at is not None and not self.stopping:
            self.marked_at = None
            self.worker.draining = False
            log.info("sfu.drain_withdrawn", extra={"worker": self.worker.id})

    def _url(self) -> str:
        base = (self.settings.signaling_url or "").rstrip("/")
        return f"{base}/internal/servers/{self.settings.server_id}/media-servers/{self.worker.id}"

    def _body(self) -> dict[str, object]:
        load = self.worker.load()
        return {
            "id": self.worker.id,
            "server_id": self.settings.server_id,
            "url": self.control_url,
            "capacity": self.settings.capacity,
            "draining": self.stopping,
            "load": {
                "routers": load["routers"],
                "peers": load["peers"],
                "producers": load["producers"],
                "consumers": load["consumers"],
                "packets_per_s": load["packets_per_s"],
                "cpu": load["cpu"],
            },
        }

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.settings.secret}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                try:
                    async with http.put(self._url(), json=self._body()) as resp:
                        if resp.status == 200:
                            answer = await resp.json()
                            self.interval_s = float(answer.get("heartbeat_interval_s", 3.0))
                            # The operator marks a worker draining in the registry before scaling down.
                            marked = bool(answer.get("draining")) and not self.stopping
                            self.follow_mark(marked, asyncio.get_running_loop().time())
                        else:
                            log.warning("sfu.registry_refused", extra={"status": resp.status})
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("sfu.registry_unreachable", extra={"error": type(exc).__name__})
                await asyncio.sleep(self.interval_s)

    async def deregister(self) -> None:
        headers = {"Authorization": f"Bearer {self.settings.secret}"}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with (
                aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=3)) as http,
                http.delete(self._url()),
            ):
                pass


async def serve_worker(settings: SfuSettings, index: int, stop: asyncio.Event | None = None) -> None:
    """Run one worker until SIGTERM/SIGINT (or `stop`, when embedded: then it drains for 2 s at most)."""
    aiortc_glue.check_versions()
    stop_is_external = stop is not None
    worker = SfuWorker(settings, index)
    await worker.start()
    app = create_app(worker)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = settings.port + index if settings.port else 0
    site = web.TCPSite(runner, settings.host, port, reuse_address=True)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if isinstance(server, asyncio.Server) else port
    control_url = settings.advertise_url or f"http://{settings.host}:{bound}"
    if settings.workers != 1 and settings.advertise_url:
        control_url = f"{settings.advertise_url.rstrip('/')}:{bound}"
    log.info("sfu.listening", extra={"worker": worker.id, "control": control_url})
    registry = RegistryClient(worker, control_url) if settings.signaling_url else None
    heartbeat = asyncio.create_task(registry.run()) if registry else None
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Drain: refuse new routers, tell the registry, wait for the rooms to empty or the deadline. The
    # deadline counts from the operator's drain mark when there was one: it removes the pod once that
    # deadline has passed, and the calls left must not wait a second one.
    worker.draining = True
    started = loop.time()
    if registry is not None:
        registry.stopping = True
        if registry.marked_at is not None:
            started = registry.marked_at
    deadline = started + (settings.drain_deadline_s if not stop_is_external else 2.0)
    log.info(
        "sfu.draining",
        extra={"worker": worker.id, "deadline_in_s": round(deadline - loop.time(), 1), **worker.load()},
    )
    while worker.load()["peers"] and loop.time() < deadline:
        await asyncio.sleep(0.5)
    if heartbeat is not None:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    if registry is not None:
        await registry.deregister()
    await worker.stop()
    await runner.cleanup()
    log.info("sfu.stopped", extra={"worker": worker.id})


def _run_worker(settings: SfuSettings, index: int) -> None:
    voxa_logging.configure(settings.log_level)
    if settings.workers != 1 and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {index % (os.cpu_count() or 1)})
    from voxa.signaling.server import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve_worker(settings, index))


def run(settings: SfuSettings) -> None:
    """One worker in this process, or several worker processes supervised by this one."""
    voxa_logging.configure(settings.log_level)
    count = settings.worker_count
    if count == 1:
        _run_worker(settings.model_copy(update={"workers": 1}), 0)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run_worker, args=(settings, i), name=f"voxa-sfu-w{i}") for i in range(count)]
    for proc in procs:
        proc.start()

    def forward(signum: int, frame: object) -> None:
        del frame
        for proc in procs:
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.join()
    sys.exit(max((p.exitcode or 0) for p in procs))
