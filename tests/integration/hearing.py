"""Waiting until a decoded track carries a tone, or silence, instead of sleeping a settle time first.

Each attempt measures a fresh window (`measure()` waits its window, then analyses what arrived in it),
so a silence check passes only once a whole window lies after the mute, and a tone check only once a
whole window holds the tone. The deadline is a ceiling, scaled by VOXA_TEST_TIME_SCALE: on an idle
machine the first window usually passes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from voxa.client.media import Level
from voxa.common.testing.wait import eventually_async

TOLERANCE_HZ: Final = 15.0
SILENCE_RMS: Final = 0.01
WINDOW_S: Final = 0.5

Measure = Callable[[], Awaitable[Level]]
"""One measurement of a fresh window (`lambda: sink.measure(0.5)`)."""


def is_tone(level: Level, hz: float) -> bool:
    return level.hz is not None and abs(level.hz - hz) < TOLERANCE_HZ


def is_silence(level: Level) -> bool:
    return level.rms < SILENCE_RMS


async def wait_level(measure: Measure, ok: Callable[[Level], bool], timeout: float, what: str) -> Level:
    """Measure window after window until ok(level); return that level. Fails naming `what` and the
    last window measured."""
    last: list[Level] = []

    async def check() -> Level | None:
        level = await measure()
        last[:] = [level]
        return level if ok(level) else None

    return await eventually_async(
        check, timeout, lambda: f"{what} (last window: {last[0] if last else 'none'})", poll=0.0
    )


async def tone(measure: Measure, hz: float, what: str, timeout: float = 15.0) -> Level:
    """Wait until a window's dominant frequency is within TOLERANCE_HZ of `hz`."""
    return await wait_level(measure, lambda level: is_tone(level, hz), timeout, what)


async def silence(measure: Measure, what: str, timeout: float = 15.0) -> Level:
    """Wait until a whole window is silent (RMS below SILENCE_RMS)."""
    return await wait_level(measure, is_silence, timeout, what)
