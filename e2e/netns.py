"""A network namespace joined to this host by a veth pair, with a shapeable link: a "weak downlink".

Tests that need a real bandwidth limit or packet loss on one client's link (simulcast layer choice,
RTX recovery) run that client inside the namespace and shape the host side of the pair, which is
the direction host → namespace, i.e. the SFU's sending leg to that client. Everything stays on this
machine: the namespace has no route but the one to the host's end of the pair.

Needs root (`ip netns`, `tc`); `available()` says whether this machine can do it, so a test can skip
with a reason instead of failing on a machine without the capability.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from types import TracebackType
from typing import Self

_COUNTER = itertools.count(1)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def available() -> str | None:
    """None when namespaces and tc work here, else the reason they do not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2, iptables)"
    probe = f"voxa-probe-{os.getpid()}"
    result = _run("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


class NetnsLink:
    """`with NetnsLink() as link: ... link.exec_prefix ... link.limit(rate_kbit=300)`.

    host_ip / ns_ip: the two ends (a /30 of 10.231.0.0/16, distinct per link in this process).
    """

    def __init__(self) -> None:
        n = (os.getpid() * 7 + next(_COUNTER)) % 16000
        self.name = f"voxa{os.getpid() % 100000}x{n}"
        self.host_dev = f"vxh{n}"
        self.ns_dev = f"vxn{n}"
        base = 4 * n
        self.host_ip = f"10.231.{base // 256 % 64 + 0}.{base % 256 + 1}"
        self.ns_ip = f"10.231.{base // 256 % 64 + 0}.{base % 256 + 2}"
        self._up = False

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        _run("ip", "netns", "add", self.name)
        self._up = True
        try:
            _run("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
            _run("ip", "link", "set", self.ns_dev, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
            _run("ip", "link", "set", self.host_dev, "up")
            ns = self.exec_prefix
            _run(*ns, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_dev)
            _run(*ns, "ip", "link", "set", self.ns_dev, "up")
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run(*ns, "ip", "route", "add", "default", "via", self.host_ip)
        except BaseException:
            self.close()
            raise

    def limit(self, *, rate_kbit: int | None = None, loss_percent: float = 0.0, queue_ms: int = 100) -> None:
        """Shape host → namespace: a token bucket of `rate_kbit` with a queue of about `queue_ms`, then
        drops, as a real bottleneck does; and/or random loss of `loss_percent` of the UDP datagrams
        arriving in the namespace (iptables' statistic match: this kernel has no netem)."""
        self.clear()
        if rate_kbit is not None:
            burst = max(4000, rate_kbit * 1000 // 8 // 50)  # 20 ms of the rate, at least a few packets
            limit = max(3000, rate_kbit * 1000 // 8 * queue_ms // 1000)
            _run(
                "tc",
                "qdisc",
                "add",
                "dev",
                self.host_dev,
                "root",
                "tbf",
                "rate",
                f"{rate_kbit}kbit",
                "burst",
                str(burst),
                "limit",
                str(limit),
            )
        if loss_percent:
            _run(
                *self.exec_prefix,
                "iptables",
                "-A",
                "INPUT",
                "-p",
                "udp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                f"{loss_percent / 100:.4f}",
                "-j",
                "DROP",
            )

    def clear(self) -> None:
        """Lift every limit."""
        _run("tc", "qdisc", "del", "dev", self.host_dev, "root", check=False)
        _run(*self.exec_prefix, "iptables", "-F", "INPUT", check=False)

    def close(self) -> None:
        if not self._up:
            return
        self._up = False
        # Deleting the namespace deletes its end of the pair, and so the pair; the host end goes too.
        _run("ip", "netns", "del", self.name, check=False)
        _run("ip", "link", "del", self.host_dev, check=False)
