#!/usr/bin/env python3
"""Load benchmark of Voxa's SFU (`voxa sfu`), compared with Janus VideoRoom under the same load.

The SFU runs as a real process (``voxa sfu --workers 1``) pinned to ONE core (``--sfu-core``, default
0); the load generator (``--load-procs`` spawned processes, see bench/loadgen) and this orchestrator are
pinned to another (``--load-core``, default 1): on a 2-core machine the SFU gets a core to itself. The
load is driven through the SFU's control API exactly as signaling would (PUT router, POST peer with the
client's offer, the SFU's offers from the ``/v1/events`` WebSocket answered with POST .../sdp).

Load peers do ICE + DTLS once with aiortc and then send/receive raw SRTP on the nominated pair:
pre-encoded Opus (20 ms, 50 packets/s per publisher, mid + ssrc-audio-level extensions) and, for
``video-room``, a pre-encoded VP8 GOP (30 fps, mid + abs-send-time). The last 8 payload bytes of every
packet carry its send time (monotonic ns). Subscribers count every RTP packet (its header is in the
clear) and SRTP-decrypt those whose sequence number is a multiple of ``--decrypt-every`` (default 8)
to read the send time: latency = receive - send, same host, same clock.

Scenarios: ``audio-rooms`` (rooms of 10 peers, 2 speaking, everyone receiving the speakers: 18 streams
per room), ``large-room`` (2 publishers, ``--subscribers`` listeners), ``video-room`` (4 peers sending
Opus + VP8, each receiving the other 3: 24 streams per room).

Phases, for Voxa:

1. ramp (``audio-rooms``/``video-room`` without ``--rooms``): start with ``--probe-rooms``, measure
   ``--step-seconds``, extrapolate the rooms that bring the SFU's core to ``--target-cpu`` % busy and
   add them (at most doubling), repeat; a level is sustainable when loss < ``--max-loss`` % and p99
   latency < ``--max-p99-ms``; after an unsustainable step the rooms are cut by 15 %;
2. final window of ``--seconds`` at the highest sustainable level: ``forwarded_pps`` (RTP packets the
   subscribers received during the window / window), ``cpu_percent`` (SFU process utime+stime, % of
   one core), ``loss_percent`` (vs the publishers' packets sent in the window x their fan-out),
   ``rss_per_peer_kib`` ((RSS - RSS before any peer) / peers);
3. latency window of ``--latency-seconds`` at about half that load (half of the rooms, or half of the
   listeners for ``large-room``): ``latency_p50_ms`` / ``latency_p99_ms``.

``pps_per_core`` = forwarded_pps / (cpu_percent / 100): packets/s per fully used core. At saturation
it is what the one SFU core forwards; below, the same per-packet cost extrapolated (``pps_per_busy_core``
divides by the core's busy share instead, kernel softirq work included). Then the same load (same
rooms, load processes and pacing) runs against a private loopback Janus (bench/janus, VideoRoom,
``event_loops`` = ``--janus-event-loops``, default 1, pinned to the same core) and ``janus_ratio`` =
Voxa pps_per_core / Janus pps_per_core (> 1: Voxa forwards more packets per core).

Then LiveKit (bench/livekit: ``livekit-server`` built from its Go module, cached, on loopback with one
UDP port, pinned to the same core) gets the same rooms under the same procedure, driven by the same
number of Go load processes (``bench/livekit/load``, pion) on the load core: the same peers and
subscriptions, the same pre-encoded Opus/VP8 payloads and pacing, send times in the last 8 payload
bytes, the same windows and counting. ``livekit_ratio`` = Voxa pps_per_core / LiveKit pps_per_core.
``--no-livekit`` skips it; when it cannot be built or started, ``livekit_reason`` says why.

``--simulcast`` (``video-room`` only): every publisher sends its VP8 as three layers (rids q, h, f:
160x90, 320x180, 640x360 GOPs pre-encoded the same way, about 80, 200 and 700 kbit/s, each on its own
SSRC with the rtp-stream-id extension, offered as Chromium offers simulcast: ``a=rid`` lines and
``a=simulcast:send q;h;f``) and answers PLI/FIR with a keyframe of that layer; every subscriber gets
one consumer on each layer (bench/loadgen/plan.py), set through the quality API (``max_width`` 160 or
320, none for f) with the subscriber's bandwidth pinned far above need through the data plane's
``set_peer_bandwidth`` hook (bench/loadgen/sfu_hooks.py runs the SFU with a bench-only route to it: the
load sends no transport-cc feedback). ``pps_per_core`` counts forwarded packets as always. Then, after
the windows, switch probes: ``layer_switch_ms`` (a subscriber's bandwidth drops to 100 kbit/s through
the hook -> the time until each of its consumers that was on h or f delivers a packet of q, read from a
layer trailer in the payload), ``quality_switch_ms`` (the same, the tiles shrunk to 160x90 through the
quality API), each as p50/max over the switches; Janus gets the same layered load (``rid_order`` lmh,
subscribers' ``substream`` set with ``configure``) and ``janus_quality_switch_ms`` (``configure``
substream 0). LiveKit is not run with ``--simulcast`` (its Go load client publishes one layer):
``livekit_ratio`` is null and ``livekit_reason`` says so.

Last, the ceiling (bench/ceiling.py): the native data plane's minimal forwarder (unprotect once, a fixed
fan-out of rewrite + protect, ``recvmmsg``/``sendmmsg``, no routing logic) on the same core under the
same load shape; ``ceiling_ratio`` = pps_per_core / ceiling_pps_per_core (``--no-ceiling`` skips it).

Every window also reports the load generator's CPU and core busy share and the CPU of every *other*
process of the machine meanwhile; ``warnings`` flags windows where either may have skewed the figures.

Usage: ``python bench/sfu.py --scenario audio-rooms --seconds 20 --json`` prints ONE JSON object on
stdout (about 4 minutes on 2 cores; the first run also builds LiveKit, several minutes); progress goes
to stderr. ``--profile out.txt`` records the SFU with py-spy (raw collapsed stacks) during the final
window and adds its top functions to the output; ``--keep-logs DIR`` keeps the servers' logs.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from voxa.common.ports import free_port

BENCH_DIR = str(Path(__file__).resolve().parent)
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import ceiling as ceiling_bench  # noqa: E402
from janus.client import JanusError, JanusSession, VideoRoom  # noqa: E402
from janus.server import JanusServer, janus_binary  # noqa: E402
from livekit.load import LiveKitLoad, write_catalog  # noqa: E402
from livekit.server import (  # noqa: E402
    BUILD_NOTE,
    LiveKitServer,
    LiveKitUnavailable,
    livekit_binaries,
    server_version,
)
from loadgen.control import LoadProcesses  # noqa: E402
from loadgen.media import MediaCatalog, build_catalog  # noqa: E402
from loadgen.plan import (  # noqa: E402
    SCENARIOS,
    PeerSpec,
    Topology,
    assign,
    build_room,
    half_load,
    janus_room,
    voxa_router,
    without_publishers,
)
from loadgen.worker import WorkerConfig  # noqa: E402

from voxa.common.testing import procfs  # noqa: E402
from voxa.common.testing.profiling import Profiler, summarize_profile  # noqa: E402
from voxa.common.testing.stats import percentile  # noqa: E402

READY_TIMEOUT_S: Final = 30.0
WINDOW_LEAD_NS: Final = 400_000_000  # windows start this far in the future (every process is told)
WINDOW_GRACE_S: Final = 0.5  # packets sent before t1 still arriving
SUSTAINABLE_BACKOFF: Final = 0.85
Json = dict[str, Any]


# Last-resort killers of every child this run started (run after the event loop is gone).
_REAPERS: list[Callable[[], None]] = []


def reap_children() -> None:
    for reaper in reversed(_REAPERS):
        with contextlib.suppress(Exception):
            reaper()
    _REAPERS.clear()


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def log(text: str) -> None:
    print(f"[sfu-bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def pinned(core: int | None) -> Iterator[None]:
    """Run the block (e.g. starting a server, which inherits it) with this thread pinned to `core`."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --- the servers under test ----------------------------------------------------------------------


class Target(Protocol):
    name: str

    @property
    def pid(self) -> int: ...

    async def start(self) -> None: ...

    async def add_rooms(self, rooms: Sequence[int]) -> None: ...

    async def remove_rooms(self, rooms: Sequence[int]) -> None: ...

    async def stop(self) -> None: ...

    def worker_url(self) -> str: ...

    def info(self) -> Json: ...

    def log_tail(self) -> str: ...


class Load(Protocol):
    """The load processes of one target: `loadgen.control.LoadProcesses` or `livekit.load.LiveKitLoad`."""

    @property
    def pids(self) -> list[int]: ...

    def __len__(self) -> int: ...

    async def ready(self, timeout: float) -> None: ...

    async def call(self, commands: Sequence[Json], timeout: float) -> list[Json]: ...

    async def broadcast(self, command: Json, timeout: float) -> list[Json]: ...

    def stop(self, graceful: bool = True) -> None: ...


class VoxaTarget:
    """`voxa sfu --workers 1` (the console script next to sys.executable) pinned to one core."""

    name = "voxa"

    def __init__(self, workdir: Path, core: int | None, hooks: bool = False) -> None:
        self.core = core
        self.hooks = hooks  # run through bench/loadgen/sfu_hooks.py (its bench-only bandwidth route)
        self.port = free_port()
        self.secret = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "voxa-sfu.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_url(self) -> str:
        return self.url

    async def start(self) -> None:
        self._spawn()
        assert self.proc is not None
        self.http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.secret}"}, timeout=aiohttp.ClientTimeout(total=30)
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"voxa sfu exited at start:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.get(self.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"voxa sfu not healthy within {READY_TIMEOUT_S:.0f}s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def _spawn(self) -> None:
        voxa = Path(sys.executable).with_name("voxa")
        command = [str(voxa), "sfu"]
        if self.hooks:
            command = [sys.executable, str(Path(BENCH_DIR) / "loadgen" / "sfu_hooks.py")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXA_")}
        env.update(
            VOXA_SFU_SECRET=self.secret,
            VOXA_SFU_RTC_LISTEN_IP="127.0.0.1",
            VOXA_SFU_RTC_REMOTE_NETWORKS="127.0.0.0/8",
            VOXA_SFU_LOG_LEVEL="warning",
            VOXA_SFU_ID="bench",
            VOXA_SFU_CAPACITY="10000",
            VOXA_SFU_CONNECT_TIMEOUT_S="40",
            VOXA_SFU_DRAIN_DEADLINE_S="2",
        )
        with self.log_path.open("ab") as out, pinned(self.core):
            self.proc = subprocess.Popen(
                [*command, "--workers", "1", "--port", str(self.port), "--host", "127.0.0.1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = self.proc
        _REAPERS.append(lambda: kill_process(proc, 2.0))
        if self.core is not None:
            procfs.pin(self.pid, {self.core})

    async def _request(self, method: str, path: str) -> None:
        assert self.http is not None
        async with self.http.request(method, self.url + path) as resp:
            if resp.status not in (200, 404) or (method == "PUT" and resp.status != 200):
                raise RuntimeError(f"{method} {path}: HTTP {resp.status} {await resp.text()}")

    async def add_rooms(self, rooms: Sequence[int]) -> None:
        for room in rooms:
            await self._request("PUT", f"/v1/routers/{voxa_router(room)}")

    async def remove_rooms(self, rooms: Sequence[int]) -> None:
        for room in rooms:
            await self._request("DELETE", f"/v1/routers/{voxa_router(room)}")

    async def metrics(self) -> dict[str, float]:
        assert self.http is not None
        out: dict[str, float] = {}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.http.get(self.url + "/metrics") as resp:
                text = await resp.text()
            for line in text.splitlines():
                if line.startswith("voxa_sfu_"):
                    name, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        out[name] = float(value)
        return out

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def info(self) -> Json:
        out: Json = {"workers": 1, "control": self.url}
        if self.hooks:
            out["launcher"] = "bench/loadgen/sfu_hooks.py (voxa sfu + the bench-only bandwidth route)"
        return out

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None
        kill_process(self.proc, 10.0)


def kill_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` s (its own process group only: it was started alone)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


class JanusTarget:
    """A private loopback Janus (bench/janus harness), VideoRoom only, pinned to the same single core."""

    name = "janus"

    def __init__(self, core: int | None, event_loops: int, workdir: Path | None = None) -> None:
        self.core = core
        self.event_loops = event_loops
        self.server = JanusServer(
            workdir=workdir, debug_level=2, event_loops=event_loops, rtp_ports=6000, session_timeout=120
        )
        self.session: JanusSession | None = None
        self.videoroom: VideoRoom | None = None

    @property
    def pid(self) -> int:
        return self.server.pid

    def worker_url(self) -> str:
        return self.server.http_url

    async def start(self) -> None:
        with pinned(self.core):
            await self.server.start()
        pid = self.pid
        _REAPERS.append(lambda: kill_pid(pid) if self.server.proc is not None else None)
        if self.core is not None:
            procfs.pin(self.pid, {self.core})
        self.session = await JanusSession.create(self.server.http_url, request_timeout=30.0)
        self.videoroom = await VideoRoom.attach(self.session)

    async def add_rooms(self, rooms: Sequence[int]) -> None:
        assert self.videoroom is not None
        for room in rooms:
            # audiolevel_event: Janus runs its talker detection on the audio-level extension, as Voxa does.
            await self.videoroom.create_room(
                janus_room(room), publishers=1000, extra={"audiolevel_event": True, "audiolevel_ext": True}
            )

    async def remove_rooms(self, rooms: Sequence[int]) -> None:
        assert self.videoroom is not None
        for room in rooms:
            with contextlib.suppress(JanusError):
                await self.videoroom.destroy_room(janus_room(room))

    def log_tail(self) -> str:
        return self.server.log_tail()

    def info(self) -> Json:
        return {
            "event_loops": self.event_loops,
            "version": self.server.server_info.get("version_string"),
        }

    async def stop(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.destroy(), 10.0)
            self.session = None
        await self.server.stop()


class LiveKitTarget:
    """A private loopback livekit-server (bench/livekit), pinned to the same single core; its rooms are
    created and deleted through its room API, its load is the Go load client (`LiveKitLoad`)."""

    name = "livekit"

    def __init__(self, server_binary: Path, load_binary: Path, core: int | None, workdir: Path) -> None:
        self.core = core
        self.load_binary = load_binary
        self.workdir = workdir
        self.server = LiveKitServer(server_binary, workdir=workdir)
        self.version = server_version(server_binary)

    @property
    def pid(self) -> int:
        return self.server.pid

    def worker_url(self) -> str:
        return self.server.ws_url

    def token(self, spec: PeerSpec) -> str:
        return self.server.token(spec.id, voxa_router(spec.room), publish=spec.publishes)

    async def start(self) -> None:
        with pinned(self.core):
            await self.server.start()
        pid = self.pid
        _REAPERS.append(lambda: kill_pid(pid) if self.server.proc is not None else None)
        if self.core is not None:
            procfs.pin(self.pid, {self.core})

    async def add_rooms(self, rooms: Sequence[int]) -> None:
        for room in rooms:
            await self.server.create_room(voxa_router(room))

    async def remove_rooms(self, rooms: Sequence[int]) -> None:
        for room in rooms:
            with contextlib.suppress(RuntimeError, aiohttp.ClientError, TimeoutError):
                await self.server.delete_room(voxa_router(room))

    def log_tail(self) -> str:
        return self.server.log_tail()

    def info(self) -> Json:
        return {
            "version": self.version,
            "build_note": BUILD_NOTE,
            "udp_port": self.server.udp_port,
            "config": {
                "rtc.udp_port": "one port (UDP mux)",
                "rtc.tcp_port": 0,
                "rtc.congestion_control.enabled": False,
                "turn.enabled": False,
                "redis": None,
                "log_level": self.server.log_level,
            },
            "load_client": "bench/livekit/load (Go, pion/webrtc v4; signal protocol 16, 2 connections/peer)",
        }

    async def stop(self) -> None:
        await self.server.stop()


# --- measurement ---------------------------------------------------------------------------------


@dataclass
class Window:
    """One measurement window at one load level."""

    label: str
    counts: dict[str, int]
    seconds: float
    received: int
    expected: int
    cpu: dict[str, float]
    latencies_ms: list[float] = field(repr=False)
    rss_kib: int | None
    extra: Json

    @property
    def forwarded_pps(self) -> float:
        return self.received / self.seconds

    @property
    def loss_percent(self) -> float:
        if self.expected <= 0:
            return 100.0
        return max(0.0, 100.0 * (1.0 - self.received / self.expected))

    def latency(self, q: float) -> float | None:
        value = percentile(self.latencies_ms, q)
        return None if value is None else round(value, 3)

    @property
    def cpu_percent(self) -> float:
        return self.cpu["server"]

    @property
    def pps_per_core(self) -> float | None:
        return round(self.forwarded_pps / (self.cpu_percent / 100.0)) if self.cpu_percent > 0 else None

    def pps_per_busy_core(self, core: int | None) -> float | None:
        busy = self.cpu.get(f"core{core}_busy") if core is not None else None
        return round(self.forwarded_pps / (busy / 100.0)) if busy else None

    def summary(self, sfu_core: int | None, load_core: int | None) -> Json:
        out: Json = {
            "label": self.label,
            **self.counts,
            "seconds": round(self.seconds, 2),
            "forwarded_pps": round(self.forwarded_pps, 1),
            "expected_pps": round(self.expected / self.seconds, 1),
            "loss_percent": round(self.loss_percent, 3),
            "cpu_percent": self.cpu_percent,
            "pps_per_core": self.pps_per_core,
            "pps_per_busy_core": self.pps_per_busy_core(sfu_core),
            "latency_p50_ms": self.latency(50),
            "latency_p90_ms": self.latency(90),
            "latency_p99_ms": self.latency(99),
            "latency_max_ms": round(self.latencies_ms[-1], 3) if self.latencies_ms else None,
            "latency_samples": len(self.latencies_ms),
            "loadgen_cpu_percent": self.cpu["load"],
            "other_processes_cpu_percent": self.cpu["other"],
            "rss_kib": self.rss_kib,
        }
        if sfu_core is not None:
            out["sfu_core_busy_percent"] = self.cpu.get(f"core{sfu_core}_busy")
        if load_core is not None:
            out["loadgen_core_busy_percent"] = self.cpu.get(f"core{load_core}_busy")
        out.update(self.extra)
        return out


class Bench:
    def __init__(self, args: argparse.Namespace, catalog: MediaCatalog, workdir: Path) -> None:
        self.args = args
        self.catalog = catalog
        self.workdir = workdir
        self.sfu_core: int | None = args.sfu_core
        self.load_core: int | None = args.load_core
        self.setup_failures: Counter[str] = Counter()
        self.error_samples: list[str] = []

    # --- load plumbing ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def load_processes(self, target: Target) -> AsyncIterator[Load]:
        load: Load
        if isinstance(target, LiveKitTarget):
            load = LiveKitLoad(
                target.load_binary,
                ws_url=target.worker_url(),
                catalog_path=write_catalog(self.catalog, target.workdir / "catalog.json"),
                count=self.args.load_procs,
                tokens=target.token,
                log_path=target.workdir / "lkload.log",
                concurrency=self.args.concurrency,
                decrypt_every=self.args.decrypt_every,
                max_runtime_s=self.args.max_runtime,
            )
        else:
            load = self._python_load(target)
        _REAPERS.append(lambda: load.stop(graceful=False))
        ok = False
        try:
            await load.ready(60.0)
            ok = True
            yield load
        finally:
            stopping = time.monotonic()
            await asyncio.to_thread(load.stop, ok)
            log(f"{target.name}: load processes stopped in {time.monotonic() - stopping:.1f}s")

    def _python_load(self, target: Target) -> LoadProcesses:
        secret = target.secret if isinstance(target, VoxaTarget) else ""
        configs = [
            WorkerConfig(
                index=i,
                target=target.name,
                url=target.worker_url(),
                secret=secret,
                core=self.load_core,
                catalog=self.catalog,
                concurrency=self.args.concurrency,
                max_runtime_s=self.args.max_runtime,
                decrypt_every=self.args.decrypt_every,
                simulcast=self.args.simulcast,
            )
            for i in range(self.args.load_procs)
        ]
        return LoadProcesses(configs)

    async def grow(self, target: Target, load: Load, topology: Topology, rooms: Sequence[int]) -> None:
        """Add `rooms` (publishers first, then subscribers) and wait until every stream flows."""
        if not rooms:
            return
        started = time.monotonic()
        plans = [
            build_room(
                self.args.scenario, r, subscribers=self.args.subscribers, simulcast=self.args.simulcast
            )
            for r in rooms
        ]
        await target.add_rooms(rooms)
        peers = [p for plan in plans for p in plan.peers]
        chunks = assign(peers, len(load))
        timeout = 120.0 + 2.0 * max(len(c) for c in chunks)
        failed: dict[str, str] = {}
        answers = await load.call([{"op": "join", "wave": "publish", "peers": c} for c in chunks], timeout)
        for answer in answers:
            failed.update(answer["failed"])
        gone = {pid for pid in failed}
        chunks = [[without_publishers(p, gone) for p in c if p.id not in gone] for c in chunks]
        answers = await load.call([{"op": "join", "wave": "subscribe", "peers": c} for c in chunks], timeout)
        for answer in answers:
            failed.update(answer["failed"])
        joined: list[PeerSpec] = [p for c in chunks for p in c if p.id not in failed]
        # A listener whose subscription failed still counts as "not receiving": leave it out entirely.
        topology.add(joined)
        for pid, error in failed.items():
            self.setup_failures[target.name] += 1
            if len(self.error_samples) < 10:
                self.error_samples.append(f"{target.name} {pid}: {error}"[:300])
        flowing = await load.broadcast({"op": "wait_flowing", "timeout": 30.0}, 60.0)
        missing = sum(a["missing_count"] for a in flowing)
        if self.args.simulcast and target.name == "voxa":
            # Layers by plan (quality API) and room for all of them (bandwidth hook); the switches
            # happen at keyframes, which the publishers send when asked.
            answers = await load.broadcast({"op": "set_layers"}, 120.0)
            bad = sum(a["failed"] for a in answers)
            if bad:
                self.setup_failures["voxa_set_layers"] += bad
                for a in answers:
                    for failure in a["failures"]:
                        if len(self.error_samples) < 10:
                            self.error_samples.append(f"voxa set_layers: {failure}")
        counts = topology.counts()
        log(
            f"{target.name}: +{len(rooms)} room(s) -> {counts['rooms']} rooms, {counts['peers']} peers, "
            f"{counts['consumers']} streams in {time.monotonic() - started:.1f}s"
            + (f"; {len(failed)} failed" if failed else "")
            + (
                f"; {missing} peer(s) not receiving everything: {flowing[0]['missing'][:3]}"
                if missing
                else ""
            )
        )
        await asyncio.sleep(self.args.warmup)

    async def shrink(self, target: Target, load: Load, topology: Topology, ids: Sequence[str]) -> None:
        """Remove peers `ids` (and the rooms they empty)."""
        if not ids:
            return
        gone = set(ids)
        rooms_before = set(topology.rooms)
        remaining = {p.room for pid, p in topology.peers.items() if pid not in gone}
        emptied = sorted(rooms_before - remaining)
        # Whole Voxa rooms: the clients just close (the SFU sees DTLS close) and one DELETE of each
        # router cleans up. Otherwise each peer is removed through the API (Voxa) or detached (Janus).
        whole_rooms = target.name == "voxa" and all(
            topology.peers[pid].room in emptied for pid in gone if pid in topology.peers
        )
        # Every process gets every id and closes the peers it runs.
        await load.broadcast({"op": "leave", "ids": sorted(gone), "server_side": not whole_rooms}, 120.0)
        topology.remove(gone)
        await target.remove_rooms(emptied)
        await asyncio.sleep(1.0)

    async def measure(
        self, target: Target, load: Load, topology: Topology, seconds: float, label: str,
        profile: Path | None = None,
    ) -> Window:  # fmt: skip
        t0 = time.monotonic_ns() + WINDOW_LEAD_NS
        t1 = t0 + int(seconds * 1e9)
        await load.broadcast({"op": "window", "t0": t0, "t1": t1}, 30.0)
        groups = {"server": [target.pid], "load": [*load.pids, os.getpid()]}
        cores = [c for c in (self.sfu_core, self.load_core) if c is not None]
        await asyncio.sleep(max(0.0, (t0 - time.monotonic_ns()) / 1e9))
        before = procfs.CpuSample(groups, cores)
        wall0 = time.monotonic()
        profiler = None
        if profile is not None:
            profiler = Profiler(profile, target.pid, max(1, int(min(seconds, self.args.profile_seconds))))
        try:
            await asyncio.sleep(max(0.0, (t1 - time.monotonic_ns()) / 1e9))
            after = procfs.CpuSample(groups, cores)
            wall = time.monotonic() - wall0
            rss = procfs.status_kib(target.pid)
            await asyncio.sleep(WINDOW_GRACE_S)
            answers = await load.broadcast({"op": "collect"}, 60.0)
        finally:
            profile_note = profiler.wait(60.0) if profiler is not None else ""
        sent: dict[str, dict[str, int]] = {}
        latencies = array.array("q")
        extra: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        late_max = 0.0
        for answer in answers:
            for peer, by_kind in answer["sent"].items():
                sent.setdefault(peer, {}).update(by_kind)
            chunk = array.array("q")
            chunk.frombytes(answer["latencies"])
            latencies.extend(chunk)
            for key in ("rx_errors", "rx_bad", "rtcp_dropped", "late_sends", "send_errors"):
                extra[key] += int(answer[key])
            if self.args.simulcast:
                extra["keyframes_requested"] += int(answer.get("keyframes_requested", 0))
            errors.update(answer["errors"])
            late_max = max(late_max, float(answer["late_max_ms"]))
            for sample in answer["error_samples"]:
                if len(self.error_samples) < 10 and sample not in self.error_samples:
                    self.error_samples.append(f"{target.name}: {sample}")
        received = sum(int(a["received"]) for a in answers)
        window = Window(
            label=label,
            counts=topology.counts(),
            seconds=(t1 - t0) / 1e9,
            received=received,
            expected=topology.expected(sent),
            cpu=after.percent_since(before, wall),
            latencies_ms=sorted(v / 1e6 for v in latencies),
            rss_kib=rss,
            extra={**extra, "late_send_max_ms": late_max, "loadgen_errors": dict(errors)},
        )
        if profiler is not None:
            window.extra["profile"] = str(profile)
            if profile_note.strip():
                window.extra["profile_note"] = profile_note.strip()
        s = window.summary(self.sfu_core, self.load_core)
        log(
            f"{target.name} [{label}] {s['rooms']} rooms {s['consumers']} streams: "
            f"{s['forwarded_pps']:.0f} pps fwd, loss {s['loss_percent']:.2f}%, cpu {s['cpu_percent']}%"
            f" (core busy {s.get('sfu_core_busy_percent')}%), p50 {s['latency_p50_ms']} ms, "
            f"p99 {s['latency_p99_ms']} ms, loadgen cpu {s['loadgen_cpu_percent']}%, "
            f"other processes {s['other_processes_cpu_percent']}%"
        )
        return window

    def sustainable(self, window: Window) -> bool:
        p99 = window.latency(99)
        return window.loss_percent < self.args.max_loss and p99 is not None and p99 < self.args.max_p99_ms

    # --- phases -------------------------------------------------------------------------------------
    async def ramp(
        self, target: Target, load: Load, topology: Topology, steps: list[Json], idle_load: float
    ) -> int:
        """Grow rooms until the SFU's core is ~saturated (or loss/latency give out); end at the best level.

        The load of a step is the busy share of the SFU's core (the SFU process plus the kernel's
        softirq work for its packets), or the process's CPU when it is not pinned. Rooms are added so
        as to reach ``--target-cpu`` by linear extrapolation, at most doubling per step; after an
        unsustainable step the rooms are cut by 15 % (never below the best sustainable level), and
        that level is a ceiling for the rest of the ramp."""
        args = self.args
        rooms: int = min(args.probe_rooms, args.max_rooms)
        ceiling: int = int(args.max_rooms) + 1  # lowest unsustainable level seen
        await self.grow(target, load, topology, range(rooms))
        best: tuple[int, float] | None = None  # (rooms, pps)
        for step in range(args.max_steps):
            window = await self.measure(target, load, topology, args.step_seconds, f"step{len(steps)}")
            steps.append(window.summary(self.sfu_core, self.load_core))
            if self.sustainable(window):
                if best is None or window.forwarded_pps > best[1]:
                    best = (rooms, window.forwarded_pps)
            else:
                ceiling = min(ceiling, rooms)
                floor = best[0] if best is not None else 0
                new = max(1, floor, int(rooms * SUSTAINABLE_BACKOFF))
                if new >= rooms or new == floor:
                    break
                await self.shrink(target, load, topology, self._room_peers(topology, range(new, rooms)))
                rooms = new
                continue
            used = self.load_of(window)
            last = step == args.max_steps - 1  # rooms added now could not be measured any more
            if last or used >= args.target_cpu or rooms >= min(args.max_rooms, ceiling - 1):
                break
            per_room = max((used - idle_load) / rooms, 0.05)
            want = rooms + math.ceil((args.target_cpu + 2.0 - used) / per_room)
            # At most double (and +30 rooms) per step: a big burst of ICE/DTLS setups is not the load
            # being measured, and on a 2-core machine it starves both the SFU and the load generator.
            want = max(rooms + 1, min(want, rooms * 2, rooms + 30, int(args.max_rooms), ceiling - 1))
            if want <= rooms:
                break
            await self.grow(target, load, topology, range(rooms, want))
            rooms = want
        if best is None:
            return rooms
        if best[0] < rooms:
            await self.shrink(target, load, topology, self._room_peers(topology, range(best[0], rooms)))
        return best[0]

    def load_of(self, window: Window) -> float:
        """The SFU's load in a window: its core's busy %, else (not pinned) its process CPU %."""
        if self.sfu_core is not None:
            return window.cpu.get(f"core{self.sfu_core}_busy", window.cpu_percent)
        return window.cpu_percent

    @staticmethod
    def _room_peers(topology: Topology, rooms: range) -> list[str]:
        wanted = set(rooms)
        return [p.id for p in topology.peers.values() if p.room in wanted]

    async def run_target(self, target: Target, rooms: int | None, profile: Path | None) -> Json:
        """One server under the scenario: ramp (or fixed rooms), final window, half-load latency window."""
        args = self.args
        log(f"starting {target.name} pinned to core {self.sfu_core}")
        await target.start()
        try:
            await asyncio.sleep(1.0)
            idle_rss = procfs.status_kib(target.pid)
            cores = [c for c in (self.sfu_core,) if c is not None]
            idle0 = procfs.CpuSample({"server": [target.pid]}, cores)
            await asyncio.sleep(1.0)
            idle = procfs.CpuSample({"server": [target.pid]}, cores).percent_since(idle0, 1.0)
            idle_cpu = idle["server"]
            idle_load = (
                idle.get(f"core{self.sfu_core}_busy", idle_cpu) if self.sfu_core is not None else idle_cpu
            )
            topology = Topology()
            steps: list[Json] = []
            async with self.load_processes(target) as load:
                if rooms is None:
                    level = await self.ramp(target, load, topology, steps, idle_load)
                else:
                    level = rooms
                    await self.grow(target, load, topology, range(rooms))
                final = await self.measure(target, load, topology, args.seconds, "final", profile)
                peers_at_final = len(topology.peers)
                rss_final = final.rss_kib
                half = half_load(topology)
                latency: Window | None = None
                if half:
                    await self.shrink(target, load, topology, half)
                    # A server that ran at saturation may still be draining queued packets: let it.
                    await asyncio.sleep(args.settle)
                    latency = await self.measure(target, load, topology, args.latency_seconds, "half-load")
                switches = await self.switch_probes(target, load, topology) if args.simulcast else None
            affinity = procfs.affinity(target.pid)
            log_tail = target.log_tail() if self.setup_failures[target.name] or self._had_errors() else ""
        except BaseException:
            tail = target.log_tail()
            if tail:
                log(f"{target.name} log tail:\n{tail}")
            raise
        finally:
            stopping = time.monotonic()
            await target.stop()
            log(f"{target.name}: stopped in {time.monotonic() - stopping:.1f}s")
        fin = final.summary(self.sfu_core, self.load_core)
        lat = latency.summary(self.sfu_core, self.load_core) if latency is not None else fin
        out: Json = {
            "rooms": level,
            "final": fin,
            "half_load": lat if latency is not None else None,
            "ramp": steps,
            "idle_rss_kib": idle_rss,
            "idle_cpu_percent": round(idle_cpu, 1),
            "idle_core_busy_percent": round(idle_load, 1),
            "rss_per_peer_kib": (
                round((rss_final - idle_rss) / peers_at_final, 1)
                if rss_final is not None and idle_rss is not None and peers_at_final
                else None
            ),
            "affinity": affinity,
            "latency_p50_ms": lat["latency_p50_ms"],
            "latency_p99_ms": lat["latency_p99_ms"],
            "latency_load_fraction": (
                round(lat["forwarded_pps"] / fin["forwarded_pps"], 2) if fin["forwarded_pps"] else None
            ),
            **target.info(),
        }
        if switches is not None:
            out["switches"] = switches
        if log_tail:
            out["log_tail"] = log_tail[-3000:]
        return out

    async def switch_probes(self, target: Target, load: Load, topology: Topology) -> Json:
        """Layer switch probes on distinct subscribers (spread over the rooms), one at a time: for Voxa
        `--switches` bandwidth drops then `--switches` tile shrinks, for Janus `--switches` configures.
        Each probe gives one figure per consumer that was on h or f (two per subscriber)."""
        subscribers = [p for p in topology.peers.values() if p.layers and any(lay > 0 for lay in p.layers)]
        by_room: dict[int, list[PeerSpec]] = {}
        for peer in subscribers:
            by_room.setdefault(peer.room, []).append(peer)
        spread = [p for group in itertools.zip_longest(*by_room.values()) for p in group if p is not None]
        n = self.args.switches
        if target.name == "voxa":
            half = min(n, (len(spread) + 1) // 2)
            plan = [(p, "bandwidth") for p in spread[:half]] + [
                (p, "quality") for p in spread[half : half + n]
            ]
        else:
            plan = [(p, "quality") for p in spread[:n]]
        results: dict[str, list[Json]] = {}
        for peer, action in plan:
            answers = await load.broadcast({"op": "switch", "peer": peer.id, "action": action}, 30.0)
            for answer in answers:
                if not answer.get("absent"):
                    results.setdefault(action, []).append(answer)
            await asyncio.sleep(0.3)
        out: Json = {}
        for action, probes in results.items():
            times = [t for probe in probes for t in probe["ms"]]
            done = sorted(t for t in times if t is not None)
            out[action] = {
                "p50": round(percentile(done, 50) or 0.0, 1) if done else None,
                "max": done[-1] if done else None,
                "switches": len(done),
                "timeouts": len(times) - len(done),
                "probes": probes,
            }
            log(f"{target.name}: {action} switch to q: {out[action]['p50']} ms p50, max {out[action]['max']} "
                f"ms over {len(done)} switches ({len(times) - len(done)} timed out)")  # fmt: skip
        return out

    def _had_errors(self) -> bool:
        return any(": answer:" in e or "server_closed_peer" in e for e in self.error_samples)


# --- command line --------------------------------------------------------------------------------

DEFAULTS: Final = {
    # scenario: (probe rooms, max rooms)
    "audio-rooms": (4, 80),
    "video-room": (2, 40),
    "large-room": (1, 1),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="audio-rooms")
    parser.add_argument("--seconds", type=float, default=20.0, help="Final measurement window (s).")
    parser.add_argument("--rooms", type=int, help="Fixed number of rooms (no ramp).")
    parser.add_argument("--probe-rooms", type=int, help="Rooms of the first ramp step.")
    parser.add_argument("--max-rooms", type=int, help="Ramp ceiling.")
    parser.add_argument("--max-steps", type=int, default=7, help="Ramp measurement steps at most.")
    parser.add_argument("--subscribers", type=int, default=200, help="large-room: listeners.")
    parser.add_argument("--step-seconds", type=float, default=4.0, help="Ramp step window (s).")
    parser.add_argument("--latency-seconds", type=float, help="Half-load window (s); default seconds/2.")
    parser.add_argument("--warmup", type=float, default=1.5, help="Pause after adding peers (s).")
    parser.add_argument("--settle", type=float, default=2.0, help="Pause before the half-load window (s).")
    parser.add_argument(
        "--target-cpu",
        type=float,
        default=90.0,
        help="Ramp target: busy %% of the SFU's core (or its CPU %%).",
    )
    parser.add_argument("--max-loss", type=float, default=1.0, help="Sustainable: loss below this %%.")
    parser.add_argument("--max-p99-ms", type=float, default=100.0, help="Sustainable: p99 below this.")
    parser.add_argument("--load-procs", type=int, default=2, help="Load generator processes.")
    parser.add_argument("--concurrency", type=int, default=12, help="Peer setups in flight per process.")
    parser.add_argument(
        "--decrypt-every",
        type=int,
        default=8,
        help="Subscribers count every packet but SRTP-decrypt (for its send time: latency) only those "
        "whose sequence number is a multiple of this (a power of 2; 1 = all).",
    )
    parser.add_argument("--sfu-core", type=int, help="Core of the server under test (default 0).")
    parser.add_argument("--load-core", type=int, help="Core of the load generator (default 1).")
    parser.add_argument("--no-janus", action="store_true", help="Skip the Janus comparison.")
    parser.add_argument("--janus-event-loops", type=int, default=1, help="Janus media threads.")
    parser.add_argument("--no-livekit", action="store_true", help="Skip the LiveKit comparison.")
    parser.add_argument(
        "--no-ceiling", action="store_true", help="Skip the native minimal forwarder's ceiling figure."
    )
    parser.add_argument("--profile", help="py-spy output of the SFU during the final window (.txt raw).")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--max-runtime", type=float, default=900.0, help="Load processes exit after this.")
    parser.add_argument(
        "--keep-logs", help="Keep the servers' logs (voxa-sfu.log, janus/, livekit/) in this folder."
    )
    parser.add_argument(
        "--simulcast",
        action="store_true",
        help="video-room: three-layer publishers, subscribers mixed across layers, layer switch probes.",
    )
    parser.add_argument("--switches", type=int, default=6, help="--simulcast: probes of each kind.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    args = parser.parse_args(argv)
    if args.simulcast and args.scenario != "video-room":
        parser.error("--simulcast needs --scenario video-room")
    probe, max_rooms = DEFAULTS[args.scenario]
    if args.scenario == "large-room" and args.rooms is None:
        args.rooms = 1
    args.probe_rooms = args.probe_rooms or probe
    args.max_rooms = args.max_rooms or max_rooms
    if args.latency_seconds is None:
        args.latency_seconds = max(2.0, min(8.0, args.seconds / 2))
    cpus = os.cpu_count() or 1
    if args.sfu_core is None:
        args.sfu_core = 0 if cpus >= 2 else None
    if args.load_core is None:
        args.load_core = 1 if cpus >= 2 else None
    for name in ("seconds", "step_seconds", "latency_seconds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in (
        "load_procs",
        "concurrency",
        "probe_rooms",
        "max_rooms",
        "subscribers",
        "max_steps",
        "switches",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.profile = Path(args.profile).resolve() if args.profile else None
    args.keep_logs = Path(args.keep_logs).resolve() if args.keep_logs else None
    if args.keep_logs is not None:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
    if args.decrypt_every < 1 or args.decrypt_every & (args.decrypt_every - 1) or args.decrypt_every > 256:
        parser.error("--decrypt-every must be a power of 2 in 1..256")
    if args.rooms is not None and args.rooms < 1:
        parser.error("--rooms must be at least 1")
    if args.sfu_core is not None and args.sfu_core == args.load_core:
        parser.error("--sfu-core and --load-core must differ")
    return args


async def run(args: argparse.Namespace, workdir: Path) -> Json:
    started = time.monotonic()
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if args.load_core is not None:
        os.sched_setaffinity(0, {args.load_core})  # the orchestrator stays off the server's core
    media = (
        "Opus" if args.scenario != "video-room" else "Opus + VP8" + (" x 3 layers" if args.simulcast else "")
    )
    log(f"encoding media ({media}) ...")
    catalog = await asyncio.to_thread(
        build_catalog, video=args.scenario == "video-room", simulcast=args.simulcast
    )
    bench = Bench(args, catalog, workdir)
    profile: Path | None = args.profile
    voxa_target = VoxaTarget(args.keep_logs or workdir, args.sfu_core, hooks=args.simulcast)
    voxa = await bench.run_target(voxa_target, args.rooms, profile)
    janus: Json | None = None
    janus_reason: str | None = None
    if args.no_janus:
        janus_reason = "skipped (--no-janus)"
    elif janus_binary() is None:
        janus_reason = "janus is not installed (apt-get install janus)"
    elif shutil.which("cc") is None and shutil.which("gcc") is None:
        janus_reason = "no C compiler for the Janus loopback ICE shim"
    else:
        janus_dir = args.keep_logs / "janus" if args.keep_logs is not None else None
        janus_target = JanusTarget(args.sfu_core, args.janus_event_loops, janus_dir)
        janus = await bench.run_target(janus_target, voxa["rooms"], None)
    livekit, livekit_reason = await run_livekit(args, bench, workdir, voxa["rooms"])
    fin = voxa["final"]
    ceiling: Json | None = None
    if not args.no_ceiling:
        shape = ceiling_bench.load_shape(
            args.scenario, voxa["rooms"] or 1, args.subscribers, catalog.summary()
        )
        log(f"ceiling: the minimal forwarder under {shape} for {args.seconds} s ...")
        ceiling = await asyncio.to_thread(
            ceiling_bench.measure, shape, args.seconds, args.sfu_core, args.load_core
        )
    consumers = fin["consumers"]
    switches: Json = voxa.get("switches") or {}
    janus_switches: Json = (janus or {}).get("switches") or {}
    result: Json = {
        "scenario": args.scenario,
        "simulcast": args.simulcast,
        "pps_per_core": fin["pps_per_core"],
        "forwarded_pps": fin["forwarded_pps"],
        "cpu_percent": fin["cpu_percent"],
        "loss_percent": fin["loss_percent"],
        "latency_p50_ms": voxa["latency_p50_ms"],
        "latency_p99_ms": voxa["latency_p99_ms"],
        "cpu_per_consumer_pct": round(fin["cpu_percent"] / consumers, 4) if consumers else None,
        "rss_per_peer_kib": voxa["rss_per_peer_kib"],
        "janus_ratio": (
            round(fin["pps_per_core"] / janus["final"]["pps_per_core"], 3)
            if janus is not None and fin["pps_per_core"] and janus["final"]["pps_per_core"]
            else None
        ),
        "livekit_ratio": (
            round(fin["pps_per_core"] / livekit["final"]["pps_per_core"], 3)
            if livekit is not None and fin["pps_per_core"] and livekit["final"]["pps_per_core"]
            else None
        ),
        "ceiling_pps_per_core": ceiling["ceiling_pps_per_core"] if ceiling else None,
        "ceiling_ratio": (
            round(fin["pps_per_core"] / ceiling["ceiling_pps_per_core"], 3)
            if ceiling and fin["pps_per_core"] and ceiling["ceiling_pps_per_core"]
            else None
        ),
        "ceiling": ceiling,
        "layer_switch_ms": _switch_summary(switches.get("bandwidth")),
        "quality_switch_ms": _switch_summary(switches.get("quality")),
        "janus_quality_switch_ms": _switch_summary(janus_switches.get("quality")),
        "sfu_dataplane": os.environ.get("VOXA_SFU_DATAPLANE", "native"),
        "rooms": voxa["rooms"],
        "peers": fin["peers"],
        "publishers": fin["publishers"],
        "subscribers": fin["subscribers"],
        "consumers": consumers,
        "duration_s": fin["seconds"],
        "latency_seconds": args.latency_seconds,
        "latency_load_fraction": voxa["latency_load_fraction"],
        "saturated": (fin.get("sfu_core_busy_percent") or fin["cpu_percent"]) >= args.target_cpu - 5
        or any(not _ok(s, args) for s in voxa["ramp"]),
        "sfu": voxa,
        "sfu_workers": 1,
        "janus": _janus_summary(janus) if janus is not None else None,
        "janus_pps_per_core": janus["final"]["pps_per_core"] if janus is not None else None,
        "janus_cpu_percent": janus["final"]["cpu_percent"] if janus is not None else None,
        "janus_loss_percent": janus["final"]["loss_percent"] if janus is not None else None,
        "janus_latency_p50_ms": janus["latency_p50_ms"] if janus is not None else None,
        "janus_latency_p99_ms": janus["latency_p99_ms"] if janus is not None else None,
        "janus_event_loops": args.janus_event_loops if janus is not None else None,
        "livekit": _livekit_summary(livekit) if livekit is not None else None,
        "livekit_pps_per_core": livekit["final"]["pps_per_core"] if livekit is not None else None,
        "livekit_cpu_percent": livekit["final"]["cpu_percent"] if livekit is not None else None,
        "livekit_loss_percent": livekit["final"]["loss_percent"] if livekit is not None else None,
        "livekit_latency_p50_ms": livekit["latency_p50_ms"] if livekit is not None else None,
        "livekit_latency_p99_ms": livekit["latency_p99_ms"] if livekit is not None else None,
        "loadgen": {
            "processes": args.load_procs,
            "cpu_percent": fin["loadgen_cpu_percent"],
            "core_busy_percent": fin.get("loadgen_core_busy_percent"),
            "janus_cpu_percent": janus["final"]["loadgen_cpu_percent"] if janus is not None else None,
            "livekit_cpu_percent": livekit["final"]["loadgen_cpu_percent"] if livekit is not None else None,
            "livekit_client": "bench/livekit/load: Go (pion), same count, same core" if livekit else None,
            "saturated": (fin.get("loadgen_core_busy_percent") or 0) > 90,
        },
        "media": catalog.summary(),
        "setup_failures": dict(bench.setup_failures),
        "error_samples": bench.error_samples,
        "host": {
            "cpu_count": os.cpu_count(),
            "sfu_core": args.sfu_core,
            "loadgen_core": args.load_core,
            "note": (
                f"{os.cpu_count()}-core machine: the server under test is pinned to core {args.sfu_core}, "
                f"the load generator and orchestrator to core {args.load_core}"
            ),
            "platform": platform.platform(),
        },
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "params": {
            k: getattr(args, k)
            for k in (
                "seconds",
                "step_seconds",
                "target_cpu",
                "max_loss",
                "max_p99_ms",
                "probe_rooms",
                "max_rooms",
                "subscribers",
                "load_procs",
                "warmup",
                "switches",
            )
        },
        "total_runtime_s": round(time.monotonic() - started, 1),
    }
    if janus_reason is not None:
        result["janus_reason"] = janus_reason
    if livekit_reason is not None:
        result["livekit_reason"] = livekit_reason
    result["other_processes_cpu_percent"], result["warnings"] = _noise(voxa, janus, livekit)
    if livekit_reason is not None and not livekit_reason.startswith("skipped"):
        result["warnings"].append(f"no LiveKit figures: {livekit_reason[:300]}")
    return result


async def run_livekit(
    args: argparse.Namespace, bench: Bench, workdir: Path, rooms: int
) -> tuple[Json | None, str | None]:
    """LiveKit under the same scenario and rooms; (its figures, None) or (None, why there are none).

    A LiveKit that cannot be built, started or driven is reported, never fatal: Voxa's and Janus's
    figures of the same run are kept."""
    if args.simulcast:  # before --no-livekit: the reason is the same either way
        return None, (
            "not measured with --simulcast: the LiveKit load client (bench/livekit/load, pion) publishes "
            "one VP8 layer; simulcast there needs LiveKit's layer announcement in AddTrack and rid-based "
            "sending, not built"
        )
    if args.no_livekit:
        return None, "skipped (--no-livekit)"
    log("livekit: building livekit-server and the Go load client (cached after the first build) ...")
    try:
        server_binary, load_binary = await asyncio.to_thread(livekit_binaries)
    except LiveKitUnavailable as exc:
        return None, f"livekit is unavailable: {exc}"
    livekit_dir = args.keep_logs / "livekit" if args.keep_logs is not None else workdir / "livekit"
    livekit_dir.mkdir(parents=True, exist_ok=True)
    try:
        target = LiveKitTarget(server_binary, load_binary, args.sfu_core, livekit_dir)
        return await bench.run_target(target, rooms, None), None
    except LiveKitUnavailable as exc:
        return None, f"livekit could not start: {exc}"
    except Exception as exc:  # reported in the JSON with the log's tail; the other figures stand
        tail = ""
        with contextlib.suppress(OSError):
            tail = (livekit_dir / "livekit.log").read_text(errors="replace")[-1500:]
        return None, f"livekit run failed: {type(exc).__name__}: {exc}"[:1500] + (f"\n{tail}" if tail else "")


def _noise(voxa: Json, janus: Json | None, livekit: Json | None = None) -> tuple[Json, list[str]]:
    """What else ran on the machine during the measurement windows, and warnings about the figures."""
    windows = {"sfu_final": voxa["final"], "sfu_half_load": voxa["half_load"]}
    if janus is not None:
        windows.update(janus_final=janus["final"], janus_half_load=janus["half_load"])
    if livekit is not None:
        windows.update(livekit_final=livekit["final"], livekit_half_load=livekit["half_load"])
    other = {k: w.get("other_processes_cpu_percent") for k, w in windows.items() if w is not None}
    warnings = [
        f"other processes used {v}% of a core during the {k.replace('_', ' ')} window: "
        "CPU and latency figures of that window are perturbed"
        for k, v in other.items()
        if v is not None and v > 15
    ]
    for k, w in windows.items():
        if w is not None and (w.get("loadgen_core_busy_percent") or 0) > 90:
            warnings.append(
                f"the load generator's core was {w['loadgen_core_busy_percent']}% busy during the "
                f"{k.replace('_', ' ')} window: its latency includes load-generator queueing"
            )
    return other, warnings


def _ok(step: Json, args: argparse.Namespace) -> bool:
    p99 = step.get("latency_p99_ms")
    return step["loss_percent"] < args.max_loss and p99 is not None and p99 < args.max_p99_ms


def _switch_summary(probes: Json | None) -> Json | None:
    """p50/max (ms) of a kind of switch probe, without the per-probe detail (in sfu/janus.switches)."""
    if probes is None:
        return None
    return {k: probes[k] for k in ("p50", "max", "switches", "timeouts")}


def _janus_summary(janus: Json) -> Json:
    fin = janus["final"]
    return {
        "pps_per_core": fin["pps_per_core"],
        "forwarded_pps": fin["forwarded_pps"],
        "cpu_percent": fin["cpu_percent"],
        "core_busy_percent": fin.get("sfu_core_busy_percent"),
        "loss_percent": fin["loss_percent"],
        "latency_p50_ms": janus["latency_p50_ms"],
        "latency_p99_ms": janus["latency_p99_ms"],
        "rss_per_peer_kib": janus["rss_per_peer_kib"],
        "rooms": janus["rooms"],
        "final": fin,
        "half_load": janus["half_load"],
        "event_loops": janus.get("event_loops"),
        "version": janus.get("version"),
        "affinity": janus.get("affinity"),
        "switches": janus.get("switches"),
    }


def _livekit_summary(livekit: Json) -> Json:
    fin = livekit["final"]
    return {
        "pps_per_core": fin["pps_per_core"],
        "forwarded_pps": fin["forwarded_pps"],
        "cpu_percent": fin["cpu_percent"],
        "core_busy_percent": fin.get("sfu_core_busy_percent"),
        "loss_percent": fin["loss_percent"],
        "latency_p50_ms": livekit["latency_p50_ms"],
        "latency_p99_ms": livekit["latency_p99_ms"],
        "rss_per_peer_kib": livekit["rss_per_peer_kib"],
        "rooms": livekit["rooms"],
        "final": fin,
        "half_load": livekit["half_load"],
        "version": livekit.get("version"),
        "build_note": livekit.get("build_note"),
        "config": livekit.get("config"),
        "load_client": livekit.get("load_client"),
        "affinity": livekit.get("affinity"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="voxa-sfu-bench-") as tmp, asyncio.Runner() as runner:
            # Ctrl-C cancels the run (asyncio.Runner), and so does SIGTERM: every `finally` stops what it
            # started; the reaper below is the last resort for anything a cancelled cleanup left running.
            result = runner.run(run(args, Path(tmp)))
    finally:
        reap_children()
    profile: Path | None = args.profile
    if profile is not None and profile.exists() and profile.suffix not in (".svg", ".json"):
        result["profile"] = {"path": str(profile), **summarize_profile(profile, top=25)}
    headline = ("scenario", "pps_per_core", "cpu_percent", "latency_p50_ms", "latency_p99_ms",
                "cpu_per_consumer_pct", "rss_per_peer_kib", "janus_ratio", "livekit_ratio",
                "ceiling_pps_per_core", "ceiling_ratio", "layer_switch_ms")  # fmt: skip
    ordered = {k: result[k] for k in headline}
    ordered.update((k, v) for k, v in result.items() if k not in headline)
    if args.json:
        print(json.dumps(ordered))
    else:
        for key in headline:
            print(f"{key:<22} {ordered[key]}")
        print(json.dumps(ordered, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        sys.exit(130)
    except asyncio.CancelledError:
        log("terminated (SIGTERM); everything started was stopped")
        sys.exit(143)
