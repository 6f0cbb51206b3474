"""The processes of the chaos soak, all on this machine: a Redis primary and replica watched by three
Sentinels, two `voxa signaling` replicas behind HAProxy, and two `voxa sfu --workers 1`.

Signaling replica "b" runs in a network namespace of its own (e2e/netns.py: a veth pair to this
host), so one blocking rule inside that namespace cuts it off from Redis while everything else still
reaches it: the partition fault. Because of that namespace every service the replicas use listens on
the host end of the pair (`host_ip`) as well as on loopback, and advertises `host_ip`: the
namespace's own 127.0.0.1 is not this host's. Media stays on loopback (the load clients' ICE is
limited to 127.0.0.1), so no media crosses the pair.

Every process is started with its log in the soak's work directory and stopped by its handle, never by
name. SIGKILL, SIGSTOP and restarts are the fault module's business; this module only knows how to
start each piece again exactly as it was.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from e2e_support.stack import log

from e2e.netns import NetnsLink
from voxa.common.ports import free_port
from voxa.common.testing import launch
from voxa.common.testing.procs import Proc, clean_env, http_json, wait_ready
from voxa.common.testing.wait import eventually

VOXA: Final = str(Path(sys.executable).with_name("voxa"))
HAPROXY: Final = shutil.which("haproxy") or "/usr/sbin/haproxy"
MASTER: Final = "voxa"
SERVER_ID: Final = "g1"
READY_S: Final = 30.0


def redis_command(host: str, port: int, *args: str, timeout: float = 1.0) -> Any:
    """One RESP command over a fresh socket (no client library: the soak must see Redis as it is,
    not through a pool that retries); returns the decoded reply."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"".join(parts))
        reader = s.makefile("rb")
        return _read_reply(reader)


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise RuntimeError(f"unexpected redis reply {line!r}")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """GET `url` (one of the soak's own services: loopback or the namespace pair) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the soak's own services
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class RedisNode:
    name: str
    port: int
    workdir: Path
    proc: Proc | None = None


@dataclass
class Topology:
    """Everything the soak runs. `start()` brings it up in dependency order; `stop()` takes it down."""

    workdir: Path
    jwt_secret: str
    sfu_secret: str
    media_server_ttl_s: float = 3.0
    replica_ttl_s: float = 4.0
    outbound_queue_frames: int = 256
    link: NetnsLink = field(default_factory=NetnsLink)
    redis: list[RedisNode] = field(default_factory=list)
    sentinels: list[RedisNode] = field(default_factory=list)
    signaling: dict[str, Proc] = field(default_factory=dict)
    signaling_ports: dict[str, int] = field(default_factory=dict)
    sfus: dict[str, Proc] = field(default_factory=dict)
    sfu_ports: dict[str, int] = field(default_factory=dict)
    haproxy: Proc | None = None
    lb_port: int = 0
    every: list[Proc] = field(default_factory=list)
    """Every process instance ever started (killed ones too: their logs count for error lines)."""

    # --- addresses --------------------------------------------------------------------------------
    @property
    def host_ip(self) -> str:
        return self.link.host_ip

    @property
    def ws_url(self) -> str:
        """Where clients connect: the load balancer."""
        return f"ws://127.0.0.1:{self.lb_port}/socket"

    def signaling_host(self, name: str) -> str:
        return self.link.ns_ip if name == "b" else "127.0.0.1"

    def signaling_base(self, name: str) -> str:
        return f"http://{self.signaling_host(name)}:{self.signaling_ports[name]}"

    def _instance(self, name: str) -> str:
        """`name#<n>`: the n-th process of that name this soak started (RSS is per instance)."""
        return f"{name}#{sum(1 for p in self.every if p.name.split('#')[0] == name)}"

    def _proc(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        instance = self._instance(name)
        proc = Proc(instance, argv, env, self.workdir / f"{instance.replace('#', '-')}.log")
        self.every.append(proc)
        proc.start()
        return proc

    # --- bring-up ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.link.open()
        self._start_redis()
        self._start_sentinels()
        self.lb_port = free_port()
        for name in ("a", "b"):
            self.signaling_ports[name] = free_port("0.0.0.0")
        self._start_haproxy()
        for name in ("a", "b"):
            self.start_signaling(name)
        for name in ("sfu-a", "sfu-b"):
            self.sfu_ports[name] = free_port(self.host_ip)
            self.start_sfu(name)
        self.wait_registered(set(self.sfus))

    def _start_redis(self) -> None:
        for i, name in enumerate(("redis-1", "redis-2")):
            node = RedisNode(name, free_port(self.host_ip), self.workdir / name)
            self.redis.append(node)
            self.restart_redis(node, replica_of=self.redis[0] if i == 1 else None)
        self._until(
            lambda: "master_link_status:up" in str(self.info(self.redis[1], "replication")),
            "the Redis replica to sync",
        )

    def _start_sentinels(self) -> None:
        primary = self.redis[0]
        for i in range(3):
            name = f"sentinel-{i}"
            proc = launch.redis_sentinel(
                self.workdir / name,
                primary.port,
                port=free_port(self.host_ip),
                master=MASTER,
                failover_timeout_ms=5000,
                host=self.host_ip,
                name=self._instance(name),
            )
            self.every.append(proc)
            self.sentinels.append(RedisNode(name, proc.port, self.workdir / name, proc))

        def known() -> bool:
            for s in self.sentinels:
                reply = redis_command("127.0.0.1", s.port, "SENTINEL", "MASTER", MASTER)
                fields = dict(zip(reply[::2], reply[1::2], strict=True))
                if int(fields["num-other-sentinels"]) < 2 or int(fields["num-slaves"]) < 1:
                    return False
            return True

        self._until(known, "the Sentinels to find each other and the replica")

    def _start_haproxy(self) -> None:
        """WebSocket-aware HTTP mode: the upgrade is proxied and the tunnel kept for an hour; the
        replicas' /readyz is checked twice a second, and a connection refused by a dead replica is
        retried on the other one at once (redispatch), before the health check has noticed."""
        conf = self.workdir / "haproxy.cfg"
        servers = "\n".join(
            f"    server {n} {self.signaling_host(n)}:{self.signaling_ports[n]} check inter 500 fall 2 rise 2"
            for n in ("a", "b")
        )
        conf.write_text(
            # Bounded socket buffers towards the replicas and the clients, so a client that stops
            # reading backs up to signaling (which closes it) instead of into the balancer's kernel.
            "global\n    maxconn 4096\n    tune.rcvbuf.server 32768\n    tune.sndbuf.client 32768\n\n"
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n"
            "    timeout server 60s\n    timeout tunnel 1h\n    timeout http-request 10s\n"
            "    option redispatch\n    retries 3\n    retry-on conn-failure empty-response\n\n"
            f"frontend voxa\n    bind 127.0.0.1:{self.lb_port}\n    bind {self.host_ip}:{self.lb_port}\n"
            "    default_backend signaling\n\n"
            "backend signaling\n    balance leastconn\n    option httpchk GET /readyz\n"
            f"{servers}\n"
        )
        check = subprocess.run([HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config rejected:\n{check.stdout}{check.stderr}")
        self.haproxy = self._proc("haproxy", [HAPROXY, "-db", "-f", str(conf)], clean_env())

    def start_signaling(self, name: str) -> Proc:
        """Replica `name` ("a" on the host, "b" in the namespace), on its fixed port of this soak."""
        port = self.signaling_ports[name]
        env = clean_env()
        env.update(
            VOXA_JWT_SECRET=self.jwt_secret,
            VOXA_SFU_SECRET=self.sfu_secret,
            VOXA_ALLOWED_ORIGINS="*",
            VOXA_MEDIA_SERVER_TTL_S=f"{self.media_server_ttl_s:g}",
            VOXA_REPLICA_TTL_S=f"{self.replica_ttl_s:g}",
            VOXA_OUTBOUND_QUEUE_FRAMES=str(self.outbound_queue_frames),
            VOXA_REDIS_SENTINELS=",".join(f"{self.host_ip}:{s.port}" for s in self.sentinels),
            VOXA_REDIS_SENTINEL_MASTER=MASTER,
            VOXA_LOG_LEVEL="info",
            VOXA_SHUTDOWN_GRACE_S="2",
            # Every load client arrives through the load balancer from one address.
            VOXA_MAX_CONNECTIONS_PER_ADDRESS="0",
            VOXA_CONNECTIONS_PER_ADDRESS_PER_S="0",
        )
        host = "0.0.0.0" if name == "b" else "127.0.0.1"
        argv = [VOXA, "signaling", "--host", host, "--port", str(port)]
        if name == "b":
            argv = [*self.link.exec_prefix, *argv]
        proc = self.signaling[name] = self._proc(f"signaling-{name}", argv, env)
        url = f"{self.signaling_base(name)}/readyz"
        self._until(lambda: http_ok(url), f"signaling-{name} to be ready", proc)
        return proc

    def start_sfu(self, name: str) -> Proc:
        port = self.sfu_ports[name]
        env = clean_env()
        env.update(
            VOXA_SFU_SECRET=self.sfu_secret,
            VOXA_SFU_ID=name,
            VOXA_SFU_SERVER_ID=SERVER_ID,
            VOXA_SFU_HOST=self.host_ip,
            VOXA_SFU_ADVERTISE_URL=f"http://{self.host_ip}:{port}",
            VOXA_SFU_SIGNALING_URL=f"http://{self.host_ip}:{self.lb_port}",
            VOXA_SFU_RTC_LISTEN_IP="127.0.0.1",
            VOXA_SFU_RTC_REMOTE_NETWORKS="127.0.0.0/8",
            VOXA_SFU_LOG_LEVEL="info",
            VOXA_SFU_PORT=str(port),
            VOXA_SFU_DRAIN_DEADLINE_S="2",
        )
        proc = self.sfus[name] = self._proc(name, [VOXA, "sfu", "--workers", "1", "--port", str(port)], env)
        self._until(lambda: http_ok(f"http://{self.host_ip}:{port}/healthz"), f"{name} to be healthy", proc)
        return proc

    # --- state ------------------------------------------------------------------------------------
    def media_servers(self) -> set[str]:
        body = http_json(
            f"{self.signaling_base('a')}/internal/servers/{SERVER_ID}/media-servers", self.sfu_secret
        )
        return {str(m["id"]) for m in body["media_servers"]}

    def wait_registered(self, names: set[str]) -> None:
        def registered() -> bool:
            try:
                return names <= self.media_servers()
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                return False

        self._until(registered, f"{sorted(names)} in the registry")

    def primary(self) -> RedisNode | None:
        """The primary as a majority of the Sentinels name it."""
        votes: dict[int, int] = {}
        for s in self.sentinels:
            try:
                addr = redis_command("127.0.0.1", s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            except (OSError, RuntimeError, ConnectionError):
                continue
            if addr:
                votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
        port, count = max(votes.items(), key=lambda kv: kv[1], default=(0, 0))
        if count < 2:
            return None
        return next((n for n in self.redis if n.port == port), None)

    def info(self, node: RedisNode, section: str) -> str:
        return str(redis_command("127.0.0.1", node.port, "INFO", section))

    def key_count(self) -> int | None:
        primary = self.primary()
        if primary is None:
            return None
        try:
            return int(redis_command("127.0.0.1", primary.port, "DBSIZE"))
        except (OSError, RuntimeError, ConnectionError):
            return None

    def keys(self) -> list[str]:
        primary = self.primary()
        if primary is None:
            return []
        try:
            return sorted(redis_command("127.0.0.1", primary.port, "KEYS", "*") or [])
        except (OSError, RuntimeError, ConnectionError):
            return []

    def expiring(self, keys: list[str]) -> set[str]:
        """Those of `keys` that carry a TTL (they go by themselves: liveness, sessions)."""
        primary = self.primary()
        if primary is None:
            return set()
        out = set()
        for key in keys:
            with contextlib.suppress(OSError, RuntimeError, ConnectionError):
                if int(redis_command("127.0.0.1", primary.port, "PTTL", key)) > 0:
                    out.add(key)
        return out

    def contents(self, keys: list[str], items: int = 8) -> dict[str, list[str]]:
        """What `keys` hold (a hash's fields, a set's or sorted set's members; up to `items` each):
        for the report of leaked keys, whose owners (replica ids in presence fields) say which
        write was lost."""
        primary = self.primary()
        if primary is None:
            return {}
        read = {"hash": ("HKEYS",), "set": ("SMEMBERS",), "zset": ("ZRANGE", "0", "-1")}
        out: dict[str, list[str]] = {}
        for key in keys:
            with contextlib.suppress(OSError, RuntimeError, ConnectionError):
                kind = str(redis_command("127.0.0.1", primary.port, "TYPE", key))
                if kind in read:
                    values = redis_command("127.0.0.1", primary.port, read[kind][0], key, *read[kind][1:])
                    out[key] = [str(v) for v in (values or [])][:items]
                else:
                    out[key] = [kind]
        return out

    def restart_redis(self, node: RedisNode, *, replica_of: RedisNode | None = None) -> None:
        """Start `node` (again) on its port, its data gone (no persistence, as in a cache-style
        deployment); as a replica of `replica_of` if given, which Sentinel would also arrange."""
        args = [] if replica_of is None else ["--replicaof", self.host_ip, str(replica_of.port)]
        name = self._instance(node.name)
        node.proc = launch.redis_server(
            node.workdir, node.port, args, name=name, env=clean_env(), also_bind=self.host_ip
        )
        self.every.append(node.proc)

    def _until(self, check: Any, what: str, proc: Proc | None = None) -> None:
        """The kit's waits (scaled deadlines; a process that died fails at once with its log tail);
        a service not up yet refuses or resets the connection, which only means "not yet"."""

        def probe() -> bool:
            try:
                return bool(check())
            except (OSError, RuntimeError, ConnectionError, ValueError, KeyError, TypeError):
                return False

        if proc is not None:
            wait_ready(proc, probe, READY_S, what)
        else:
            eventually(probe, READY_S, what)

    # --- partition --------------------------------------------------------------------------------
    def _partition_rule(self, action: str) -> None:
        ports = ",".join(str(n.port) for n in [*self.redis, *self.sentinels])
        subprocess.run(
            [
                *self.link.exec_prefix, "iptables", action, "OUTPUT", "-p", "tcp", "-d", self.host_ip,
                "-m", "multiport", "--dports", ports, "-j", "DROP",
            ],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def partition(self) -> None:
        """Cut signaling-b off from Redis and the Sentinels (packets dropped, nothing refused)."""
        self._partition_rule("-A")

    def heal(self) -> None:
        self._partition_rule("-D")

    # --- teardown ---------------------------------------------------------------------------------
    def stop(self) -> None:
        order = (
            [p for p in self.every if p.name.startswith("signaling")]
            + [p for p in self.every if p.name.startswith("sfu")]
            + [p for p in self.every if p.name.startswith("haproxy")]
            + [p for p in self.every if p.name.startswith(("sentinel", "redis"))]
        )
        for proc in order:
            try:
                if proc.proc is not None and proc.proc.poll() is None:
                    with _suppress_oserror():
                        proc.proc.send_signal(18)  # SIGCONT: a frozen process cannot exit
                    proc.stop()
            except Exception as exc:  # keep stopping the others
                log(f"stopping {proc.name} failed: {exc!r}")
        self.link.close()


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]
