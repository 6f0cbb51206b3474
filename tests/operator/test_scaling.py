"""Load-driven SFU scaling on a real control plane: synthetic SFU heartbeats in a real Redis registry
drive scale-up, then a draining scale-down that removes exactly the drained pods."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from conftest import RedisServer
from e2e.cluster.fixtures import KubeCluster
from tests.operator.conftest import OperatorProcess, get, secret, voiceserver, voiceserver_when
from voxa.common.testing.wait import consistently, eventually, scaled
from voxa.signaling.store.base import MediaLoad, MediaServer
from voxa.signaling.store.redis import RedisStore

# The whole test's bound stretches with its waits' deadlines (VOXA_TEST_TIME_SCALE).
pytestmark = pytest.mark.timeout(scaled(300))


class FakeSfuFleet:
    """Heartbeats for every live SFU pod of a VoiceServer, as `voxa sfu` would send them (id = pod
    name), with the participant counts the test sets. Terminating pods stop heartbeating."""

    def __init__(self, cluster: KubeCluster, namespace: str, server: str, redis_url: str) -> None:
        self.cluster, self.namespace, self.server, self.redis_url = cluster, namespace, server, redis_url
        self.peers: dict[str, int] = {}
        self.draining: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def pods(self) -> list[str]:
        items = get(self.cluster, self.namespace, "pods", "-l", "app.kubernetes.io/component=sfu")["items"]
        return sorted(p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp"))

    async def _run(self) -> None:
        store = RedisStore(self.redis_url, "fleet", 10)
        try:
            while not self._stop.is_set():
                for pod in await asyncio.to_thread(self.pods):
                    load = MediaLoad(peers=self.peers.get(pod, 0))
                    ms = MediaServer(id=pod, server_id=self.server, url=f"http://{pod}:4100", load=load)
                    await store.media_server_upsert(ms, ttl_s=3)
                self.draining = {m.id: m.draining for m in await store.media_servers(self.server)}
                await asyncio.sleep(0.3)
        finally:
            await store.close()

    def __enter__(self) -> FakeSfuFleet:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def deployment_replicas(cluster: KubeCluster, namespace: str) -> tuple[int, int]:
    d = get(cluster, namespace, "deployment", "arena-sfu")
    if d is None:
        return 0, 0  # not created yet
    return int(d["spec"]["replicas"]), int((d.get("status") or {}).get("readyReplicas") or 0)


def test_load_scales_up_then_drains_before_scaling_down(
    operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    cluster = operator.cluster
    cluster.apply(
        secret("jwt", secret="s" * 32),
        secret("redis", url=redis_server.url),
        voiceserver(
            "arena",
            signaling={"replicas": 1},
            sfu={
                "minReplicas": 1,
                "maxReplicas": 5,
                "targetParticipantsPerPod": 10,
                "buffer": 0,
                "drainDeadlineSeconds": 600,
                "scaleDownStabilizationSeconds": 2,
            },
        ),
        namespace=namespace,
    )
    eventually(lambda: deployment_replicas(cluster, namespace) == (1, 1), 90, "one SFU pod")

    with FakeSfuFleet(cluster, namespace, "arena", redis_server.url) as fleet:
        (first,) = eventually(fleet.pods, 30, "the SFU pod")
        fleet.peers = {first: 35}
        # ceil(35 / 10) + 0 = 4
        eventually(lambda: deployment_replicas(cluster, namespace) == (4, 4), 60, "four ready SFU pods")
        body = eventually(
            lambda: (
                (b := get(cluster, namespace, "voiceserver", "arena"))["status"]["participants"] == 35 and b
            ),
            30,
            "participants in status",
        )
        assert body["status"]["sfu"]["desiredReplicas"] == 4
        pods = eventually(lambda: fleet.pods() if len(fleet.pods()) == 4 else None, 30, "four pods")
        busy, light, empty1, empty2 = pods[0], pods[1], pods[2], pods[3]

        # 8 participants need one pod: the two empty pods go first, then the lighter busy one drains.
        fleet.peers = {busy: 5, light: 3}
        eventually(lambda: fleet.pods() == sorted([busy, light]), 60, "the empty pods removed")
        body = voiceserver_when(
            cluster, namespace, "arena", lambda b: "draining" in b["status"]["sfu"], "a drain in progress"
        )
        assert body["status"]["sfu"]["draining"]["pod"] == light
        assert eventually(lambda: fleet.draining.get(light), 10, "the registry's drain mark")
        assert fleet.draining.get(busy) is False
        # The draining pod still carries participants: it stays, well past several scaling periods.
        consistently(
            lambda: fleet.pods() == sorted([busy, light]) and deployment_replicas(cluster, namespace)[0] == 2,
            4,
            "two SFU pods while one drains",
        )

        # Its calls end: it is removed, and only it.
        fleet.peers = {busy: 5, light: 0}
        eventually(lambda: fleet.pods() == [busy], 60, "the drained pod removed")
        eventually(lambda: deployment_replicas(cluster, namespace) == (1, 1), 90, "one SFU pod")
        body = voiceserver_when(
            cluster, namespace, "arena", lambda b: b["status"]["sfus"] == "1/1", "status caught up"
        )
        assert "draining" not in body["status"]["sfu"]

    events: list[dict[str, Any]] = get(
        cluster, namespace, "events", "--field-selector", "involvedObject.name=arena"
    )["items"]
    reasons = [e["reason"] for e in events]
    assert {"ScaledUp", "DrainStarted", "ScaledDown"} <= set(reasons), reasons
    messages = " ".join(e["message"] for e in events if e["reason"] == "ScaledDown")
    assert light in messages and empty1 in messages and empty2 in messages
