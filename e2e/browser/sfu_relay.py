"""The signaling relay of the SFU browser tests: an in-process SFU worker with one router, Chromium
pages (and aiortc clients) as its peers, and the test moving every offer and answer between them.

The relay is what signaling does in production, minus the WebSocket: a page offers, the SFU answers;
every offer the SFU makes later (new or removed consumers: `worker.listeners` events) is applied by the
page, whose answer goes back to the SFU. Shared by test_sfu_chromium.py and test_sfu_simulcast.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from e2e.browser.harness import ChromiumPage
from tests.integration.sfu.conftest import ClientPeer, Harness
from voxa.common.testing.wait import eventually_async, scaled
from voxa.sfu.negotiation import State
from voxa.sfu.worker import RouterHandle, SfuWorker

WAIT_S = 20.0
ROUTER = "lobby"
T = TypeVar("T")


# --- the SFU and the signaling relay --------------------------------------------------------------
@dataclass
class PagePeer:
    """A Chromium page in the router, and what the relay did for it."""

    name: str
    page: ChromiumPage
    offers: list[str] = field(default_factory=list)  # the SFU's offers, as relayed to the page
    answers: list[str] = field(default_factory=list)  # the page's answers to them
    first_answer: str = ""  # the SFU's answer to the page's own offer
    errors: list[str] = field(default_factory=list)
    # Signaling delivers in order; offers arrive here by callback, so negotiation steps take turns.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Sfu:
    """An SFU worker with one router; relays the SFU's offers to Chromium pages (aiortc clients are
    relayed by the integration tests' Harness, which shares the worker)."""

    def __init__(self, worker: SfuWorker) -> None:
        self.worker = worker
        self.room: RouterHandle = worker.create_router(ROUTER)
        self.aiortc = Harness(worker)
        self.pages: dict[str, PagePeer] = {}
        self.errors: list[tuple[str, str, str]] = []  # (page, error, the SFU's offer), pages that left too
        self._tasks: set[asyncio.Task[None]] = set()
        worker.listeners.append(self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "offer" and event["peer"] in self.pages:
            task = asyncio.get_running_loop().create_task(self._relay(self.pages[event["peer"]], event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _relay(self, peer: PagePeer, event: dict[str, Any]) -> None:
        async with peer.lock:
            peer.offers.append(event["sdp"])
            try:
                answer = await peer.page.handle_remote_offer(event["sdp"])
                peer.answers.append(answer)
                self.worker.router(event["router"]).peer(peer.name).handle_answer(answer)
            except Exception as err:
                peer.errors.append(f"{type(err).__name__}: {err}")
                self.errors.append((peer.name, peer.errors[-1], event["sdp"]))

    async def join_page(self, name: str, page: ChromiumPage, **start: Any) -> PagePeer:
        """The page offers its microphone (and what `start` asks for: `ChromiumPage.start`'s options),
        the SFU answers; returns once the page is connected."""
        peer = PagePeer(name, page)
        self.pages[name] = peer
        async with peer.lock:
            await page.start(**start)
            offer = await page.create_offer()
            peer.first_answer = await self.room.add_peer(name, offer)
            await page.set_remote("answer", peer.first_answer)
        await page.wait_connected()
        return peer

    async def join_aiortc(self, name: str, tone_hz: float) -> ClientPeer:
        return await self.aiortc.join(self.room, name, tone_hz)

    async def leave_page(self, name: str) -> None:
        await self.room.remove_peer(name)
        peer = self.pages.pop(name)
        await peer.page.close()

    def settled(self) -> bool:
        """Every peer is connected, no offer is in flight, and every peer has a negotiated, started
        consumer for every producer of the others."""
        if self._tasks or self.aiortc._tasks:
            return False
        for peer in self.room.peers.values():
            stats = peer.stats()
            others = sum(len(p.producers) for pid, p in self.room.peers.items() if pid != peer.id)
            consumers = stats["consumers"]
            if not stats["connected"] or peer.negotiator is None or peer.negotiator.state is not State.STABLE:
                return False
            if len(consumers) != others or not all(c["mid"] is not None and c["ready"] for c in consumers):
                return False
        return True

    async def wait_settled(self, timeout: float = WAIT_S) -> None:
        await eventually_async(self.settled, timeout, lambda: f"SFU not settled: {self.describe()}")

    def describe(self) -> str:
        peers = {
            pid: (p.negotiator.state if p.negotiator else None, p.stats())
            for pid, p in self.room.peers.items()
        }
        errors = [error[:2] for error in self.errors]
        return f"peers={peers} relay_tasks={len(self._tasks)} errors={errors}"

    def assert_no_errors(self) -> None:
        assert not self.errors, self.errors

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.aiortc.close()


# --- waiting and measuring ------------------------------------------------------------------------
async def poll(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float, what: str
) -> T:
    """Run `probe` until `accept` takes its result; fail with the last result after `timeout` s."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        result = await probe()
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last: {result}")
        await asyncio.sleep(0.1)
