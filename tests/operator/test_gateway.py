"""StunnerGateway on a real control plane: children, status, TURN settings for a VoiceServer that
references it, SFU endpoints following pods, and secret rotation."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import RedisServer
from e2e.cluster.fixtures import KubeCluster, KubectlError
from tests.operator.conftest import OperatorProcess, condition, get, secret, voiceserver
from voxa.common.testing.wait import consistently, eventually
from voxa.operator.reconcile import HASH_ANNOTATION
from voxa.operator.render.stunner import CONFIG_REVISION_ANNOTATION

pytestmark = pytest.mark.timeout(300)


def gateway(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voxa.dev/v1alpha1",
        "kind": "StunnerGateway",
        "metadata": {"name": name},
        "spec": spec,
    }


def stunnerd_config(cluster: KubeCluster, namespace: str, name: str, slot: str = "a") -> dict[str, Any]:
    body = get(cluster, namespace, "secret", f"{name}-stunnerd-config")
    return dict(json.loads(base64.b64decode(body["data"][f"{slot}.json"])))


def slot_secrets(cluster: KubeCluster, namespace: str, name: str) -> dict[str, str]:
    return {
        slot: stunnerd_config(cluster, namespace, name, slot)["auth"]["credentials"]["secret"]
        for slot in "ab"
    }


def decoded(cluster: KubeCluster, namespace: str, name: str) -> dict[str, str]:
    body = get(cluster, namespace, "secret", name)
    return {k: base64.b64decode(v).decode() for k, v in (body or {}).get("data", {}).items()}


def rotate_to(cluster: KubeCluster, namespace: str, new: str, old: str) -> None:
    """Change the gateway edge's auth secret; wait until slot b has it and slot a keeps the old one."""
    patch = json.dumps({"stringData": {"secret": new}})
    cluster.kubectl("patch", "secret", "edge-auth", "-n", namespace, "--type=merge", "-p", patch)
    eventually(
        lambda: slot_secrets(cluster, namespace, "edge") == {"a": old, "b": new},
        60,
        "slot b with the new secret, slot a with the previous one",
    )


def test_invalid_gateways_are_refused(crds_installed: KubeCluster, namespace: str) -> None:
    cases = [
        (gateway("a", listeners=[{"name": "t", "protocol": "TURN-TLS", "port": 443}]), "need tlsSecretRef"),
        (
            gateway(
                "b",
                listeners=[{"name": "u", "port": 3478}, {"name": "u", "protocol": "TURN-TCP", "port": 3479}],
            ),
            "listener names must be unique",
        ),
        (
            gateway(
                "c",
                listeners=[
                    {"name": "u", "port": 3478},
                    {"name": "d", "protocol": "TURN-DTLS", "port": 3478, "tlsSecretRef": {"name": "x"}},
                ],
            ),
            "two listeners cannot share a port",
        ),
        (
            # The first listener's alternatePort defaults to 3479, the second one's port.
            gateway("f", listeners=[{"name": "u", "port": 3478}, {"name": "v", "port": 3479}]),
            "two listeners cannot share a port (port or alternatePort)",
        ),
        (
            gateway("g", listeners=[{"name": "u", "port": 3478, "alternatePort": 3478}]),
            "alternatePort must differ from port",
        ),
        (gateway("d", auth={"type": "static"}), "static auth needs secretRef"),
        (
            gateway("h", service={"type": "ClusterIP"}, listeners=[{"name": "u", "nodePort": 30478}]),
            "nodePort and alternateNodePort need service type NodePort or LoadBalancer",
        ),
        (
            gateway(
                "i",
                service={"type": "NodePort"},
                listeners=[{"name": "u", "nodePort": 30478, "alternateNodePort": 30478}],
            ),
            "nodePort and alternateNodePort must differ",
        ),
        (gateway("e", listeners=[{"name": "u", "protocol": "QUIC"}]), 'supported values: "TURN-UDP"'),
    ]
    for obj, message in cases:
        with pytest.raises(KubectlError) as info:
            crds_installed.apply(obj, namespace=namespace)
        assert message in info.value.stderr, (obj, info.value.stderr)


def test_gateway_children_status_and_turn_settings_for_a_voiceserver(
    operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    cluster = operator.cluster
    cluster.apply(
        gateway(
            "edge",
            publicAddress="203.0.113.9",
            listeners=[{"name": "udp", "port": 3478}, {"name": "tcp", "protocol": "TURN-TCP", "port": 3478}],
        ),
        namespace=namespace,
    )

    def ready_gateway() -> dict[str, Any] | None:
        b = get(cluster, namespace, "stunnergateway", "edge")
        return dict(b) if b and (condition(b, "Ready") or {}).get("status") == "True" else None

    body = eventually(ready_gateway, 90, "gateway Ready")
    assert body["status"]["address"] == "203.0.113.9"
    assert body["status"]["uris"] == [
        "turn:203.0.113.9:3478?transport=udp",
        "turn:203.0.113.9:3478?transport=tcp",
    ]
    assert body["status"]["activeSlot"] == "a"
    assert body["status"]["standbyUris"] == [
        "turn:203.0.113.9:3479?transport=udp",
        "turn:203.0.113.9:3479?transport=tcp",
    ]
    table = cluster.kubectl("get", "stunnergateways", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "ADDRESS", "LISTENERS", "AGE"]
    assert table[1].split()[:4] == ["edge", "True", "203.0.113.9", "2"]
    svc = get(cluster, namespace, "service", "edge")
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["sessionAffinity"] == "ClientIP"
    assert [(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]] == [
        ("a-udp", 3478, "UDP"),
        ("a-tcp", 3478, "TCP"),
        ("b-udp", 3479, "UDP"),
        ("b-tcp", 3479, "TCP"),
    ]
    generated = decoded(cluster, namespace, "edge-auth")["secret"]
    assert slot_secrets(cluster, namespace, "edge") == {"a": generated, "b": generated}
    containers = get(cluster, namespace, "deployment", "edge")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["stunnerd-a", "stunnerd-b"]
    assert get(cluster, namespace, "networkpolicy", "edge")["spec"]["ingress"][0]["ports"][0] == {
        "port": 3478,
        "protocol": "UDP",
    }

    # A VoiceServer routed through it gets the URIs and the secret, and the gateway relays to its SFUs.
    cluster.apply(
        secret("jwt", secret="s" * 32),
        secret("redis", url=redis_server.url),
        voiceserver("lobby", stunnerGatewayRef={"name": "edge"}, sfu={"minReplicas": 2, "maxReplicas": 3}),
        namespace=namespace,
    )

    def turn_config() -> dict[str, Any] | None:
        c = get(cluster, namespace, "configmap", "lobby-signaling")
        return dict(c) if c and "VOXA_TURN_URIS" in c["data"] else None

    try:
        config = eventually(turn_config, 60, "TURN settings in signaling's config")
    except AssertionError:
        print(json.dumps(get(cluster, namespace, "voiceserver", "lobby").get("status"), indent=1))
        print(json.dumps(get(cluster, namespace, "stunnergateway", "edge").get("status"), indent=1))
        raise
    assert (
        config["data"]["VOXA_TURN_URIS"]
        == "turn:203.0.113.9:3478?transport=udp,turn:203.0.113.9:3478?transport=tcp"
    )
    assert decoded(cluster, namespace, "lobby-turn") == {"secret": generated}

    def sfu_ips() -> list[str]:
        pods = get(cluster, namespace, "pods", "-l", "app.kubernetes.io/component=sfu")["items"]
        return sorted(
            p["status"].get("podIP", "") for p in pods if not p["metadata"].get("deletionTimestamp")
        )

    def endpoints() -> list[str]:
        clusters = stunnerd_config(cluster, namespace, "edge")["clusters"]
        return [e for c in clusters if c["name"] == f"{namespace}/lobby" for e in c["endpoints"]]

    def endpoints_follow_pods() -> bool:
        ips = sfu_ips()
        return len(ips) == 2 and all(ips) and endpoints() == sorted(f"{ip}/32:<40000-40000>" for ip in ips)

    eventually(endpoints_follow_pods, 60, "gateway endpoints = the two SFU pod IPs")
    # A pod replaced: the endpoints follow.
    victim = get(cluster, namespace, "pods", "-l", "app.kubernetes.io/component=sfu")["items"][0]["metadata"][
        "name"
    ]
    cluster.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")

    def replaced() -> bool:
        pods = get(cluster, namespace, "pods", "-l", "app.kubernetes.io/component=sfu")["items"]
        return victim not in [p["metadata"]["name"] for p in pods] and endpoints_follow_pods()

    eventually(replaced, 60, "endpoints after a pod replacement")

    # Each change of the config is told to the gateway pods (their kubelet then refreshes the mounted
    # Secret at once instead of on its next periodic sync, about a minute later).
    def pods_told_the_revision() -> bool:
        config = get(cluster, namespace, "secret", "edge-stunnerd-config")["metadata"]
        revision = config["annotations"][HASH_ANNOTATION]
        pods = get(cluster, namespace, "pods", "-l", "app.kubernetes.io/component=stunnerd")["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return bool(live) and all(
            (p["metadata"].get("annotations") or {}).get(CONFIG_REVISION_ANNOTATION) == revision for p in live
        )

    eventually(pods_told_the_revision, 60, "the gateway pods annotated with the config's revision")

    # Rotation: slot b takes the new secret, then (VOXA_OPERATOR_TURN_PROPAGATION_S later) new calls;
    # slot a keeps the previous one for a credential lifetime; signaling rolls with slot b's URIs and
    # the new secret.
    template = get(cluster, namespace, "deployment", "lobby-signaling")["spec"]["template"]["metadata"]
    rotate_to(cluster, namespace, "rotated-1", generated)

    def rotated_status() -> dict[str, Any] | None:
        st = get(cluster, namespace, "stunnergateway", "edge")["status"]
        return dict(st) if st.get("activeSlot") == "b" else None

    st = eventually(rotated_status, 60, "gateway status on slot b")
    assert st["uris"] == ["turn:203.0.113.9:3479?transport=udp", "turn:203.0.113.9:3479?transport=tcp"]
    assert st["standbyUris"] == ["turn:203.0.113.9:3478?transport=udp", "turn:203.0.113.9:3478?transport=tcp"]
    assert st["previousSecretValidUntil"].endswith("Z")
    eventually(
        lambda: (
            get(cluster, namespace, "configmap", "lobby-signaling")["data"]["VOXA_TURN_URIS"]
            == "turn:203.0.113.9:3479?transport=udp,turn:203.0.113.9:3479?transport=tcp"
        ),
        60,
        "signaling's config with slot b's URIs",
    )
    eventually(
        lambda: decoded(cluster, namespace, "lobby-turn") == {"secret": "rotated-1"},
        60,
        "signaling's copy of the new secret",
    )

    def rolled() -> dict[str, Any] | None:
        d = get(cluster, namespace, "deployment", "lobby-signaling")
        return dict(d) if d["spec"]["template"]["metadata"] != template else None

    deployment = eventually(rolled, 60, "signaling rolled")
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "VOXA_TURN_SECRET" in env
    assert "rotated-1" not in json.dumps(deployment)

    def reasons(name: str) -> set[str]:
        items = get(cluster, namespace, "events", "--field-selector", f"involvedObject.name={name}")["items"]
        return {e["reason"] for e in items}

    eventually(
        lambda: {"TurnSecretRotating", "TurnSecretRotated"} <= reasons("edge"), 30, "the rotation's events"
    )
    eventually(lambda: "TurnSettingsChanged" in reasons("lobby"), 30, "TurnSettingsChanged event")
    # A restarted operator reads the slots back from the config Secret: nothing rotates again.
    operator.stop()
    operator.start()
    eventually(lambda: operator.reconciles() >= 6, 60, "the restarted operator reconciled a few times")
    assert slot_secrets(cluster, namespace, "edge") == {"a": generated, "b": "rotated-1"}
    assert get(cluster, namespace, "stunnergateway", "edge")["status"]["activeSlot"] == "b"
    assert decoded(cluster, namespace, "lobby-turn") == {"secret": "rotated-1"}


def test_new_calls_stay_on_the_old_slot_until_the_pods_can_have_the_new_secret(
    crds_installed: KubeCluster, namespace: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The kubelet updates mounted Secrets lazily: with a propagation time of an hour, the standby slot
    gets the new secret at once, but the gateway keeps new calls (and signaling) on the old slot."""
    cluster = crds_installed
    operator = OperatorProcess(
        cluster, tmp_path / "operator.log", {"VOXA_OPERATOR_TURN_PROPAGATION_S": "3600"}
    )
    operator.start()
    try:
        cluster.apply(
            gateway("edge", publicAddress="203.0.113.9"),
            secret("jwt", secret="s" * 32),
            secret("redis", url=redis_server.url),
            voiceserver("hall", stunnerGatewayRef={"name": "edge"}),
            namespace=namespace,
        )
        eventually(lambda: decoded(cluster, namespace, "hall-turn"), 90, "TURN settings for the VoiceServer")
        generated = decoded(cluster, namespace, "edge-auth")["secret"]
        assert decoded(cluster, namespace, "hall-turn") == {"secret": generated}
        rotate_to(cluster, namespace, "r2", generated)

        def rotating() -> dict[str, Any] | None:
            st = get(cluster, namespace, "stunnergateway", "edge")["status"]
            progressing = next(c for c in st["conditions"] if c["type"] == "Progressing")
            return dict(st) if progressing["reason"] == "RotatingSecret" else None

        st = eventually(rotating, 30, "Progressing: RotatingSecret")
        assert st["activeSlot"] == "a" and st["uris"] == ["turn:203.0.113.9:3478?transport=udp"]
        # Several reconciles later, nothing has moved.
        consistently(
            lambda: decoded(cluster, namespace, "hall-turn") == {"secret": generated},
            3,
            "the old secret kept",
        )
        config = get(cluster, namespace, "configmap", "hall-signaling")["data"]
        assert config["VOXA_TURN_URIS"] == "turn:203.0.113.9:3478?transport=udp"
        assert get(cluster, namespace, "stunnergateway", "edge")["status"]["activeSlot"] == "a"
    finally:
        operator.stop()
