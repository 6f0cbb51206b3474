"""The kind suite's clients are on the host and relay-only: their peers' connectivity checks arrive
through the gateway from pod addresses, which the repository-wide `loopback_ice` fixture would drop."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def loopback_ice() -> list[tuple[str, int]]:
    """No loopback filter here: relay candidates only (the join reply says relay), and the checks
    that come through the relay come from the SFU pods' addresses."""
    return []


# Chromium pages (and their console logs and screenshots on failure), as in the browser suites.
from e2e.browser.conftest import chromium, pytest_runtest_makereport  # noqa: E402

__all__ = ["chromium", "loopback_ice", "pytest_runtest_makereport"]
