"""`voxa client join`: a VoiceClient from the command line, for smoke tests, demos and load scripts.

    voxa client join --url ws://127.0.0.1:4000/socket --token "$T" --channel lobby \\
        --tone 440 --record heard.wav --seconds 10 --json

It joins, sends a tone (`--tone HZ`), a WAV file (`--play FILE`, `--loop` to repeat it) or nothing,
records what it hears to one WAV file (`--record`: every participant mixed on one wall-clock timeline,
48 kHz mono 16-bit, silence where nobody spoke), prints what happens (presence, speaking, tracks, media
state; JSON lines with `--json`), and leaves after `--seconds`. Exit status: 0 after a normal run
(also when a moderator disconnected the client), 2 when the socket or the join is refused (the reason,
e.g. `HTTP 403: bad token signature`, goes to stderr and, with `--json`, to an `error` line on stdout),
1 for anything else that ended the run early.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any, TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2


def add_parser(sub: Any) -> None:
    """Add `client` (with `join`) to the `voxa` command's subparsers."""
    client = sub.add_parser("client", help="Join a voice channel as a Python client (aiortc).")
    commands = client.add_subparsers(dest="client_command", required=True)
    join = commands.add_parser(
        "join",
        help="Join a channel, send a tone or a WAV file, record what is heard, leave after --seconds.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    join.add_argument("--url", required=True, help="Socket URL, e.g. ws://127.0.0.1:4000/socket.")
    join.add_argument("--token", required=True, help="Access token (JWT) for the voice server.")
    join.add_argument("--channel", required=True, help="Channel id.")
    join.add_argument("--server-id", help="Voice server id (default: the token's `server` claim).")
    source = join.add_mutually_exclusive_group()
    source.add_argument("--tone", type=float, metavar="HZ", help="Send a sine tone of this frequency.")
    source.add_argument("--play", metavar="WAV", help="Send a 16-bit PCM WAV file (any rate, mono/stereo).")
    join.add_argument("--loop", action="store_true", help="Repeat --play (default: silence after its end).")
    join.add_argument("--record", metavar="WAV", help="Record everything heard, mixed, to this WAV file.")
    join.add_argument("--seconds", type=float, default=10.0, help="Stay this long, then leave (default 10).")
    join.add_argument("--muted", action="store_true", help="Join muted.")
    join.add_argument(
        "--host-address",
        action="append",
        metavar="ADDR",
        help="Gather ICE host candidates on this local address only (repeatable); e.g. 127.0.0.1 for an "
        "SFU listening on loopback (aioice leaves loopback out by default).",
    )
    join.add_argument("--json", action="store_true", help="Print events as JSON lines.")
    join.set_defaults(func=run_join)


class Printer:
    """Events to stdout: JSON lines (`{"t": seconds since start, "event": ..., ...}`) or short text."""

    def __init__(self, as_json: bool, out: TextIO = sys.stdout) -> None:
        self.as_json = as_json
        self.out = out
        self.start = time.monotonic()

    def __call__(self, kind: str, **data: Any) -> None:
        t = round(time.monotonic() - self.start, 3)
        if self.as_json:
            line = json.dumps({"t": t, "event": kind, **data}, default=str, separators=(",", ":"))
        else:
            details = " ".join(f"{k}={v}" for k, v in data.items() if v is not None)
            line = f"[{t:7.3f}] {kind} {details}".rstrip()
        print(line, file=self.out, flush=True)


async def join(args: argparse.Namespace, printer: Printer) -> int:
    from voxa.client.voice import VoiceClient, VoiceClientError, use_host_addresses

    if args.host_address:
        try:
            use_host_addresses(args.host_address)
        except ValueError as exc:
            print(f"voxa client: --host-address: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    try:
        client = VoiceClient(
            args.url,
            args.token,
            args.channel,
            server_id=args.server_id,
            tone_hz=args.tone,
            play=args.play,
            loop=args.loop,
            record=args.record,
            muted=args.muted,
            on_event=lambda event: printer(event.type, **event.data),
        )
    except (ValueError, OSError) as exc:
        print(f"voxa client: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        await client.start()
    except VoiceClientError as exc:
        reason = f"HTTP {exc.status}: {exc.reason}" if exc.status else f"join refused: {exc.reason}"
        printer("error", reason=exc.reason, status=exc.status or None, fatal=True)
        print(f"voxa client: {reason}", file=sys.stderr)
        await client.close()
        return EXIT_REFUSED
    except (OSError, TimeoutError) as exc:
        printer("error", reason=str(exc) or type(exc).__name__, fatal=True)
        print(f"voxa client: cannot connect to {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        await client.close()
        return EXIT_FAILED

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    ended = asyncio.ensure_future(client.closed.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({ended, stopped}, timeout=args.seconds, return_when=asyncio.FIRST_COMPLETED)
    ended.cancel()
    stopped.cancel()
    early = client.closed.is_set()
    await client.close()
    if args.record:
        printer("recorded", path=args.record)
    if early and client.close_reason not in ("disconnected by a moderator",):
        print(f"voxa client: {client.close_reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def run_join(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        print("voxa client: --seconds must be positive", file=sys.stderr)
        return EXIT_REFUSED
    return asyncio.run(join(args, Printer(args.json)))
