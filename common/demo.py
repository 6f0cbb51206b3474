"""`voxa demo`: signaling with embedded defaults (in-memory state, generated secrets) and ready-made
tokens, so a fresh machine gets a working Voxa with one command."""

from __future__ import annotations

import os
import secrets

from voxa.common.claims import ALL_PERMISSIONS, VoiceClaims, parse_permissions
from voxa.common.tokens import mint_token


def run_demo(*, port: int, server_id: str, host: str = "127.0.0.1") -> int:
    from voxa.signaling.server import run
    from voxa.signaling.settings import SignalingSettings

    given = os.environ.get("VOXA_JWT_SECRET")
    secret = given or secrets.token_urlsafe(32)
    settings = SignalingSettings(
        host=host,
        port=port,
        jwt_secret=secret,
        allowed_origins=["*"],
        redis_url=None,
        sfu_secret=os.environ.get("VOXA_SFU_SECRET") or secrets.token_urlsafe(24),
    )
    users = [("alice", "Alice", ALL_PERMISSIONS), ("bob", "Bob", parse_permissions("connect,speak,video"))]
    print("Voxa demo: signaling with an in-memory store.", flush=True)
    print(f"  Socket:  ws://{host}:{port}/socket/websocket?vsn=2.0.0&token=<TOKEN>", flush=True)
    print(f"  Channel: voice:{server_id}:lobby", flush=True)
    for user, name, perms in users:
        token = mint_token(
            VoiceClaims(sub=user, name=name, server=server_id, perms=perms), secret, ttl_s=24 * 3600
        )
        print(f"  Token for {name}: {token}", flush=True)
    if given:
        print(f"  More tokens: .venv/bin/voxa token --user U --name N --server {server_id}", flush=True)
    else:
        print(
            "  (The signing secret was generated: set VOXA_JWT_SECRET to mint more tokens with `voxa token`.)"
        )
    print(f"  Stop with Ctrl-C. Health: http://{host}:{port}/healthz", flush=True)
    run(settings)
    return 0
