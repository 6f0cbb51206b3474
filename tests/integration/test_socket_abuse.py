"""Socket-level abuse of a real `voxa signaling` process on loopback, and a normal client beside it.

The abusers connect from their own loopback addresses (127.0.0.2 ...; Linux routes all of 127/8 to
lo), so the per-address limits (signaling/admission.py) apply to them and not to the normal client
on 127.0.0.1, which keeps connecting and joining a voice channel while the abuse goes on: every one
of its joins must work, each within JOIN_BOUND_S. The limits are set low so each kind of abuse
reaches them within seconds (docs/security.md gives the defaults).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
import urllib.request
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import pytest

from conftest import SignalingFactory, SignalingProcess
from tests.integration.conftest import token
from voxa.client.phoenix import PhoenixClient
from voxa.signaling import protocol

pytestmark = pytest.mark.slow

TOPIC = "voice:g1:lobby"
JOIN_BOUND_S = 3.0
LIMITS = {
    "address_limit_exempt": "",
    "max_connections_per_address": "40",
    "connections_per_address_per_s": "20",
    "connection_burst_per_address": "50",
    "handshake_timeout_s": "2",
    "media_server_ttl_s": "3",  # the handshake timeout must exceed the SFUs' heartbeat interval (1 s)
    "idle_timeout_s": "3",
    "max_frame_bytes": "65536",
    "max_header_bytes": "8190",
}
T = TypeVar("T")


@pytest.fixture
def signaling(signaling_factory: SignalingFactory) -> SignalingProcess:
    return signaling_factory(**LIMITS)


async def normal_join(server: SignalingProcess, user: str) -> float:
    """A normal client's whole visit: connect, join, see itself present, leave; its duration."""
    start = time.monotonic()
    client = PhoenixClient(server.ws_url, token(user))
    try:
        await client.connect()
        channel, _ = await client.join(TOPIC)
        await channel.wait_presence(lambda members: user in members)
    finally:
        await client.close()
    return time.monotonic() - start


async def while_serving_others(server: SignalingProcess, abuse: Awaitable[T]) -> tuple[T, list[float]]:
    """Run `abuse`; meanwhile a normal client joins again and again (at least 3 times in all)."""
    task = asyncio.ensure_future(abuse)
    times: list[float] = []
    while not task.done() or len(times) < 3:
        async with asyncio.timeout(JOIN_BOUND_S * 2):
            times.append(await normal_join(server, f"user{len(times)}"))
        await asyncio.sleep(0.2)
    result = await task
    assert max(times) < JOIN_BOUND_S, times
    return result, times


async def open_from(
    server: SignalingProcess, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))


def upgrade_request(query: str = "vsn=2.0.0&token=not-a-token", extra: str = "") -> bytes:
    return (
        f"GET /socket/websocket?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


async def status_of(server: SignalingProcess, source: str, request: bytes) -> int | None:
    """The status the server answers `request` with, or None if it closed without one."""
    try:
        reader, writer = await open_from(server, source)
    except OSError:
        return None
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            line = await reader.readline()
        match = re.match(rb"HTTP/1\.[01] (\d{3})", line)
        return int(match.group(1)) if match else None
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def refused_metric(server: SignalingProcess) -> dict[str, float]:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.findall(r'voxa_signaling_connections_refused_total\{reason="(\w+)"\} ([0-9.e+]+)', text)
    return {reason: float(value) for reason, value in found}


async def test_an_upgrade_flood_from_one_address_is_rate_limited_and_others_join(
    signaling: SignalingProcess,
) -> None:
    attempts, concurrency = 3000, 64

    async def flood() -> tuple[collections.Counter[int | None], float]:
        statuses: collections.Counter[int | None] = collections.Counter()
        todo = iter(range(attempts))
        start = time.monotonic()

        async def worker() -> None:
            for _ in todo:
                statuses[await status_of(signaling, "127.0.0.2", upgrade_request())] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return statuses, time.monotonic() - start

    (statuses, elapsed), _ = await while_serving_others(signaling, flood())
    assert sum(statuses.values()) == attempts
    # Admitted attempts reach the token check (403); the rest are refused at connect (429).
    assert set(statuses) <= {403, 429}, statuses
    assert statuses[403] <= 50 + 20 * elapsed + 5, (statuses, elapsed)
    assert statuses[429] >= attempts - (50 + 20 * elapsed + 5), (statuses, elapsed)
    refused = refused_metric(signaling)
    assert refused.get("rate", 0) > 0 and sum(refused.values()) == statuses[429], (refused, statuses)


async def test_open_sockets_per_address_are_capped_and_silent_ones_are_closed(
    signaling: SignalingProcess,
) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0), limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def hold(count: int) -> list[Any]:
            """`count` authorized upgrades that then never send a frame."""

            async def one(i: int) -> Any:
                try:
                    return await session.ws_connect(
                        signaling.ws_url + "/websocket",
                        params={"vsn": "2.0.0", "token": token(f"silent{i}")},
                        autoping=False,
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

            return await asyncio.gather(*(one(i) for i in range(count)))

        results, _ = await while_serving_others(signaling, hold(45))
        sockets = [r for r in results if not isinstance(r, int)]
        assert len(sockets) == 40 and [r for r in results if isinstance(r, int)] == [429] * 5
        assert refused_metric(signaling).get("open") == 5

        # Upgraded, then silent: closed by the idle timeout (3 s; the sweep runs every 0.75 s).
        start = time.monotonic()
        for ws in sockets:
            async with asyncio.timeout(10):
                msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == protocol.CLOSE_IDLE
            await ws.close()
        assert time.monotonic() - start < 3 + 0.75 + 3
        # ... and their slots are free again, once the server has seen the connections end.
        deadline = time.monotonic() + 5
        again = await hold(1)
        while isinstance(again[0], int) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            again = await hold(1)
        assert not isinstance(again[0], int), again
        await again[0].close()


async def test_half_open_and_slowloris_connections_are_closed_by_the_handshake_timeout(
    signaling: SignalingProcess,
) -> None:
    async def closed_after(source: str, trickle: bytes | None) -> float:
        """Connect, then send nothing (trickle None) or `trickle` one byte every 0.25 s, never the
        end of the headers; the time until the server closes the connection."""
        reader, writer = await open_from(signaling, source)
        start = time.monotonic()
        try:
            async with asyncio.timeout(15):
                if trickle is None:
                    assert await reader.read(1) == b""
                else:
                    for i in range(10**6):
                        writer.write(trickle[i % len(trickle) : i % len(trickle) + 1])
                        await writer.drain()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.25):
                                if await reader.read(1) == b"":
                                    break
        except ConnectionResetError:
            pass
        finally:
            writer.close()
        return time.monotonic() - start

    slow = upgrade_request()[:-2] + b"X-Slow: " + b"a" * 1000
    abuse = asyncio.gather(
        *(closed_after("127.0.0.4", None) for _ in range(30)),
        *(closed_after("127.0.0.5", slow) for _ in range(30)),
    )
    closed, _ = await while_serving_others(signaling, abuse)
    # The 2 s handshake timeout, plus the trickler's 0.25 s read and a margin for a busy machine.
    assert all(1.5 < t < 2 + 2.5 for t in closed), sorted(closed)


async def test_oversized_headers_and_frames_are_refused_and_others_join(
    signaling: SignalingProcess,
) -> None:
    async def abuse() -> list[int | None]:
        return [
            await status_of(signaling, "127.0.0.6", upgrade_request(extra=f"X-Big: {'a' * 9000}\r\n")),
            await status_of(
                signaling, "127.0.0.6", upgrade_request(query="token=LEAKME&vsn=2.0.0&x=" + "a" * 9000)
            ),
            await status_of(
                signaling, "127.0.0.6", upgrade_request(extra="".join(f"X-{i}: a\r\n" for i in range(200)))
            ),
        ]

    statuses, _ = await while_serving_others(signaling, abuse())
    assert all(status is not None and 400 <= status < 500 for status in statuses), statuses
    # Each is one warning line naming the error, without the request's bytes (a token, say).
    log = signaling.log_path.read_text()
    assert log.count('"event":"http.bad_request"') == 3, log[-3000:]
    assert "LEAKME" not in log and '"level":"error"' not in log

    client = PhoenixClient(signaling.ws_url, token("big"))
    await client.connect()
    await client.join(TOPIC)
    assert client.ws is not None
    await client.ws.send_str("[" + " " * 70_000 + "]")
    async with asyncio.timeout(10):
        await client.closed.wait()
    assert client.close_code == protocol.CLOSE_TOO_BIG
    await client.close()
    await normal_join(signaling, "after")
