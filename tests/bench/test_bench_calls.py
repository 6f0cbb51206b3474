"""Smoke test of bench/calls.py: a tiny run end to end, checking the shape of its JSON (no timings)."""

from __future__ import annotations

import pytest

from tests.bench import runner


@pytest.mark.slow
def test_bench_calls_smoke() -> None:
    small = ["--ring-samples", "5", "--audio-samples", "1", "--pairs", "2", "--seconds", "1"]
    result = runner.run_bench("calls.py", *small, "--push-samples", "2")
    assert result["benchmark"] == "calls" and result["replicas"] == 2
    for key in ("ring_p50_ms", "ring_p99_ms", "answer_to_audio_p50_ms", "calls_per_s", "push_p50_ms"):
        assert runner.is_number(result[key]) and result[key] > 0, (key, result[key])
    assert result["ring_samples"] == 5 and result["audio_samples"] == 1 and result["push_samples"] == 2
    assert result["ring_p50_ms"] <= result["ring_p99_ms"]
    assert result["call_cycles"] > 0 and result["errors"] == 0, result["error_kinds"]
