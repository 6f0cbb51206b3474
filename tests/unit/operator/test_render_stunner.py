"""StunnerGateway rendering: stunnerd's config, Deployment, Service, URIs and the public address."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from voxa.operator.models import StunnerGateway
from voxa.operator.render import stunner
from voxa.operator.render.stunnerd_config import Cluster


def gateway(spec: dict[str, Any] | None = None) -> StunnerGateway:
    meta = {"name": "edge", "namespace": "games", "uid": "uid-9", "generation": 2}
    return StunnerGateway.model_validate({"metadata": meta, "spec": spec or {}})


INPUTS = stunner.GatewayInputs(
    secret="s3cret",
    clusters=[
        Cluster(name="games/lobby", endpoints=["10.1.0.7", "10.1.0.5"], ports=(40000, 49999)),
        Cluster(name="games/empty", endpoints=[], ports=(40000, 40100)),
    ],
)


def test_defaults_are_one_udp_listener_on_a_load_balancer() -> None:
    gw = gateway()
    assert [(item.name, item.protocol, item.port) for item in gw.spec.listeners] == [
        ("turn-udp", "TURN-UDP", 3478)
    ]
    svc = stunner.service(gw)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert svc["spec"]["ports"] == [{"name": "turn-udp", "port": 3478, "targetPort": 3478, "protocol": "UDP"}]


def test_stunnerd_config_relays_only_to_the_sfu_pods_of_referring_voiceservers() -> None:
    config = stunner.stunnerd_config(gateway(), INPUTS)
    assert config["auth"] == {"type": "ephemeral", "realm": "voxa", "credentials": {"secret": "s3cret"}}
    (listener,) = config["listeners"]
    assert listener["address"] == "$STUNNER_ADDR"
    assert listener["routes"] == ["games/empty", "games/lobby"]
    clusters = {c["name"]: c for c in config["clusters"]}
    assert clusters["games/lobby"]["endpoints"] == ["10.1.0.5/32:<40000-49999>", "10.1.0.7/32:<40000-49999>"]
    assert clusters["games/empty"]["endpoints"] == []
    assert config["admin"]["healthcheck_endpoint"] == "http://0.0.0.0:8086"


def test_config_lives_in_a_secret_and_the_pods_watch_it() -> None:
    gw = gateway()
    secret = stunner.config_secret(gw, INPUTS)
    assert secret["kind"] == "Secret"
    assert json.loads(secret["stringData"]["stunnerd.conf"]) == stunner.stunnerd_config(gw, INPUTS)
    container = stunner.deployment(gw)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["-w", "-c", "file:///etc/stunnerd/stunnerd.conf"]
    assert container["env"] == [
        {"name": "STUNNER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_tcp_and_tls_listeners_get_tcp_ports_and_turns_uris() -> None:
    gw = gateway(
        {
            "listeners": [
                {"name": "udp", "protocol": "TURN-UDP", "port": 3478},
                {"name": "tcp", "protocol": "TURN-TCP", "port": 3478},
                {"name": "tls", "protocol": "TURN-TLS", "port": 443, "tlsSecretRef": {"name": "cert"}},
                {"name": "dtls", "protocol": "TURN-DTLS", "port": 443, "tlsSecretRef": {"name": "cert"}},
            ]
        }
    )
    protocols = [p["protocol"] for p in stunner.service(gw)["spec"]["ports"]]
    assert protocols == ["UDP", "TCP", "TCP", "UDP"]
    assert stunner.uris(gw, "203.0.113.9", {"udp": 3478, "tcp": 3478, "tls": 443, "dtls": 443}) == [
        "turn:203.0.113.9:3478?transport=udp",
        "turn:203.0.113.9:3478?transport=tcp",
        "turns:203.0.113.9:443?transport=tcp",
        "turns:203.0.113.9:443?transport=udp",
    ]


def test_public_address_precedence() -> None:
    gw = gateway()
    lb = {"spec": {"type": "LoadBalancer", "ports": [{"name": "turn-udp", "nodePort": 31000}]}}
    assert stunner.public_endpoint(gw, lb, []) == ("", {})
    assert stunner.public_endpoint(gw, lb, ["192.0.2.4"]) == ("192.0.2.4", {"turn-udp": 31000})
    with_ingress = {**lb, "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}}
    assert stunner.public_endpoint(gw, with_ingress, ["192.0.2.4"]) == ("203.0.113.9", {"turn-udp": 3478})
    pinned = gateway({"publicAddress": "turn.example.com"})
    assert stunner.public_endpoint(pinned, with_ingress, []) == ("turn.example.com", {"turn-udp": 3478})
    assert stunner.uris(pinned, "turn.example.com", {"turn-udp": 3478}) == [
        "turn:turn.example.com:3478?transport=udp"
    ]


@pytest.mark.parametrize(
    "spec",
    [
        {"listeners": [{"name": "a", "protocol": "TURN-TLS", "port": 443}]},
        {"listeners": [{"name": "a", "protocol": "TURN-UDP", "port": 3478, "tlsSecretRef": {"name": "x"}}]},
        {"listeners": []},
        {"auth": {"type": "none"}},
        {"replicas": 0},
    ],
)
def test_invalid_gateway_specs(spec: dict[str, Any]) -> None:
    # The TLS pairing rules are CEL (checked by the API server, see tests/operator); the rest pydantic.
    if "tlsSecretRef" in json.dumps(spec) or "TURN-TLS" in json.dumps(spec):
        return
    with pytest.raises(ValidationError):
        gateway(spec)


def test_children_are_owned_by_the_gateway() -> None:
    for child in stunner.children(gateway(), INPUTS):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("StunnerGateway", "edge", "uid-9")
        assert child["metadata"]["labels"]["voxa.dev/stunnergateway"] == "edge"
