"""The browser client (signaling/static/) in a Chromium page of the e2e/browser harness, seen through
its test hook `window.voxa = {state(), participants(), measure(ms), video()}` and its DOM: shared by
the suites that open it against `voxa demo` (test_browser_client.py) and against a kind cluster
(e2e/kind/)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from e2e.browser.harness import ChromiumPeers

TOLERANCE_HZ = 15.0
TONE_RMS = 0.01  # a received tone measures ~0.03-0.1 (the client's voice processing is on)
SILENCE_RMS = 0.002
MEASURE_MS = 700
WAIT_S = 25.0
DESKTOP = (1100, 720)
PHONE = (390, 844)
T = TypeVar("T")


class Server(Protocol):
    """What serves the page; its output goes into failure messages."""

    def output(self) -> str: ...


@dataclass
class Client:
    """One page running the browser client, seen through window.voxa and the DOM."""

    peers: ChromiumPeers
    index: int
    name: str
    demo: Server

    async def js(self, expression: str, timeout: float | None = None) -> Any:
        return await self.peers.evaluate(self.index, expression, timeout=timeout)

    async def open(self, url: str, size: tuple[int, int] = DESKTOP) -> None:
        await self.peers.call(self.index, "$viewport", *size)
        result = await self.peers.call(self.index, "$goto", url)
        assert result["status"] == 200, f"{self.name}: GET {url} answered {result}"
        await self.until(lambda: self.js("typeof window.voxa === 'object'"), "window.voxa to exist", 10)

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.js("window.voxa.state()")
        return result

    async def participants(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.js("window.voxa.participants()")
        return result

    async def measure(self, ms: int = MEASURE_MS) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = await self.js(
            f"window.voxa.measure({ms})", timeout=ms / 1000 + 15
        )
        return result

    async def video(self) -> dict[str, Any]:
        """Camera, screen share, what the page publishes and its grid's tiles (window.voxa.video())."""
        result: dict[str, Any] = await self.js("window.voxa.video()")
        return result

    async def tiles(self) -> list[dict[str, Any]]:
        return list((await self.video())["tiles"])

    async def click(self, selector: str) -> None:
        """Click an element once it exists and is enabled (a toggle is disabled while it works)."""
        script = (
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el || el.disabled) return false; el.click(); return true; })()"
        )
        await self.until(lambda: self.js(script), f"enabled {selector} to click", 5)

    async def attr(self, selector: str, name: str) -> str | None:
        value: str | None = await self.js(
            f"document.querySelector({json.dumps(selector)})?.getAttribute({json.dumps(name)}) ?? null"
        )
        return value

    async def listed(self) -> list[dict[str, Any]]:
        """The participant list as rendered: user id, name, you marker, muted, speaking, aria-label."""
        result: list[dict[str, Any]] = await self.js(
            "[...document.querySelectorAll('#participants li')].map((li) => ({"
            " user: li.dataset.user, name: li.querySelector('.name')?.textContent,"
            " you: li.dataset.you === 'true', youBadge: Boolean(li.querySelector('.you-badge')),"
            " muted: li.dataset.muted === 'true', speaking: li.dataset.speaking === 'true',"
            " flags: [...li.querySelectorAll('.flag')].map((f) => f.title),"
            " label: li.getAttribute('aria-label') }))"
        )
        return result

    async def person(self, user: str) -> dict[str, Any] | None:
        return next((p for p in await self.listed() if p["user"] == user), None)

    async def describe(self) -> str:
        with contextlib.suppress(Exception):
            state = await self.state()
            listed = await self.listed()
            return f"{self.name} state: {json.dumps(state)}\n{self.name} list: {json.dumps(listed)}"
        return f"{self.name}: (no state)"

    async def until(self, probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = WAIT_S) -> T:
        """Poll `probe` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = await probe()
            except AssertionError as err:
                last = err
            if last and not isinstance(last, AssertionError):
                return cast(T, last)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no {what} within {timeout} s (last: {last!r})\n{await self.describe()}\n"
                    f"--- console:\n{self.peers.format_logs(self.index)}\n{self.demo.output()}"
                )
            await asyncio.sleep(0.2)

    async def wait_status(self, status: str, timeout: float = WAIT_S) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            state = await self.state()
            return state if state["status"] == status else None

        return await self.until(probe, f"status {status!r}", timeout)

    async def wait_voice(self, timeout: float = WAIT_S) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            state = await self.state()
            media = state.get("media") or {}
            return state if media.get("connectionState") == "connected" else None

        return await self.until(probe, "connected voice (RTCPeerConnection)", timeout)

    async def hears(self, user: str, hz: float, timeout: float = WAIT_S) -> dict[str, Any]:
        """Measure until `user`'s track carries the tone `hz` (±TOLERANCE_HZ) with some energy."""

        async def probe() -> dict[str, Any] | None:
            level = (await self.measure()).get(user)
            hz_ok = level is not None and level["hz"] is not None and abs(level["hz"] - hz) <= TOLERANCE_HZ
            if level is not None and hz_ok and level["rms"] >= TONE_RMS:
                return level
            raise AssertionError(f"{user}: {level}")

        return await self.until(probe, f"{hz:g} Hz from {user}", timeout)

    async def silence_from(self, user: str, timeout: float = WAIT_S) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            level = (await self.measure()).get(user)
            if level is not None and level["rms"] < SILENCE_RMS:
                return level
            raise AssertionError(f"{user}: {level}")

        return await self.until(probe, f"silence from {user}", timeout)

    async def screenshot(self, path: Path, size: tuple[int, int] | None = None) -> Path:
        if size is not None:
            await self.peers.call(self.index, "$viewport", *size)
            await asyncio.sleep(0.3)
        return await self.peers.screenshot(self.index, path)
