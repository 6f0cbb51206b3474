#!/usr/bin/env python3
"""Micro-benchmark of the SFU's per-packet building blocks (voxa.sfu.rtp, .rtcp, .speaker).

The SFU forwards in pure Python, so the cost of each per-packet function bounds how many packets per
second one process can forward; this prints those costs so a change that slows the hot path shows.

Every figure is nanoseconds per call, including the `for` loop around it (reported on its own as
``loop``): the median of ``--runs`` timed passes of ``--iterations`` calls, with time.perf_counter_ns.
Stateful functions are fed realistic, advancing input (consecutive sequence numbers wrapping at
65535, timestamps advancing by 20 ms frames), so they take the same branches as in production.

Usage: ``python bench/sfu_micro.py [--iterations 200000] [--runs 5] [--only rewrite]`` prints one JSON
object {name: ns_per_op} on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from voxa.sfu.rtcp import (
    KeyframeRequestThrottle,
    PacketHistory,
    ReceiverStats,
    ReportBlock,
    build_nack,
    build_remb,
    build_rr,
    build_sr,
    parse_rtcp,
)
from voxa.sfu.rtp import (
    Rewriter,
    SeqUnwrapper,
    audio_level,
    audio_level_raw,
    check_rtp,
    find_extension,
    header_length,
    payload_type_of,
    seq_diff,
    sequence_of,
    ssrc_of,
    timestamp_of,
)
from voxa.sfu.speaker import SpeakerDetector

# Chrome-like audio header extensions: audio level (1), abs-send-time (2), transport-cc (3), mid (4)
CHROME_AUDIO_EXT = struct.pack("!HH", 0xBEDE, 3) + bytes(
    [0x10, 0x85, 0x22, 1, 2, 3, 0x31, 0, 7, 0x40, 0x30, 0]
)
DISTINCT = 65536  # distinct packets per stream: one full cycle of sequence numbers

Loop = Callable[[int], None]


def rtp_packet(seq: int, payload_len: int, pt: int = 111, frame_ticks: int = 960) -> bytes:
    head = struct.pack("!BBHII", 0x90, pt, seq & 0xFFFF, (seq * frame_ticks) & 0xFFFFFFFF, 0x1234)
    return head + CHROME_AUDIO_EXT + bytes(payload_len)


def stream(payload_len: int, pt: int = 111, frame_ticks: int = 960) -> list[bytes]:
    return [rtp_packet(s, payload_len, pt, frame_ticks) for s in range(DISTINCT)]


def cycle(items: Sequence[Any], n: int) -> list[Any]:
    reps = n // len(items) + 1
    return (list(items) * reps)[:n]


def timed(loop: Loop, n: int, runs: int) -> float:
    results = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        loop(n)
        results.append((time.perf_counter_ns() - t0) / n)
    return round(statistics.median(results), 1)


def cases(n: int) -> dict[str, Loop]:
    audio = stream(80)
    video = stream(1100, pt=96, frame_ticks=3000)
    audio_n = cycle(audio, n)
    video_n = cycle(video, n)
    seqs = cycle(range(DISTINCT), n)
    levels_n = [audio_level_raw(p, 1) for p in audio_n]

    def loop(n: int) -> None:
        for _ in audio_n:
            pass

    def simple(fn: Callable[[bytes], object]) -> Loop:
        def run(n: int) -> None:
            for p in audio_n:
                fn(p)

        return run

    def ext(n: int) -> None:
        for p in audio_n:
            find_extension(p, 4)

    def level_raw(n: int) -> None:
        for p in audio_n:
            audio_level_raw(p, 1)

    def level_tuple(n: int) -> None:
        for p in audio_n:
            audio_level(p, 1)

    def diff(n: int) -> None:
        for s in seqs:
            seq_diff(s, 100)

    def unwrap(n: int) -> None:
        update = SeqUnwrapper().update
        for s in seqs:
            update(s)

    def rewriter(clock: int, pt: int) -> Rewriter:
        return Rewriter(
            0xCAFE, clock, {pt: pt}, mid="0", mid_id=4, abs_send_time_id=2, audio_level_id=1, initial_seq=0
        )

    def rewrite_audio(n: int) -> None:
        rewrite = rewriter(48000, 111).rewrite
        for p, lv in zip(audio_n, levels_n, strict=True):
            rewrite(p, 0, 0x123456, lv)

    def rewrite_video(n: int) -> None:
        rewrite = rewriter(90000, 96).rewrite
        for p in video_n:
            rewrite(p, 0, 0x123456, -1)

    def fanout_10(n: int) -> None:
        """Per incoming audio packet: validate, read the level once, rewrite + store for 10 consumers.

        n // 10 incoming packets make n outgoing ones, so the figure is per outgoing packet.
        """
        consumers = [(rewriter(48000, 111).rewrite, PacketHistory().put) for _ in range(10)]
        for p in audio_n[: n // 10]:
            if check_rtp(p) is not None:
                continue
            lv = audio_level_raw(p, 1)
            for rewrite, put in consumers:
                out = rewrite(p, 0, 0x123456, lv)
                if out is not None:
                    put(out)

    def history_put(n: int) -> None:
        put = PacketHistory(1024).put
        for p in audio_n:
            put(p)

    def history_get(n: int) -> None:
        h = PacketHistory(1024)
        for p in audio[:1024]:
            h.put(p)
        get = h.get
        for s in seqs:
            get(s)

    def stats_update(n: int) -> None:
        update = ReceiverStats(1).update
        t = 0.0
        for s in seqs:
            t += 20.0
            update(s, s * 960, t, 48000)

    block = ReportBlock(1, 2, 3, 4, 5, 6, 7)
    chrome_rr = build_rr(1, [block]) + build_remb(1, 1_000_000, [2])
    sr = build_sr(1, 2, 3, 4, 5, [block])
    nack = build_nack(1, 2, [10, 11, 15, 40])

    def parse(data: bytes) -> Loop:
        def run(n: int) -> None:
            for _ in audio_n:
                parse_rtcp(data)

        return run

    def nack_build(n: int) -> None:
        lost = [10, 11, 15, 40]
        for _ in audio_n:
            build_nack(1, 2, lost)

    def report(n: int) -> None:
        stats = ReceiverStats(1)
        for s in range(100):
            stats.update(s, s * 960, s * 20.0, 48000)
        for _ in audio_n:
            stats.report_block(1000.0)

    def throttle(n: int) -> None:
        request = KeyframeRequestThrottle(1000).request
        for i in range(n):
            request(i)

    def speaker_feed(n: int) -> None:
        det = SpeakerDetector()
        feed = det.feed
        names = cycle([f"p{i}" for i in range(10)], n)
        t = 0
        for name in names:
            t += 2  # 10 participants, one packet each per 20 ms
            feed(name, t, 30, True)

    def speaker_tick(n: int) -> None:
        det = SpeakerDetector()
        for i in range(10):
            det.feed(f"p{i}", 0, 30, True)
        tick = det.tick
        for i in range(n):
            tick(i * 50)

    return {
        "loop": loop,
        "rtp.ssrc_of": simple(ssrc_of),
        "rtp.sequence_of": simple(sequence_of),
        "rtp.timestamp_of": simple(timestamp_of),
        "rtp.payload_type_of": simple(payload_type_of),
        "rtp.header_length": simple(header_length),
        "rtp.check_rtp": simple(check_rtp),
        "rtp.find_extension(4th element)": ext,
        "rtp.audio_level_raw": level_raw,
        "rtp.audio_level": level_tuple,
        "rtp.seq_diff": diff,
        "rtp.SeqUnwrapper.update": unwrap,
        "rtp.Rewriter.rewrite(audio 80B)": rewrite_audio,
        "rtp.Rewriter.rewrite(video 1100B)": rewrite_video,
        "fanout(1 in -> 10 out) per outgoing packet": fanout_10,
        "rtcp.PacketHistory.put": history_put,
        "rtcp.PacketHistory.get": history_get,
        "rtcp.ReceiverStats.update": stats_update,
        "rtcp.ReceiverStats.report_block": report,
        "rtcp.parse_rtcp(RR+REMB)": parse(chrome_rr),
        "rtcp.parse_rtcp(SR)": parse(sr),
        "rtcp.parse_rtcp(NACK)": parse(nack),
        "rtcp.build_nack(4 seqs)": nack_build,
        "rtcp.KeyframeRequestThrottle.request": throttle,
        "speaker.feed": speaker_feed,
        "speaker.tick(10 participants)": speaker_tick,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    args = parser.parse_args(argv)
    n = args.iterations
    results: dict[str, float] = {}
    for name, fn in cases(n).items():
        if args.only in name:
            results[name] = timed(fn, n, args.runs)
    json.dump(results, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
