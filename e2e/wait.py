"""Waiting on conditions, never on fixed sleeps: shared by the cluster harnesses and their tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.25
RETRIED = (AssertionError, KeyError, TypeError)
"""What a check raises for an object not there yet, or not filled in yet: it is polled again."""


def eventually(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll until check() returns something truthy (and return it)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except RETRIED as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def until(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """`eventually` for async tests: it polls in a thread (checks run kubectl, HTTP: they block), so
    the event loop, and the clients on it, keep running meanwhile."""
    return await asyncio.to_thread(eventually, check, timeout, what)
