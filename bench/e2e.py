#!/usr/bin/env python3
"""End-to-end benchmark of Voxa's media path: join-to-audio latency and recovery from a killed SFU.

The benchmark starts, on free loopback ports, a redis-server (``--store memory`` skips it), one
``voxa signaling`` (``VOXA_MEDIA_SERVER_TTL_S=3``) and two ``voxa sfu --workers 1`` (media servers
``sfu-a`` and ``sfu-b`` of voice server ``g1``), waits until both are in signaling's registry, then
drives real clients from this process: a Phoenix socket (voxa.client.phoenix) and an aiortc peer
connection each, sending a tone and negotiating through the voice channel (docs/protocol.md).

1. join: ``--rooms`` channels of ``--clients-per-room`` clients all join at once; per client,
   join-to-audio is the time from opening its socket to the first RTP packet from another participant
   on its peer connection (taken on aiortc's receive path, see bench/e2e_support/client.py). The round is
   repeated ``--join-rounds`` times (fresh channels, the previous round's clients gone first); every
   client of every round is one sample. The marks of each step (socket open, join reply, offer acked,
   SDP answer, ICE and DTLS connected, the SFU's offer with the others' tracks, first packet) are
   summarised too: ``join_phases_ms`` as milliseconds after the socket was opened, ``join_steps_ms``
   as the duration of each step of the critical path (where the time goes).
2. kills: the last round's clients stay. ``--kills`` times: the SFU hosting channel ``k % rooms`` (per
   signaling's registry) is SIGKILLed; signaling notices, moves its channels to the other SFU and sends
   ``media_reset``; every client of a moved channel negotiates anew. A client's recovery is the time
   from the SIGKILL to the first packet on its new peer connection; a kill's figure is the median over
   the moved clients, and ``sfu_kill_recovery_ms`` is the median over kills
   (``sfu_kill_recovery_steps_ms``: detection by signaling, closing the old peer connection, then the
   same steps as a join). Before the next kill a replacement SFU with the killed one's id is started
   and waited for in the registry.

Usage: ``python bench/e2e.py --json`` prints ONE JSON object on stdout; progress goes to stderr.
Everything runs on loopback (aioice is limited to 127.0.0.1); every process started is stopped at the
end, also on errors and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

from e2e_support.client import (
    Attempt,
    BenchClient,
    install_loopback_ice,
    install_rtp_hook,
)
from e2e_support.stack import Stack, log

from voxa.client.media import SineTrack
from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.testing.stats import percentile
from voxa.common.tokens import mint_token
from voxa.signaling import media as voxa_media

SERVER_ID: Final = "g1"
SFU_IDS: Final = ("sfu-a", "sfu-b")
MEDIA_SERVER_TTL_S: Final = 3.0
AUDIO_TIMEOUT_S: Final = 30.0
RECOVERY_TIMEOUT_S: Final = 30.0
CLOSE_TIMEOUT_S: Final = 10.0
SETTLE_S: Final = 0.5
JOIN_PHASES: Final = (
    "ws_open",
    "join_reply",
    "offer_created",
    "offer_acked",
    "answer_received",
    "answer_applied",
    "ice_connected",
    "dtls_connected",
    "sfu_offer_received",
    "sfu_offer_answered",
    "first_packet",
)
RECOVERY_PHASES: Final = ("reset", "old_pc_closed", *JOIN_PHASES[2:])
# Where the time goes: consecutive steps of one attempt (from mark, to mark). The SFU's offer of the
# other participants' tracks is negotiated while ICE/DTLS run, so it is not on this critical path.
JOIN_STEPS: Final = (
    ("ws_connect", "start", "ws_open"),
    ("join", "ws_open", "join_reply"),
    ("create_offer", "join_reply", "offer_created"),
    ("sfu_answer", "offer_created", "answer_received"),
    ("apply_answer", "answer_received", "answer_applied"),
    ("ice", "answer_applied", "ice_connected"),
    ("dtls", "ice_connected", "dtls_connected"),
    ("first_packet", "dtls_connected", "first_packet"),
)
RECOVERY_STEPS: Final = (
    ("detect", "kill", "reset"),
    ("close_old_pc", "reset", "old_pc_closed"),
    ("create_offer", "old_pc_closed", "offer_created"),
    *JOIN_STEPS[3:],
)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def summary(samples: Sequence[float]) -> dict[str, float | int | None]:
    values = sorted(samples)
    return {
        "n": len(values),
        "p50": ms(percentile(values, 50)),
        "p99": ms(percentile(values, 99)),
        "max": ms(values[-1] if values else None),
    }


def phase_summary(attempts: Sequence[Attempt], origin: dict[int, float], names: Sequence[str]) -> Any:
    """Per step: p50/p99/max of (mark - origin) over the attempts that reached it, in ms."""
    out: dict[str, Any] = {}
    for name in names:
        values = [a.marks[name] - origin[id(a)] for a in attempts if name in a.marks]
        out[name] = summary(values)
    return out


def step_summary(attempts: Sequence[Attempt], steps: Sequence[tuple[str, str, str]]) -> Any:
    """Per step: p50/p99 of (to mark - from mark) over the attempts that have both marks, in ms."""
    out: dict[str, Any] = {}
    for name, start, end in steps:
        values = [a.marks[end] - a.marks[start] for a in attempts if start in a.marks and end in a.marks]
        out[name] = {k: v for k, v in summary(values).items() if k in ("n", "p50", "p99")}
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.make_track = SineTrack
        self.clients: list[BenchClient] = []
        self.errors: list[str] = []
        self.kill_attempts: list[Attempt] = []  # the first audible attempt of each moved client
        self.kill_recovery: list[float] = []  # per moved client, seconds

    def token(self, user: str) -> str:
        claims = VoiceClaims(sub=user, name=user, server=SERVER_ID, perms=parse_permissions("connect,speak"))
        return mint_token(claims, self.stack.jwt_secret)

    # --- join phase -------------------------------------------------------------------------------
    async def join_round(self, round_no: int) -> list[BenchClient]:
        rooms, per_room = self.args.rooms, self.args.clients_per_room
        clients = [
            BenchClient(
                self.stack.ws_url,
                self.token(f"r{round_no}u{room}x{i}"),
                f"voice:{SERVER_ID}:r{round_no}c{room}",
                f"r{round_no}c{room}/u{i}",
                self.make_track,
                300.0 + 100.0 * i,
            )
            for room in range(rooms)
            for i in range(per_room)
        ]
        self.clients = clients
        results = await asyncio.gather(*(c.start() for c in clients), return_exceptions=True)
        for client, result in zip(clients, results, strict=True):
            if isinstance(result, BaseException):
                self.errors.append(f"join {client.label}: {type(result).__name__}: {result}")
        waiting = [c for c in clients if c.failed is None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(AUDIO_TIMEOUT_S):
                await asyncio.gather(*(c.audio_event.wait() for c in waiting))
        for client in clients:
            if "first_packet" not in client.attempts[0].marks:
                self.errors.append(f"no audio for {client.label} within {AUDIO_TIMEOUT_S:g} s")
        return clients

    async def close_clients(self, clients: Sequence[BenchClient]) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    # --- kill phase -------------------------------------------------------------------------------
    async def wait_all_audio(self, clients: Sequence[BenchClient], timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(c.audio_event.wait() for c in clients))
        except TimeoutError:
            return False
        return True

    async def kill_once(self, kill_no: int, clients: Sequence[BenchClient]) -> dict[str, Any]:
        stack = self.stack
        rooms = sorted({c.topic.rsplit(":", 1)[1] for c in clients})
        target = rooms[kill_no % len(rooms)]
        hosts = {room: await asyncio.to_thread(stack.host_of, room) for room in rooms}
        victim = hosts[target]
        if victim is None or victim not in stack.sfus:
            raise RuntimeError(f"channel {target} has no known media server ({hosts})")
        moved = [c for c in clients if hosts[c.topic.rsplit(":", 1)[1]] == victim]
        before = {id(c): len(c.attempts) for c in moved}
        handle = stack.sfus[victim]
        log(f"kill {kill_no + 1}: SIGKILL {victim} (pid {handle.proc.pid}) hosting {len(moved)} clients")
        killed_at = time.monotonic()
        handle.proc.kill()
        recovered = await self._wait_recovered(moved, before)
        recovery: list[float] = []
        attempts: list[Attempt] = []
        for client in moved:
            new = client.attempts[before[id(client)] :]
            heard = [a for a in new if "first_packet" in a.marks]
            if heard:
                heard[0].marks["kill"] = killed_at
                recovery.append(heard[0].marks["first_packet"] - killed_at)
                attempts.append(heard[0])
            else:
                self.errors.append(f"kill {kill_no + 1}: {client.label} got no audio again")
        self.kill_attempts.extend(attempts)
        self.kill_recovery.extend(recovery)
        origin = {id(a): killed_at for a in attempts}
        resets = sum(len(c.attempts) - before[id(c)] for c in moved)
        result: dict[str, Any] = {
            "victim": victim,
            "clients_moved": len(moved),
            "recovered": recovered,
            "resets": resets,
            "recovery_median_ms": ms(statistics.median(recovery)) if recovery else None,
            "recovery_max_ms": ms(max(recovery)) if recovery else None,
            "phases_ms": phase_summary(attempts, origin, RECOVERY_PHASES),
            "steps_ms": step_summary(attempts, RECOVERY_STEPS),
            "new_hosts": sorted({h for r in rooms if (h := await asyncio.to_thread(stack.host_of, r))}),
        }
        log(
            f"kill {kill_no + 1}: {len(recovery)}/{len(moved)} clients hear audio again, "
            f"median {result['recovery_median_ms']} ms, max {result['recovery_max_ms']} ms"
        )
        # Bring the killed SFU back (same id, new process) so both exist again before the next kill.
        began = time.monotonic()
        await asyncio.to_thread(stack.start_sfu, victim)
        await asyncio.to_thread(stack.wait_registered)
        log(f"kill {kill_no + 1}: {victim} replaced and registered in {time.monotonic() - began:.1f} s")
        await asyncio.sleep(SETTLE_S)
        return result

    async def _wait_recovered(self, moved: Sequence[BenchClient], before: dict[int, int]) -> bool:
        def done(client: BenchClient) -> bool:
            return any("first_packet" in a.marks for a in client.attempts[before[id(client)] :])

        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(done(c) for c in moved):
                return True
            await asyncio.sleep(0.005)
        return False

    # --- run ----------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        args = self.args
        join_attempts: list[Attempt] = []
        clients: list[BenchClient] = []
        rounds: list[dict[str, Any]] = []
        from_room_peer = 0
        join_wall = join_cpu = 0.0
        try:
            for round_no in range(args.join_rounds):
                if clients:
                    await self.close_clients(clients)
                    await asyncio.sleep(SETTLE_S)
                log(
                    f"join round {round_no + 1}/{args.join_rounds}: {args.rooms} rooms x "
                    f"{args.clients_per_room} clients at once"
                )
                wall, cpu = time.monotonic(), time.process_time()
                clients = await self.join_round(round_no)
                join_wall += time.monotonic() - wall
                join_cpu += time.process_time() - cpu
                self.stack.check_alive()
                from_room_peer += sum(1 for c in clients if c.first_packet_from_room_peer(clients))
                firsts = [c.attempts[0] for c in clients if c.attempts]
                heard = [a for a in firsts if "first_packet" in a.marks]
                join_attempts.extend(heard)
                hosts = sorted({str(c.join_reply.get("media_server")) for c in clients if c.join_reply})
                values = sorted(a.marks["first_packet"] - a.marks["start"] for a in heard)
                rounds.append(
                    {"clients": len(clients), "heard": len(heard), "p50_ms": ms(percentile(values, 50)),
                     "media_servers": hosts}
                )  # fmt: skip
                log(
                    f"  {len(heard)}/{len(clients)} clients hear audio, p50 "
                    f"{ms(percentile(values, 50))} ms, max {ms(values[-1] if values else None)} ms, "
                    f"media servers {hosts}"
                )
            kills: list[dict[str, Any]] = []
            if args.kills and clients:
                await asyncio.sleep(SETTLE_S)
                for kill_no in range(args.kills):
                    if not await self.wait_all_audio(clients, AUDIO_TIMEOUT_S):
                        self.errors.append(f"kill {kill_no + 1}: not every client had audio before it")
                    kills.append(await self.kill_once(kill_no, clients))
                    self.stack.check_alive()
        finally:
            # self.clients: the round being joined when an error or a signal cut it short.
            await self.close_clients([*clients, *(c for c in self.clients if c not in clients)])

        join_values = [a.marks["first_packet"] - a.marks["start"] for a in join_attempts]
        join = summary(join_values)
        kill_medians = [k["recovery_median_ms"] for k in kills if k["recovery_median_ms"] is not None]
        from_others = sum(1 for a in join_attempts if a.first_from is not None)
        return {
            "join_to_audio_p50_ms": join["p50"],
            "join_to_audio_p99_ms": join["p99"],
            "join_to_audio_max_ms": join["max"],
            "join_to_audio_mean_ms": ms(statistics.fmean(join_values)) if join_values else None,
            "sfu_kill_recovery_ms": round(statistics.median(kill_medians), 1) if kill_medians else None,
            "sfu_kill_recovery_samples_ms": kill_medians,
            "sfu_kill_recovery_per_client_ms": summary(self.kill_recovery),
            "sfu_kill_recovery_steps_ms": step_summary(self.kill_attempts, RECOVERY_STEPS),
            "join_phases_ms": phase_summary(
                join_attempts, {id(a): a.marks["start"] for a in join_attempts}, JOIN_PHASES
            ),
            "join_steps_ms": step_summary(join_attempts, JOIN_STEPS),
            "join_rounds": rounds,
            "kills": kills,
            "samples": len(join_values),
            "first_packet_from_known_peer": from_others,
            "first_packet_from_room_peer": from_room_peer,
            "driver_cpu_percent_during_joins": round(100.0 * join_cpu / join_wall, 1) if join_wall else None,
            "errors": len(self.errors),
            "error_kinds": self.errors[:20],
        }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    parser.add_argument("--rooms", type=int, default=5, help="Channels joining at once (default 5).")
    parser.add_argument("--clients-per-room", type=int, default=2, help="Clients per channel (default 2).")
    parser.add_argument(
        "--join-rounds", type=int, default=5, help="Join rounds, fresh channels each (default 5)."
    )
    parser.add_argument("--kills", type=int, default=3, help="SFU kills to measure (default 3; 0 skips).")
    parser.add_argument(
        "--store", choices=("redis", "memory"), default="redis", help="Signaling's store (default redis)."
    )
    parser.add_argument("--keep-logs", action="store_true", help="Keep the process logs' directory.")
    args = parser.parse_args(argv)
    if args.rooms < 1 or args.clients_per_room < 2 or args.join_rounds < 1 or args.kills < 0:
        parser.error("need --rooms >= 1, --clients-per-room >= 2, --join-rounds >= 1, --kills >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    install_loopback_ice()
    install_rtp_hook()
    if args.store == "redis" and not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        log("redis-server not found: using signaling's in-memory store")
        args.store = "memory"
    workdir = Path(tempfile.mkdtemp(prefix="voxa-bench-e2e-"))
    stack = Stack(
        workdir,
        jwt_secret=secrets.token_urlsafe(32),
        sfu_secret=secrets.token_urlsafe(24),
        server_id=SERVER_ID,
        media_server_ttl_s=MEDIA_SERVER_TTL_S,
        use_redis=args.store == "redis",
    )

    def terminate(signum: int, frame: FrameType | None) -> None:
        del frame
        raise SystemExit(128 + signum)

    # Outside the event loop a signal ends the run where it is; inside, it cancels the benchmark task
    # so its clients close their peer connections (aiortc's codec threads end with them) first.
    interrupted: list[int] = []
    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    ok = False
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        if stack.use_redis:
            stack.start_redis()
        stack.start_signaling()
        for media_id in SFU_IDS:
            stack.start_sfu(media_id)
        stack.wait_registered()
        log(
            f"stack up: signaling {stack.signaling_url}, SFUs {sorted(stack.media_servers())}, logs {workdir}"
        )
        result = asyncio.run(run_bench(args, stack, interrupted))
        ok = result["samples"] > 0 and (args.kills == 0 or result["sfu_kill_recovery_ms"] is not None)
    except asyncio.CancelledError:
        if not interrupted:
            raise
        log(f"stopped by signal {interrupted[0]}")
        return 128 + interrupted[0]
    except (SystemExit, KeyboardInterrupt):
        log("stopped by a signal")
        raise
    except BaseException:
        for proc in stack.procs:
            if proc.log_path.exists() and proc.log_path.stat().st_size:
                log(f"--- {proc.name} log tail ---\n{proc.log_path.read_text(errors='replace')[-1500:]}")
        raise
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    result.update(
        rooms=args.rooms,
        clients_per_room=args.clients_per_room,
        clients=args.rooms * args.clients_per_room,
        kills_requested=args.kills,
        store=args.store,
        redis_version=stack.redis_version,
        media_servers=list(SFU_IDS),
        media_server_ttl_s=MEDIA_SERVER_TTL_S,
        sfu_heartbeat_interval_s=MEDIA_SERVER_TTL_S / 3,
        signaling_reconnect_attempts_before_dead=getattr(voxa_media, "RECONNECT_ATTEMPTS_BEFORE_DEAD", None),
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        loadavg_1m_before=round(load_before, 2),
        loadavg_1m_after=round(os.getloadavg()[0], 2),
        wall_s=round(time.monotonic() - started, 1),
    )
    if args.json:
        print(json.dumps(result, separators=(",", ":")), flush=True)
    else:
        print(json.dumps(result, indent=2), flush=True)
    return 0 if ok else 1


async def run_bench(args: argparse.Namespace, stack: Stack, interrupted: list[int]) -> dict[str, Any]:
    """Bench.run with SIGTERM/SIGINT cancelling it (recorded in `interrupted`)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop(signum: int) -> None:
        interrupted.append(signum)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await Bench(args, stack).run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def exit_now(code: int) -> None:
    """Exit with `code`; if a non-daemon thread outlived the run (an aiortc codec thread of a peer
    connection that could not be closed), do not wait for it: every child process is stopped already."""
    sys.stdout.flush()
    sys.stderr.flush()
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    exit_now(status)
