"""The buffer scaling policy and its draining scale-down, step by step."""

from __future__ import annotations

import pytest

from voxa.operator.models import SfuSpec
from voxa.operator.scaling import DrainState, PodLoad, SfuPod, decide, desired_replicas

SPEC = SfuSpec(
    minReplicas=1,
    maxReplicas=6,
    targetParticipantsPerPod=10,
    buffer=1,
    drainDeadlineSeconds=60,
    scaleDownStabilizationSeconds=0,
)


@pytest.mark.parametrize(
    ("participants", "expected"),
    [(0, 1), (1, 2), (10, 2), (11, 3), (35, 5), (500, 6)],
)
def test_desired_is_ceil_plus_buffer_clamped(participants: int, expected: int) -> None:
    assert desired_replicas(SPEC, participants) == expected


def test_pinned_replicas_win_within_bounds() -> None:
    pinned = SPEC.model_copy(update={"replicas": 4})
    assert desired_replicas(pinned, 0) == 4
    assert desired_replicas(pinned, 1000) == 4


def pods(*names: str) -> list[SfuPod]:
    return [SfuPod(name=n, ready=True) for n in names]


def test_scale_up_is_immediate() -> None:
    d = decide(SPEC, 2, pods("a", "b"), {"a": PodLoad(20), "b": PodLoad(15)}, None, now=0)
    assert (d.replicas, d.desired, d.reason) == (5, 5, "ScaledUp")
    assert d.mark is None and d.remove is None


def test_steady_state_decides_nothing() -> None:
    d = decide(SPEC, 2, pods("a", "b"), {"a": PodLoad(5), "b": PodLoad(0)}, None, now=0)
    assert (d.replicas, d.reason, d.mark, d.remove) == (2, "", None, None)


def test_scale_down_marks_the_least_loaded_pod_first_then_removes_it_when_empty() -> None:
    loads = {"a": PodLoad(3), "b": PodLoad(1), "c": PodLoad(2)}
    d1 = decide(SPEC, 3, pods("a", "b", "c"), loads, None, now=100)
    assert (d1.replicas, d1.desired, d1.mark, d1.reason) == (3, 2, "b", "DrainStarted")
    assert d1.draining == DrainState("b", 100, 160)
    # Still carrying a participant: nothing is removed.
    d2 = decide(SPEC, 3, pods("a", "b", "c"), loads, d1.draining, now=130)
    assert (d2.replicas, d2.remove, d2.draining) == (3, None, d1.draining)
    # Empty now: the drained pod (and only it) is removed.
    loads["b"] = PodLoad(0, draining=True)
    d3 = decide(SPEC, 3, pods("a", "b", "c"), loads, d1.draining, now=131)
    assert (d3.replicas, d3.remove, d3.draining, d3.reason) == (2, "b", None, "ScaledDown")


def test_the_deadline_removes_a_pod_that_is_still_busy() -> None:
    drain = DrainState("b", 100, 160)
    loads = {"a": PodLoad(3), "b": PodLoad(1)}
    assert decide(SPEC, 3, pods("a", "b", "c"), loads, drain, now=159.9).remove is None
    d = decide(SPEC, 3, pods("a", "b", "c"), loads, drain, now=160)
    assert (d.remove, d.replicas) == ("b", 2)
    assert "deadline" in d.message


def test_even_an_empty_pod_is_marked_before_removal() -> None:
    d = decide(SPEC, 3, pods("a", "b", "c"), {}, None, now=0)
    assert d.mark is not None and d.remove is None and d.replicas == 3


def test_returning_load_cancels_the_drain() -> None:
    drain = DrainState("b", 100, 160)
    loads = {"a": PodLoad(10), "b": PodLoad(10)}
    d = decide(SPEC, 3, pods("a", "b", "c"), loads, drain, now=120)
    assert (d.unmark, d.draining, d.replicas, d.reason) == ("b", None, 3, "DrainCancelled")


def test_a_vanished_drain_target_is_forgotten() -> None:
    d = decide(SPEC, 3, pods("a", "c"), {}, DrainState("b", 0, 60), now=1)
    assert (d.unmark, d.draining, d.reason) == ("b", None, "DrainTargetGone")


def test_not_ready_and_deleting_pods() -> None:
    mixed = [SfuPod("a", ready=True), SfuPod("b", ready=False), SfuPod("c", ready=True, deleting=True)]
    d = decide(SPEC, 3, mixed, {"a": PodLoad(0)}, None, now=0)
    assert d.mark == "b"  # the ReplicaSet would remove an unready pod first anyway


def test_a_drain_starts_only_once_the_load_stays_low_for_the_stabilization_window() -> None:
    spec = SPEC.model_copy(update={"scaleDownStabilizationSeconds": 60})
    busy = {"a": PodLoad(20), "b": PodLoad(15)}
    low = {"a": PodLoad(5), "b": PodLoad(0)}
    d = decide(spec, 3, pods("a", "b", "c"), low, None, now=100)
    assert (d.replicas, d.mark, d.reason, d.low_since) == (3, None, "", 100)
    d = decide(spec, 3, pods("a", "b", "c"), low, None, now=159.9, low_since=d.low_since)
    assert d.mark is None and d.low_since == 100
    # A dip that ends (clients back after a signaling rollout) starts the window over.
    back = decide(spec, 3, pods("a", "b", "c"), busy, None, now=150, low_since=100)
    assert back.low_since is None and back.mark is None
    d = decide(spec, 3, pods("a", "b", "c"), low, None, now=160, low_since=100)
    assert d.mark == "b" and d.reason == "DrainStarted" and d.low_since == 100
    # Once the window has passed, the next pod drains right after the first is removed.
    gone = decide(spec, 3, pods("a", "b", "c"), {"a": PodLoad(5)}, d.draining, now=161, low_since=100)
    assert gone.remove == "b" and gone.replicas == 2
    assert gone.low_since == 100
    nxt = decide(spec, 2, pods("a", "c"), {}, None, now=162, low_since=gone.low_since)
    assert nxt.reason == "DrainStarted"
