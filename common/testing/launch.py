"""Launchers, built on `Proc`, for the servers the suites and benchmarks run on loopback:
redis-server, Redis Sentinel, `voxa signaling` and `voxa sfu`. Each returns once its server answers
(or raises with its log's tail), on a port of its own from free_port() unless given one.
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from voxa.common.ports import free_port
from voxa.common.testing.procs import Proc, http_ok, wait_ready

VOXA: Final = str(Path(sys.executable).with_name("voxa"))
REDIS_SERVER: Final = shutil.which("redis-server") or "/usr/bin/redis-server"
READY_TIMEOUT_S: Final = 20.0


def _started(proc: Proc, probe: Callable[[], object], timeout: float, what: str) -> Proc:
    """Start `proc` and wait until `probe` passes; a server that never gets ready is killed before
    the error propagates, so that a failed launch leaves nothing behind for the caller to find."""
    proc.start()
    try:
        wait_ready(proc, probe, timeout, what)
    except BaseException:
        proc.kill()
        raise
    return proc


def _redis_command(port: int, command: bytes, until: bytes, timeout: float = 0.5) -> bytes:
    """One inline command's raw reply, read until it contains `until` (b"" on connection errors)."""
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(command + b"\r\n")
            while until not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk or len(data) > 1 << 20:
                    break
                data += chunk
    except OSError:
        return b""
    return data


def redis_ping(port: int) -> bool:
    return _redis_command(port, b"PING", b"+PONG").startswith(b"+PONG")


def redis_version(port: int) -> str | None:
    """The server's redis_version (INFO server), or None if it does not answer."""
    for line in _redis_command(port, b"INFO server", b"redis_version:").decode(errors="replace").splitlines():
        if line.startswith("redis_version:"):
            return line.split(":", 1)[1].strip()
    return None


def redis_server(
    workdir: Path,
    port: int | None = None,
    args: Sequence[str] = (),
    name: str = "redis",
    env: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    new_session: bool = False,
    also_bind: str | None = None,
) -> Proc:
    """A throwaway redis-server on 127.0.0.1 (and `also_bind`, another address of this machine, for a
    client in a network namespace): no persistence, its files in `workdir`, `args` appended
    (--replicaof, --cluster-enabled ...); returns once it answers PING."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    bind = "127.0.0.1" if also_bind is None else f"127.0.0.1 {also_bind}"
    argv = [
        REDIS_SERVER, "--port", str(port), "--bind", bind, "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--protected-mode", "yes" if also_bind is None else "no", *args,
    ]  # fmt: skip
    proc = Proc(
        name,
        argv,
        dict(env) if env is not None else None,
        workdir / f"{name}.log",
        port=port,
        start_new_session=new_session,
    )
    return _started(proc, lambda: redis_ping(port), timeout, f"{name} on port {port}")


def redis_sentinel(
    workdir: Path,
    master_port: int,
    port: int | None = None,
    master: str = "voxa",
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 10000,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
    name: str = "sentinel",
) -> Proc:
    """A Sentinel (`redis-server <conf> --sentinel`: Debian's package has no redis-sentinel link)
    monitoring the primary on `master_port`; it writes its own config file in `workdir`, as Sentinel
    requires. `host`: the primary's address, which the Sentinel also listens on and hands out (the
    loopback unless clients in a network namespace must reach it). Returns once it answers PING
    (discovering its peers takes longer: the caller waits)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = workdir / "sentinel.conf"
    bind = "127.0.0.1" if host == "127.0.0.1" else f"127.0.0.1 {host}\nprotected-mode no"
    conf.write_text(
        f"port {port}\nbind {bind}\ndir {workdir}\n"
        f"sentinel monitor {master} {host} {master_port} {quorum}\n"
        f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
        f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
        f"sentinel parallel-syncs {master} 1\n"
    )
    proc = Proc(name, [REDIS_SERVER, str(conf), "--sentinel"], None, workdir / f"{name}.log", port=port)
    return _started(proc, lambda: redis_ping(port), timeout, f"sentinel on port {port}")


def _voxa(
    name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str], port: int, ready_path: str,
    timeout: float, new_session: bool = False,
) -> Proc:  # fmt: skip
    """`voxa <args>` serving HTTP on `port`, started once `ready_path` answers 200."""
    proc = Proc(name, [VOXA, *args], dict(env), log_path, port=port, start_new_session=new_session)
    url = f"http://127.0.0.1:{port}{ready_path}"
    return _started(proc, lambda: http_ok(url), timeout, f"{name} {ready_path}")


def signaling(
    log_path: Path,
    env: Mapping[str, str],
    port: int | None = None,
    name: str = "signaling",
    ready_path: str = "/readyz",
    timeout: float = READY_TIMEOUT_S,
    new_session: bool = False,
) -> Proc:
    """`voxa signaling` on 127.0.0.1 with exactly `env` (start from clean_env()); returns once
    `ready_path` answers 200 (/readyz: its store is reachable; /healthz: the process serves).
    `new_session`: its own session, so that a Ctrl-C in the caller's terminal reaches only the caller."""
    port = port or free_port()
    args = ["signaling", "--host", "127.0.0.1", "--port", str(port)]
    return _voxa(name, args, log_path, env, port, ready_path, timeout, new_session)


def sfu(
    log_path: Path,
    env: Mapping[str, str],
    port: int | None = None,
    name: str = "sfu",
    workers: int = 1,
    timeout: float = READY_TIMEOUT_S,
) -> Proc:
    """`voxa sfu --workers N` with its control API on `port` and exactly `env` (VOXA_SFU_* settings,
    start from clean_env()); returns once /healthz answers 200 (registration is the caller's wait)."""
    port = port or free_port()
    args = ["sfu", "--workers", str(workers), "--port", str(port)]
    return _voxa(name, args, log_path, env, port, "/healthz", timeout)
