"""Smoke test of bench/signaling.py: a tiny run end to end, checking the shape of its JSON (no timings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bench import runner

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "signaling.py"

NUMBERS = ("joins_per_s", "join_p50_ms", "join_p99_ms", "rss_mib")
COUNTS = ("sockets", "errors", "join_count", "room_size", "load_processes", "cpu_count")
STRINGS = ("redis_version", "python")


def run_bench(*args: str) -> dict[str, Any]:
    return runner.run_bench("signaling.py", *args, timeout=240)


@pytest.mark.slow
def test_bench_signaling_smoke() -> None:
    # 2 x 16 joins in flight stays well inside the server's Redis connection pool.
    result = run_bench(
        "--joins", "100", "--sockets", "200", "--hold-seconds", "1", "--room-size", "10",
        "--workers", "2", "--concurrency", "16",
    )  # fmt: skip

    for key in NUMBERS:
        value = result[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)
    for key in COUNTS:
        value = result[key]
        assert isinstance(value, int) and not isinstance(value, bool), (key, value)
        assert value >= 0, (key, value)
    for key in STRINGS:
        assert isinstance(result[key], str) and result[key], key

    assert result["join_p50_ms"] <= result["join_p99_ms"]
    assert result["room_size"] == 10
    assert result["load_processes"] == 2
    assert result["params"] == {
        "joins": 100,
        "room_size": 10,
        "sockets": 200,
        "workers": 2,
        "concurrency": 16,
        "hold_seconds": 1.0,
        "profile": None,
    }
    assert result["errors"] == 0, result["error_kinds"]
    assert result["join_count"] == 100
    assert result["sockets"] == 200
