"""Waiting on conditions, never on fixed sleeps: shared by the cluster harnesses and their tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll until check() returns something truthy (and return it). A check that finds an object not
    there yet, or not filled in yet (KeyError, TypeError on None), is polled again."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (AssertionError, KeyError, TypeError) as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
