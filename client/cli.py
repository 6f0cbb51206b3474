"""`voxa client join | call | answer`: a VoiceClient from the command line, for smoke tests, demos
and load scripts.

    voxa client join --url ws://127.0.0.1:4000/socket --token "$T" --channel lobby \\
        --tone 440 --record heard.wav --seconds 10 --json

It joins, sends a tone (`--tone HZ`), a WAV file (`--play FILE`, `--loop` to repeat it) or nothing,
records what it hears to one WAV file (`--record`: every participant mixed on one wall-clock timeline,
48 kHz mono 16-bit, silence where nobody spoke), prints what happens (presence, speaking, tracks, media
state; JSON lines with `--json`), and leaves after `--seconds`. Exit status: 0 after a normal run
(also when a moderator disconnected the client), 2 when the socket or the join is refused (the reason,
e.g. `HTTP 403: bad token signature`, goes to stderr and, with `--json`, to an `error` line on stdout),
1 for anything else that ended the run early.

    voxa client call --url ws://127.0.0.1:4000/socket --token "$ALICE" --to bob --tone 440 --json
    voxa client answer --url ws://127.0.0.1:4000/socket --token "$BOB" --tone 660 --record bob.wav

`call` rings the `--to` users (one: a 1:1 call; several: a group call) and joins the call's media at
once; `answer` waits for the next incoming call (`--from` one caller only) and answers it, or declines
it with `--decline`. Both then stay `--seconds` (counted from the answer) with the same media options
as `join`, and end the call. Exit status: 0 when the call was answered and ended normally, 3 when it
was declined, missed or cancelled (`call_ended` reason on stderr), 2 and 1 as for `join`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
import time
from typing import Any, TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_NO_CALL = 3


def add_parser(sub: Any) -> None:
    """Add `client` (with `join`, `call`, `answer`) to the `voxa` command's subparsers."""
    client = sub.add_parser("client", help="Join a voice channel or a call as a Python client (aiortc).")
    commands = client.add_subparsers(dest="client_command", required=True)
    join = commands.add_parser(
        "join",
        help="Join a channel, send a tone or a WAV file, record what is heard, leave after --seconds.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    join.add_argument("--channel", required=True, help="Channel id.")
    join.add_argument("--server-id", help="Voice server id (default: the token's `server` claim).")
    _media_arguments(join)
    join.set_defaults(func=run_join)
    call = commands.add_parser(
        "call",
        help="Call users, join the call's media, stay --seconds, end the call.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("--to", action="append", required=True, metavar="USER", help="Invitee (repeatable).")
    call.add_argument("--video", action="store_true", help="Ring as a video call.")
    _call_arguments(call)
    call.set_defaults(func=run_call)
    answer = commands.add_parser(
        "answer",
        help="Wait for an incoming call, answer (or --decline) it, stay --seconds, end it.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    answer.add_argument("--from", dest="caller", metavar="USER", help="Answer only calls from this user.")
    answer.add_argument("--decline", action="store_true", help="Decline the call instead of answering.")
    answer.add_argument(
        "--wait", type=float, default=60.0, help="Give up after this long without a call (default 60)."
    )
    _call_arguments(answer)
    answer.set_defaults(func=run_answer)


def _call_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device-id",
        default=f"cli-{socket.gethostname()}"[:64],
        help="This device's stable id on the user topic (default: cli-<hostname>).",
    )
    _media_arguments(parser)


def _media_arguments(join: argparse.ArgumentParser) -> None:
    join.add_argument("--url", required=True, help="Socket URL, e.g. ws://127.0.0.1:4000/socket.")
    join.add_argument("--token", required=True, help="Access token (JWT) for the voice server.")
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


def _host_addresses(args: argparse.Namespace) -> bool:
    from voxa.client.voice import use_host_addresses

    if args.host_address:
        try:
            use_host_addresses(args.host_address)
        except ValueError as exc:
            print(f"voxa client: --host-address: {exc}", file=sys.stderr)
            return False
    return True


def _voice_options(args: argparse.Namespace, printer: Printer) -> dict[str, Any]:
    return {
        "tone_hz": args.tone,
        "play": args.play,
        "loop": args.loop,
        "record": args.record,
        "muted": args.muted,
        "on_event": lambda event: printer(event.type, **event.data),
    }


async def join(args: argparse.Namespace, printer: Printer) -> int:
    from voxa.client.voice import VoiceClient, VoiceClientError

    if not _host_addresses(args):
        return EXIT_REFUSED
    try:
        client = VoiceClient(
            args.url, args.token, args.channel, server_id=args.server_id, **_voice_options(args, printer)
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


# --- calls ------------------------------------------------------------------------------------------
DEVICE_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


async def _call_session(args: argparse.Namespace, printer: Printer, answering: bool) -> int:
    from voxa.client.calls import CallClient, CallError
    from voxa.client.voice import VoiceClientError

    if not _host_addresses(args):
        return EXIT_REFUSED
    if not DEVICE_ID.match(args.device_id):
        print("voxa client: --device-id: letters, digits, _ . - only (at most 64)", file=sys.stderr)
        return EXIT_REFUSED
    try:
        calls = CallClient(
            args.url,
            args.token,
            device_id=args.device_id,
            on_event=lambda e: printer(e.name, **e.payload),
        )
        options = _voice_options(args, printer)
    except (ValueError, OSError) as exc:
        print(f"voxa client: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        await calls.start()
    except VoiceClientError as exc:
        reason = f"HTTP {exc.status}: {exc.reason}" if exc.status else f"join refused: {exc.reason}"
        printer("error", reason=exc.reason, fatal=True)
        print(f"voxa client: {reason}", file=sys.stderr)
        await calls.close()
        return EXIT_REFUSED
    except (OSError, TimeoutError) as exc:
        print(f"voxa client: cannot connect to {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        await calls.close()
        return EXIT_FAILED
    printer("joined", topic=calls.topic, device_id=calls.device_id, missed_calls=len(calls.missed_calls))
    try:
        if answering:
            return await _answer(args, calls, options)
        return await _call(args, calls, options)
    except CallError as exc:
        printer("error", reason=exc.reason, fatal=True)
        print(f"voxa client: {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        await calls.close()


async def _stay(calls: Any, call_id: str, seconds: float) -> str | None:
    """Stay in the call for `seconds` or until it ends (its reason then)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    ended = asyncio.ensure_future(calls.wait_event("call_ended", call_id=call_id, timeout=seconds + 1))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({ended, stopped}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if ended.done() and not ended.cancelled() and ended.exception() is None:
        return str(ended.result().get("reason"))
    ended.cancel()
    return None


async def _stay_and_end(calls: Any, call_id: str, seconds: float) -> None:
    from voxa.client.calls import CallError

    if await _stay(calls, call_id, seconds) is not None:
        return
    try:
        await calls.end(call_id)
    except CallError as exc:
        if exc.reason != "no such call":  # the other side ended it a moment before us
            raise


async def _call(args: argparse.Namespace, calls: Any, options: dict[str, Any]) -> int:
    call = await calls.start_call(args.to, video=args.video)
    await calls.join_media(call.call_id, **options)
    ring_s = 600.0
    accepted = asyncio.ensure_future(calls.wait_event("call_accepted", call_id=call.call_id, timeout=ring_s))
    ended = asyncio.ensure_future(calls.wait_event("call_ended", call_id=call.call_id, timeout=ring_s))
    await asyncio.wait({accepted, ended}, return_when=asyncio.FIRST_COMPLETED)
    if ended.done() and not accepted.done():
        accepted.cancel()
        reason = ended.result().get("reason") if ended.exception() is None else "timeout"
        print(f"voxa client: call ended: {reason}", file=sys.stderr)
        return EXIT_NO_CALL
    ended.cancel()
    await _stay_and_end(calls, call.call_id, args.seconds)
    return EXIT_OK


async def _answer(args: argparse.Namespace, calls: Any, options: dict[str, Any]) -> int:
    since = 0
    while True:
        ring = await calls.wait_event("call_started", since=since, timeout=args.wait)
        since = calls.mark()
        if args.caller is None or (ring.get("caller") or {}).get("id") == args.caller:
            break
    call_id = str(ring["call_id"])
    if args.decline:
        await calls.decline(call_id)
        return EXIT_OK
    await calls.answer(call_id)
    await calls.join_media(call_id, **options)
    await _stay_and_end(calls, call_id, args.seconds)
    return EXIT_OK


def run_call(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        print("voxa client: --seconds must be positive", file=sys.stderr)
        return EXIT_REFUSED
    return asyncio.run(_call_session(args, Printer(args.json), answering=False))


def run_answer(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        print("voxa client: --seconds must be positive", file=sys.stderr)
        return EXIT_REFUSED
    return asyncio.run(_call_session(args, Printer(args.json), answering=True))
