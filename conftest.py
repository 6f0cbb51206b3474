"""Fixtures shared by tests/ and e2e/: real redis-server and `voxa signaling` processes on loopback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aioice.ice
import pytest
import redis
from aioice.ice import StunProtocol
from aioice.stun import Message

from voxa.common.ports import free_port
from voxa.common.testing import launch, procs
from voxa.common.testing.procs import Proc
from voxa.common.testing.wait import eventually
from voxa.signaling.store.target import RedisTarget

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


REDIS_SERVER = launch.REDIS_SERVER
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """The kit's eventually, with a Redis that does not answer yet counting as not yet."""

    def attempt() -> bool:
        try:
            return check()
        except (redis.RedisError, OSError):
            return False

    eventually(attempt, timeout_s, what)


def _redis_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True)


@dataclass
class RedisServer:
    """A redis-server on a given port (a restart keeps it), launched by the harness kit."""

    port: int
    workdir: Path
    handle: Proc | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.handle.proc if self.handle is not None else None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to replicas or Sentinels."""
        if self.handle is not None:
            self.handle.kill()
            self.handle = None

    def start(self) -> None:
        self.handle = launch.redis_server(self.workdir, self.port, self.extra_args)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)  # the outage the test asks for, not a wait for a condition
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


SENTINEL_MASTER = "voxa"


@dataclass
class RedisSentinelSet:
    """A primary, a replica and three Sentinels (quorum 2), real processes on loopback ports.

    The Sentinels are `redis-server --sentinel` (Debian's redis-server package has no redis-sentinel
    link); each writes its own config file, as Sentinel requires."""

    workdir: Path
    down_after_ms: int = 1000
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[RedisServer] = field(default_factory=list)

    @property
    def target(self) -> RedisTarget:
        return RedisTarget(
            sentinels=tuple(("127.0.0.1", s.port) for s in self.sentinels), sentinel_master=SENTINEL_MASTER
        )

    @property
    def env(self) -> dict[str, str]:
        """What `voxa signaling` is given to use this set."""
        return {
            "VOXA_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "VOXA_REDIS_SENTINEL_MASTER": SENTINEL_MASTER,
        }

    def start(self) -> None:
        primary = RedisServer(free_port(), self.workdir / "primary")
        primary.start()
        replica = RedisServer(
            free_port(), self.workdir / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
        )
        replica.start()
        self.servers = [primary, replica]
        _eventually(
            lambda: _redis_client(replica.port).info("replication")["master_link_status"] == "up",
            15,
            "the replica did not sync",
        )
        for i in range(3):
            sentinel = RedisServer(free_port(), self.workdir / f"sentinel-{i}")
            sentinel.handle = launch.redis_sentinel(
                sentinel.workdir, primary.port, sentinel.port, SENTINEL_MASTER, 2, self.down_after_ms
            )
            self.sentinels.append(sentinel)

        def all_know_each_other() -> bool:
            for s in self.sentinels:
                info: dict[str, Any] = _redis_client(s.port).sentinel_master(SENTINEL_MASTER)  # type: ignore[assignment]
                if int(info["num-other-sentinels"]) < 2 or int(info["num-slaves"]) < 1:
                    return False
            return True

        _eventually(all_know_each_other, 30, "the Sentinels did not discover each other and the replica")

    def primary_port(self) -> int:
        """The primary's port as a majority of live Sentinels name it (0 when they disagree)."""
        seen: dict[int, int] = {}
        for s in self.sentinels:
            try:
                found: tuple[str, int] | None = _redis_client(s.port).sentinel_get_master_addr_by_name(  # type: ignore[assignment]
                    SENTINEL_MASTER
                )
            except redis.RedisError:
                continue
            if not found:
                continue
            _, port = found
            seen[int(port)] = seen.get(int(port), 0) + 1
        best = max(seen.items(), key=lambda kv: kv[1], default=(0, 0))
        return best[0] if best[1] >= 2 else 0

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def flush(self) -> None:
        client = _redis_client(self.primary_port())
        client.flushall()
        client.script_flush()

    def stop(self) -> None:
        for s in [*self.sentinels, *self.servers]:
            s.stop()


@dataclass
class RedisClusterSet:
    """A Redis Cluster of three primaries (no replicas) on loopback, made by `redis-cli --cluster create`.
    Every node's bus port is picked free too (`--cluster-port`), not left at port + 10000."""

    workdir: Path
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def target(self) -> RedisTarget:
        return RedisTarget(url=self.url, cluster=True)

    def start(self) -> None:
        for i in range(3):
            port = free_port()
            node = RedisServer(
                port,
                self.workdir / f"node-{i}",
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            node.start()
            self.nodes.append(node)
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ready() -> bool:
            for n in self.nodes:
                info = _redis_client(n.port).cluster("INFO")
                if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) < 3:
                    return False
            return True

        _eventually(ready, 30, "the cluster did not become ok on every node")

    def flush(self) -> None:
        for n in self.nodes:
            client = _redis_client(n.port)
            client.flushall()
            client.script_flush()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[RedisSentinelSet]:
    """A fresh Sentinel set for a test that fails it over."""
    group = RedisSentinelSet(tmp_path / "sentinel")
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="module")
def redis_sentinel_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelSet]:
    """One Sentinel set for a module's tests (flush it between them)."""
    group = RedisSentinelSet(tmp_path_factory.mktemp("sentinel"))
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """One three-primary Redis Cluster for a module's tests (flush it between them)."""
    cluster = RedisClusterSet(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class SignalingProcess:
    """`voxa signaling` on a given port (a restart keeps it), launched by the harness kit."""

    port: int
    env: dict[str, str]
    log_path: Path
    handle: Proc | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.handle.proc if self.handle is not None else None

    def start(self, wait_ready: bool = True) -> None:
        path = "/readyz" if wait_ready else "/healthz"
        self.handle = launch.signaling(self.log_path, self.env, self.port, ready_path=path, timeout=15.0)

    def wait(self, path: str, timeout: float = 15.0) -> None:
        assert self.handle is not None
        url = self.url + path
        procs.wait_ready(self.handle, lambda: procs.http_ok(url), timeout, f"signaling {path}")

    def stop(self, kill: bool = False) -> None:
        if self.handle is None:
            return
        if kill:
            self.handle.kill()
        else:
            self.handle.stop(timeout=20)
        self.handle = None


class SignalingFactory(Protocol):
    def __call__(self, redis_url: str | None = None, **overrides: str) -> SignalingProcess: ...


@pytest.fixture
def signaling_factory(tmp_path: Path) -> Iterator[SignalingFactory]:
    """Start `voxa signaling` processes: factory(redis_url=None, **env_overrides) -> SignalingProcess."""
    started: list[SignalingProcess] = []

    def factory(redis_url: str | None = None, **overrides: str) -> SignalingProcess:
        env = procs.clean_env()
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
