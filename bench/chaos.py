#!/usr/bin/env python3
"""Chaos soak: voice under a steady load while its parts fail, one fault after another.

The stack (bench/chaos_support/topology.py): Redis primary + replica + three Sentinels, two
signaling replicas behind HAProxy (replica b in a network namespace of its own), two SFUs, all on this
machine. The load (bench/chaos_support/load.py): `--rooms` voice rooms of `--clients-per-room`
VoiceClients, each sending its own tone through real ICE/DTLS/SRTP, plus a pair of users cycling
1:1 calls. Faults, in this order, each followed by a recovery check before the next, repeated until
`--minutes` have passed (every kind at least once, however short the soak):

  signaling_kill   SIGKILL a signaling replica (then started again once recovered)
  sfu_kill         SIGKILL the SFU hosting most rooms (its rooms move; started again once recovered)
  redis_restart    the Redis primary stopped and started again, empty (no persistence)
  redis_failover   SIGKILL of the Redis primary: Sentinel promotes the replica; the old one returns
                   as a replica of the new
  partition        signaling-b cut off from Redis and the Sentinels for `--partition-s`, then healed
  sfu_freeze       SIGSTOP of an SFU for `--freeze-s`, then SIGCONT
  slow_client      a socket that stops reading, in a channel where others change presence quickly

A fault is recovered when every listener hears every other member of its room again (decoded frames
advancing), every client's presence equals the truth, and a call cycle completed after the fault.
Per fault the JSON has `recovery_p50_ms`/`p99`/`max` (per client: when its last stall ended, or its
presence became right, after the fault; for partition and sfu_freeze after the heal/SIGCONT),
`audio_gap_max_ms` (the longest stall of any pair during the fault window), `ghosts`/`missing` (after
convergence), `stuck` (rooms not hearing + the call cycle not completing, at the recovery deadline).
At the end: `leaked_keys` (Redis keys once everyone left, minus the count before anyone joined),
`rss_growth_mib` per process instance, `error_lines` in every process's log.

Usage: ``python bench/chaos.py --json [--minutes M]`` (root: it makes a network namespace). One JSON
object on stdout; progress on stderr. Everything stops at the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # e2e.netns

from chaos_support.load import (
    AudioWatch,
    CallCycler,
    Chatter,
    Member,
    Room,
    SlowClient,
    presence_errors,
)
from chaos_support.topology import SERVER_ID, Topology
from e2e_support.client import install_loopback_ice
from e2e_support.stack import log

from e2e import netns
from voxa.client.voice import VoiceClient, VoiceEvent
from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.testing.procfs import status_kib
from voxa.common.testing.procs import http_json
from voxa.common.testing.stats import percentile
from voxa.common.tokens import mint_token

FAULTS: Final = (
    "signaling_kill",
    "sfu_kill",
    "redis_restart",
    "redis_failover",
    "partition",
    "sfu_freeze",
    "slow_client",
)
RECOVERY_TIMEOUT_S: Final = 60.0
STABLE_S: Final = 1.0
"""Recovered means the checks held for this long (not one lucky sample)."""
SETTLE_S: Final = 2.0
PERSISTENT_KEY = re.compile(r"^voxa:\{calls\}:servers$|^voxa:\{[^}]*\}:member:")
"""Keys meant to outlive every session (docs/store.md): the index of voice servers with calls and the
persistent member flags. Not counted as leaks."""
ERROR_LINE = re.compile(r'"level":\s*"(error|critical)"|Traceback \(most recent call last\)|^ERROR', re.M)


@dataclass
class Fault:
    kind: str
    at_s: float
    recovery_ms: list[float] = field(default_factory=list)
    audio_gap_max_ms: float = 0.0
    ghosts: int = 0
    missing: int = 0
    stuck: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        values = sorted(self.recovery_ms)
        return {
            "kind": self.kind,
            "at_s": round(self.at_s, 1),
            "recovery_p50_ms": _ms(percentile(values, 50)),
            "recovery_p99_ms": _ms(percentile(values, 99)),
            "recovery_max_ms": _ms(values[-1] if values else None),
            "audio_gap_max_ms": round(self.audio_gap_max_ms * 1000, 1),
            "ghosts": self.ghosts,
            "missing": self.missing,
            "stuck": self.stuck,
            **self.detail,
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.jwt_secret = secrets.token_urlsafe(32)
        self.topo = Topology(workdir, self.jwt_secret, secrets.token_urlsafe(32))
        self.rooms: list[Room] = []
        self.watch: AudioWatch | None = None
        self.calls: CallCycler | None = None
        self.faults: list[Fault] = []
        self.started = time.monotonic()
        self.wrong_at: dict[str, float] = {}
        """Per client, the last time its presence view was wrong (the presence watcher's samples)."""
        self._presence_task: asyncio.Task[None] | None = None
        self.rss_start: dict[str, float] = {}
        self.leaked: list[str] = []
        self.leaked_contents: dict[str, list[str]] = {}
        self.client_log = (workdir / "clients.log").open("a", buffering=1)

    def token(self, user: str, name: str | None = None) -> str:
        perms = parse_permissions("connect,speak,call")
        claims = VoiceClaims(sub=user, name=name or user, server=SERVER_ID, perms=perms)
        return mint_token(claims, self.jwt_secret)

    def client_event(self, user: str) -> Callable[[VoiceEvent], None]:
        """Every VoiceClient event into clients.log: what the clients lived through, for a diagnosis."""

        def write(event: VoiceEvent) -> None:
            if event.type in ("presence_join", "presence_leave", "presence_update", "speaking"):
                return
            self.client_log.write(
                json.dumps({"t": round(time.monotonic() - self.started, 3), "user": user, **event.as_dict()})
                + "\n"
            )

        return write

    # --- load -------------------------------------------------------------------------------------
    async def start_load(self) -> None:
        tone = 300.0
        for r in range(self.args.rooms):
            room = Room(f"room-{r}")
            for c in range(self.args.clients_per_room):
                user = f"u{r}-{c}"
                client = VoiceClient(
                    self.topo.ws_url,
                    self.token(user),
                    room.channel,
                    tone_hz=tone,
                    keep_s=1.0,
                    on_event=self.client_event(user),
                )
                room.members.append(Member(user, tone, client))
                tone += 40.0
            self.rooms.append(room)
        for room in self.rooms:
            for member in room.members:
                await member.client.start()
        self.watch = AudioWatch(self.rooms)
        self.watch.start()
        self.calls = CallCycler(self.topo.ws_url, self.token, "caller", "callee")
        self.calls.start()
        self._presence_task = asyncio.create_task(self._presence_watch())
        await self.until(self.healthy, "every client to hear its room and see the right presence", 120)

    async def _presence_watch(self) -> None:
        wrong: dict[str, tuple[list[str], list[str]]] = {}
        while True:
            now = time.monotonic()
            for room in self.rooms:
                truth = room.users
                for member in room.members:
                    seen = set(member.client.members())
                    if seen != truth:
                        self.wrong_at[member.user] = now
                        view = (sorted(seen - truth), sorted(truth - seen))
                        if wrong.get(member.user) != view:
                            wrong[member.user] = view
                            self._note(member.user, "presence_wrong", ghosts=view[0], missing=view[1])
                    elif wrong.pop(member.user, None) is not None:
                        self._note(member.user, "presence_right")
            await asyncio.sleep(0.05)

    def _note(self, user: str, event: str, **fields: Any) -> None:
        """A line of clients.log written by the soak itself (what it saw, not what a client said)."""
        line = {"t": round(time.monotonic() - self.started, 3), "user": user, "event": event, **fields}
        self.client_log.write(json.dumps(line) + "\n")

    def healthy(self, since: float | None = None) -> bool:
        assert self.watch is not None and self.calls is not None
        ghosts, missing, _ = presence_errors(self.rooms)
        calls_ok = since is None or self.calls.completed_since(since)
        return self.watch.all_hearing() and ghosts == 0 and missing == 0 and calls_ok

    async def until(self, check: Callable[[], bool], what: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        held_since: float | None = None
        while time.monotonic() < deadline:
            if check():
                held_since = held_since or time.monotonic()
                if time.monotonic() - held_since >= STABLE_S:
                    return True
            else:
                held_since = None
            await asyncio.sleep(0.05)
        log(f"not recovered after {timeout:g} s: {what}; {self.why_unhealthy()}")
        return False

    def why_unhealthy(self) -> str:
        assert self.watch is not None
        _, _, details = presence_errors(self.rooms)
        return f"not hearing {self.watch.not_hearing()[:6]}, presence {details[:4]}"

    # --- one fault --------------------------------------------------------------------------------
    async def recover(self, kind: str, injected: float, restored: float, **detail: Any) -> Fault:
        """Wait for recovery after `restored` (the injection itself, or the heal/SIGCONT); the audio
        gap counts from `injected`."""
        assert self.watch is not None and self.calls is not None
        recovered = await self.until(
            lambda: self.healthy(since=injected), f"{kind} recovery", RECOVERY_TIMEOUT_S
        )
        end = time.monotonic()
        audio, gap = self.watch.window(injected, end)
        fault = Fault(kind, injected - self.started, audio_gap_max_ms=gap, detail=detail)
        fault.detail["soak_loop_lag_max_ms"] = _ms(self.watch.loop_lag_max(injected, end))
        for room in self.rooms:
            for member in room.members:
                heard = max(0.0, (injected + audio.get(member.user, 0.0)) - restored)
                seen = max(0.0, self.wrong_at.get(member.user, 0.0) - restored)
                fault.recovery_ms.append(max(heard, seen))
        fault.ghosts, fault.missing, details = presence_errors(self.rooms)
        if not recovered:
            now = time.monotonic()
            fault.stuck = sum(
                1
                for room in self.rooms
                if any(not p.hearing(now) for p in self.watch.pairs if p.listener in room.members)
            ) + (0 if self.calls.completed_since(injected) else 1)
            fault.detail["unrecovered"] = self.why_unhealthy()
            fault.detail["presence_errors"] = details[:6]
        self.watch.reset_intervals()
        self.faults.append(fault)
        log(f"{kind}: {json.dumps(fault.as_dict())}")
        return fault

    def busiest_sfu(self) -> str:
        counts: dict[str, int] = {}
        for room in self.rooms:
            try:
                body = http_json(
                    f"{self.topo.signaling_base('a')}/internal/servers/{SERVER_ID}/channels/"
                    f"{room.channel}/media-server",
                    self.topo.sfu_secret,
                )
                name = str(body["media_server"]["id"])
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                continue
            counts[name] = counts.get(name, 0) + 1
        live = [n for n, p in self.topo.sfus.items() if p.alive()]
        return max(live, key=lambda n: counts.get(n, 0))

    async def inject(self, kind: str, round_no: int) -> None:
        topo = self.topo
        now = time.monotonic
        self._note("-", "fault", kind=kind, round=round_no)
        if kind == "signaling_kill":
            name = "ab"[round_no % 2]
            topo.signaling[name].kill()
            t = now()
            await self.recover(kind, t, t, replica=f"signaling-{name}")
            await asyncio.to_thread(topo.start_signaling, name)
        elif kind == "sfu_kill":
            name = self.busiest_sfu()
            topo.sfus[name].kill()
            t = now()
            await self.recover(kind, t, t, sfu=name)
            await asyncio.to_thread(topo.start_sfu, name)
            await asyncio.to_thread(topo.wait_registered, {name})
        elif kind == "redis_restart":
            primary = topo.primary()
            assert primary is not None and primary.proc is not None
            await asyncio.to_thread(primary.proc.stop)
            t = now()
            await asyncio.to_thread(topo.restart_redis, primary)
            await self.recover(kind, t, t, node=primary.name)
        elif kind == "redis_failover":
            old = topo.primary()
            assert old is not None and old.proc is not None
            old.proc.kill()
            t = now()
            promoted = await self._promoted(old.name)
            fault = await self.recover(kind, t, t, node=old.name, promoted_ms=_ms(promoted))
            new = topo.primary()
            if new is not None and new is not old:
                await asyncio.to_thread(topo.restart_redis, old, replica_of=new)
            else:
                fault.detail["error"] = "no replica was promoted"
                await asyncio.to_thread(topo.restart_redis, old)
        elif kind == "partition":
            await asyncio.to_thread(topo.partition)
            t = now()
            await asyncio.sleep(self.args.partition_s)
            await asyncio.to_thread(topo.heal)
            await self.recover(kind, t, now(), replica="signaling-b", held_s=self.args.partition_s)
        elif kind == "sfu_freeze":
            name = self.busiest_sfu()
            proc = topo.sfus[name].proc
            assert proc is not None
            proc.send_signal(signal.SIGSTOP)
            t = now()
            await asyncio.sleep(self.args.freeze_s)
            proc.send_signal(signal.SIGCONT)
            await self.recover(kind, t, now(), sfu=name, held_s=self.args.freeze_s)
        elif kind == "slow_client":
            await self._slow_client(kind)

    async def _promoted(self, old: str) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < RECOVERY_TIMEOUT_S:
            primary = await asyncio.to_thread(self.topo.primary)
            if primary is not None and primary.name != old:
                return time.monotonic() - start
            await asyncio.sleep(0.1)
        return None

    async def _slow_client(self, kind: str) -> None:
        topic = f"voice:{SERVER_ID}:slow"
        # Long display names make every presence change ~0.5 KiB, so the backlog grows in seconds.
        tokens = [self.token(f"chatter-{i}", name=f"chatter-{i}-".ljust(128, "x")) for i in range(6)]
        chatter = Chatter(self.topo.ws_url, tokens, topic)
        await chatter.start()
        slow = SlowClient("127.0.0.1", self.topo.lb_port, self.token("slow"), topic)
        before = self._slow_consumers()
        rss_before = self._signaling_rss()
        await asyncio.to_thread(slow.open)
        t = time.monotonic()
        detected: float | None = None
        rss_peak = dict(rss_before)
        while time.monotonic() - t < RECOVERY_TIMEOUT_S:
            for name, value in self._signaling_rss().items():
                rss_peak[name] = max(rss_peak.get(name, 0.0), value)
            if self._slow_consumers() > before:
                detected = time.monotonic() - t
                break
            await asyncio.sleep(0.1)
        code = await asyncio.to_thread(slow.drain)
        await chatter.stop()
        growth = {n: round(rss_peak[n] - rss_before.get(n, rss_peak[n]), 1) for n in rss_peak}
        fault = await self.recover(
            kind,
            t,
            t,
            detect_ms=_ms(detected),
            close_code=code,
            signaling_rss_peak_growth_mib=growth,
        )
        if detected is None or code != 1013:
            fault.stuck += 1

    def _slow_consumers(self) -> float:
        total = 0.0
        for name in ("a", "b"):
            try:
                with urllib.request.urlopen(  # noqa: S310 - the soak's own replicas
                    f"{self.topo.signaling_base(name)}/metrics", timeout=2
                ) as resp:
                    text = resp.read().decode()
            except (urllib.error.URLError, OSError):
                continue
            for line in text.splitlines():
                if line.startswith("voxa_signaling_errors_total") and 'kind="slow_consumer"' in line:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def _signaling_rss(self) -> dict[str, float]:
        out = {}
        for name, proc in self.topo.signaling.items():
            if proc.pid is not None and (kib := status_kib(proc.pid)) is not None:
                out[f"signaling-{name}"] = kib / 1024
        return out

    # --- the soak ---------------------------------------------------------------------------------
    def rss_sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for proc in self.topo.every:
            if proc.alive() and proc.pid is not None and (kib := status_kib(proc.pid)) is not None:
                out[proc.name] = kib / 1024
        return out

    async def run(self) -> dict[str, Any]:
        await asyncio.to_thread(self.topo.start)
        baseline_keys = self.topo.keys()
        log(f"stack up; {len(baseline_keys)} Redis keys before anyone joined")
        await self.start_load()
        assert self.watch is not None and self.calls is not None
        log("load up: every client hears its room")
        # A quiet minute's worth of baseline (shorter for short soaks): the gap nobody caused.
        self.watch.reset_intervals()
        quiet_from = time.monotonic()
        await asyncio.sleep(min(10.0, self.args.minutes * 6))
        _, baseline_gap = self.watch.window(time.monotonic(), time.monotonic())
        baseline_lag = self.watch.loop_lag_max(quiet_from, time.monotonic())
        self.rss_start = self.rss_sample()
        deadline = self.started + self.args.minutes * 60
        round_no = 0
        while True:
            for kind in self.args.faults:
                log(f"round {round_no}: {kind}")
                await self.inject(kind, round_no)
                await asyncio.sleep(SETTLE_S)
            round_no += 1
            if time.monotonic() >= deadline:
                break
            # Steady load between rounds, so a long soak is mostly load, not mostly faults.
            await asyncio.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                break
        rss_end = self.rss_sample()
        await self.stop_load()
        leaked, final_keys = await self._keys_back(set(baseline_keys))
        return {
            "faults": [f.as_dict() for f in self.faults],
            "rounds": round_no,
            "leaked_keys": leaked,
            "leaked_key_names": sorted(self.leaked)[:20],
            "leaked_key_contents": self.leaked_contents,
            "persistent_keys": sorted(k for k in final_keys if PERSISTENT_KEY.search(k))[:20],
            "rss_growth_mib": {
                name: round(rss_end[name] - start, 1)
                for name, start in self.rss_start.items()
                if name in rss_end
            },
            "error_lines": self.error_lines(),
            "baseline_gap_max_ms": round(baseline_gap * 1000, 1),
            "baseline_loop_lag_max_ms": _ms(baseline_lag),
            "call_cycles": len(self.calls.completed),
            "call_failures": self.calls.failures,
            "open_calls_ended": self.calls.open_calls_ended,
        }

    async def stop_load(self) -> None:
        if self.calls is not None:
            await self.calls.stop()
        if self._presence_task is not None:
            self._presence_task.cancel()
        if self.watch is not None:
            await self.watch.stop()
        for room in self.rooms:
            for member in room.members:
                with contextlib.suppress(Exception):
                    await member.client.close()

    async def _keys_back(self, baseline: set[str]) -> tuple[int, list[str]]:
        """Once everyone left, the keys are back to the baseline (presence, sessions, calls and
        assignments removed or expired), persistent ones aside; what is left after a grace of four
        replica TTLs and 20 s is leaked."""
        deadline = time.monotonic() + 4 * self.topo.replica_ttl_s + 20
        leaked: list[str] = []
        keys: list[str] = []
        while time.monotonic() < deadline:
            keys = await asyncio.to_thread(self.topo.keys)
            leaked = [k for k in keys if k not in baseline and not PERSISTENT_KEY.search(k)]
            leaked = [k for k in leaked if k not in await asyncio.to_thread(self.topo.expiring, leaked)]
            if not leaked:
                break
            await asyncio.sleep(0.5)
        self.leaked = leaked
        self.leaked_contents = await asyncio.to_thread(self.topo.contents, leaked[:20])
        return len(leaked), keys

    def error_lines(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        samples: list[str] = []
        for proc in self.topo.every:
            try:
                text = proc.log_path.read_text(errors="replace")
            except OSError:
                continue
            hits = [line for line in text.splitlines() if ERROR_LINE.search(line)]
            if hits:
                counts[proc.name] = len(hits)
                samples.extend(f"{proc.name}: {line[:300]}" for line in hits[:3])
        return {"total": sum(counts.values()), "by_process": counts, "samples": samples[:12]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    parser.add_argument("--minutes", type=float, default=30.0, help="Soak length (default 30).")
    parser.add_argument("--rooms", type=int, default=3, help="Voice rooms (default 3).")
    parser.add_argument("--clients-per-room", type=int, default=3, help="Clients per room (default 3).")
    parser.add_argument("--partition-s", type=float, default=8.0, help="Partition length (default 8 s).")
    parser.add_argument("--freeze-s", type=float, default=5.0, help="SFU freeze length (default 5 s).")
    parser.add_argument(
        "--faults",
        type=lambda text: [f for f in text.split(",") if f],
        default=list(FAULTS),
        help=f"Fault kinds, in order (default all: {','.join(FAULTS)}).",
    )
    parser.add_argument("--keep-logs", action="store_true", help="Keep the process logs' directory.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = netns.available()
    if reason is not None:
        print(f"chaos: {reason} (the partition fault needs a network namespace)", file=sys.stderr)
        return 2
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        print("chaos: haproxy is not installed (make setup-test installs it)", file=sys.stderr)
        return 2
    install_loopback_ice()
    workdir = Path(tempfile.mkdtemp(prefix="voxa-chaos-"))
    soak = Soak(args, workdir)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    ok = False
    try:
        result = asyncio.run(soak.run())
        result.update(
            minutes=args.minutes,
            rooms=args.rooms,
            clients_per_room=args.clients_per_room,
            machine={"cpus": os.cpu_count(), "python": platform.python_version()},
            elapsed_s=round(time.monotonic() - soak.started, 1),
        )
        print(json.dumps(result) if args.json else json.dumps(result, indent=2), flush=True)
        ok = True
    finally:
        soak.topo.stop()
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
