"""A minimal TURN client over UDP for tests: one 5-tuple, each request's raw outcome.

aioice's own TURN client hides what a test needs to see: it retries, and drops error responses that
are not signed with the request's key (stunnerd answers bad credentials with an unsigned 400), which
turns a refusal into a timeout. `TurnProbe` sends exactly the requests asked for (after the usual
401-with-nonce round trip of the long-term credential mechanism) and returns what came back, error
code included. Messages are encoded with aioice's STUN codec.

`UdpPeer` is the other end: a UDP socket that records what the TURN server relays to it and, as an
echo peer, sends it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from typing import cast

from aioice import stun
from aioice.turn import UDP_TRANSPORT, is_channel_data, make_integrity_key
from aioice.utils import random_transaction_id

Address = tuple[str, int]
FIRST_CHANNEL = 0x4000


class TurnTimeout(Exception):
    """The TURN server did not answer a request."""


@dataclass(frozen=True)
class TurnResult:
    """The answer to one request: `ok` for a success response; `code` is the ERROR-CODE of an error
    response (None when the server sent an error response without one, as stunnerd does for a refused
    CreatePermission)."""

    ok: bool
    code: int | None
    reason: str
    message: stun.Message

    @property
    def relayed_address(self) -> Address:
        address: Address = self.message.attributes["XOR-RELAYED-ADDRESS"]
        return address

    def __str__(self) -> str:
        if self.ok:
            return "success"
        return f"error {self.code} {self.reason!r}" if self.code is not None else "error (no ERROR-CODE)"


class TurnProbe(asyncio.DatagramProtocol):
    """A TURN client on one UDP socket (one allocation at most). Open with `await TurnProbe.open(...)`."""

    def __init__(self, server: Address, username: str, password: str) -> None:
        self.server = server
        self.username = username
        self.password = password
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: dict[bytes, asyncio.Future[stun.Message]] = {}
        self.channel_data: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.data_indications: asyncio.Queue[tuple[Address, bytes]] = asyncio.Queue()

    @classmethod
    async def open(cls, server: Address, username: str, password: str) -> TurnProbe:
        loop = asyncio.get_running_loop()
        _, probe = await loop.create_datagram_endpoint(
            lambda: cls(server, username, password), local_addr=("127.0.0.1", 0)
        )
        return probe

    # --- asyncio.DatagramProtocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) >= 4 and is_channel_data(data):
            number, length = struct.unpack("!HH", data[:4])
            self.channel_data.put_nowait((number, data[4 : 4 + length]))
            return
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if message.message_class == stun.Class.INDICATION and message.message_method == stun.Method.DATA:
            peer = message.attributes.get("XOR-PEER-ADDRESS")
            if peer is not None:
                self.data_indications.put_nowait((peer, message.attributes.get("DATA", b"")))
            return
        waiter = self._pending.get(message.transaction_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    # --- requests -------------------------------------------------------------------------------
    def use_credentials(self, username: str, password: str) -> None:
        """Sign the next requests with other credentials (same socket, so the same allocation)."""
        self.username, self.password = username, password

    def _key(self) -> bytes:
        assert self.realm is not None
        return make_integrity_key(self.username, self.realm, self.password)

    async def _exchange(self, message: stun.Message, timeout: float) -> stun.Message:
        assert self.transport is not None
        waiter: asyncio.Future[stun.Message] = asyncio.get_running_loop().create_future()
        self._pending[message.transaction_id] = waiter
        data = bytes(message)
        try:
            # Loopback UDP rarely loses anything; retransmit a few times anyway (RFC 8489 7.2.1).
            delay = 0.1
            async with asyncio.timeout(timeout):
                while True:
                    self.transport.sendto(data, self.server)
                    done, _ = await asyncio.wait({waiter}, timeout=delay)
                    if done:
                        return waiter.result()
                    delay = min(2 * delay, 1.0)
        except TimeoutError:
            raise TurnTimeout(f"no answer to {message.message_method.name} from {self.server}") from None
        finally:
            self._pending.pop(message.transaction_id, None)

    async def request(
        self, method: stun.Method, attributes: dict[str, object], timeout: float = 5.0
    ) -> TurnResult:
        """Send a request signed with the current credentials; a 401 or 438 carrying a nonce (the
        first request, or a stale nonce) is answered once more with the new nonce."""
        answer: stun.Message | None = None
        for _ in range(3):
            message = stun.Message(method, stun.Class.REQUEST, random_transaction_id())
            message.attributes.update(attributes)
            if self.nonce is not None:
                message.attributes["USERNAME"] = self.username
                message.attributes["REALM"] = self.realm
                message.attributes["NONCE"] = self.nonce
                message.add_message_integrity(self._key())
            message.add_fingerprint()
            answer = await self._exchange(message, timeout)
            if answer.message_class == stun.Class.RESPONSE:
                return TurnResult(True, None, "", answer)
            code = answer.error_code
            fresh_nonce = "NONCE" in answer.attributes and answer.attributes["NONCE"] != self.nonce
            if code in (401, 438) and fresh_nonce and ("REALM" in answer.attributes or self.realm):
                self.nonce = answer.attributes["NONCE"]
                self.realm = answer.attributes.get("REALM", self.realm)
                continue
            break
        assert answer is not None
        error = answer.attributes.get("ERROR-CODE")
        return TurnResult(False, answer.error_code, error[1] if error else "", answer)

    async def allocate(self, lifetime: int = 600) -> TurnResult:
        return await self.request(
            stun.Method.ALLOCATE, {"LIFETIME": lifetime, "REQUESTED-TRANSPORT": UDP_TRANSPORT}
        )

    async def refresh(self, lifetime: int = 600, timeout: float = 5.0) -> TurnResult:
        return await self.request(stun.Method.REFRESH, {"LIFETIME": lifetime}, timeout)

    async def create_permission(self, host: str) -> TurnResult:
        return await self.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": (host, 0)})

    async def channel_bind(self, number: int, peer: Address) -> TurnResult:
        return await self.request(
            stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": number, "XOR-PEER-ADDRESS": peer}
        )

    # --- data -----------------------------------------------------------------------------------
    def send_channel_data(self, number: int, data: bytes) -> None:
        assert self.transport is not None
        padding = bytes(-len(data) % 4)
        self.transport.sendto(struct.pack("!HH", number, len(data)) + data + padding, self.server)

    def send_indication(self, peer: Address, data: bytes) -> None:
        assert self.transport is not None
        message = stun.Message(stun.Method.SEND, stun.Class.INDICATION, random_transaction_id())
        message.attributes["XOR-PEER-ADDRESS"] = peer
        message.attributes["DATA"] = data
        self.transport.sendto(bytes(message), self.server)

    async def echo(self, number: int, data: bytes, timeout: float = 2.0) -> bool:
        """Send `data` on a bound channel and wait for the same bytes to come back on it (from an
        echo peer): True if they did within `timeout`."""
        send_every = 0.2
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    self.send_channel_data(number, data)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(send_every):
                            while True:
                                got = await self.channel_data.get()
                                if got == (number, data):
                                    return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket standing for a peer behind the TURN server: it records every datagram and, when
    `echo` is set, sends it back to where it came from (the allocation's relayed address)."""

    echo: bool = True
    received: list[tuple[Address, bytes]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, host: str, echo: bool = True, port: int = 0) -> UdpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(lambda: cls(echo), local_addr=(host, port))
        return peer

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.received.append((addr, data))
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
