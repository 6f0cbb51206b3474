"""Per-address admission of TCP connections to `voxa signaling`, before any byte is read.

Every connection is counted against its client address: at most `max_connections_per_address` open
at once, and new ones at `connections_per_address_per_s` with a burst of
`connection_burst_per_address` (a token bucket per address). A connection over either limit gets a
fixed `429 Too Many Requests` with `Connection: close` and is closed (after the client closed its
side, or within a second); nothing of it reaches aiohttp,
so a flood of upgrades from one address costs no token verification. Addresses in
`address_limit_exempt` (CIDRs) are not limited: behind a load balancer or ingress that does not
keep the client's address, every client shares the proxy's address and the proxy must do the
per-client limiting (docs/security.md).

The limits apply to the listener `voxa signaling` serves (server.py); in-process test apps are not
wrapped. A slow or half-open client that is admitted is bounded by aiohttp's keep-alive timer, set
from `handshake_timeout_s`: the request headers must be complete within that time of connecting.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from aiohttp import web

_REFUSAL_BODY = b"too many connections from this address; wait\n"
REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)
_PRUNE_AT = 4096
REFUSAL_LINGER_S = 1.0
REFUSED_LINGERING = 1024


@dataclass(slots=True)
class _Entry:
    open: int
    tokens: float
    at: float


class AddressLimits:
    """The bookkeeping, pure (an injectable clock): admit() at connect, release() at close."""

    def __init__(
        self,
        max_open: int,
        rate_per_s: float,
        burst: int,
        exempt: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_open = max_open
        self.rate = rate_per_s
        self.burst = float(burst)
        self.exempt = [ipaddress.ip_network(cidr, strict=False) for cidr in exempt]
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self.lingering = 0  # refused connections waiting for their client to close

    @property
    def enabled(self) -> bool:
        return self.max_open > 0 or self.rate > 0

    def _exempt(self, address: str) -> bool:
        if not self.exempt:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.exempt)

    def admit(self, address: str) -> str | None:
        """None if a connection from `address` may open (it is then counted), else why not."""
        if not self.enabled or self._exempt(address):
            return None
        now = self.clock()
        entry = self._entries.get(address)
        if entry is None:
            if len(self._entries) >= _PRUNE_AT:
                self._prune(now)
            entry = self._entries[address] = _Entry(0, self.burst, now)
        if self.max_open > 0 and entry.open >= self.max_open:
            return "open"
        if self.rate > 0:
            entry.tokens = min(self.burst, entry.tokens + (now - entry.at) * self.rate)
            entry.at = now
            if entry.tokens < 1:
                return "rate"
            entry.tokens -= 1
        entry.open += 1
        return None

    def release(self, address: str) -> None:
        entry = self._entries.get(address)
        if entry is not None and entry.open > 0:
            entry.open -= 1

    def open_from(self, address: str) -> int:
        entry = self._entries.get(address)
        return entry.open if entry else 0

    def _prune(self, now: float) -> None:
        """Forget addresses with nothing open whose bucket has refilled (they are as if new)."""
        full = self.burst / self.rate if self.rate > 0 else 0.0
        for address, entry in list(self._entries.items()):
            if entry.open == 0 and now - entry.at >= full:
                del self._entries[address]

    def __len__(self) -> int:
        return len(self._entries)


class _Admission(asyncio.Protocol):
    """Stands between the transport and aiohttp's RequestHandler: admits or refuses at connect,
    then forwards every event unchanged."""

    __slots__ = ("_address", "_factory", "_inner", "_limits", "_linger", "_on_refused")

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        limits: AddressLimits,
        on_refused: Callable[[str], None],
    ) -> None:
        self._factory = factory
        self._limits = limits
        self._on_refused = on_refused
        self._inner: asyncio.Protocol | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        reason = self._limits.admit(self._address)
        if reason is not None:
            self._on_refused(reason)
            self._refuse(transport)
            return
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        """Answer 429 and half-close, then read and drop what the client sent until it closes (at most
        REFUSAL_LINGER_S): closing with its request unread would reset the connection before the
        client read the answer. Past REFUSED_LINGERING such connections at once, close at once."""
        # uvloop's transports are not asyncio.Transport subclasses; they have the same methods.
        transport = cast(asyncio.Transport, transport)
        transport.write(REFUSAL)
        limits = self._limits
        if limits.lingering >= REFUSED_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        limits.lingering += 1
        self._linger = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return False  # a refused client closed its side: close ours
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limits.release(self._address)
            self._inner.connection_lost(exc)
            self._inner = None
        elif self._linger is not None:
            self._linger.cancel()
            self._linger = None
            self._limits.lingering -= 1

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class AdmittingSite(web.BaseSite):
    """A TCP site whose connections pass AddressLimits before aiohttp sees them."""

    __slots__ = ("_host", "_limits", "_on_refused", "_port", "_reuse_address")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: AddressLimits,
        on_refused: Callable[[str], None],
        *,
        shutdown_timeout: float = 60.0,
        backlog: int = 128,
        reuse_address: bool = True,
    ) -> None:
        super().__init__(runner, shutdown_timeout=shutdown_timeout, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits
        self._on_refused = on_refused
        self._reuse_address = reuse_address

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        limits, on_refused = self._limits, self._on_refused

        def factory() -> asyncio.Protocol:
            return _Admission(server, limits, on_refused)

        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address
        )
