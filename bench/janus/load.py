"""Measure Janus forwarding 1 publisher -> N subscribers with aiortc peers (all on loopback).

Usage (from the repository root): ``PYTHONPATH=bench .venv/bin/python -m janus.load --subscribers 10 30``
prints one JSON object per N on stdout. For each N the run starts a fresh Janus, one publisher sending a
440 Hz Opus tone, N subscribers (each with its own Janus session, all in this process), waits for every
subscriber to receive audio, lets `--warmup` seconds pass, then measures for `--seconds`:

* ``janus_cpu_pct``: Janus's utime+stime delta (/proc/<pid>/stat, all threads) over wall time, in % of one
  core; ``loadgen_cpu_pct`` the same for this process (aiortc's decoder threads included);
* ``host_busy_pct``: the whole machine's busy share over all cores (/proc/stat), to see saturation;
* ``rx_pps``: RTP packets/s received by all subscribers together (aiortc inbound-rtp stats), against
  ``expected_pps`` = N x the publisher's packets/s (50 for 20 ms Opus frames).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp

from voxa.common.testing.procfs import core_ticks, cpu_seconds

from .client import JanusSession, VideoRoom
from .peers import Publisher, Subscriber, restrict_ice_to_loopback
from .server import JanusServer


async def measure_fanout(
    subscribers: int, *, seconds: float = 10.0, warmup: float = 2.0, debug_level: int = 3
) -> dict[str, Any]:
    restrict_ice_to_loopback()
    async with (
        JanusServer(debug_level=debug_level) as janus,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        sessions: list[JanusSession] = []
        peers: list[Publisher | Subscriber] = []
        try:
            control = await JanusSession.create(janus.http_url, http=http)
            sessions.append(control)
            room = await (await VideoRoom.attach(control)).create_room()
            publisher = Publisher(control, room, 440.0)
            peers.append(publisher)
            await publisher.start()
            subs: list[Subscriber] = []
            setup_started = time.monotonic()
            for _ in range(subscribers):
                session = await JanusSession.create(janus.http_url, http=http)
                sessions.append(session)
                sub = Subscriber(session, room, [publisher.feed_id], keep_seconds=0)
                peers.append(sub)
                subs.append(sub)
            await asyncio.gather(*(s.start(timeout=60) for s in subs))
            await asyncio.gather(*(s.wait_frames(10, timeout=30) for s in subs))
            setup_s = time.monotonic() - setup_started
            await asyncio.sleep(warmup)

            async def snapshot() -> tuple[float, float, float, int, int, int, int]:
                rx = sum(await asyncio.gather(*(s.packets_received() for s in subs)))
                tx = await publisher.packets_sent()
                busy, total = core_ticks()
                return (
                    time.monotonic(),
                    janus.cpu_seconds(),
                    cpu_seconds(os.getpid()) or 0.0,
                    rx,
                    tx,
                    busy,
                    total,
                )

            t0, j0, l0, rx0, tx0, b0, h0 = await snapshot()
            await asyncio.sleep(seconds)
            t1, j1, l1, rx1, tx1, b1, h1 = await snapshot()
            wall = t1 - t0
            tx_pps = (tx1 - tx0) / wall
            return {
                "subscribers": subscribers,
                "seconds": round(wall, 2),
                "setup_s": round(setup_s, 2),
                "janus_cpu_pct": round(100 * (j1 - j0) / wall, 1),
                "loadgen_cpu_pct": round(100 * (l1 - l0) / wall, 1),
                "host_busy_pct": round(100 * (b1 - b0) / max(1, h1 - h0), 1),
                "cpu_count": os.cpu_count(),
                "publisher_tx_pps": round(tx_pps, 1),
                "rx_pps": round((rx1 - rx0) / wall, 1),
                "expected_pps": round(tx_pps * subscribers, 1),
                "janus_version": janus.server_info.get("version_string"),
            }
        finally:
            for peer in reversed(peers):
                await peer.close()
            for session in sessions:
                await session.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--debug-level", type=int, default=3)
    args = parser.parse_args(argv)
    for n in args.subscribers:
        result = asyncio.run(
            measure_fanout(n, seconds=args.seconds, warmup=args.warmup, debug_level=args.debug_level)
        )
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
