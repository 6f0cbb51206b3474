"""SFU pods scaled on the load of real clients, on kind: more participants bring a pod; fewer drain the
lightest one, which leaves through a real SIGTERM, at once when empty and only at its drain deadline
while it still carries calls, whose channel then moves to the remaining pod and sounds again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.kind.deployed import Stack
from e2e.kind.fixtures import KindEnv, deploy_stack
from e2e.kind.voice import joined, media_server_of, until_hears
from voxa.client.voice import VoiceClient
from voxa.common.testing.wait import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
DRAIN_S = 40
SFU = {
    "minReplicas": 1,
    "maxReplicas": 3,
    "targetParticipantsPerPod": 4,
    "buffer": 0,
    "drainDeadlineSeconds": DRAIN_S,
    "scaleDownStabilizationSeconds": 5,
}


@pytest.fixture(scope="module")
def scaling_stack(voxa_kind: KindEnv) -> Iterator[Stack]:
    deployed = deploy_stack(voxa_kind, "kind-scaling", signaling_replicas=1, sfu=SFU)
    yield deployed
    deployed.delete()


class PodLogs:
    """`kubectl logs -f` of one pod into a file, from now until its container exits."""

    def __init__(self, stack: Stack, pod: str, path: Path) -> None:
        self.path = path
        kubectl = stack.cluster.kind.kubectl_path
        config = stack.cluster.kubeconfig
        self.proc = subprocess.Popen(
            [str(kubectl), f"--kubeconfig={config}", "logs", "-f", "-n", stack.namespace, pod],
            stdout=path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_exit(self, timeout: float) -> list[dict[str, Any]]:
        self.proc.wait(timeout)
        return self.events()


def live_sfu_pods(stack: Stack) -> list[str]:
    return sorted(
        p["metadata"]["name"] for p in stack.pods("sfu") if not p["metadata"].get("deletionTimestamp")
    )


def ready_sfus(stack: Stack, count: int) -> bool:
    status = stack.voiceserver().get("status") or {}
    return status.get("sfu", {}).get("readyReplicas") == count and len(live_sfu_pods(stack)) == count


def scaling_events(stack: Stack) -> list[tuple[str, str]]:
    items = stack.cluster.get(
        "events", "-n", stack.namespace, "--field-selector", f"involvedObject.name={stack.name}"
    )["items"]
    return [(e["reason"], e.get("message", "")) for e in items]


def event_with(stack: Stack, reason: str, text: str) -> str | None:
    return next((m for r, m in scaling_events(stack) if r == reason and text in m), None)


@contextlib.asynccontextmanager
async def clients(stack: Stack, channel: str, tones: list[float | None]) -> AsyncIterator[list[VoiceClient]]:
    started: list[VoiceClient] = []
    try:
        for i, hz in enumerate(tones):
            client = VoiceClient(stack.ws_url, stack.token(f"{channel}{i}"), channel, tone_hz=hz)
            await client.start()
            started.append(client)
        await joined(*started)
        yield started
    finally:
        for client in started:
            await client.close()


async def test_load_scales_sfu_pods_and_drained_pods_leave_through_sigterm(
    scaling_stack: Stack, tmp_path: Path
) -> None:
    s = scaling_stack
    await until(lambda: ready_sfus(s, 1), 120, "one SFU pod while idle")

    # 5 participants need two pods (4 per pod): the first channel is on the first pod, the next
    # channel goes to the new, emptier one.
    async with clients(s, "b", [550.0, 770.0]) as b:
        async with clients(s, "a", [440.0, 660.0, None]):
            await until(lambda: ready_sfus(s, 2), 180, "a second SFU pod for 5 participants")
            assert event_with(s, "ScaledUp", "1 → 2")
            first = media_server_of(s, "a")
            second = media_server_of(s, "b")
            assert first == second and first in live_sfu_pods(s), (first, second)
            async with clients(s, "c", [None]):
                newer = media_server_of(s, "c")
                assert newer not in (None, first), (newer, first)
                follow = PodLogs(s, str(newer), tmp_path / "newer.log")
                # `c` leaves: 5 participants still need two pods, nothing drains.
            await until_hears(b[0], "b1", 770.0)
        # `a` leaves: 2 participants need one pod; the lightest (`c`'s, empty) is drained and goes at
        # once, through SIGTERM (the SFU logs its drain only on a signal), with nothing to wait for.
        await until(lambda: ready_sfus(s, 1), 180, "back to one SFU pod")
        assert event_with(s, "DrainStarted", str(newer))
        assert event_with(s, "ScaledDown", f"removed drained pod {newer} (empty)")
        log = await asyncio.to_thread(follow.wait_exit, 120)
        draining = [e for e in log if e.get("event") == "sfu.draining"]
        assert draining and draining[-1]["peers"] == 0, log[-5:]
        assert any(e.get("event") == "sfu.stopped" for e in log), log[-5:]
        assert live_sfu_pods(s) == [first]
        await until_hears(b[1], "b0", 550.0)  # the remaining pod's call went on

    # Two channels on two pods, then too little load for two: one pod drains with its call still on.
    # It stays until its drain deadline, then leaves, and its channel moves to the other pod.
    async with clients(s, "b", [550.0, 770.0]) as b, clients(s, "c", [None, None, None]) as c:
        await until(lambda: ready_sfus(s, 2), 180, "two SFU pods for 5 participants")
        async with clients(s, "a", [440.0, 660.0]) as a:
            hosts = {media_server_of(s, "a"), media_server_of(s, "b")}
            assert len(hosts) == 2, hosts  # `a` went to the new pod
            await until_hears(a[0], "a1", 660.0)
            # `c` (3 listeners) leaves: 4 participants need one pod; one of the two (2 each) drains.
            for client in c:
                await client.close()
            drain = await until(lambda: drain_in_progress(s), 120, "a drain")
            victim = drain["pod"]
            deadline = datetime.fromisoformat(drain["deadline"].replace("Z", "+00:00")).timestamp()
            assert victim in hosts
            follow = PodLogs(s, victim, tmp_path / "victim.log")
            moved, stays = (a, b) if media_server_of(s, "a") == victim else (b, a)
            # Not removed before its deadline while it carries a call: its clients still hear.
            while time.time() < deadline - 5:
                assert victim in live_sfu_pods(s), f"{victim} removed {deadline - time.time():.0f}s early"
                await until_hears(moved[0], f"{moved[1].channel_id}1", TONES[moved[1].channel_id][1])
            await until(lambda: victim not in live_sfu_pods(s), DRAIN_S + 120, "the drained pod removed")
            assert event_with(s, "ScaledDown", f"removed drained pod {victim} (deadline passed with 2")
            log = await asyncio.to_thread(follow.wait_exit, 120)
            signalled = [e for e in log if e.get("event") == "sfu.draining"]
            # SIGTERM came after the operator's deadline: the SFU kept no second one (its own counts
            # from when a heartbeat first told it of the mark, a few seconds after the operator's).
            assert signalled and signalled[-1]["deadline_in_s"] < DRAIN_S / 2, log[-5:]
            assert signalled[-1]["peers"] == 2, log[-5:]
            # The call moves to the remaining pod and sounds again, both ways; the other never stopped.
            channel = moved[0].channel_id
            took = await until_hears(moved[0], f"{channel}1", TONES[channel][1])
            await until_hears(moved[1], f"{channel}0", TONES[channel][0])
            s.timings["drained_call_back_audio_s"] = took
            other = stays[0].channel_id
            await until_hears(stays[1], f"{other}0", TONES[other][0])
            assert len(live_sfu_pods(s)) == 1


TONES = {"a": (440.0, 660.0), "b": (550.0, 770.0)}


def drain_in_progress(stack: Stack) -> dict[str, Any] | None:
    draining: dict[str, Any] | None = (stack.voiceserver().get("status") or {}).get("sfu", {}).get("draining")
    return draining
