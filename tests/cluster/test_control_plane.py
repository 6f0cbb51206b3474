"""The local control plane behaves like a real cluster in the ways the operator relies on.

Deployments roll out to Running pods on the kwok nodes, owner references garbage-collect, the
pod-deletion-cost annotation steers scale-down, and CRD validation runs CEL rules. Marked slow: the
first run on a machine compiles Kubernetes, and every run starts a whole control plane.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.cluster.controlplane import FAKE_NODE_ANNOTATION
from e2e.cluster.fixtures import KubeCluster, KubectlError

pytestmark = pytest.mark.slow

IMAGE = "registry.invalid/voxa/never-pulled:1"  # kwok runs nothing, so no image is ever pulled


def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false")


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": IMAGE}]},
            },
        },
    }


def pods(cluster: KubeCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return items


def live_pod_names(cluster: KubeCluster, namespace: str, app: str) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in pods(cluster, namespace, app)
        if "deletionTimestamp" not in p["metadata"]
    }


def available(cluster: KubeCluster, namespace: str, name: str, replicas: int) -> None:
    cluster.kubectl(
        "wait", "-n", namespace, f"deployment/{name}", "--for=condition=Available", "--timeout=60s"
    )
    eventually(
        lambda: (
            cluster.get_json("deployment", name, "-n", namespace)["status"].get("readyReplicas") == replicas
        ),
        f"{replicas} ready replicas of {name}",
    )


def test_deployment_runs_on_kwok_nodes(kube_cluster: KubeCluster, namespace: str) -> None:
    kube_cluster.apply(deployment("web", 3), namespace=namespace)
    available(kube_cluster, namespace, "web", 3)

    fake_nodes = {
        n["metadata"]["name"]
        for n in kube_cluster.get_json("nodes")["items"]
        if n["metadata"].get("annotations", {}).get(FAKE_NODE_ANNOTATION[0]) == FAKE_NODE_ANNOTATION[1]
    }
    assert len(fake_nodes) >= 2
    running = pods(kube_cluster, namespace, "web")
    assert len(running) == 3
    for pod in running:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"] in fake_nodes
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"


def test_deleting_a_deployment_collects_its_replicaset_and_pods(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    kube_cluster.apply(deployment("gc", 2), namespace=namespace)
    available(kube_cluster, namespace, "gc", 2)
    assert kube_cluster.get_json("replicasets", "-n", namespace, "-l", "app=gc")["items"]

    kube_cluster.kubectl("delete", "deployment", "gc", "-n", namespace, "--wait=false")

    eventually(
        lambda: not kube_cluster.get_json("replicasets", "-n", namespace, "-l", "app=gc")["items"],
        "the ReplicaSet to be garbage-collected",
    )
    eventually(lambda: not pods(kube_cluster, namespace, "gc"), "the pods to be garbage-collected")


def test_pod_deletion_cost_decides_which_pod_goes_on_scale_down(
    kube_cluster: KubeCluster, namespace: str
) -> None:
    kube_cluster.apply(deployment("cost", 3), namespace=namespace)
    available(kube_cluster, namespace, "cost", 3)
    names = sorted(live_pod_names(kube_cluster, namespace, "cost"))
    assert len(names) == 3
    # Not the first by name, so that no tie-break by name or age could pick it by chance alone.
    victim = names[1]
    kube_cluster.kubectl(
        "annotate", "pod", victim, "-n", namespace, "controller.kubernetes.io/pod-deletion-cost=-100"
    )

    kube_cluster.kubectl("scale", "deployment", "cost", "-n", namespace, "--replicas=2")

    eventually(
        lambda: live_pod_names(kube_cluster, namespace, "cost") == set(names) - {victim},
        f"{victim} to be the one pod removed",
    )
    available(kube_cluster, namespace, "cost", 2)
    assert live_pod_names(kube_cluster, namespace, "cost") == set(names) - {victim}


CEL_MESSAGE = "minReplicas must not exceed maxReplicas"


def test_crd_validation_runs_cel_rules(kube_cluster: KubeCluster, namespace: str) -> None:
    group = "cluster-tests.voxa.local"
    plural = f"celchecks{uuid.uuid4().hex[:6]}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": "CelCheck"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "minReplicas": {"type": "integer"},
                                        "maxReplicas": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.minReplicas <= self.maxReplicas",
                                            "message": CEL_MESSAGE,
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    kube_cluster.apply(crd)
    try:
        kube_cluster.kubectl("wait", f"crd/{plural}.{group}", "--for=condition=Established", "--timeout=60s")

        def obj(name: str, low: int, high: int) -> dict[str, Any]:
            return {
                "apiVersion": f"{group}/v1",
                "kind": "CelCheck",
                "metadata": {"name": name},
                "spec": {"minReplicas": low, "maxReplicas": high},
            }

        kube_cluster.apply(obj("fine", 1, 3), namespace=namespace)
        with pytest.raises(KubectlError) as rejected:
            kube_cluster.apply(obj("inverted", 5, 2), namespace=namespace)
        assert CEL_MESSAGE in rejected.value.stderr
        assert kube_cluster.kubectl("get", plural, "inverted", "-n", namespace, check=False).returncode != 0
    finally:
        kube_cluster.kubectl("delete", "crd", f"{plural}.{group}", "--wait=false")
