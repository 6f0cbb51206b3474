"""`voxa demo`: a complete voice room on one machine with embedded defaults: signaling (in-memory
state, generated secrets) and one SFU worker in the same process, plus ready-made invite links."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal

from voxa.common.claims import ALL_PERMISSIONS, VoiceClaims, parse_permissions
from voxa.common.ports import free_port
from voxa.common.tokens import mint_token

DEMO_USERS = (
    ("alice", "Alice", ALL_PERMISSIONS),
    ("bob", "Bob", parse_permissions("connect,speak,video,call")),
)
INVITE_TTL_S = 24 * 3600


def invites(base: str, server_id: str, secret: str) -> list[str]:
    """`Invite for <Name>: <base>/?channel=lobby&token=<jwt>` for each demo user: what `make demo` and
    `make kind-demo` print, so one format serves both."""
    lines = []
    for user, name, perms in DEMO_USERS:
        claims = VoiceClaims(sub=user, name=name, server=server_id, perms=perms)
        token = mint_token(claims, secret, ttl_s=INVITE_TTL_S)
        lines.append(f"Invite for {name}: {base}/?channel=lobby&token={token}")
    return lines


def run_demo(*, port: int, server_id: str, host: str = "127.0.0.1", rtc_ip: str | None = None) -> int:
    from voxa.common import logging as voxa_logging
    from voxa.sfu.server import serve_worker
    from voxa.sfu.settings import SfuSettings
    from voxa.signaling.server import event_loop_factory, serve
    from voxa.signaling.settings import SignalingSettings

    given = os.environ.get("VOXA_JWT_SECRET")
    secret = given or secrets.token_urlsafe(32)
    sfu_secret = os.environ.get("VOXA_SFU_SECRET") or secrets.token_urlsafe(24)
    signaling = SignalingSettings(
        host=host,
        port=port,
        jwt_secret=secret,
        allowed_origins=["*"],
        redis_url=None,
        sfu_secret=sfu_secret,
        media_server_ttl_s=5.0,
        log_level=os.environ.get("VOXA_LOG_LEVEL", "warning"),
    )
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    sfu = SfuSettings(
        host=local,
        port=free_port(local),
        secret=sfu_secret,
        id="demo-sfu",
        server_id=server_id,
        signaling_url=f"http://{local}:{port}",
        workers=1,
        rtc_listen_ip=rtc_ip or local,
        log_level=signaling.log_level,
    )
    voxa_logging.configure(signaling.log_level)
    base = f"http://{local}:{port}"
    print("Voxa demo: signaling + SFU, in-memory state.", flush=True)
    print(f"  Open:    {base}/  (channel voice:{server_id}:lobby)", flush=True)
    for line in invites(base, server_id, secret):
        print(f"  {line}", flush=True)
    if given:
        print(f"  More tokens: .venv/bin/voxa token --user U --name N --server {server_id}", flush=True)
    else:
        print(
            "  (The secret is generated: set VOXA_JWT_SECRET to mint more tokens with `voxa token`.)",
            flush=True,
        )
    print(
        "  Calls: open both invites, then press Call next to the other person (or call a user id).",
        flush=True,
    )
    print("  Stop with Ctrl-C.", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sfu_stop = asyncio.Event()
        signaling_task = asyncio.create_task(serve(signaling, stop))
        sfu_task = asyncio.create_task(serve_worker(sfu, 0, sfu_stop))
        await stop.wait()
        sfu_stop.set()
        await asyncio.gather(signaling_task, sfu_task, return_exceptions=True)

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())
    return 0
