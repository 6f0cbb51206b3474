"""Fixtures of the browser suites: headless Chromium pages (`chromium`); aiortc stays on loopback
through the repository-wide `loopback_ice` fixture (conftest.py at the root).

    async def test_x(chromium: ChromiumFactory, loopback_ice: list[tuple[str, int]]) -> None:
        peers = await chromium(2, tone_hz=[440, 660])
        await peers[0].start()

Every ChromiumPeers the factory opened is closed at teardown. When the test failed, each page's console
log is attached to the report (section "chromium console") and a screenshot of every page is written to
the test's tmp_path before the browsers close.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Generator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from e2e.browser.harness import CHROMIUM, ROOT, ChromiumPeers

PEERS_KEY = pytest.StashKey[list[ChromiumPeers]]()
FAILED_KEY = pytest.StashKey[bool]()


class ChromiumFactory(Protocol):
    async def __call__(
        self, count: int = 1, tone_hz: float | Sequence[float | None] | None = 440.0, video: bool = False
    ) -> ChromiumPeers: ...


def chromium_missing() -> str | None:
    """Why the browser suites cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: `apt-get install chromium` (or run `bash .ci/setup.sh`)"
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core is missing: run `bash .ci/setup.sh`"
    return None


@pytest.fixture
async def chromium(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChromiumFactory]:
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    opened: list[ChromiumPeers] = []
    request.node.stash[PEERS_KEY] = opened

    async def factory(
        count: int = 1, tone_hz: float | Sequence[float | None] | None = 440.0, video: bool = False
    ) -> ChromiumPeers:
        peers = ChromiumPeers(count, tone_hz, video, workdir=tmp_path / f"chromium-{len(opened)}")
        await peers.__aenter__()
        opened.append(peers)
        return peers

    yield factory
    failed = request.node.stash.get(FAILED_KEY, False)
    for n, peers in enumerate(opened):
        if failed:
            for page in range(len(peers)):
                try:
                    shot = await peers.screenshot(page, tmp_path / f"failure-{n}-page-{page}.png")
                    print(f"screenshot of browser set {n} page {page}: {shot}")
                except Exception as err:  # the browser may be what failed
                    print(f"no screenshot of browser set {n} page {page}: {err}")
        await peers.aclose()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED_KEY] = True
    opened: list[ChromiumPeers] = item.stash.get(PEERS_KEY, [])
    if report.failed:
        for n, peers in enumerate(opened):
            report.sections.append((f"chromium console (browser set {n})", peers.format_logs(last=400)))
    return report
