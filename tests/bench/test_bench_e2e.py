"""Smoke test of bench/e2e.py: one room, one SFU kill, end to end, checking the shape of its JSON (no
wall-clock thresholds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bench import runner

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "e2e.py"

LATENCIES = ("join_to_audio_p50_ms", "join_to_audio_p99_ms", "sfu_kill_recovery_ms")
COUNTS = ("rooms", "clients", "clients_per_room", "samples", "cpu_count", "errors")
STEPS = ("ws_open", "join_reply", "answer_received", "ice_connected", "dtls_connected", "first_packet")


def run_bench(*args: str) -> dict[str, Any]:
    return runner.run_bench("e2e.py", *args, timeout=240)


is_number = runner.is_number


@pytest.mark.slow
def test_bench_e2e_smoke() -> None:
    result = run_bench("--rooms", "1", "--kills", "1")

    for key in LATENCIES:
        assert is_number(result[key]) and result[key] > 0, (key, result[key])
    for key in COUNTS:
        assert isinstance(result[key], int) and not isinstance(result[key], bool), (key, result[key])
    assert isinstance(result["python"], str) and result["python"]
    assert is_number(result["media_server_ttl_s"])

    assert result["rooms"] == 1
    assert result["clients_per_room"] == 2
    assert result["clients"] == 2
    assert result["errors"] == 0, result["error_kinds"]
    assert result["samples"] == result["clients"] * len(result["join_rounds"])
    assert result["first_packet_from_room_peer"] == result["samples"]
    assert result["join_to_audio_p50_ms"] <= result["join_to_audio_p99_ms"]

    for step in STEPS:
        assert result["join_phases_ms"][step]["n"] == result["samples"], step
        assert is_number(result["join_phases_ms"][step]["p50"]), step

    (kill,) = result["kills"]
    assert kill["victim"] in ("sfu-a", "sfu-b")
    assert kill["recovered"] is True
    assert kill["clients_moved"] == 2
    assert kill["new_hosts"] and kill["victim"] not in kill["new_hosts"]
    assert result["sfu_kill_recovery_samples_ms"] == [kill["recovery_median_ms"]]
