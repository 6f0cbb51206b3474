"""The kind suite's clients are on the host and relay-only: their peers' connectivity checks arrive
through the gateway from pod addresses, which the repository-wide `loopback_ice` fixture would drop."""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.fixture(autouse=True)
def loopback_ice() -> list[tuple[str, int]]:
    """No loopback filter here: relay candidates only (the join reply says relay), and the checks
    that come through the relay come from the SFU pods' addresses."""
    return []


# Chromium pages (and their console logs and screenshots on failure), as in the browser suites.
from e2e.browser.conftest import chromium  # noqa: E402
from e2e.browser.conftest import pytest_runtest_makereport as _browser_report  # noqa: E402
from e2e.kind.deployed import Stack  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The browser suites' report, plus, when a test or its set-up fails, the end of the signaling and
    SFU logs of every stack it used: pod logs are gone once the stack's namespace is deleted."""
    report = yield from _browser_report(item, call)
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stack):
                report.sections.append((f"pods of stack {value.namespace}", value.output()))
    return report


__all__ = ["chromium", "loopback_ice", "pytest_runtest_makereport"]
