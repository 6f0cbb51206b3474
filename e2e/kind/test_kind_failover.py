"""Failures under real pods on kind: an SFU pod deleted under a call (its channel moves to another pod
and media resumes), and a rolling update of signaling with clients connected (they reconnect to the
new replicas, presence converges with no ghost and no one missing, media goes on)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from e2e.kind.deployed import Stack, is_ready, live_pods
from e2e.kind.fixtures import KindEnv, deploy_stack
from e2e.kind.voice import joined, media_server_of, until_hears
from voxa.client.voice import VoiceClient, VoiceEvent
from voxa.common.testing.wait import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
A_HZ, B_HZ = 440.0, 660.0


@pytest.fixture(scope="module")
def failover_stack(voxa_kind: KindEnv) -> Iterator[Stack]:
    # A spare SFU pod (buffer 1), as a production voice server keeps one for sudden joins.
    deployed = deploy_stack(
        voxa_kind, "kind-failover", signaling_replicas=2, sfu={"minReplicas": 1, "buffer": 1}
    )
    yield deployed
    deployed.delete()


@pytest.fixture
async def pair(failover_stack: Stack) -> AsyncIterator[tuple[VoiceClient, VoiceClient, list[VoiceEvent]]]:
    events: list[VoiceEvent] = []
    s = failover_stack
    seen: list[tuple[str, VoiceEvent]] = []

    def recorder(name: str) -> Callable[[VoiceEvent], None]:
        def record(event: VoiceEvent) -> None:
            events.append(event)
            seen.append((name, event))

        return record

    alice = VoiceClient(s.ws_url, s.token("alice"), "lobby", tone_hz=A_HZ, on_event=recorder("alice"))
    bob = VoiceClient(s.ws_url, s.token("bob"), "lobby", tone_hz=B_HZ, on_event=recorder("bob"))
    await alice.start()
    await bob.start()
    try:
        await joined(alice, bob)
        await until_hears(alice, "bob", B_HZ)
        await until_hears(bob, "alice", A_HZ)
        yield alice, bob, events
    finally:
        # Shown with a failure: what each client went through (reconnects, media states, resets).
        for name, event in seen:
            if event.type not in ("speaking", "presence_update"):
                print(f"{event.at:.3f} {name} {event.type} {event.data}")
        await alice.close()
        await bob.close()


def live(stack: Stack, component: str) -> list[dict[str, Any]]:
    return live_pods(stack.cluster, stack.namespace, f"app.kubernetes.io/component={component}")


async def converged(client: VoiceClient) -> None:
    """Presence as this client sees it: alice and bob, one session each (no ghost of an old one)."""
    await client.wait_for(lambda: sessions(client) == {"alice": 1, "bob": 1}, timeout=60)


def sessions(client: VoiceClient) -> dict[str, int]:
    """user id -> number of presence sessions this client sees."""
    assert client.channel is not None
    return {user: len(entry.get("metas", [])) for user, entry in client.channel.presence.items()}


async def test_an_sfu_pod_deleted_under_a_call_moves_the_channel_and_media_resumes(
    failover_stack: Stack, pair: tuple[VoiceClient, VoiceClient, list[VoiceEvent]]
) -> None:
    s = failover_stack
    alice, bob, _ = pair
    await until(lambda: len([p for p in live(s, "sfu") if is_ready(p)]) == 2, 120, "two SFU pods (one spare)")
    host = media_server_of(s, "lobby")
    assert host in [p["metadata"]["name"] for p in live(s, "sfu")]
    start = time.monotonic()
    s.cluster.kubectl("delete", "pod", "-n", s.namespace, str(host), "--grace-period=1", "--wait=false")
    # The SFU gets SIGTERM, then SIGKILL a second later: the call is cut, not drained.
    await until(lambda: str(host) not in [p["metadata"]["name"] for p in s.pods("sfu")], 120, "the pod gone")
    await until_hears(alice, "bob", B_HZ, timeout=120)
    await until_hears(bob, "alice", A_HZ, timeout=120)
    s.timings["sfu_pod_deleted_audio_back_s"] = time.monotonic() - start
    moved = media_server_of(s, "lobby")
    assert moved not in (None, host), (moved, host)
    # The Deployment replaces the pod and the voice server keeps its spare.
    await until(lambda: len([p for p in live(s, "sfu") if is_ready(p)]) == 2, 180, "the spare SFU pod again")


async def test_a_signaling_rolling_update_with_clients_connected(
    failover_stack: Stack, pair: tuple[VoiceClient, VoiceClient, list[VoiceEvent]]
) -> None:
    s = failover_stack
    alice, bob, events = pair
    before = {p["metadata"]["name"] for p in live(s, "signaling")}
    assert len(before) == 2
    # A configuration change rolls signaling (its pod template carries a digest of its settings).
    patch = {"spec": {"limits": {"maxParticipantsPerChannel": 150}}}
    start = time.monotonic()
    s.cluster.kubectl(
        "patch", "voiceserver", s.name, "-n", s.namespace, "--type=merge", "-p", json.dumps(patch)
    )

    def rolled() -> bool:
        pods = live(s, "signaling")
        names = {p["metadata"]["name"] for p in pods}
        return len(pods) == 2 and not names & before and all(map(is_ready, pods))

    await until(rolled, 300, "signaling rolled to two new pods")
    # Both clients were moved off the old replicas (close code 1012) and came back by themselves.
    await until(lambda: sum(e.type == "reconnecting" for e in events) >= 2, 120, "both clients reconnecting")
    await joined(alice, bob, timeout=120)
    for client in (alice, bob):
        await converged(client)
    await until_hears(alice, "bob", B_HZ, timeout=90)
    await until_hears(bob, "alice", A_HZ, timeout=90)
    s.timings["signaling_rollout_converged_s"] = time.monotonic() - start
