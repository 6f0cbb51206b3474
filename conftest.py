"""Fixtures shared by tests/ and e2e/: real redis-server and `voxa signaling` processes on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aioice.ice
import pytest
from aioice.ice import StunProtocol
from aioice.stun import Message

from voxa.common.ports import free_port

# The session-scoped `kube_cluster` fixture, a local Kubernetes control plane (e2e/cluster/), the
# real TURN servers, stunnerd and coturn (e2e/turn/), and `voxa_kind`, a kind cluster with real pods
# and Voxa installed by its Helm chart (e2e/kind/).
pytest_plugins = ["e2e.cluster.fixtures", "e2e.turn.fixtures", "e2e.kind.fixtures"]

ROOT = Path(__file__).resolve().parent
VOXA = str(Path(sys.executable).with_name("voxa"))
JWT_SECRET = "test-secret-0123456789-abcdefghijklmnop"
SFU_SECRET = "sfu-secret-0123456789"


LOOPBACK = {"127.0.0.1"}


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Keep every aiortc/aioice agent of every test on loopback: 127.0.0.1 is its only host candidate
    (aioice leaves loopback out by default), and connectivity checks from any other address are ignored.

    Chromium pairs every local socket with every remote candidate of the same family, so it also sends
    checks from non-loopback sockets (e.g. 192.0.2.2) to 127.0.0.1; answered, they would become
    peer-reflexive candidates that media is sent to. The value lists the sources whose checks were
    dropped."""
    dropped: list[tuple[str, int]] = []
    receive = aioice.ice.Connection.request_received

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    def loopback_requests(
        self: aioice.ice.Connection, message: Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        if addr[0] not in LOOPBACK:
            dropped.append(addr)
            return
        receive(self, message, addr, protocol)

    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_only)
    monkeypatch.setattr(aioice.ice.Connection, "request_received", loopback_requests)
    return dropped


@dataclass
class RedisServer:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class SignalingProcess:
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket"

    def start(self, wait_ready: bool = True) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [VOXA, "signaling", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        self.wait("/readyz" if wait_ready else "/healthz")

    def wait(self, path: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"signaling exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"signaling not ready on {path}: {self.log_path.read_text()[-2000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(20)
        self.proc = None


class SignalingFactory(Protocol):
    def __call__(self, redis_url: str | None = None, **overrides: str) -> SignalingProcess: ...


@pytest.fixture
def signaling_factory(tmp_path: Path) -> Iterator[SignalingFactory]:
    """Start `voxa signaling` processes: factory(redis_url=None, **env_overrides) -> SignalingProcess."""
    started: list[SignalingProcess] = []

    def factory(redis_url: str | None = None, **overrides: str) -> SignalingProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXA_")}
        env.update(
            VOXA_JWT_SECRET=JWT_SECRET,
            VOXA_SFU_SECRET=SFU_SECRET,
            VOXA_ALLOWED_ORIGINS="*",
            VOXA_LOG_LEVEL="info",
        )
        if redis_url:
            env["VOXA_REDIS_URL"] = redis_url
        env.update({f"VOXA_{k.upper()}": v for k, v in overrides.items()})
        proc = SignalingProcess(free_port(), env, tmp_path / f"signaling-{len(started)}.log")
        proc.start()
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop(kill=True)
