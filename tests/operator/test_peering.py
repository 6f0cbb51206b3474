"""Two operator replicas with kopf peering: one works, the other waits and takes over on a clean stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RedisServer
from e2e.cluster.fixtures import KubeCluster
from tests.operator.conftest import OperatorProcess, get, secret, voiceserver
from voxa.common.testing.wait import consistently, eventually

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize(
    "priorities",
    [
        pytest.param(({"VOXA_OPERATOR_PRIORITY": "10"}, {"VOXA_OPERATOR_PRIORITY": "5"}), id="explicit"),
        # A Deployment's replicas share their settings: unset, the replica that started first works.
        pytest.param(({}, {}), id="seniority"),
    ],
)
def test_standby_replica_waits_then_takes_over(
    crds_installed: KubeCluster,
    namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
    priorities: tuple[dict[str, str], dict[str, str]],
) -> None:
    cluster = crds_installed
    peering = {"VOXA_OPERATOR_PEERING": f"voxa-{namespace}"}
    active = OperatorProcess(cluster, tmp_path / "active.log", {**peering, **priorities[0]})
    standby = OperatorProcess(cluster, tmp_path / "standby.log", {**peering, **priorities[1]})
    active.start()
    standby.start()
    try:
        cluster.apply(
            secret("jwt", secret="s" * 32),
            secret("redis", url=redis_server.url),
            voiceserver("ha", signaling={"replicas": 1}),
            namespace=namespace,
        )
        eventually(
            lambda: get(cluster, namespace, "deployment", "ha-signaling"), 60, "children from the active"
        )
        eventually(lambda: active.reconciles() > 0, 30, "the active operator reconciling")
        # Three resync periods in which the standby never reconciles.
        consistently(lambda: standby.reconciles() == 0, 3, "the standby staying idle")

        active.stop()  # a clean stop (a rolling update of the operator) hands over at once
        cluster.kubectl(
            "patch", "voiceserver", "ha", "-n", namespace, "--type=merge",
            "-p", '{"spec": {"signaling": {"replicas": 2}}}',
        )  # fmt: skip
        eventually(
            lambda: get(cluster, namespace, "deployment", "ha-signaling")["spec"]["replicas"] == 2,
            60,
            "the standby applying the change",
        )
        assert standby.reconciles() > 0
    finally:
        active.stop()
        standby.stop()
        print(f"--- standby log tail ---\n{standby.log_tail()}")
