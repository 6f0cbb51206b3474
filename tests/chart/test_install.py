"""`helm install` of charts/voxa on a real control plane (kwok nodes, whose pods become Ready): the API
server accepts every object, the CRDs come first, the Deployment becomes available, upgrades apply the
values, and an uninstall keeps the CRDs (Helm never deletes a chart's crds/)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from e2e.cluster.fixtures import KubeCluster
from tests.unit.test_chart import CHART, helm_binary
from voxa.common.testing.wait import eventually

pytestmark = pytest.mark.timeout(600)

RELEASE = NAMESPACE = "chart-test"
NAME = f"{RELEASE}-operator"


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_binary()


def test_install_upgrade_and_uninstall(kube_cluster: KubeCluster, helm: Path) -> None:
    cluster = kube_cluster

    def run(*args: str) -> str:
        argv = [str(helm), "--kubeconfig", str(cluster.kubeconfig), "--namespace", NAMESPACE, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def available() -> int:
        status = cluster.get_json("deployment", NAME, "-n", NAMESPACE)["status"]
        return int(status.get("availableReplicas", 0))

    try:
        out = run("install", RELEASE, str(CHART), "--create-namespace", "--wait", "--timeout", "120s")
        assert "kubectl get voiceservers" in out, "NOTES tell what to apply next"
        for crd in ("voiceservers.voxa.dev", "stunnergateways.voxa.dev", "clusterkopfpeerings.kopf.dev"):
            cluster.kubectl("get", "crd", crd)
        assert available() == 2
        service_account = f"--as=system:serviceaccount:{NAMESPACE}:{NAME}"
        can = cluster.kubectl("auth", "can-i", "patch", "voiceservers/status", service_account, check=False)
        assert can.stdout.strip() == "yes"
        cannot = cluster.kubectl("auth", "can-i", "delete", "nodes", service_account, check=False)
        assert cannot.stdout.strip() == "no"
        cluster.kubectl("get", "service", f"{NAME}-metrics", "-n", NAMESPACE)
        cluster.kubectl("get", "poddisruptionbudget", NAME, "-n", NAMESPACE)

        run(
            "upgrade",
            RELEASE,
            str(CHART),
            "--reuse-values",
            "--set",
            "replicaCount=3",
            "--set",
            "metrics.enabled=false",
            "--wait",
            "--timeout",
            "120s",
        )
        eventually(lambda: available() == 3, 60, "three available replicas")
        gone = cluster.kubectl("get", "service", f"{NAME}-metrics", "-n", NAMESPACE, check=False)
        assert gone.returncode != 0, "metrics disabled: the Service is removed"

        run("uninstall", RELEASE, "--wait")
        assert cluster.kubectl("get", "clusterrole", NAME, check=False).returncode != 0
        cluster.kubectl("get", "crd", "voiceservers.voxa.dev")  # kept: Helm never deletes crds/
    finally:
        subprocess.run(
            [str(helm), "--kubeconfig", str(cluster.kubeconfig), "uninstall", RELEASE, "-n", NAMESPACE],
            capture_output=True,
            timeout=120,
            check=False,
        )
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
