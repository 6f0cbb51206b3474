"""Free ports for local services: the demo, the test harnesses and the benchmarks.

The kernel's pick for a socket bound to port 0 is free at that moment, but once that socket closes the
same number can come back from the very next pick. Two services given "free" ports in a row can then
get the same one: the second fails to bind, or worse, a readiness probe meant for one reaches the other
and passes. So every pick is remembered for the life of the process and never handed out twice.
"""

from __future__ import annotations

import socket
import threading

LOOPBACK = "127.0.0.1"
ANY = "0.0.0.0"
TCP = (socket.SOCK_STREAM,)
UDP = (socket.SOCK_DGRAM,)
TCP_AND_UDP = (socket.SOCK_STREAM, socket.SOCK_DGRAM)

_handed_out: set[int] = set()
_lock = threading.Lock()
_ATTEMPTS = 200


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = LOOPBACK, kinds: tuple[int, ...] = TCP) -> int:
    """A port free now on `host` for every socket type in `kinds`, not handed out before by this
    process. The first type's kernel pick is checked against the others (coturn and signaling
    listen on TCP and UDP under one number)."""
    first, *others = kinds
    with _lock:
        for _ in range(_ATTEMPTS):
            with socket.socket(socket.AF_INET, first) as s:
                s.bind((host, 0))
                port: int = s.getsockname()[1]
            if port in _handed_out or not all(_bindable(host, port, kind) for kind in others):
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port on {host} for socket types {kinds} after {_ATTEMPTS} picks")
