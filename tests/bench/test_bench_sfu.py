"""Smoke test of bench/sfu.py: tiny runs end to end (a real `voxa sfu`, real SRTP peers), checking the
shape of the one JSON object it prints (no timing thresholds)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.bench import runner

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "sfu.py"

NUMBERS = (
    "pps_per_core",
    "cpu_percent",
    "latency_p50_ms",
    "latency_p99_ms",
    "cpu_per_consumer_pct",
    "rss_per_peer_kib",
    "forwarded_pps",
    "loss_percent",
    "duration_s",
)
COUNTS = ("rooms", "peers", "publishers", "subscribers", "consumers", "sfu_workers")


def run_bench(*args: str) -> dict[str, Any]:
    return runner.run_bench("sfu.py", *args, timeout=280)


is_number = runner.is_number


def check_common(result: dict[str, Any]) -> None:
    for key in NUMBERS:
        assert is_number(result[key]), (key, result[key])
    for key in COUNTS:
        assert isinstance(result[key], int) and not isinstance(result[key], bool), (key, result[key])
    assert result["scenario"] == "audio-rooms"
    assert (result["rooms"], result["peers"], result["publishers"]) == (1, 10, 2)
    assert (result["subscribers"], result["consumers"]) == (10, 18)  # 2 speakers x 9 receivers
    assert result["sfu_workers"] == 1
    assert result["pps_per_core"] > 0 and result["forwarded_pps"] > 0
    assert 0 <= result["loss_percent"] <= 100
    assert result["latency_p50_ms"] <= result["latency_p99_ms"]
    assert result["duration_s"] == 3.0
    assert isinstance(result["python"], str) and result["python"]
    host = result["host"]
    assert isinstance(host["cpu_count"], int) and isinstance(host["note"], str)
    loadgen = result["loadgen"]
    assert is_number(loadgen["cpu_percent"]) and isinstance(loadgen["saturated"], bool)
    final = result["sfu"]["final"]
    assert final["consumers"] == 18 and final["expected_pps"] > 0
    half = result["sfu"]["half_load"]
    assert half is not None and half["consumers"] < final["consumers"]  # half of the listeners left
    assert result["setup_failures"] == {}, result["error_samples"]
    assert isinstance(result["warnings"], list)


@pytest.mark.slow
def test_bench_sfu_smoke_without_janus() -> None:
    result = run_bench(
        "--scenario", "audio-rooms", "--rooms", "1", "--seconds", "3", "--no-janus", "--no-livekit"
    )  # fmt: skip
    check_common(result)
    assert result["livekit_ratio"] is None and result["livekit_reason"] == "skipped (--no-livekit)"
    assert result["janus_ratio"] is None
    assert isinstance(result["janus_reason"], str) and result["janus_reason"]
    assert result["janus"] is None


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("janus") is None, reason="janus is not installed (apt-get install janus)")
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_bench_sfu_smoke_with_janus() -> None:
    result = run_bench(
        "--scenario", "audio-rooms", "--rooms", "1", "--seconds", "3", "--latency-seconds", "2",
        "--no-livekit",
    )  # fmt: skip
    check_common(result)
    assert is_number(result["janus_ratio"]) and result["janus_ratio"] > 0
    janus = result["janus"]
    assert janus["event_loops"] == 1
    assert janus["final"]["consumers"] == 18
    for key in ("pps_per_core", "cpu_percent", "loss_percent", "latency_p50_ms", "latency_p99_ms"):
        assert is_number(janus[key]), (key, janus[key])


@pytest.mark.slow
@pytest.mark.timeout(2200)  # a first build of livekit-server (none cached yet) takes minutes
def test_bench_sfu_smoke_with_livekit() -> None:
    result = runner.run_bench(
        "sfu.py", "--scenario", "audio-rooms", "--rooms", "1", "--seconds", "3", "--latency-seconds", "2",
        "--no-janus", timeout=2100,
    )  # fmt: skip
    check_common(result)
    assert "livekit_reason" not in result, result.get("livekit_reason")
    assert is_number(result["livekit_ratio"]) and result["livekit_ratio"] > 0
    livekit = result["livekit"]
    assert livekit["final"]["consumers"] == 18 and livekit["final"]["expected_pps"] > 0
    assert livekit["half_load"]["consumers"] < livekit["final"]["consumers"]
    assert livekit["version"] == "1.13.11" and "pion" in livekit["build_note"]
    assert livekit["final"]["loss_percent"] < 50, livekit["final"]  # streams flowed end to end
    for key in ("pps_per_core", "cpu_percent", "loss_percent", "latency_p50_ms", "latency_p99_ms"):
        assert is_number(livekit[key]), (key, livekit[key])
    for key in ("livekit_pps_per_core", "livekit_latency_p50_ms", "livekit_latency_p99_ms"):
        assert is_number(result[key]), (key, result[key])


def check_switches(summary: dict[str, Any] | None) -> None:
    assert summary is not None
    assert summary["switches"] >= 2 and summary["timeouts"] == 0, summary
    assert 0 < summary["p50"] <= summary["max"] < 5000, summary


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("janus") is None, reason="janus is not installed (apt-get install janus)")
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_bench_sfu_simulcast_smoke() -> None:
    """One video room of three-layer publishers, subscribers on all three layers, against Voxa and
    Janus: the forwarding figures, the switch probes and the layered load's shape."""
    result = run_bench(
        "--scenario", "video-room", "--simulcast", "--rooms", "1", "--seconds", "3",
        "--latency-seconds", "2", "--no-ceiling",
    )  # fmt: skip
    assert result["scenario"] == "video-room" and result["simulcast"] is True
    assert (result["rooms"], result["peers"], result["consumers"]) == (1, 4, 24)
    assert result["setup_failures"] == {}, result["error_samples"]
    assert is_number(result["pps_per_core"]) and result["pps_per_core"] > 0
    # Expected packets count each subscriber's own layer: the SFU forwards the planned one.
    assert result["loss_percent"] < 20, result["sfu"]["final"]
    layers = result["media"]["simulcast_layers"]
    assert [layer["rid"] for layer in layers] == ["q", "h", "f"]
    assert layers[0]["bps"] < layers[1]["bps"] < layers[2]["bps"]
    check_switches(result["layer_switch_ms"])
    check_switches(result["quality_switch_ms"])
    for probe in result["sfu"]["switches"]["bandwidth"]["probes"]:
        assert probe["layers_before"] == [0, 1, 2], probe  # one consumer on each layer
    assert is_number(result["janus_ratio"]) and result["janus_ratio"] > 0
    assert result["janus_loss_percent"] < 20, result["janus"]["final"]
    check_switches(result["janus_quality_switch_ms"])
    assert result["livekit_ratio"] is None and "simulcast" in result["livekit_reason"]
    assert result["sfu"]["launcher"].startswith("bench/loadgen/sfu_hooks.py")
