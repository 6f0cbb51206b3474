"""Render functions: one VoiceServer in, the manifests it needs out (no API server involved)."""

from __future__ import annotations

import json
from typing import Any

from tests.unit.operator.conftest import voiceserver
from voxa.operator.models import VoiceServer
from voxa.operator.render import Inputs, redis, sfu, signaling, voiceserver_children
from voxa.operator.render.common import OWNER_LABEL


def by_kind(children: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for child in children:
        out.setdefault(child["kind"], []).append(child["metadata"]["name"])
    return out


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_children_of_a_voiceserver_with_external_redis(vs: VoiceServer) -> None:
    kinds = by_kind(voiceserver_children(vs, Inputs(sfu_replicas=2)))
    assert kinds == {
        "ConfigMap": ["lobby-signaling"],
        "Service": ["lobby-signaling", "lobby-sfu"],
        "Deployment": ["lobby-signaling", "lobby-sfu"],
        "PodDisruptionBudget": ["lobby-signaling", "lobby-sfu"],
        "NetworkPolicy": ["lobby-sfu"],
    }


def test_managed_redis_and_ingress_add_their_children() -> None:
    vs = voiceserver({"redis": {"managed": True}, "signaling": {"ingress": {"host": "voice.example.com"}}})
    kinds = by_kind(voiceserver_children(vs, Inputs(sfu_replicas=1)))
    assert kinds["StatefulSet"] == ["lobby-redis"]
    assert "lobby-redis" in kinds["Service"] and "lobby-redis" in kinds["NetworkPolicy"]
    assert kinds["Ingress"] == ["lobby-signaling"]
    assert signaling.config_data(vs)["VOXA_REDIS_URL"] == "redis://lobby-redis.games.svc:6379/0"


def test_every_child_is_owned_labelled_and_namespaced(vs: VoiceServer) -> None:
    for child in [*voiceserver_children(vs, Inputs(sfu_replicas=1)), sfu.control_secret(vs, "s")]:
        meta = child["metadata"]
        assert meta["namespace"] == "games"
        assert meta["labels"][OWNER_LABEL] == "lobby"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "voxa-operator"
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "voxa.dev/v1alpha1",
            "kind": "VoiceServer",
            "name": "lobby",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_pods_are_hardened_with_requests_and_probes() -> None:
    vs = voiceserver({"redis": {"managed": True}})
    workloads = [
        c
        for c in voiceserver_children(vs, Inputs(sfu_replicas=1))
        if c["kind"] in ("Deployment", "StatefulSet")
    ]
    assert len(workloads) == 3
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"]["cpu"]
            assert container["resources"]["requests"]["memory"]
            assert "readinessProbe" in container and "livenessProbe" in container


def test_signaling_reads_secrets_by_reference_and_probes_health(vs: VoiceServer) -> None:
    deployment = signaling.deployment(vs)
    env = env_of(deployment)
    assert env["VOXA_JWT_SECRET"] == {"secretKeyRef": {"name": "jwt", "key": "secret"}}
    assert env["VOXA_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert env["VOXA_SFU_SECRET"] == {"secretKeyRef": {"name": "lobby-sfu-control", "key": "secret"}}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["signaling"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert deployment["spec"]["replicas"] == 2


def test_public_key_auth_mounts_the_key_and_points_signaling_at_it() -> None:
    vs = voiceserver({"auth": {"publicKeyRef": {"name": "keys", "key": "pub.pem"}, "audience": "voxa"}})
    data = signaling.config_data(vs)
    assert data["VOXA_JWT_PUBLIC_KEY_FILE"] == "/etc/voxa/jwt/pub.pem"
    assert data["VOXA_JWT_AUDIENCE"] == "voxa"
    pod = signaling.deployment(vs)["spec"]["template"]["spec"]
    assert {
        "name": "jwt",
        "secret": {"secretName": "keys", "items": [{"key": "pub.pem", "path": "pub.pem"}]},
    } in pod["volumes"]
    assert "VOXA_JWT_SECRET" not in env_of(signaling.deployment(vs))


def test_settings_changes_roll_signaling_pods() -> None:
    def fingerprint(vs: VoiceServer) -> str:
        return str(
            signaling.deployment(vs)["spec"]["template"]["metadata"]["annotations"]["voxa.dev/config-hash"]
        )

    base = voiceserver()
    assert fingerprint(base) == fingerprint(voiceserver())
    assert fingerprint(base) != fingerprint(voiceserver({"limits": {"maxParticipantsPerChannel": 7}}))


def test_sfu_deployment_registers_pods_by_name_and_drains_before_the_kubelet_kills() -> None:
    vs = voiceserver({"sfu": {"drainDeadlineSeconds": 120, "mediaPort": 41000}})
    deployment = sfu.deployment(vs, replicas=4)
    env = env_of(deployment)
    assert deployment["spec"]["replicas"] == 4
    assert env["VOXA_SFU_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["VOXA_SFU_SERVER_ID"] == "lobby"
    assert env["VOXA_SFU_SIGNALING_URL"] == "http://lobby-signaling.games.svc:80"
    # One port per pod (its one worker) for every peer.
    assert env["VOXA_SFU_RTC_MIN_PORT"] == "41000" and env["VOXA_SFU_RTC_MAX_PORT"] == "41000"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "media", "containerPort": 41000, "protocol": "UDP"} in container["ports"]
    assert env["VOXA_SFU_DRAIN_DEADLINE_S"] == "120"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 150
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_deprecated_port_range_still_chooses_the_media_port() -> None:
    """A VoiceServer written before mediaPort keeps its firewall rules: udpPortRange.min is the port."""
    old = voiceserver({"sfu": {"udpPortRange": {"min": 42000, "max": 42999}}})
    assert env_of(sfu.deployment(old, replicas=1))["VOXA_SFU_RTC_MIN_PORT"] == "42000"
    both = voiceserver({"sfu": {"udpPortRange": {"min": 42000, "max": 42999}, "mediaPort": 43000}})
    assert env_of(sfu.deployment(both, replicas=1))["VOXA_SFU_RTC_MAX_PORT"] == "43000"
    assert sfu.network_policy(old)["spec"]["ingress"][1]["ports"] == [{"protocol": "UDP", "port": 42000}]


def test_server_id_overrides_the_name() -> None:
    vs = voiceserver({"serverId": "arena-eu-1"})
    assert env_of(sfu.deployment(vs, 1))["VOXA_SFU_SERVER_ID"] == "arena-eu-1"


def test_network_policies_let_only_signaling_reach_the_sfu_control_port(vs: VoiceServer) -> None:
    policy = sfu.network_policy(vs)["spec"]
    control, media = policy["ingress"]
    assert control["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "voxa",
                    "app.kubernetes.io/instance": "lobby",
                    "app.kubernetes.io/component": "signaling",
                }
            }
        }
    ]
    assert control["ports"] == [{"protocol": "TCP", "port": 4100}]
    assert "from" not in media
    assert media["ports"] == [{"protocol": "UDP", "port": 40000}]
    redis_policy = redis.network_policy(voiceserver({"redis": {"managed": True}}))["spec"]
    assert redis_policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_service_type_annotations_and_endpoint() -> None:
    vs = voiceserver({"signaling": {"service": {"type": "LoadBalancer", "annotations": {"lb": "nlb"}}}})
    svc = signaling.service(vs)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["metadata"]["annotations"] == {"lb": "nlb"}
    assert signaling.endpoint(vs, None) == "ws://lobby-signaling.games.svc/socket"
    assert (
        signaling.endpoint(vs, {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}})
        == "ws://203.0.113.7/socket"
    )
    tls = voiceserver({"signaling": {"ingress": {"host": "voice.example.com", "tlsSecretName": "voice-tls"}}})
    assert signaling.endpoint(tls, None) == "wss://voice.example.com/socket"
    ingress = signaling.ingress(tls)
    assert ingress is not None and ingress["spec"]["tls"] == [
        {"hosts": ["voice.example.com"], "secretName": "voice-tls"}
    ]


def test_rendering_is_deterministic(vs: VoiceServer) -> None:
    assert voiceserver_children(vs, Inputs(2)) == voiceserver_children(voiceserver(), Inputs(2))


def test_a_gateway_reference_gives_signaling_turn_settings_and_rotation_rolls_it() -> None:
    from voxa.operator.render import TurnInputs

    vs = voiceserver({"stunnerGatewayRef": {"name": "edge"}})
    turn = TurnInputs(
        uris=("turn:203.0.113.9:3478?transport=udp",), ttl_s=86400, secret="one", revision="a@1"
    )
    kinds = by_kind(voiceserver_children(vs, Inputs(sfu_replicas=1, turn=turn)))
    assert "lobby-turn" in kinds["Secret"]
    data = signaling.config_data(vs, turn)
    assert data["VOXA_TURN_URIS"] == "turn:203.0.113.9:3478?transport=udp"
    assert data["VOXA_TURN_TTL_S"] == "86400"
    # The SFU pods have pod addresses only: clients are told to relay through the gateway.
    assert data["VOXA_ICE_TRANSPORT_POLICY"] == "relay"
    assert "VOXA_ICE_TRANSPORT_POLICY" not in signaling.config_data(vs)
    env = env_of(signaling.deployment(vs, turn))
    assert env["VOXA_TURN_SECRET"] == {"secretKeyRef": {"name": "lobby-turn", "key": "secret"}}
    assert "VOXA_TURN_SECRET_PREVIOUS" not in env

    # A rotation: the other slot's URIs with the new secret.
    rotated = TurnInputs(
        uris=("turn:203.0.113.9:3479?transport=udp",), ttl_s=86400, secret="two", revision="b@2"
    )
    assert signaling.turn_secret(vs, rotated)["stringData"] == {"secret": "two"}
    assert signaling.config_data(vs, rotated)["VOXA_TURN_URIS"] == "turn:203.0.113.9:3479?transport=udp"

    def fingerprint(t: TurnInputs) -> str:
        return str(
            signaling.deployment(vs, t)["spec"]["template"]["metadata"]["annotations"]["voxa.dev/config-hash"]
        )

    assert fingerprint(turn) != fingerprint(rotated)
    # The revision rolls signaling even where the URIs stay the same (a gateway recreated).
    recreated = TurnInputs(uris=turn.uris, ttl_s=86400, secret="three", revision="a@3")
    assert fingerprint(recreated) != fingerprint(turn)
    # Secrets never appear in the pod template, only a digest of them.
    assert "two" not in json.dumps(signaling.deployment(vs, rotated))


def test_fixed_node_ports_only_where_the_service_has_node_ports() -> None:
    pinned = voiceserver({"signaling": {"service": {"type": "NodePort", "nodePort": 30080}}})
    assert signaling.service(pinned)["spec"]["ports"][0]["nodePort"] == 30080
    assert "nodePort" not in signaling.service(voiceserver())["spec"]["ports"][0]
