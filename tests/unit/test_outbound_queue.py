"""A socket's outbound queue: a client that stops reading is closed with 1013 once its backlog
reaches the frame or the byte limit, and nothing it is sent after that is queued (bounded memory)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from voxa.common.claims import VoiceClaims
from voxa.signaling.connection import Connection
from voxa.signaling.settings import SignalingSettings


class StuckSocket:
    """A WebSocket whose peer stopped reading: every send waits until `release`."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, bytes] | None = None
        self.released = asyncio.Event()

    async def send_str(self, data: str) -> None:
        await self.released.wait()
        self.sent.append(data)

    async def close(self, *, code: int, message: bytes) -> None:
        self.closed = (code, message)


class Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def labels(self, label: str) -> Any:
        return SimpleNamespace(inc=lambda: self.counts.__setitem__(label, self.counts.get(label, 0) + 1))


def _connection(**settings: Any) -> tuple[Connection, StuckSocket, SimpleNamespace]:
    ws = StuckSocket()
    metrics = SimpleNamespace(errors=Counter(), closes=Counter())
    ctx = SimpleNamespace(settings=SignalingSettings(jwt_secret="x" * 32, **settings), metrics=metrics)
    claims = VoiceClaims(sub="u1", server="s1", name="u1")
    return Connection(ws, claims, ctx), ws, metrics  # type: ignore[arg-type]


async def test_the_byte_limit_closes_a_socket_whose_frames_are_large() -> None:
    conn, ws, metrics = _connection(outbound_queue_frames=1000, outbound_queue_bytes=65536)
    frame = "x" * 10_000
    for _ in range(6):
        conn.send(frame)
    assert metrics.errors.counts == {}
    conn.send(frame)  # 70 000 queued bytes: over the limit
    assert metrics.errors.counts == {"slow_consumer": 1}
    assert metrics.closes.counts == {"1013": 1}
    conn.send(frame)  # closing: dropped, not queued
    assert len(conn._queue) == 6
    ws.released.set()
    while ws.closed is None:
        await asyncio.sleep(0)
    assert ws.closed[0] == 1013
    assert ws.sent == [frame] * 6


async def test_the_frame_limit_still_holds_for_small_frames() -> None:
    conn, _, metrics = _connection(outbound_queue_frames=10)
    for _ in range(10):
        conn.send("{}")
    assert metrics.errors.counts == {}
    conn.send("{}")
    assert metrics.errors.counts == {"slow_consumer": 1}


async def test_the_writer_gives_back_the_bytes_it_sent() -> None:
    conn, ws, metrics = _connection(outbound_queue_frames=1000, outbound_queue_bytes=65536)
    ws.released.set()
    writer = asyncio.get_running_loop().create_task(conn._writer())
    try:
        for _ in range(20):  # 200 000 bytes in all, never more than one frame queued at once
            conn.send("y" * 10_000)
            while conn._queue:
                await asyncio.sleep(0)
        assert metrics.errors.counts == {}
        assert conn._queued_bytes == 0
    finally:
        writer.cancel()
