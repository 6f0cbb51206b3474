"""The harness kit's own rules (voxa.common.testing): the time scale, the waits, readiness, the percentile."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from voxa.common.testing import wait
from voxa.common.testing.procs import Proc, wait_ready_async
from voxa.common.testing.stats import percentile


@pytest.mark.parametrize(("raw", "scale"), [(None, 1.0), ("", 1.0), ("1", 1.0), ("2.5", 2.5)])
def test_the_time_scale_is_read_from_the_environment(raw: str | None, scale: float) -> None:
    assert wait._read_scale(raw) == scale


@pytest.mark.parametrize("raw", ["0.5", "fast", "nan", "-2"])
def test_a_time_scale_that_would_shrink_deadlines_or_is_a_typo_fails_loudly(raw: str) -> None:
    with pytest.raises(ValueError, match=wait.ENV):
        wait._read_scale(raw)


def test_scaled_stretches_by_the_scale() -> None:
    assert wait.scaled(10.0) == 10.0 * wait.TIME_SCALE


def test_eventually_returns_the_first_truthy_result_and_retries_missing_objects() -> None:
    answers = iter([KeyError("not yet"), None, {"ready": True}])

    def check() -> dict[str, bool] | None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait.eventually(check, timeout=60, what="ready") == {"ready": True}


def test_eventually_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="the moon"):
        wait.eventually(lambda: False, timeout=0, what="the moon")


async def test_eventually_async_takes_plain_and_async_checks() -> None:
    calls: list[int] = []

    async def probe() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await wait.eventually_async(probe, timeout=60, what="three calls", poll=0) == 3
    assert await wait.eventually_async(lambda: "yes", timeout=60) == "yes"


async def test_eventually_async_describes_the_state_when_it_gives_up() -> None:
    with pytest.raises(AssertionError, match="state 7"):
        await wait.eventually_async(lambda: 0, timeout=0, what=lambda: "state 7")


def test_percentile_interpolates_or_takes_the_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 50, nearest=True) == 3.0  # round-half-even of 1.5 -> 2
    assert percentile([1.0, 2.0, 3.0], 100) == 3.0
    assert percentile([5.0], 99) == 5.0


async def test_wait_ready_async_returns_the_probe_result_and_fails_at_once_when_the_child_exits(
    tmp_path: Path,
) -> None:
    sleeper = Proc("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], None, tmp_path / "s.log")
    sleeper.start()
    try:

        async def ready() -> str:
            return "up"

        assert await wait_ready_async(sleeper, ready, 10, "the sleeper") == "up"
    finally:
        sleeper.stop()

    script = "print('bad config: no listener', flush=True); raise SystemExit(3)"
    quitter = Proc("quitter", [sys.executable, "-c", script], None, tmp_path / "q.log").start()

    async def never() -> None:
        return None

    with pytest.raises(RuntimeError, match=r"(?s)quitter exited \(3\) before the quitter.*no listener"):
        await wait_ready_async(quitter, never, 60, "the quitter")
    quitter.stop()
