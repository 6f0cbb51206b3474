"""The chart's lifecycle on kind with a voice server running: `helm upgrade` with changed values rolls
the operator and leaves the VoiceServer's pods alone; `helm uninstall` removes the operator but keeps
the CRDs and every VoiceServer running (docs/install.md), and a new install takes over again."""

from __future__ import annotations

import json

import pytest

from e2e.kind.cluster import OPERATOR_NAMESPACE, RELEASE
from e2e.kind.deployed import Stack, is_ready, operator_pods
from e2e.kind.fixtures import OPERATOR_VALUES, KindEnv, deploy_stack
from voxa.common.testing.wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
COMPONENTS = ("signaling", "sfu", "redis", "stunnerd")


def stack_pods(stack: Stack) -> dict[str, str]:
    """uid -> name of every pod of the stack."""
    return {p["metadata"]["uid"]: p["metadata"]["name"] for c in COMPONENTS for p in stack.pods(c)}


def steady_pods(stack: Stack) -> dict[str, str] | None:
    """The stack's pods once none is terminating (a Ready stack may still be letting an old pod of a
    rollout go); None before."""
    pods = [p for c in COMPONENTS for p in stack.pods(c)]
    if any(p["metadata"].get("deletionTimestamp") for p in pods):
        return None
    return {p["metadata"]["uid"]: p["metadata"]["name"] for p in pods}


def reconciled(stack: Stack, max_replicas: int) -> bool:
    """An operator has reconciled the spec with this maxReplicas (observedGeneration caught up)."""
    body = stack.voiceserver()
    status = body.get("status") or {}
    return bool(
        body["spec"]["sfu"]["maxReplicas"] == max_replicas
        and status.get("observedGeneration") == body["metadata"]["generation"]
        and status.get("ready") == "True"
    )


def bump_max_replicas(stack: Stack, value: int) -> None:
    """A spec change that touches no pod (the load decides replicas), so only an operator notices it."""
    patch = json.dumps({"spec": {"sfu": {"maxReplicas": value}}})
    stack.cluster.kubectl(
        "patch", "voiceserver", stack.name, "-n", stack.namespace, "--type=merge", "-p", patch
    )


def test_helm_upgrade_and_uninstall_leave_voice_servers_running(voxa_kind: KindEnv) -> None:
    stack = deploy_stack(voxa_kind, "kind-upgrade", signaling_replicas=1)
    try:
        pods = eventually(lambda: steady_pods(stack), 120, "no pod of the stack terminating")
        before = {p["metadata"]["name"] for p in operator_pods(voxa_kind.cluster)}

        # helm upgrade with changed values: the operator rolls, the voice server's pods stay.
        voxa_kind.cluster.install_chart({**OPERATOR_VALUES, "logLevel": "debug"})

        def rolled() -> bool:
            now = operator_pods(voxa_kind.cluster)
            return (
                len(now) == 2
                and not {p["metadata"]["name"] for p in now} & before
                and all(map(is_ready, now))
            )

        eventually(rolled, 300, "the operator rolled to two new pods")
        env = operator_pods(voxa_kind.cluster)[0]["spec"]["containers"][0]["env"]
        assert {"name": "VOXA_OPERATOR_LOG_LEVEL", "value": "debug"} in env
        bump_max_replicas(stack, 5)
        eventually(lambda: reconciled(stack, 5), 120, "the new operator reconciling the VoiceServer")
        assert stack_pods(stack) == pods, "helm upgrade touched the voice server's pods"

        # helm uninstall: the operator goes; CRDs (Helm never deletes a chart's crds/) and every
        # VoiceServer with its pods stay, unmanaged until an operator is installed again.
        voxa_kind.cluster.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait")
        eventually(lambda: not operator_pods(voxa_kind.cluster), 120, "no operator pods")
        for crd in ("voiceservers.voxa.dev", "stunnergateways.voxa.dev"):
            voxa_kind.kubectl("get", "crd", crd)
        assert stack.ready()
        assert stack_pods(stack) == pods
        bump_max_replicas(stack, 6)  # nobody reconciles this until the operator is back

        voxa_kind.cluster.install_chart(OPERATOR_VALUES)
        eventually(lambda: reconciled(stack, 6), 180, "a reinstalled operator taking over")
        assert stack_pods(stack) == pods
    finally:
        stack.delete()
