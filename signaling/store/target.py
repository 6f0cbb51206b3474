"""Which Redis deployment the store talks to: one Redis (or a primary behind a fixed address), a primary
found through Sentinel, or a Redis Cluster. Settings (signaling) and the VoiceServer spec (operator)
both build one of these; `voxa.signaling.store.redis.RedisStore` connects to it.

Kept free of redis-py imports so settings and the operator's models can use it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def parse_hosts(value: str | list[str] | tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``host:port`` items (a comma list or a sequence; ``[v6]:port`` too) as (host, port) pairs."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[tuple[str, int]] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {item!r}")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


@dataclass(frozen=True)
class RedisTarget:
    """One of three shapes (checked in __post_init__):

    - ``url`` alone: a single Redis (``redis://``, ``rediss://``, ``unix://``);
    - ``url`` and ``cluster=True``: a Redis Cluster, ``url`` naming any node (a seed; the others are
      discovered), with the credentials and TLS of every node;
    - ``sentinels`` and ``sentinel_master``: the primary the Sentinels name; ``password`` is the data
      nodes' password and ``sentinel_password`` the Sentinels' own (both optional).
    """

    url: str | None = None
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.sentinels:
            if self.url or self.cluster:
                raise ValueError("a Sentinel target takes no URL and no cluster flag")
            if not self.sentinel_master:
                raise ValueError("a Sentinel target needs the master's name")
        elif not self.url:
            raise ValueError("a Redis target needs a URL or Sentinels")
        elif self.password or self.sentinel_password or self.sentinel_master:
            raise ValueError("passwords and the master name belong to Sentinel targets; put a URL's in it")

    @property
    def kind(self) -> str:
        return "sentinel" if self.sentinels else "cluster" if self.cluster else "single"

    def describe(self) -> str:
        """For logs: no credentials."""
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {self.sentinel_master} via {hosts}"
        assert self.url is not None
        scheme, _, rest = self.url.partition("://")
        return f"{self.kind} {scheme}://{rest.rpartition('@')[2]}"
