"""The operator's installation manifests (charts/voxa-operator/operator.yaml) on the real control plane,
and the operator running with exactly that ClusterRole: least privilege that is still enough."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, RedisServer
from e2e.cluster.fixtures import KubeCluster
from tests.operator.conftest import OperatorProcess, condition, get, secret, voiceserver
from voxa.common.testing.wait import eventually

pytestmark = pytest.mark.timeout(300)


def service_account_kubeconfig(cluster: KubeCluster, path: Path) -> Path:
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    token = cluster.kubectl(
        "create", "token", "voxa-operator", "-n", "voxa-system", "--duration=1h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "voxa-operator", "user": {"token": token}}],
        "contexts": [
            {"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "voxa-operator"}}
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_operator_works_with_its_own_cluster_role(
    crds_installed: KubeCluster, namespace: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    cluster = crds_installed
    cluster.kubectl("apply", "-f", str(ROOT / "charts" / "voxa-operator" / "operator.yaml"))
    eventually(
        lambda: (
            get(cluster, "voxa-system", "deployment", "voxa-operator")["status"].get("availableReplicas") == 2
        ),
        60,
        "the installed operator Deployment available (kwok pods)",
    )
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa-kubeconfig")
    assert (
        cluster.kubectl(
            "auth",
            "can-i",
            "delete",
            "nodes",
            "--as=system:serviceaccount:voxa-system:voxa-operator",
            check=False,
        ).stdout.strip()
        == "no"
    )
    operator = OperatorProcess(
        cluster,
        tmp_path / "operator.log",
        {"KUBECONFIG": str(kubeconfig), "VOXA_OPERATOR_PEERING": "voxa-rbac-test"},
    )
    operator.start()
    try:
        cluster.apply(
            secret("jwt", secret="s" * 32),
            secret("redis", url=redis_server.url),
            {
                "apiVersion": "voxa.dev/v1alpha1",
                "kind": "StunnerGateway",
                "metadata": {"name": "edge"},
                "spec": {"publicAddress": "203.0.113.9", "service": {"type": "NodePort"}},
            },
            voiceserver("lobby", stunnerGatewayRef={"name": "edge"}, redis={"managed": True}),
            namespace=namespace,
        )

        def ready(kind: str, name: str) -> bool:
            return (condition(get(cluster, namespace, kind, name), "Ready") or {}).get("status") == "True"

        eventually(lambda: ready("stunnergateway", "edge"), 90, "gateway Ready")
        eventually(lambda: ready("voiceserver", "lobby"), 90, "VoiceServer Ready")
        eventually(lambda: get(cluster, namespace, "secret", "lobby-turn"), 30, "TURN settings")
        cluster.kubectl("delete", "voiceserver", "lobby", "-n", namespace, "--timeout=60s")
        log = operator.log_path.read_text()
        # RBAC refusals name the user ("... is forbidden: User "system:serviceaccount:..." cannot ...");
        # events for objects of terminating namespaces left by earlier tests are refused otherwise.
        refusals = re.findall(r'voxa-operator\\*" cannot [^,]*', log)
        assert refusals == [], refusals
    finally:
        operator.stop()
