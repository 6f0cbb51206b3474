#!/usr/bin/env python3
"""Benchmark of Voxa calls: how fast a ring reaches the callee, how soon an answer carries audio, and
how many call cycles two signaling replicas sustain.

It starts, on free loopback ports, a redis-server, two `voxa signaling` replicas sharing it and one
`voxa sfu --workers 1` (bench/e2e_support/stack.py). Callers' devices are on replica A, callees' on
replica B, so every ring, answer and end crosses replicas through Redis.

1. ring: ``--ring-samples`` calls one after another between one pair of devices; a sample is the time
   from sending `start_call` to the `call_started` push on the callee's socket (the callee declines,
   so the next call starts clean). `ring_p50_ms` / `ring_p99_ms`.
2. answer to audio: ``--audio-samples`` calls with media: the caller joins `call:<id>` with a tone
   (voxa.client VoiceClient) right after `start_call`; the callee answers, then joins the call's media;
   a sample is the time from sending `answer_call` to the first decoded audio frame of the caller on
   the callee's side (so it includes the callee's join, SDP, ICE and DTLS). `answer_to_audio_p50_ms`.
3. cycles: ``--pairs`` caller/callee device pairs, spread over ``--load-processes`` processes, run
   start → call_started → answer → end → both `call_ended`, back to back, for ``--seconds``;
   `calls_per_s` is completed cycles per second of the phase and `errors` counts refused pushes and
   timeouts (by kind in `error_kinds`). The load processes share the machine's cores with the
   replicas and Redis; `cpu_ms_per_cycle` says where the CPU went (both replicas together, Redis,
   the load processes), so the figure can be read against the cores it had.

4. push: ``--push-samples`` calls to a callee with no live socket and one Web Push registration at a
   real Web Push test service on loopback (npm web-push-testing, tests/support/web_push_service.cjs);
   a sample is the time from sending `start_call` to the push service receiving the push (VAPID
   signed, RFC 8291 encrypted). `push_p50_ms`, `push_p99_ms`.

Usage: ``python bench/calls.py --json`` prints ONE JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.support: the push test service

import aiohttp
from e2e_support.stack import Stack, log

from tests.support.push_standins import WebPushTestService, p256_pem
from voxa.client.calls import CallClient, CallError
from voxa.client.phoenix import ClientChannel, PhoenixClient, PushError
from voxa.client.voice import use_host_addresses
from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.testing.procfs import cpu_seconds
from voxa.common.testing.stats import percentile
from voxa.common.tokens import mint_token

SERVER_ID = "g1"
EVENT_TIMEOUT_S = 30.0


def ms(value: float | None) -> float | None:
    return round(value * 1000, 2) if value is not None else None


class Device:
    """A raw Phoenix socket on `user:<user>`: the cheapest possible client, for the load phases."""

    def __init__(self, url: str, token: str, user: str) -> None:
        self.phx = PhoenixClient(url, token)
        self.user = user
        self.channel: ClientChannel | None = None

    async def start(self) -> None:
        await self.phx.connect()
        self.channel, _ = await self.phx.join(f"user:{self.user}", {"device_id": f"{self.user}-bench"})

    async def push(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert self.channel is not None
        return await self.channel.push(event, payload, timeout=EVENT_TIMEOUT_S)

    async def wait(self, event: str, call_id: str | None = None) -> dict[str, Any]:
        assert self.channel is not None
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while True:
                payload = await self.channel.wait_event(event, timeout=EVENT_TIMEOUT_S)
                if call_id is None or payload.get("call_id") == call_id:
                    return payload

    def drain(self) -> None:
        """Forget queued events (call_state, call_ringing...) the phase does not wait for."""
        assert self.channel is not None
        while not self.channel.events.empty():
            self.channel.events.get_nowait()

    async def close(self) -> None:
        await self.phx.close()


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.jwt_secret = secrets.token_urlsafe(32)
        self.stack = Stack(workdir, self.jwt_secret, secrets.token_urlsafe(32), server_id=SERVER_ID)
        self.ports: list[int] = []
        self.cycle_cpu_ms: dict[str, float | None] = {}
        self.cycle_commands: dict[str, float] = {}
        """Redis commands per call cycle, by command (the load the cycles put on the store)."""
        """CPU milliseconds per call cycle, by process kind (signaling replicas, redis, load)."""

    def token(self, user: str) -> str:
        return token_for(self.jwt_secret, user)

    def url(self, replica: int) -> str:
        return f"ws://127.0.0.1:{self.ports[replica]}/socket"

    def start(self) -> None:
        self.stack.start_redis()
        vapid = self.stack.workdir / "vapid.pem"
        p256_pem(vapid)
        settings = {
            "messages_per_s": "100000",
            "message_burst": "100000",
            "log_level": "warning",
            "push_vapid_private_key_file": str(vapid),
            "push_vapid_subject": "mailto:bench@voxa.test",
        }
        self.ports = [self.stack.start_signaling(**settings) for _ in range(2)]
        self.stack.start_sfu("sfu-a")
        self.stack.wait_registered()

    async def device(self, user: str, replica: int) -> Device:
        device = Device(self.url(replica), self.token(user), user)
        await device.start()
        return device

    # --- phases -------------------------------------------------------------------------------------
    async def ring(self) -> list[float]:
        caller, callee = await self.device("ring-a", 0), await self.device("ring-b", 1)
        samples = []
        try:
            for _ in range(self.args.ring_samples):
                callee.drain()
                started = time.perf_counter()
                reply = await caller.push("start_call", {"invitees": ["ring-b"]})
                await callee.wait("call_started", reply["call_id"])
                samples.append(time.perf_counter() - started)
                await callee.push("decline_call", {"call_id": reply["call_id"], "reason": "declined"})
                await caller.wait("call_ended", reply["call_id"])
                caller.drain()
        finally:
            await caller.close()
            await callee.close()
        return samples

    async def answer_to_audio(self) -> list[float]:
        use_host_addresses(["127.0.0.1"])  # the SFU takes media from loopback only
        samples = []
        for i in range(self.args.audio_samples):
            caller_id, callee_id = f"audio-a{i}", f"audio-b{i}"
            caller = CallClient(self.url(0), self.token(caller_id), device_id="a")
            callee = CallClient(self.url(1), self.token(callee_id), device_id="b")
            try:
                await caller.start()
                await callee.start()
                call = await caller.start_call([callee_id])
                await caller.join_media(call.call_id, tone_hz=440.0)
                await callee.wait_event("call_started", call_id=call.call_id)
                started = time.perf_counter()
                await callee.answer(call.call_id)
                voice = await callee.join_media(call.call_id)
                sink = await voice.wait_audio(caller_id, timeout=EVENT_TIMEOUT_S)
                async with asyncio.timeout(EVENT_TIMEOUT_S):
                    while sink.frames == 0:
                        await asyncio.sleep(0.002)
                samples.append(time.perf_counter() - started)
                await caller.end(call.call_id)
            finally:
                await caller.close()
                await callee.close()
        return samples

    def _server_cpu(self) -> dict[str, float]:
        """CPU seconds so far of the signaling replicas and Redis (by process kind)."""
        out: dict[str, float] = {}
        for proc in self.stack.procs:
            kind = "signaling" if proc.name.startswith("signaling") else proc.name
            if kind in ("signaling", "redis") and proc.pid is not None:
                out[kind] = out.get(kind, 0.0) + (cpu_seconds(proc.pid) or 0.0)
        return out

    def _redis_calls(self) -> Counter[str]:
        """Calls per Redis command so far (INFO commandstats)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.stack.redis_port, socket_timeout=5.0)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return Counter(
            {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if isinstance(v, dict)}
        )

    async def cycles(self) -> tuple[int, float, Counter[str]]:
        """The cycles phase in `--load-processes` processes (one Python process cannot drive the
        replicas' pace alone), each with its share of the pairs; all start and stop together."""
        procs = self.args.load_processes
        shares = [self.args.pairs // procs + (1 if i < self.args.pairs % procs else 0) for i in range(procs)]
        start_at = time.time() + 3.0  # every process connected by then
        jobs = [
            CycleJob(self.url(0), self.url(1), self.jwt_secret, f"p{i}", n, start_at, self.args.seconds)
            for i, n in enumerate(shares)
            if n
        ]
        context = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        with concurrent.futures.ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
            running = [loop.run_in_executor(pool, run_cycles, job) for job in jobs]
            await asyncio.sleep(max(0.0, start_at - time.time()))
            before, commands = self._server_cpu(), self._redis_calls()
            results = await asyncio.gather(*running)
            after, commands = self._server_cpu(), self._redis_calls() - commands
        errors: Counter[str] = Counter()
        for result in results:
            errors.update(result[2])
        done = sum(r[0] for r in results)
        cpu = {kind: after[kind] - before.get(kind, 0.0) for kind in after}
        cpu["load"] = sum(r[3] for r in results)
        self.cycle_cpu_ms = {k: round(1000 * v / done, 3) if done else None for k, v in cpu.items()}
        self.cycle_commands = {k: round(n / done, 2) for k, n in commands.most_common()} if done else {}
        return done, max(r[1] for r in results), errors

    async def push(self) -> list[float]:
        service = WebPushTestService(self.stack.workdir)
        await service.start()
        base = f"http://127.0.0.1:{self.ports[1]}"
        caller = await self.device("push-a", 0)
        samples = []
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/push/vapid-public-key") as resp:
                    key = (await resp.json())["public_key"]
                for i in range(self.args.push_samples):
                    callee = f"push-b{i}"
                    subscription = await service.subscribe(key)
                    client_hash = subscription.pop("clientHash")
                    body = {"device_id": "browser", "kind": "webpush", "subscription": subscription}
                    headers = {"Authorization": f"Bearer {self.token(callee)}"}
                    async with http.post(f"{base}/push/devices", json=body, headers=headers) as resp:
                        assert resp.status in (200, 201), await resp.text()
                    started = time.time()
                    reply = await caller.push("start_call", {"invitees": [callee]})
                    async with asyncio.timeout(EVENT_TIMEOUT_S):
                        while not (seen := await service.headers(client_hash)):
                            await asyncio.sleep(0.002)
                    samples.append(seen[0]["received_at"] / 1000 - started)
                    await caller.push("end_call", {"call_id": reply["call_id"]})
                    await caller.wait("call_ended", reply["call_id"])
                    caller.drain()
        finally:
            await caller.close()
            service.stop()
        return samples

    async def run(self) -> dict[str, Any]:
        log(f"ring: {self.args.ring_samples} calls")
        ring = await self.ring()
        log(f"answer to audio: {self.args.audio_samples} calls with media")
        audio = await self.answer_to_audio()
        log(f"cycles: {self.args.pairs} pairs for {self.args.seconds:g} s")
        done, elapsed, errors = await self.cycles()
        log(f"push: {self.args.push_samples} rings of an offline callee")
        pushed = await self.push()
        return {
            "benchmark": "calls",
            "replicas": 2,
            "store": "redis",
            "redis_version": self.stack.redis_version,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ring_samples": len(ring),
            "ring_p50_ms": ms(percentile(ring, 50, nearest=True)),
            "ring_p99_ms": ms(percentile(ring, 99, nearest=True)),
            "ring_max_ms": ms(max(ring) if ring else None),
            "audio_samples": len(audio),
            "answer_to_audio_p50_ms": ms(percentile(audio, 50, nearest=True)),
            "answer_to_audio_max_ms": ms(max(audio) if audio else None),
            "pairs": self.args.pairs,
            "cycle_seconds": round(elapsed, 2),
            "call_cycles": done,
            "calls_per_s": round(done / elapsed, 1) if elapsed else None,
            "cpu_ms_per_cycle": self.cycle_cpu_ms,
            "redis_commands_per_cycle": self.cycle_commands,
            "errors": sum(errors.values()),
            "error_kinds": dict(errors.most_common(10)),
            "push_samples": len(pushed),
            "push_p50_ms": ms(percentile(pushed, 50, nearest=True)),
            "push_p99_ms": ms(percentile(pushed, 99, nearest=True)),
            "load_processes": self.args.load_processes,
        }


@dataclass(frozen=True)
class CycleJob:
    caller_url: str
    callee_url: str
    jwt_secret: str
    prefix: str
    pairs: int
    start_at: float
    seconds: float


def token_for(secret: str, user: str) -> str:
    perms = parse_permissions("connect,speak,call")
    return mint_token(VoiceClaims(sub=user, name=user, server=SERVER_ID, perms=perms), secret)


def run_cycles(job: CycleJob) -> tuple[int, float, dict[str, int], float]:
    """One load process: `job.pairs` caller/callee pairs cycling calls until the deadline; also
    the CPU seconds the process spent in the timed phase."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    return asyncio.run(_cycles(job))


async def _cycles(job: CycleJob) -> tuple[int, float, dict[str, int], float]:
    pairs = []
    for i in range(job.pairs):
        one, two = f"cyc-{job.prefix}-a{i}", f"cyc-{job.prefix}-b{i}"
        caller = Device(job.caller_url, token_for(job.jwt_secret, one), one)
        callee = Device(job.callee_url, token_for(job.jwt_secret, two), two)
        await caller.start()
        await callee.start()
        pairs.append((caller, callee))
    errors: Counter[str] = Counter()
    done = 0
    await asyncio.sleep(max(0.0, job.start_at - time.time()))
    deadline = time.perf_counter() + job.seconds

    async def run(caller: Device, callee: Device) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            try:
                reply = await caller.push("start_call", {"invitees": [callee.user]})
                call_id = reply["call_id"]
                await callee.wait("call_started", call_id)
                await callee.push("answer_call", {"call_id": call_id})
                await caller.push("end_call", {"call_id": call_id})
                await caller.wait("call_ended", call_id)
                await callee.wait("call_ended", call_id)
                caller.drain()
                callee.drain()
                done += 1
            except PushError as exc:
                errors[f"refused: {exc.reason}"] += 1
                await asyncio.sleep(0.05)
            except TimeoutError:
                errors["timeout"] += 1

    started, cpu = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(run(a, b) for a, b in pairs))
    finally:
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        for a, b in pairs:
            await a.close()
            await b.close()
    return done, elapsed, dict(errors), cpu


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ring-samples", type=int, default=200, help="Sequential rings (default 200).")
    parser.add_argument("--audio-samples", type=int, default=5, help="Calls with media (default 5).")
    parser.add_argument("--pairs", type=int, default=50, help="Concurrent caller/callee pairs (default 50).")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="Length of the cycles phase (default 10)."
    )
    parser.add_argument("--push-samples", type=int, default=50, help="Rings by Web Push (default 50).")
    parser.add_argument(
        "--load-processes", type=int, default=2, help="Processes driving the cycles (default 2)."
    )
    parser.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    args = parser.parse_args(argv)
    counts = (args.ring_samples, args.audio_samples, args.pairs, args.load_processes, args.push_samples)
    if min(counts) < 1 or args.seconds <= 0:
        parser.error("counts must be >= 1 and --seconds > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with tempfile.TemporaryDirectory(prefix="voxa-bench-calls-") as tmp:
        bench = Bench(args, Path(tmp))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            bench.start()
            result = asyncio.run(bench.run())
        except CallError as exc:
            log(f"refused: {exc.reason}")
            return 1
        finally:
            bench.stack.stop()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
