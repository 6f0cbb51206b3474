#!/usr/bin/env python3
"""Load benchmark of `voxa signaling`: join throughput/latency and socket capacity of ONE process.

The benchmark starts its own redis-server and one `voxa signaling` on free loopback ports, then drives
them from separate load processes (multiprocessing, spawn, uvloop) speaking raw Phoenix Channels v2
frames over aiohttp client WebSockets:

* phase 1 (joins): ``--joins`` sockets connect first (timed apart), then every socket joins one voice
  channel (``--room-size`` members per channel, all under one voice server) with at most
  ``--concurrency`` joins in flight per load process. A join's latency is "send phx_join -> receive its
  ok phx_reply"; joins/s is completed joins over the wall time of the whole join phase (first send of any
  process to last reply of any process). Every join fans presence_diff frames out to its room, so the
  load processes keep reading every frame of every socket.
* phase 2 (capacity): ``--sockets`` sockets connect, join (room size as above) and heartbeat every 30 s
  (each socket's first heartbeat at a random point of the interval, as a steady population would);
  once the server reports all of them and they have been held for ``--hold-seconds``, the signaling
  process's VmRSS is read from /proc.

A default run takes about 30 s on 2 cores. Both phases count failed connects/joins in ``errors``
(``error_kinds`` says which); joins/s and latencies are computed from the successful joins only.

Usage: ``python bench/signaling.py --json`` prints one JSON object on stdout; progress goes to stderr.
``--profile out.svg`` (or .json for speedscope, .txt for collapsed stacks) records the signaling process
with py-spy during the phase-1 joins.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, TypeVar

import aiohttp
import orjson

from voxa.common.ports import free_port
from voxa.common.testing import launch
from voxa.common.testing.procfs import core_ticks, cpu_seconds, status_kib
from voxa.common.testing.procs import Proc, tail
from voxa.common.testing.stats import percentile

SERVER_ID: Final = "bench"
HEARTBEAT_INTERVAL_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 15.0
JOIN_TIMEOUT_S: Final = 15.0
CLOSE_TIMEOUT_S: Final = 5.0
READY_TIMEOUT_S: Final = 20.0
SETTLE_TIMEOUT_S: Final = 30.0
CLOSE_CONCURRENCY: Final = 256
MAX_ERROR_KINDS: Final = 20

T = TypeVar("T")
Message = dict[str, Any]


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def latency_summary(prefix: str, samples: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean of latency samples in seconds, as milliseconds, keys prefixed."""
    values = sorted(samples)
    mean = sum(values) / len(values) if values else None
    return {
        f"{prefix}_p50_ms": ms(percentile(values, 50)),
        f"{prefix}_p90_ms": ms(percentile(values, 90)),
        f"{prefix}_p99_ms": ms(percentile(values, 99)),
        f"{prefix}_max_ms": ms(values[-1] if values else None),
        f"{prefix}_mean_ms": ms(mean),
    }


def socket_plan(phase: int, count: int, room_size: int) -> list[tuple[str, str]]:
    """(user id, topic) of every socket of a phase: socket i sits in channel i // room_size."""
    return [(f"p{phase}u{i}", f"voice:{SERVER_ID}:p{phase}c{i // room_size}") for i in range(count)]


# --- load process ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    index: int
    url: str
    secret: str
    concurrency: int
    max_runtime_s: float


class BenchSocket:
    """One client WebSocket: a reader task consumes every frame and resolves replies by ref."""

    __slots__ = ("closed", "joined", "last_heartbeat", "next_ref", "pending", "reader", "topic", "user", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, user: str, topic: str, now: float) -> None:
        self.ws = ws
        self.user = user
        self.topic = topic
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.next_ref = 1  # "1" is the join's ref
        self.joined = False
        self.closed = False
        self.last_heartbeat = now
        self.reader: asyncio.Task[None] | None = None

    def new_ref(self) -> str:
        self.next_ref += 1
        return str(self.next_ref)


class Worker:
    """A load process: executes the parent's commands (connect, join, status, close, exit) in turn."""

    def __init__(self, pipe: multiprocessing.connection.Connection, config: WorkerConfig) -> None:
        self.pipe = pipe
        self.config = config
        self.sockets: list[BenchSocket] = []
        self.frames = 0
        self.heartbeats_ok = 0
        self.heartbeats_failed = 0
        self.session: aiohttp.ClientSession | None = None
        self.parent_pid = os.getppid()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.max_runtime_s
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S),
        )
        heartbeats = asyncio.create_task(self._heartbeat_loop(deadline))
        handlers: dict[str, Callable[[Message], Awaitable[Message]]] = {
            "connect": self._connect,
            "join": self._join,
            "status": self._status,
            "close": self._close,
        }
        try:
            while loop.time() < deadline:
                command = await self._next_command(deadline)
                if command is None or command["op"] == "exit":
                    break
                try:
                    result = await handlers[command["op"]](command)
                except Exception as exc:
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                result["op"] = command["op"]
                self.pipe.send(result)
        finally:
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
            for sock in self.sockets:
                if sock.reader is not None:
                    sock.reader.cancel()
            await self.session.close()

    async def _next_command(self, deadline: float) -> Message | None:
        """The parent's next command; None when the parent is gone or the deadline passed.

        The pipe is polled from a thread: registering its fd with the event loop would make it
        non-blocking, and a large command (a socket list) would then fail half-read with EAGAIN.
        """
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            wait_s = min(1.0, max(deadline - loop.time(), 0.0))
            if await asyncio.to_thread(self.pipe.poll, wait_s):
                try:
                    command: Message = self.pipe.recv()
                except EOFError:
                    return None
                return command
            if os.getppid() != self.parent_pid:
                return None
        return None

    # --- per-socket I/O --------------------------------------------------------------------------
    async def _read(self, sock: BenchSocket) -> None:
        ws = sock.ws
        try:
            while not ws.closed:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self.frames += 1
                    data: str = msg.data
                    if '"phx_reply"' not in data:
                        continue  # presence_state / presence_diff: counted, not parsed
                    frame = orjson.loads(data)
                    if frame[3] == "phx_reply":
                        future = sock.pending.pop(frame[1], None)
                        if future is not None and not future.done():
                            future.set_result(frame[4])
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    break
        finally:
            sock.closed = True
            for future in sock.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("socket closed"))
            sock.pending.clear()

    async def _request(self, sock: BenchSocket, frame: list[Any], ref: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sock.pending[ref] = future
        await sock.ws.send_str(orjson.dumps(frame).decode())
        return future

    def _heartbeat_done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.heartbeats_failed += 1
        elif isinstance(future.result(), dict) and future.result().get("status") == "ok":
            self.heartbeats_ok += 1
        else:
            self.heartbeats_failed += 1

    async def _heartbeat_loop(self, deadline: float) -> None:
        """Send [null, ref, "phoenix", "heartbeat", {}] on every socket every 30 s."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            await asyncio.sleep(1.0)
            now = loop.time()
            for sock in list(self.sockets):
                if sock.closed or now - sock.last_heartbeat < HEARTBEAT_INTERVAL_S:
                    continue
                sock.last_heartbeat = now
                ref = sock.new_ref()
                try:
                    future = await self._request(sock, [None, ref, "phoenix", "heartbeat", {}], ref)
                except (ConnectionError, RuntimeError, aiohttp.ClientError):
                    self.heartbeats_failed += 1
                    continue
                future.add_done_callback(self._heartbeat_done)

    # --- commands --------------------------------------------------------------------------------
    async def _connect(self, command: Message) -> Message:
        from voxa.common.claims import VoiceClaims, parse_permissions
        from voxa.common.tokens import mint_token

        plan: list[tuple[str, str]] = command["sockets"]
        perms = parse_permissions("connect,speak")
        started = time.monotonic()
        tokens = [
            mint_token(VoiceClaims(sub=user, server=SERVER_ID, perms=perms), self.config.secret, ttl_s=3600)
            for user, _ in plan
        ]
        mint_s = time.monotonic() - started
        assert self.session is not None
        session = self.session
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        errors: Counter[str] = Counter()

        async def connect(item: tuple[tuple[str, str], str]) -> None:
            (user, topic), token = item
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    ws = await session.ws_connect(
                        f"{self.config.url}?vsn=2.0.0&token={token}",
                        autoping=True,
                        compress=0,
                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                    )
            except TimeoutError:
                errors["connect_timeout"] += 1
                return
            except (aiohttp.ClientError, OSError) as exc:
                errors[f"connect_{type(exc).__name__}"] += 1
                return
            latencies.append(time.perf_counter() - t0)
            # Phoenix clients heartbeat 30 s after connecting; real sockets connect at random times, so the
            # first heartbeat is spread over the interval to load the server as a steady population does.
            sock = BenchSocket(ws, user, topic, loop.time() - random.uniform(0.0, HEARTBEAT_INTERVAL_S))
            sock.reader = asyncio.create_task(self._read(sock))
            self.sockets.append(sock)

        t_start = time.monotonic()
        await run_bounded(list(zip(plan, tokens, strict=True)), self.config.concurrency, connect)
        t_end = time.monotonic()
        return {
            "latencies": latencies,
            "errors": dict(errors),
            "t_start": t_start,
            "t_end": t_end,
            "mint_s": mint_s,
            "open": sum(1 for s in self.sockets if not s.closed),
        }

    async def _join(self, command: Message) -> Message:
        del command
        latencies: list[float] = []
        errors: Counter[str] = Counter()

        async def join(sock: BenchSocket) -> None:
            if sock.closed:
                errors["closed_before_join"] += 1
                return
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(JOIN_TIMEOUT_S):
                    future = await self._request(sock, ["1", "1", sock.topic, "phx_join", {}], "1")
                    reply = await future
            except TimeoutError:
                errors["join_timeout"] += 1
                return
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                errors[f"join_{type(exc).__name__}"] += 1
                return
            elapsed = time.perf_counter() - t0
            if isinstance(reply, dict) and reply.get("status") == "ok":
                sock.joined = True
                latencies.append(elapsed)
            else:
                reason = reply.get("response", {}).get("reason") if isinstance(reply, dict) else None
                errors[f"join_refused: {reason}"] += 1

        todo = [s for s in self.sockets if not s.joined]
        t_start = time.monotonic()
        await run_bounded(todo, self.config.concurrency, join)
        t_end = time.monotonic()
        return {"latencies": latencies, "errors": dict(errors), "t_start": t_start, "t_end": t_end}

    async def _status(self, command: Message) -> Message:
        del command
        return {
            "open": sum(1 for s in self.sockets if not s.closed),
            "joined": sum(1 for s in self.sockets if s.joined and not s.closed),
            "frames": self.frames,
            "heartbeats_ok": self.heartbeats_ok,
            "heartbeats_failed": self.heartbeats_failed,
        }

    async def _close(self, command: Message) -> Message:
        del command
        sockets, self.sockets = self.sockets, []
        dropped = sum(1 for s in sockets if s.closed)

        async def close(sock: BenchSocket) -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
                    await sock.ws.close()
            if sock.reader is not None:
                sock.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sock.reader

        await run_bounded(sockets, CLOSE_CONCURRENCY, close)
        return {"closed": len(sockets), "dropped_before_close": dropped}


async def run_bounded(items: Sequence[T], concurrency: int, fn: Callable[[T], Awaitable[None]]) -> None:
    """Apply `fn` to every item with at most `concurrency` calls in flight (fn must not raise)."""
    iterator: Iterator[T] = iter(items)

    async def lane() -> None:
        for item in iterator:  # shared by all lanes: each item is taken once
            await fn(item)

    await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, len(items))))))


def worker_main(pipe: multiprocessing.connection.Connection, config: WorkerConfig) -> None:
    """Entry point of a load process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us to exit
    raise_nofile_limit()
    import uvloop

    with contextlib.suppress(BrokenPipeError):  # the parent is gone
        uvloop.run(Worker(pipe, config).run())


# --- parent: services ------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark only talks to loopback")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback http only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


class Services:
    """redis-server and one `voxa signaling`, each in its own session so Ctrl-C reaches only us."""

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.secret = secrets.token_urlsafe(32)
        self.redis_port = free_port()
        self.port = free_port()
        self.redis: Proc | None = None
        self.signaling: Proc | None = None
        self.log_path = workdir / "signaling.log"
        self.redis_version = "unknown"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> None:
        self.redis = launch.redis_server(
            self.workdir,
            self.redis_port,
            ["--maxclients", "10000"],
            timeout=READY_TIMEOUT_S,
            new_session=True,
        )
        self.redis_version = launch.redis_version(self.redis_port) or "unknown"
        rooms = max(self.args.room_size, 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXA_")}
        env.update(
            VOXA_JWT_SECRET=self.secret,
            VOXA_REDIS_URL=self.redis_url,
            VOXA_ALLOWED_ORIGINS="*",
            VOXA_LOG_LEVEL="warning",
            # A load test: per-socket limits far above what the scenario sends.
            VOXA_JOINS_PER_10S="1000",
            VOXA_MESSAGES_PER_S="10000",
            VOXA_MESSAGE_BURST="10000",
            # Every load socket comes from 127.0.0.1: no per-address connection limits.
            VOXA_MAX_CONNECTIONS_PER_ADDRESS="0",
            VOXA_CONNECTIONS_PER_ADDRESS_PER_S="0",
            VOXA_MAX_CHANNEL_MEMBERS=str(max(rooms * 2, 200)),
            VOXA_SHUTDOWN_GRACE_S="3",
        )
        self.signaling = launch.signaling(
            self.log_path, env, self.port, timeout=READY_TIMEOUT_S, new_session=True
        )

    def redis_command_calls(self) -> dict[str, int]:
        """Calls per command since redis started (INFO commandstats), e.g. {"evalsha": 2000, ...}."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=5.0)
        try:
            stats = client.info("commandstats")
        except redis.RedisError:
            return {}
        finally:
            client.close()
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict) and "calls" in value
        }

    def log_tail(self, chars: int = 3000) -> str:
        return tail(self.log_path, chars)

    def check_alive(self) -> None:
        if self.signaling is None or not self.signaling.alive():
            raise RuntimeError(f"signaling died:\n{self.log_tail()}")
        if self.redis is None or not self.redis.alive():
            raise RuntimeError("redis-server died")

    @property
    def pid(self) -> int:
        assert self.signaling is not None and self.signaling.pid is not None
        return self.signaling.pid

    def metrics(self) -> dict[str, float]:
        """The unlabelled samples of /metrics (gauges such as voxa_signaling_sockets)."""
        status, text = http_get(self.base_url + "/metrics", timeout=5.0)
        out: dict[str, float] = {}
        if status != 200:
            return out
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def rss_kib(self) -> int | None:
        return status_kib(self.pid, "VmRSS")

    def stop(self) -> None:
        for proc, timeout in ((self.signaling, 15.0), (self.redis, 10.0)):
            if proc is not None:
                proc.stop(timeout)


# --- parent: load processes -----------------------------------------------------------------------


class LoadProcesses:
    def __init__(self, count: int, url: str, secret: str, concurrency: int, max_runtime_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[multiprocessing.connection.Connection] = []
        for index in range(count):
            parent_end, child_end = ctx.Pipe()
            config = WorkerConfig(index, url, secret, concurrency, max_runtime_s)
            proc = ctx.Process(
                target=worker_main, args=(child_end, config), name=f"bench-load-{index}", daemon=True
            )
            proc.start()
            child_end.close()
            self.procs.append(proc)
            self.pipes.append(parent_end)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def call(self, commands: Sequence[Message], timeout: float) -> list[Message]:
        """Send one command to each process and wait (bounded) for all the answers."""
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)
        results: list[Message | None] = [None] * len(self.pipes)
        deadline = time.monotonic() + timeout
        waiting = {id(pipe): i for i, pipe in enumerate(self.pipes)}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"load processes did not answer {commands[0]['op']!r} within {timeout:.0f}s"
                )
            pending = [self.pipes[i] for i in waiting.values()]
            for ready in multiprocessing.connection.wait(pending, timeout=min(remaining, 1.0)):
                assert isinstance(ready, multiprocessing.connection.Connection)
                index = waiting.pop(id(ready))
                try:
                    answer: Message = ready.recv()
                except EOFError:
                    raise RuntimeError(f"load process {index} died") from None
                if "error" in answer:
                    raise RuntimeError(f"load process {index} failed {answer['op']!r}: {answer['error']}")
                results[index] = answer
            for i in waiting.values():
                if not self.procs[i].is_alive():
                    raise RuntimeError(f"load process {i} exited with code {self.procs[i].exitcode}")
        return [r for r in results if r is not None]

    def broadcast(self, command: Message, timeout: float) -> list[Message]:
        return self.call([command] * len(self.pipes), timeout)

    def stop(self, graceful: bool = True) -> None:
        """Ask the processes to exit (graceful) or terminate them at once (after an error or Ctrl-C)."""
        if graceful:
            for pipe in self.pipes:
                with contextlib.suppress(OSError, ValueError):
                    pipe.send({"op": "exit"})
        deadline = time.monotonic() + (10.0 if graceful else 0.0)
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.0) if graceful else 0.0)
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for pipe in self.pipes:
            pipe.close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(graceful=exc_type is None)


def split(plan: Sequence[tuple[str, str]], parts: int) -> list[list[tuple[str, str]]]:
    """Interleave sockets over load processes so each room is filled by all of them at once."""
    return [list(plan[i::parts]) for i in range(parts)]


def merge_errors(total: Counter[str], answers: Sequence[Message], prefix: str) -> None:
    for answer in answers:
        total.update({f"{prefix}{kind}": n for kind, n in answer.get("errors", {}).items()})


def find_py_spy() -> str | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return spy if Path(spy).exists() else None


class Profiler:
    """py-spy recording the signaling process; stopped with SIGINT so it writes its output."""

    def __init__(self, output: Path, pid: int) -> None:
        spy = find_py_spy()
        if spy is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(output.suffix, "raw")
        self.proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--output", str(output), "--format", fmt, "--rate", "200"],
            stdout=subprocess.DEVNULL,
            stderr=sys.stderr,
            start_new_session=True,
        )
        self.output = output
        time.sleep(1.0)  # let py-spy attach before the load starts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        log(f"profile written to {self.output}")


# --- parent: the scenario --------------------------------------------------------------------------


class Benchmark:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.errors: Counter[str] = Counter()
        self.result: dict[str, Any] = {}

    def op_timeout(self, count: int) -> float:
        """Bound for one command over `count` sockets: generous, so only a wedged run hits it."""
        return 60.0 + count / 50.0

    def run(self, services: Services, load: LoadProcesses) -> dict[str, Any]:
        out = self.result
        out["rss_start_mib"] = mib(services.rss_kib())
        self.phase_joins(services, load)
        self.settle(services, sockets=0)
        self.phase_capacity(services, load)
        return out

    def phase_joins(self, services: Services, load: LoadProcesses) -> None:
        args = self.args
        out = self.result
        plan = socket_plan(1, args.joins, args.room_size)
        log(f"phase 1: connecting {len(plan)} sockets ...")
        answers = load.call(
            [{"op": "connect", "sockets": part} for part in split(plan, args.workers)],
            self.op_timeout(len(plan)),
        )
        merge_errors(self.errors, answers, "phase1 ")
        connected = sum(a["open"] for a in answers)
        connect_latencies = [x for a in answers for x in a["latencies"]]
        connect_wall = max(a["t_end"] for a in answers) - min(a["t_start"] for a in answers)
        out["connects_per_s"] = round(len(connect_latencies) / connect_wall, 1) if connect_wall > 0 else None
        out.update(latency_summary("connect", connect_latencies))
        log(f"phase 1: {connected} connected at {out['connects_per_s']}/s; joining ...")
        services.check_alive()

        profiler = Profiler(Path(args.profile), services.pid) if args.profile else None
        cpu_before = {name: cpu_seconds(pid) for name, pid in self.pids(services, load).items()}
        host_before = core_ticks()
        redis_before = services.redis_command_calls()
        wall_before = time.monotonic()
        try:
            answers = load.broadcast({"op": "join"}, self.op_timeout(len(plan)))
        finally:
            wall = time.monotonic() - wall_before
            if profiler is not None:
                profiler.stop()
        cpu_after = {name: cpu_seconds(pid) for name, pid in self.pids(services, load).items()}
        host_after = core_ticks()
        redis_after = services.redis_command_calls()
        merge_errors(self.errors, answers, "phase1 ")
        latencies = [x for a in answers for x in a["latencies"]]
        join_wall = max(a["t_end"] for a in answers) - min(a["t_start"] for a in answers)
        out["join_count"] = len(latencies)
        out["join_phase_s"] = round(join_wall, 3)
        out["joins_per_s"] = round(len(latencies) / join_wall, 1) if join_wall > 0 else 0.0
        out.update(latency_summary("join", latencies))
        out["join_phase_cpu_pct"] = {
            name: round(100.0 * (after - before) / wall, 1)
            for name, after in cpu_after.items()
            if (before := cpu_before.get(name)) is not None and after is not None and wall > 0
        }
        calls = {k: v - redis_before.get(k, 0) for k, v in redis_after.items() if v > redis_before.get(k, 0)}
        calls.pop("info", None)
        # Redis commands the server issued per completed join (pub/sub subscribes included).
        out["redis_commands_per_join"] = (
            {k: round(v / len(latencies), 2) for k, v in sorted(calls.items())} if latencies else {}
        )
        busy, total = host_after[0] - host_before[0], host_after[1] - host_before[1]
        # All cores together: 100 means every core was busy (ours plus anything else on the host).
        out["join_phase_host_busy_pct"] = round(100.0 * busy / total, 1) if total > 0 else None
        status = load.broadcast({"op": "status"}, 30.0)
        out["phase1_frames_received"] = sum(s["frames"] for s in status)
        log(
            f"phase 1: {len(latencies)} joins in {join_wall:.2f}s = {out['joins_per_s']}/s, "
            f"p50 {out['join_p50_ms']} ms, p99 {out['join_p99_ms']} ms, cpu% {out['join_phase_cpu_pct']}"
        )
        load.broadcast({"op": "close"}, self.op_timeout(len(plan)))

    @staticmethod
    def pids(services: Services, load: LoadProcesses) -> dict[str, int]:
        pids = {"signaling": services.pid}
        if services.redis is not None and services.redis.pid is not None:
            pids["redis"] = services.redis.pid
        pids.update({f"load{i}": pid for i, pid in enumerate(load.pids)})
        return pids

    def settle(self, services: Services, sockets: int, members: int | None = None) -> bool:
        """Wait (bounded) until the server reports `sockets` open sockets and `members` channel joins."""
        members = sockets if members is None else members
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            services.check_alive()
            m = services.metrics()
            if (
                m.get("voxa_signaling_sockets") == sockets
                and m.get("voxa_signaling_channel_members") == members
            ):
                return True
            time.sleep(0.25)
        log(f"server did not settle at {sockets} sockets within {SETTLE_TIMEOUT_S:.0f}s")
        return False

    def phase_capacity(self, services: Services, load: LoadProcesses) -> None:
        args = self.args
        out = self.result
        out["rss_before_capacity_mib"] = mib(services.rss_kib())
        plan = socket_plan(2, args.sockets, args.room_size)
        log(f"phase 2: connecting {len(plan)} sockets ...")
        answers = load.call(
            [{"op": "connect", "sockets": part} for part in split(plan, args.workers)],
            self.op_timeout(len(plan)),
        )
        merge_errors(self.errors, answers, "phase2 ")
        log(f"phase 2: {sum(a['open'] for a in answers)} connected; joining ...")
        services.check_alive()
        answers = load.broadcast({"op": "join"}, self.op_timeout(len(plan)))
        merge_errors(self.errors, answers, "phase2 ")
        latencies = [x for a in answers for x in a["latencies"]]
        wall = max(a["t_end"] for a in answers) - min(a["t_start"] for a in answers)
        out["capacity_join_count"] = len(latencies)
        out["capacity_joins_per_s"] = round(len(latencies) / wall, 1) if wall > 0 else 0.0
        out.update(latency_summary("capacity_join", latencies))

        status = load.broadcast({"op": "status"}, 30.0)
        joined = sum(s["joined"] for s in status)
        log(f"phase 2: {joined} sockets joined; waiting for the server to agree ...")
        out["capacity_settled"] = self.settle(
            services, sockets=sum(s["open"] for s in status), members=joined
        )
        rss_samples: list[int] = []
        hold_deadline = time.monotonic() + args.hold_seconds
        while True:  # bounded by --hold-seconds
            services.check_alive()
            if (rss := services.rss_kib()) is not None:
                rss_samples.append(rss)
            if time.monotonic() >= hold_deadline:
                break
            time.sleep(min(0.5, max(hold_deadline - time.monotonic(), 0.0)))
        status = load.broadcast({"op": "status"}, 30.0)
        metrics = services.metrics()
        held = sum(s["joined"] for s in status)
        out["sockets"] = held
        out["sockets_open"] = sum(s["open"] for s in status)
        out["server_sockets"] = int(metrics.get("voxa_signaling_sockets", -1))
        out["server_channel_members"] = int(metrics.get("voxa_signaling_channel_members", -1))
        out["rss_mib"] = mib(rss_samples[-1] if rss_samples else None)
        out["rss_min_hold_mib"] = mib(min(rss_samples) if rss_samples else None)
        out["rss_peak_mib"] = mib(status_kib(services.pid, "VmHWM"))
        base = out["rss_before_capacity_mib"]
        if held and out["rss_mib"] is not None and base is not None:
            out["rss_per_socket_kib"] = round((out["rss_mib"] - base) * 1024 / held, 2)
        out["frames_received"] = sum(s["frames"] for s in status)
        out["heartbeats_ok"] = sum(s["heartbeats_ok"] for s in status)
        out["heartbeats_failed"] = sum(s["heartbeats_failed"] for s in status)
        log(f"phase 2: held {held} sockets for {args.hold_seconds}s; signaling RSS {out['rss_mib']} MiB")


def mib(kib: int | float | None) -> float | None:
    return None if kib is None else round(kib / 1024.0, 1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    parser.add_argument("--joins", type=int, default=2000, help="Sockets that each join once in phase 1.")
    parser.add_argument("--room-size", type=int, default=10, help="Members per voice channel.")
    parser.add_argument("--sockets", type=int, default=10000, help="Sockets held in phase 2.")
    parser.add_argument("--workers", type=int, default=2, help="Load processes.")
    parser.add_argument("--concurrency", type=int, default=64, help="Connects/joins in flight per process.")
    parser.add_argument("--hold-seconds", type=float, default=5.0, help="How long phase 2 holds its sockets.")
    parser.add_argument("--profile", help="py-spy output file (phase-1 joins).")
    args = parser.parse_args(argv)
    for name in ("joins", "room_size", "sockets", "workers", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.hold_seconds < 0:
        parser.error("--hold-seconds must not be negative")
    if args.profile and find_py_spy() is None:
        parser.error("--profile needs py-spy (pip install py-spy)")
    return args


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)


class Cleanup:
    """Stops whatever was started, in reverse order, on success, error or Ctrl-C."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> contextlib.ExitStack:
        return self.stack.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # do not interrupt the cleanup itself
        try:
            return bool(self.stack.__exit__(exc_type, exc, tb))
        finally:
            signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)
    nofile = raise_nofile_limit()
    per_process = -(-max(args.joins, args.sockets) // args.workers)
    if per_process + 64 > nofile:
        log(f"warning: RLIMIT_NOFILE {nofile} is below the {per_process} sockets per load process")
    started = time.monotonic()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    bench = Benchmark(args)
    with Cleanup() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="voxa-bench-")))
        services = Services(workdir, args)
        stack.callback(services.stop)
        log("starting redis-server and voxa signaling ...")
        services.start()
        log(f"signaling pid {services.pid} on port {services.port}, redis {services.redis_version}")
        max_runtime = 120.0 + 3 * (args.joins + args.sockets) / 50.0 + args.hold_seconds
        url = f"ws://127.0.0.1:{services.port}/socket/websocket"
        load = LoadProcesses(args.workers, url, services.secret, args.concurrency, max_runtime)
        stack.push(load.__exit__)
        try:
            result = bench.run(services, load)
        except BaseException:
            tail = services.log_tail()
            if tail:
                log(f"signaling log tail:\n{tail}")
            raise
    result.update(
        errors=sum(bench.errors.values()),
        error_kinds=dict(bench.errors.most_common(MAX_ERROR_KINDS)),
        room_size=args.room_size,
        load_processes=args.workers,
        params={
            "joins": args.joins,
            "room_size": args.room_size,
            "sockets": args.sockets,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "hold_seconds": args.hold_seconds,
            "profile": args.profile,
        },
        redis_version=services.redis_version,
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        nofile_limit=nofile,
        loadavg_at_start=load_at_start,
        duration_s=round(time.monotonic() - started, 1),
    )
    headline = ("joins_per_s", "join_p50_ms", "join_p99_ms", "sockets", "rss_mib", "errors")
    ordered = {k: result[k] for k in headline}
    ordered.update((k, v) for k, v in sorted(result.items()) if k not in headline)
    if args.json:
        print(json.dumps(ordered))
    else:
        width = max(len(k) for k in ordered)
        for key, value in ordered.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        sys.exit(130)
