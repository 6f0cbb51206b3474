"""Voxa installed with Helm on kind, with real pods: the operator pair, a voice stack through its own
probes, and every pod non-root on a read-only root filesystem, as the kubelet enforces it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from e2e.kind.cluster import OPERATOR_NAMESPACE
from e2e.kind.deployed import Stack, is_ready, operator_pods
from e2e.kind.fixtures import KindEnv, deploy_stack
from voxa.common.testing.wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def installed(voxa_kind: KindEnv) -> Iterator[Stack]:
    deployed = deploy_stack(voxa_kind, "kind-install", signaling_replicas=2)
    yield deployed
    deployed.delete()


def test_two_operator_replicas_run_and_one_is_active(voxa_kind: KindEnv, installed: Stack) -> None:
    def pair() -> list[dict[str, Any]] | None:
        pods = operator_pods(voxa_kind.cluster)
        return pods if len(pods) == 2 and all(map(is_ready, pods)) else None

    pods = eventually(pair, 120, "two operator pods Running and Ready")
    peering = voxa_kind.get("clusterkopfpeering", "voxa-operator")
    peers = {key: value for key, value in (peering.get("status") or {}).items() if isinstance(value, dict)}
    names = {p["metadata"]["name"] for p in pods}
    live = {key: value for key, value in peers.items() if any(n in key for n in names)}
    assert len(live) == 2, peers
    priorities = sorted(v["priority"] for v in live.values())
    assert priorities[0] != priorities[1], "replicas of equal priority would all pause"
    # Only the active replica reconciles: it applied the stack's children, the standby applied nothing.
    applied = [
        p["metadata"]["name"]
        for p in pods
        if '"event":"applied"' in voxa_kind.kubectl("logs", "-n", OPERATOR_NAMESPACE, p["metadata"]["name"])
    ]
    assert len(applied) == 1, applied
    active = max(live.items(), key=lambda kv: kv[1]["priority"])[0]
    assert applied[0] in active


def test_the_stack_runs_real_pods_ready_through_their_probes(installed: Stack) -> None:
    body = installed.voiceserver()
    assert body["status"]["ready"] == "True"
    assert body["status"]["endpoint"] == f"ws://demo-signaling.{installed.namespace}.svc/socket"
    assert body["status"]["sfus"] == "1/1"

    def running(component: str) -> list[dict[str, Any]]:
        # A pod of an earlier rollout may still be draining (preStop) while Running: not counted.
        return [p for p in installed.pods(component) if not p["metadata"].get("deletionTimestamp")]

    def all_ready() -> bool:
        for component in ("signaling", "sfu", "redis", "stunnerd"):
            pods = running(component)
            assert pods, component
            for pod in pods:
                assert pod["status"]["phase"] == "Running" and is_ready(pod), (component, pod["status"])
        assert len(running("signaling")) == 2, [p["metadata"]["name"] for p in running("signaling")]
        return True

    eventually(all_ready, 120, "every component's pods Running and Ready, two signaling replicas")
    for component in ("signaling", "sfu", "redis", "stunnerd"):
        for pod in running(component):
            for container in pod["spec"]["containers"]:
                assert "readinessProbe" in container and "livenessProbe" in container, container["name"]


def test_every_pod_runs_non_root_on_a_read_only_root(voxa_kind: KindEnv, installed: Stack) -> None:
    pods = [
        *(p for c in ("signaling", "sfu", "redis", "stunnerd") for p in installed.pods(c)),
        *operator_pods(voxa_kind.cluster),
    ]
    for pod in pods:
        name = pod["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["spec"]["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])
    # The kubelet enforces it: the processes run as uid 10001 and cannot write outside their volumes.
    for component in ("signaling", "sfu"):
        pod = installed.pods(component)[0]["metadata"]["name"]
        probe = (
            "import os\n"
            "print(os.getuid())\n"
            "try:\n    open('/opt/voxa/x', 'w')\nexcept OSError as e:\n    print(e.strerror)\n"
            "open('/tmp/ok', 'w').write('ok')\nprint('tmp writable')"
        )
        out = voxa_kind.kubectl("exec", "-n", installed.namespace, pod, "--", "python3", "-c", probe)
        assert out.split("\n")[:3] == ["10001", "Read-only file system", "tmp writable"], (component, out)
    redis = installed.pods("redis")[0]["metadata"]["name"]
    out = voxa_kind.kubectl(
        "exec",
        "-n",
        installed.namespace,
        redis,
        "--",
        "sh",
        "-c",
        "id -u; touch /x 2>&1; touch /data/ok && echo ok",
    )
    assert out.startswith("10001\n") and "Read-only file system" in out and out.strip().endswith("ok"), out


def test_no_image_was_ever_pulled(voxa_kind: KindEnv, installed: Stack) -> None:
    """Every image is in the node (components) or was loaded (Voxa's): the kubelet pulled nothing,
    and the node's registry hosts point at a closed port, so a pull could not leave the machine."""
    events = voxa_kind.get("events", "-A", "--field-selector", "reason=Pulling")["items"]
    assert events == [], [e.get("message") for e in events]
    failed = voxa_kind.get("events", "-A", "--field-selector", "reason=Failed")["items"]
    assert not [e for e in failed if "pull" in e.get("message", "").lower()]
