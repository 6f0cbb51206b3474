"""Fixtures of the end-to-end suites: node peers running the official `phoenix` JS client.

The signaling and Redis processes come from the repository-root conftest (`signaling_factory`,
`redis_server`); these fixtures add the JavaScript side and token minting.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from phoenix_harness import ROOT, NodeProcess, Signaling

from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.tokens import mint_token


class Minter:
    """Signs tokens with the secret a signaling process verifies (its VOXA_JWT_SECRET)."""

    def __call__(
        self,
        signaling: Signaling,
        user: str,
        *,
        name: str | None = None,
        server: str = "s1",
        grant: str = "connect,speak",
        ttl_s: int = 3600,
        now: float | None = None,
        secret: str | None = None,
    ) -> str:
        claims = VoiceClaims(sub=user, name=name or user.title(), server=server, perms=parse_permissions(grant))
        key = secret or signaling.env["VOXA_JWT_SECRET"]
        return mint_token(claims, key, ttl_s=ttl_s, now=now if now is not None else time.time())


@pytest.fixture
def mint() -> Minter:
    return Minter()


class NodePeers:
    """Starts node peers (e2e/js/*.mjs) and stops every one of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[NodeProcess] = []

    def phoenix(
        self,
        name: str,
        signaling: Signaling,
        token: str | None,
        *,
        topic: str | None = None,
        auth: str = "params",
        reconnect_ms: int = 200,
        rejoin_ms: int = 200,
        heartbeat_ms: int | None = None,
        lifetime_ms: int = 90_000,
    ) -> NodeProcess:
        """A phoenix Socket (+ Channel and Presence when `topic` is given) connected to `signaling`."""
        args = [
            "--url", signaling.ws_url, "--auth", auth, "--reconnect-ms", str(reconnect_ms),
            "--rejoin-ms", str(rejoin_ms), "--lifetime-ms", str(lifetime_ms), "--frames",
        ]  # fmt: skip
        if topic:
            args += ["--topic", topic]
        if heartbeat_ms is not None:
            args += ["--heartbeat-ms", str(heartbeat_ms)]
        peer = NodeProcess(name, "client.mjs", args, token, self.log_dir)
        self.started.append(peer)
        return peer

    def raw_idle(self, name: str, signaling: Signaling, token: str, *, lifetime_ms: int = 15_000) -> NodeProcess:
        """A bare `ws` socket that never sends anything."""
        args = ["--url", f"{signaling.ws_url}/websocket", "--lifetime-ms", str(lifetime_ms)]
        peer = NodeProcess(name, "raw_idle.mjs", args, token, self.log_dir)
        self.started.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.started:
            peer.close()


@pytest.fixture
def node_peers(tmp_path: Path) -> Iterator[NodePeers]:
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    if not (ROOT / "node_modules" / "phoenix").is_dir() or not (ROOT / "node_modules" / "ws").is_dir():
        pytest.skip("node_modules lacks phoenix or ws: run `bash .ci/setup.sh`")
    peers = NodePeers(tmp_path)
    yield peers
    peers.close()
