"""Waiting on conditions, never on fixed sleeps, with deadlines that stretch on a busy machine.

A deadline that holds on an idle laptop fails on a CI runner sharing its cores with other jobs: the
condition would come true, only later. `VOXA_TEST_TIME_SCALE` (a float >= 1, default 1; a busy machine
sets 2 or 3) multiplies every timeout given to `eventually`/`eventually_async`/`until`, and any other
deadline a harness passes through `scaled()`. It slows nothing down: a condition met early returns early.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, overload

T = TypeVar("T")
ENV: Final = "VOXA_TEST_TIME_SCALE"
POLL_S: Final = 0.25
"""The sync poll interval: sync checks run kubectl or HTTP, which cost more than a 50 ms poll is worth."""
ASYNC_POLL_S: Final = 0.05
RETRIED: Final = (AssertionError, KeyError, TypeError)
"""What a check raises for an object not there yet, or not filled in yet: it is polled again."""


def _read_scale(raw: str | None) -> float:
    """The scale from the environment's text: a typo fails loudly rather than silently meaning 1."""
    if raw is None or not raw.strip():
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r} is not a number") from None
    if not value >= 1.0:  # also rejects nan
        raise ValueError(f"{ENV}={raw!r} must be >= 1 (it only ever stretches deadlines)")
    return value


TIME_SCALE: Final = _read_scale(os.environ.get(ENV))
"""Read once at import: every harness in one run agrees on it."""


def scaled(seconds: float) -> float:
    """`seconds` stretched by TIME_SCALE: for every deadline a test or harness waits up to."""
    return seconds * TIME_SCALE


def eventually(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll until check() returns something truthy (and return it), for up to scaled(timeout) s."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
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
    raise AssertionError(f"timed out after {limit:g} s waiting for {what}; last: {last!r}")


def consistently(check: Callable[[], object], duration: float, what: str = "condition") -> None:
    """Check that check() stays truthy for `duration` s (polled), failing at the first falsy result:
    for "nothing happens meanwhile" assertions, instead of a sleep followed by one look. The duration
    is a hold, not a deadline, so it is not scaled."""
    end = time.monotonic() + duration
    while True:
        result = check()
        if not result:
            raise AssertionError(f"{what} no longer holds; got {result!r}")
        if time.monotonic() >= end:
            return
        time.sleep(POLL_S)


async def until(check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """`eventually` for async tests whose checks block (kubectl, HTTP): it polls in a thread, so the
    event loop, and the clients on it, keep running meanwhile."""
    return await asyncio.to_thread(eventually, check, timeout, what)


@overload
async def eventually_async(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    what: str | Callable[[], str] = ...,
    poll: float = ...,
) -> T: ...


@overload
async def eventually_async(
    check: Callable[[], T | None],
    timeout: float = ...,
    what: str | Callable[[], str] = ...,
    poll: float = ...,
) -> T: ...


async def eventually_async(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    poll: float = ASYNC_POLL_S,
) -> Any:
    """Poll check() on the event loop (a plain or an async function) until it returns something
    truthy, and return it; fail after scaled(timeout) s naming `what` (a callable is asked then, to
    describe the state at the failure). Unlike `eventually` nothing is retried on exceptions: an
    in-process check that raises is a bug to see at once."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"not within {limit:g} s: {text}; last: {result!r}")
        await asyncio.sleep(poll)
