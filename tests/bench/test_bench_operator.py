"""Smoke test of bench/operator.py: three VoiceServers on a real control plane, checking the JSON's
shape and the zero-write promise (no timings asserted)."""

from __future__ import annotations

import pytest

from tests.bench import runner


@pytest.mark.slow
def test_bench_operator_smoke() -> None:
    result = runner.run_bench(
        "operator.py", "--count", "3", "--steady-s", "5", "--resync-s", "1", timeout=600
    )
    for key in ("all_ready_s", "operator_rss_mib", "operator_peak_rss_mib", "api_writes_per_reconcile"):
        assert runner.is_number(result[key]), key
    assert result["count"] == 3
    assert result["steady_state_writes"] == 0
    assert result["steady_state_operator_writes"] == 0
    assert result["steady_state_reconciles"] > 0
