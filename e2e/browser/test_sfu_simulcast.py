"""Simulcast through the SFU with real Chromium peers and a real bandwidth limit.

A publisher page sends its fake camera as three layers (q 320x180, h 640x360, f 1280x720). Subscriber
"a" runs on this host; subscriber "b" runs in its own network namespace, joined by a veth pair whose
host side is shaped with a token bucket (`e2e/netns.py`): the SFU's sending leg to "b" is a real
bottleneck, and the SFU only learns of it from b's transport-cc feedback. What each subscriber
decodes is read from its `getStats()` (frame size, frames decoded, freezes, NACK and retransmission
counters); what the publisher encodes, per layer, from its outbound stats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from e2e import netns
from e2e.browser.conftest import ChromiumFactory
from e2e.browser.harness import ChromiumPage, ChromiumPeers
from e2e.browser.sfu_relay import ROUTER, Sfu, poll
from e2e.netns import NetnsLink
from voxa.sfu.control import create_app
from voxa.sfu.settings import SfuSettings
from voxa.sfu.worker import SfuWorker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

T = TypeVar("T")
WIDTH, HEIGHT = 1280, 720
LAYER_WIDTH = {"q": WIDTH // 4, "h": WIDTH // 2, "f": WIDTH}
SECRET = "test"
SWITCH_S = 30.0  # upper bound for a layer change, congestion detection included, on a busy machine
LIMIT_KBIT = 450  # room for q (~150 kbit/s) and audio, not for h (~500 kbit/s)


async def video_in(page: ChromiumPage) -> dict[str, Any]:
    """The page's one inbound video stream's counters ({} while there is none)."""
    stats = await page.stats()
    videos = [v for v in stats["inbound"].values() if v.get("kind") == "video"]
    return videos[0] if videos else {}


async def video_kbps(page: ChromiumPage, seconds: float = 2.0) -> float:
    """The page's inbound video bitrate over `seconds`, from bytesReceived."""
    first = await video_in(page)
    began = time.monotonic()
    await asyncio.sleep(seconds)  # the measuring window itself, not a wait for a condition
    second = await video_in(page)
    return float(second["bytesReceived"] - first["bytesReceived"]) * 8 / 1000 / (time.monotonic() - began)


def width_is(width: int) -> Callable[[dict[str, Any]], bool]:
    return lambda v: v.get("frameWidth") == width


@pytest.fixture
def link() -> Iterator[NetnsLink]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    with NetnsLink() as shaped:
        yield shaped


class Control:
    """The SFU's HTTP control API, as signaling calls it."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {SECRET}"})

    async def quality(self, peer: str, track: str, **body: Any) -> tuple[int, dict[str, Any]]:
        url = f"{self.base}/v1/routers/{ROUTER}/peers/{peer}/consumers/{track}/quality"
        async with self.session.put(url, json=body) as response:
            return response.status, await response.json()

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def stack(link: NetnsLink) -> AsyncIterator[tuple[Sfu, Control]]:
    worker = SfuWorker(
        SfuSettings(
            secret=SECRET,
            workers=1,
            rtc_listen_ip=link.host_ip,
            rtc_remote_networks=["127.0.0.0/8", f"{link.ns_ip}/32"],
        )
    )
    await worker.start()
    relay = Sfu(worker)
    server = TestServer(create_app(worker), host="127.0.0.1")
    await server.start_server()
    control = Control(str(server.make_url("")).rstrip("/"))
    try:
        yield relay, control
    finally:
        await control.close()
        await server.close()
        await relay.close()
        await worker.stop()


async def test_layers_follow_the_link_the_tile_and_who_watches(
    chromium: ChromiumFactory, stack: tuple[Sfu, Control], link: NetnsLink
) -> None:
    sfu, control = stack
    publisher = await chromium(1, tone_hz=440.0, video=True)
    watcher = await chromium(1, tone_hz=660.0)
    async with ChromiumPeers(1, tone_hz=880.0, netns=link) as weak:
        layers_told: list[dict[str, Any]] = []

        async def tell(active: dict[str, bool]) -> None:
            await publisher[0].set_encodings_active(active)

        def on_event(event: dict[str, Any]) -> None:
            # Dynacast: the publisher is told which layers anyone receives, as signaling would relay it.
            if event.get("type") == "publish_layers" and event.get("peer") == "pub":
                layers_told.append(event)
                task = asyncio.get_running_loop().create_task(tell(event["active"]))
                sfu._tasks.add(task)
                task.add_done_callback(sfu._tasks.discard)

        sfu.worker.listeners.append(on_event)
        await sfu.join_page("pub", publisher[0], simulcast=True, width=WIDTH, height=HEIGHT)
        await sfu.join_page("a", watcher[0])
        await sfu.join_page("b", weak[0], loopback_only=False)
        await sfu.wait_settled(timeout=60)
        video_mid = next(m["mid"] for m in await publisher[0].local_mids() if m["kind"] == "video")
        track = f"pub:{video_mid}"

        # Both subscribers start on the link's best layer: the full one.
        await poll(lambda: video_in(watcher[0]), width_is(LAYER_WIDTH["f"]), SWITCH_S, "a on the f layer")
        await poll(lambda: video_in(weak[0]), width_is(LAYER_WIDTH["f"]), SWITCH_S, "b on the f layer")

        # A real bottleneck on b's downlink: b drops to the low layer, a keeps the full one.
        limited = time.monotonic()
        link.limit(rate_kbit=LIMIT_KBIT)
        low = await poll(lambda: video_in(weak[0]), width_is(LAYER_WIDTH["q"]), SWITCH_S, "b down to q")
        print(f"limit {LIMIT_KBIT} kbit/s -> b decodes q after {time.monotonic() - limited:.1f} s")
        assert (await video_in(watcher[0]))["frameWidth"] == LAYER_WIDTH["f"]
        # It keeps decoding on the low layer (no frozen picture after the switch).
        later = await poll(
            lambda: video_in(weak[0]),
            lambda v: v.get("framesDecoded", 0) > low["framesDecoded"] + 20,
            SWITCH_S,
            "b decoding on q",
        )
        assert later["frameWidth"] == LAYER_WIDTH["q"]
        weak_kbps, full_kbps = await asyncio.gather(video_kbps(weak[0]), video_kbps(watcher[0]))
        print(f"video bitrate: b on q {weak_kbps:.0f} kbit/s, a on f {full_kbps:.0f} kbit/s")
        assert weak_kbps < LIMIT_KBIT and full_kbps > 2 * weak_kbps, (weak_kbps, full_kbps)

        # Lifting the limit brings the full layer back.
        lifted = time.monotonic()
        link.clear()
        back = await poll(lambda: video_in(weak[0]), width_is(LAYER_WIDTH["f"]), SWITCH_S * 2, "b back on f")
        print(f"limit lifted -> b decodes f after {time.monotonic() - lifted:.1f} s; freezes {back}")
        assert back.get("totalFreezesDuration", 0.0) < 3.0, back

        # A small tile asks for 320 px: the low layer. A hidden one is paused: nothing arrives.
        status, _ = await control.quality("a", track, max_width=320, max_height=180, paused=False)
        assert status == 200
        await poll(
            lambda: video_in(watcher[0]), width_is(LAYER_WIDTH["q"]), SWITCH_S, "a on q for a small tile"
        )
        status, _ = await control.quality("b", track, max_width=None, max_height=None, paused=True)
        assert status == 200
        before = await video_in(weak[0])
        await asyncio.sleep(2.0)  # a window to count in: packets must not rise during it
        first = await video_in(weak[0])
        await asyncio.sleep(1.0)
        second = await video_in(weak[0])
        assert second["packetsReceived"] == first["packetsReceived"], (before, first, second)

        # Nobody receives h or f now: the publisher is told, and stops encoding them.
        def only_q(stats: dict[str, Any]) -> bool:
            out = stats["outbound"]
            return (
                out.get(f"{video_mid}:q", {}).get("active") is True
                and out.get(f"{video_mid}:h", {}).get("active") is False
                and out.get(f"{video_mid}:f", {}).get("active") is False
            )

        await poll(publisher[0].stats, only_q, SWITCH_S, "publisher encodes q only")
        assert layers_told and layers_told[-1]["active"] == {"q": True, "h": False, "f": False}

        # Unknown tracks and bad bodies get clear errors.
        status, body = await control.quality("a", "nobody:9", max_width=320, max_height=None, paused=False)
        assert status == 404, body
        status, body = await control.quality("a", track, max_width=-5, max_height=None, paused=False)
        assert status == 400, body

        # b visible again: f comes back for it, and the publisher turns the layers on again.
        status, _ = await control.quality("b", track, max_width=None, max_height=None, paused=False)
        assert status == 200
        await poll(lambda: video_in(weak[0]), width_is(LAYER_WIDTH["f"]), SWITCH_S, "b on f after unpausing")
        sfu.assert_no_errors()


async def test_lost_packets_are_retransmitted_with_rtx_and_the_picture_recovers(
    chromium: ChromiumFactory, stack: tuple[Sfu, Control], link: NetnsLink
) -> None:
    sfu, _ = stack
    publisher = await chromium(1, tone_hz=440.0, video=True)
    async with ChromiumPeers(1, tone_hz=880.0, netns=link) as lossy:
        await sfu.join_page("pub", publisher[0], width=640, height=360)
        await sfu.join_page("b", lossy[0], loopback_only=False)
        await sfu.wait_settled(timeout=60)
        start = await poll(
            lambda: video_in(lossy[0]), lambda v: v.get("framesDecoded", 0) > 10, SWITCH_S, "video"
        )
        link.limit(loss_percent=5.0)
        lossy_stats = await poll(
            lambda: video_in(lossy[0]),
            lambda v: v.get("nackCount", 0) > 5 and v.get("retransmittedPacketsReceived", 0) > 5,
            SWITCH_S,
            "NACKs answered with RTX",
        )
        link.clear()
        recovered = await poll(
            lambda: video_in(lossy[0]),
            lambda v: v.get("framesDecoded", 0) > lossy_stats["framesDecoded"] + 30,
            SWITCH_S,
            "decoding after the loss",
        )
        assert recovered["framesDecoded"] > start["framesDecoded"]
        sfu.assert_no_errors()
