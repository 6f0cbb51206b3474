"""The shortened chaos soak: bench/chaos.py with two rooms for one round, so every fault kind is
injected once under load (docs/chaos.md). Recovery is asserted as outcomes (everyone hears everyone,
presence is right, nothing stuck, nothing leaked), not as wall-clock figures, which the full soak
reports."""

from __future__ import annotations

import pytest

from e2e import netns
from tests.bench import runner

KINDS = {
    "signaling_kill",
    "sfu_kill",
    "redis_restart",
    "redis_failover",
    "partition",
    "sfu_freeze",
    "slow_client",
}


@pytest.mark.slow
def test_every_fault_kind_recovers_under_load() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    result = runner.run_bench(
        "chaos.py", "--minutes", "0.1", "--rooms", "2", "--clients-per-room", "2", timeout=1200
    )
    faults = result["faults"]
    assert {f["kind"] for f in faults} == KINDS
    for fault in faults:
        assert fault["stuck"] == 0, fault
        assert fault["ghosts"] == 0 and fault["missing"] == 0, fault
        for key in ("recovery_p50_ms", "recovery_p99_ms", "recovery_max_ms", "audio_gap_max_ms"):
            assert runner.is_number(fault[key]), (key, fault)
    slow = next(f for f in faults if f["kind"] == "slow_client")
    assert slow["close_code"] == 1013, slow
    # A signaling replica's death is not heard: the clients resume their sessions elsewhere and the
    # SFU never stopped forwarding (the gap is what the decoded audio shows, at a 20 ms resolution).
    killed = next(f for f in faults if f["kind"] == "signaling_kill")
    assert killed["audio_gap_max_ms"] < 500, killed
    # Known and bounded (docs/chaos.md): a write lost in the Sentinel failover (asynchronous
    # replication) can leave a live replica's id in a topic's subs set, until that replica leaves the
    # topic again or dies and another replica leaves it. Every other key must be gone.
    leaked = [k for k in result["leaked_key_names"] if ":subs:" not in k]
    assert not leaked, result["leaked_key_names"]
    assert result["error_lines"]["total"] == 0, result["error_lines"]
    assert result["call_cycles"] > 0
    assert set(result["rss_growth_mib"]) >= {"haproxy#0", "sentinel-0#0"}
