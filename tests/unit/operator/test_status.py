"""Conditions from observations: Ready, Progressing, Degraded with reasons and stable transition times."""

from __future__ import annotations

from typing import Any

from tests.unit.operator.conftest import voiceserver
from voxa.operator.models import VoiceServer, VoiceServerStatus
from voxa.operator.scaling import DrainState
from voxa.operator.status import Observed, compute, drain_state


def deploy(ready: int, replicas: int | None = None) -> dict[str, int]:
    n = replicas if replicas is not None else ready
    return {"replicas": n, "readyReplicas": ready, "updatedReplicas": n, "availableReplicas": ready}


def conditions(status: VoiceServerStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_ready_when_signaling_and_sfus_are_up(vs: VoiceServer) -> None:
    seen = Observed(signaling=deploy(2), sfu=deploy(2), sfu_replicas=2, desired_sfus=2, participants=7)
    status = compute(vs, seen, now=1_700_000_000)
    assert conditions(status) == {
        "Ready": ("True", "Available"),
        "Progressing": ("False", "Stable"),
        "Degraded": ("False", "AsExpected"),
    }
    assert all(c.observedGeneration == 3 for c in status.conditions)
    assert (status.ready, status.sfus, status.participants) == ("True", "2/2", 7)
    assert status.endpoint == "ws://lobby-signaling.games.svc/socket"
    assert status.sfu.selector == (
        "app.kubernetes.io/component=sfu,app.kubernetes.io/instance=lobby,app.kubernetes.io/name=voxa"
    )


def test_not_ready_reasons(vs: VoiceServer) -> None:
    assert conditions(compute(vs, Observed(), 0))["Ready"] == ("False", "SignalingUnavailable")
    seen = Observed(signaling=deploy(2), sfu=deploy(0, 1), sfu_replicas=1, desired_sfus=1)
    assert conditions(compute(vs, seen, 0))["Ready"] == ("False", "SfuUnavailable")
    managed = voiceserver({"redis": {"managed": True}})
    seen = Observed(
        signaling=deploy(2), sfu=deploy(1), sfu_replicas=1, desired_sfus=1, redis={"readyReplicas": 0}
    )
    assert conditions(compute(managed, seen, 0))["Ready"] == ("False", "RedisUnavailable")


def test_progressing_and_degraded_reasons(vs: VoiceServer) -> None:
    base: dict[str, Any] = {"signaling": deploy(2), "sfu": deploy(2)}
    drain = DrainState("lobby-sfu-x", 0, 60)
    assert conditions(compute(vs, Observed(**base, sfu_replicas=2, desired_sfus=1, draining=drain), 0))[
        "Progressing"
    ] == ("True", "Draining")
    assert conditions(compute(vs, Observed(**base, sfu_replicas=2, desired_sfus=3), 0))["Progressing"] == (
        "True",
        "Scaling",
    )
    failed = Observed(**base, sfu_replicas=2, desired_sfus=2, apply_errors=["Deployment x: forbidden"])
    status = compute(vs, failed, 0)
    assert conditions(status)["Degraded"] == ("True", "ApplyFailed")
    assert "forbidden" in status.conditions[2].message
    lost = Observed(**base, sfu_replicas=2, desired_sfus=2, registry_error="ConnectionError")
    assert conditions(compute(vs, lost, 0))["Degraded"] == ("True", "RegistryUnavailable")


def test_transition_time_moves_only_when_status_flips() -> None:
    vs = voiceserver()
    seen = Observed(signaling=deploy(2), sfu=deploy(1), sfu_replicas=1, desired_sfus=1)
    first = compute(vs, seen, now=1_000)
    again = compute(
        VoiceServer.model_validate({**vs.model_dump(), "status": first.model_dump()}), seen, now=2_000
    )
    assert [c.lastTransitionTime for c in again.conditions] == [
        c.lastTransitionTime for c in first.conditions
    ]


def test_drain_state_round_trips_through_status(vs: VoiceServer) -> None:
    drain = DrainState("lobby-sfu-x", 1_700_000_000, 1_700_000_060)
    status = compute(vs, Observed(sfu_replicas=2, desired_sfus=1, draining=drain), 0)
    assert drain_state(status) == drain
