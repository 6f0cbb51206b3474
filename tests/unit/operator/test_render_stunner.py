"""StunnerGateway rendering: the two stunnerd slots' configs, Deployment, Service, NetworkPolicy, URIs
and the public address."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from voxa.operator.models import StunnerGateway
from voxa.operator.render import stunner
from voxa.operator.render.stunnerd_config import Cluster, EphemeralAuth
from voxa.operator.slots import Slot, Slots


def gateway(spec: dict[str, Any] | None = None) -> StunnerGateway:
    meta = {"name": "edge", "namespace": "games", "uid": "uid-9", "generation": 2}
    return StunnerGateway.model_validate({"metadata": meta, "spec": spec or {}})


CLUSTERS = [
    Cluster(name="games/lobby", endpoints=["10.1.0.7", "10.1.0.5"], ports=(40000, 49999)),
    Cluster(name="games/empty", endpoints=[], ports=(40000, 40100)),
]
INPUTS = stunner.GatewayInputs(
    slots=Slots(active="a", a=EphemeralAuth("s3cret"), b=EphemeralAuth("s3cret")), clusters=CLUSTERS
)
# After a rotation: new calls on slot b with the new secret, slot a keeps the previous one.
ROTATED = stunner.GatewayInputs(
    slots=Slots(
        active="b",
        a=EphemeralAuth("old"),
        b=EphemeralAuth("new"),
        activated_at=1_700_000_000,
        standby_since=1_600_000_000,
        standby_until=1_800_000_000,
    ),
    clusters=CLUSTERS,
)


def test_defaults_are_one_udp_listener_on_two_slots_behind_a_load_balancer() -> None:
    gw = gateway()
    assert [(item.name, item.protocol, item.port) for item in gw.spec.listeners] == [
        ("turn-udp", "TURN-UDP", 3478)
    ]
    svc = stunner.service(gw)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert svc["spec"]["ports"] == [
        {"name": "a-turn-udp", "port": 3478, "targetPort": 3478, "protocol": "UDP"},
        {"name": "b-turn-udp", "port": 3479, "targetPort": 3479, "protocol": "UDP"},
    ]


def test_each_slot_relays_only_to_the_sfu_pods_of_referring_voiceservers() -> None:
    cases: list[tuple[Slot, int, int]] = [("a", 3478, 8087), ("b", 3479, 8088)]
    for slot, port, health in cases:
        config = stunner.stunnerd_config(gateway(), INPUTS, slot)
        assert config["auth"] == {"type": "ephemeral", "realm": "voxa", "credentials": {"secret": "s3cret"}}
        (listener,) = config["listeners"]
        assert (listener["address"], listener["port"]) == ("$STUNNER_ADDR", port)
        assert listener["routes"] == ["games/empty", "games/lobby"]
        clusters = {c["name"]: c for c in config["clusters"]}
        assert clusters["games/lobby"]["endpoints"] == [
            "10.1.0.5/32:<40000-49999>",
            "10.1.0.7/32:<40000-49999>",
        ]
        assert clusters["games/empty"]["endpoints"] == []
        assert config["admin"]["healthcheck_endpoint"] == f"http://0.0.0.0:{health}"


def test_after_a_rotation_each_slot_checks_its_own_secret() -> None:
    gw = gateway()
    assert stunner.stunnerd_config(gw, ROTATED, "a")["auth"]["credentials"] == {"secret": "old"}
    assert stunner.stunnerd_config(gw, ROTATED, "b")["auth"]["credentials"] == {"secret": "new"}


def test_config_secret_holds_both_slots_and_their_state_and_reads_back() -> None:
    gw = gateway()
    secret = stunner.config_secret(gw, ROTATED)
    assert secret["kind"] == "Secret"
    data = secret["stringData"]
    assert sorted(data) == ["a.json", "b.json", "slots.json"]
    assert json.loads(data["a.json"]) == stunner.stunnerd_config(gw, ROTATED, "a")
    assert json.loads(data["slots.json"]) == {
        "active": "b",
        "activatedAt": 1_700_000_000,
        "standbySince": 1_600_000_000,
        "standbyUntil": 1_800_000_000,
    }
    assert stunner.slots_from_config(data) == ROTATED.slots
    assert stunner.slots_from_config({}) is None
    assert stunner.slots_from_config({**data, "slots.json": "{"}) is None


def test_the_pod_runs_one_stunnerd_per_slot_each_watching_its_file() -> None:
    gw = gateway()
    spec = stunner.deployment(gw)["spec"]["template"]["spec"]
    a, b = spec["containers"]
    assert (a["name"], b["name"]) == ("stunnerd-a", "stunnerd-b")
    assert a["args"] == ["-w", "-c", "file:///etc/stunnerd/a.json"]
    assert b["args"] == ["-w", "-c", "file:///etc/stunnerd/b.json"]
    assert [p["containerPort"] for p in a["ports"]] == [3478]
    assert [p["containerPort"] for p in b["ports"]] == [3479]
    assert (a["readinessProbe"]["httpGet"]["port"], b["readinessProbe"]["httpGet"]["port"]) == (8087, 8088)
    for container in (a, b):
        assert container["env"] == [
            {"name": "STUNNER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        ]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["volumes"] == [{"name": "config", "secret": {"secretName": "edge-stunnerd-config"}}]


def test_only_the_turn_ports_are_open_not_the_health_ports() -> None:
    policy = stunner.network_policy(gateway())
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 3478, "protocol": "UDP"}, {"port": 3479, "protocol": "UDP"}]


def test_tcp_and_tls_listeners_get_tcp_ports_and_turns_uris() -> None:
    gw = gateway(
        {
            "listeners": [
                {"name": "udp", "protocol": "TURN-UDP", "port": 3478},
                {"name": "tcp", "protocol": "TURN-TCP", "port": 3478},
                {
                    "name": "tls",
                    "protocol": "TURN-TLS",
                    "port": 443,
                    "alternatePort": 8443,
                    "tlsSecretRef": {"name": "c"},
                },
                {"name": "dtls", "protocol": "TURN-DTLS", "port": 443, "tlsSecretRef": {"name": "c"}},
            ]
        }
    )
    ports = [(p["name"], p["port"], p["protocol"]) for p in stunner.service(gw)["spec"]["ports"]]
    assert ports == [
        ("a-udp", 3478, "UDP"),
        ("a-tcp", 3478, "TCP"),
        ("a-tls", 443, "TCP"),
        ("a-dtls", 443, "UDP"),
        ("b-udp", 3479, "UDP"),
        ("b-tcp", 3479, "TCP"),
        ("b-tls", 8443, "TCP"),
        ("b-dtls", 444, "UDP"),
    ]
    address, by_name = stunner.public_endpoint(gw, None, [])
    assert address == ""
    by_name = {name: port for name, port, _ in ports}
    assert stunner.uris(gw, "203.0.113.9", by_name, "a") == [
        "turn:203.0.113.9:3478?transport=udp",
        "turn:203.0.113.9:3478?transport=tcp",
        "turns:203.0.113.9:443?transport=tcp",
        "turns:203.0.113.9:443?transport=udp",
    ]
    assert stunner.uris(gw, "203.0.113.9", by_name, "b") == [
        "turn:203.0.113.9:3479?transport=udp",
        "turn:203.0.113.9:3479?transport=tcp",
        "turns:203.0.113.9:8443?transport=tcp",
        "turns:203.0.113.9:444?transport=udp",
    ]


def test_public_address_precedence() -> None:
    gw = gateway()
    ports = [{"name": "a-turn-udp", "nodePort": 31000}, {"name": "b-turn-udp", "nodePort": 31001}]
    lb = {"spec": {"type": "LoadBalancer", "ports": ports}}
    assert stunner.public_endpoint(gw, lb, []) == ("", {})
    assert stunner.public_endpoint(gw, lb, ["192.0.2.4"]) == (
        "192.0.2.4",
        {"a-turn-udp": 31000, "b-turn-udp": 31001},
    )
    with_ingress = {**lb, "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}}
    plain = {"a-turn-udp": 3478, "b-turn-udp": 3479}
    assert stunner.public_endpoint(gw, with_ingress, ["192.0.2.4"]) == ("203.0.113.9", plain)
    pinned = gateway({"publicAddress": "turn.example.com"})
    assert stunner.public_endpoint(pinned, with_ingress, []) == ("turn.example.com", plain)
    assert stunner.uris(pinned, "turn.example.com", plain, "b") == [
        "turn:turn.example.com:3479?transport=udp"
    ]


@pytest.mark.parametrize(
    "spec",
    [
        {"listeners": [{"name": "a", "protocol": "TURN-TLS", "port": 443}]},
        {"listeners": [{"name": "a", "protocol": "TURN-UDP", "port": 3478, "tlsSecretRef": {"name": "x"}}]},
        {"listeners": []},
        {"listeners": [{"name": "x" * 62}]},
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


@pytest.mark.parametrize(
    ("listeners", "message"),
    [
        ([{"name": "u", "port": 3478}, {"name": "v", "port": 3479}], "both use UDP port 3479"),
        ([{"name": "t", "protocol": "TURN-TCP", "port": 8085}], "TCP port 8086"),
        ([{"name": "u", "port": 65535}], "needs an explicit alternatePort"),
    ],
)
def test_port_clashes_the_api_server_would_refuse_are_refused_here_too(
    listeners: list[dict[str, Any]], message: str
) -> None:
    # Objects stored before a CEL rule existed still reach the operator.
    with pytest.raises(ValueError, match=message):
        stunner.children(gateway({"listeners": listeners}), INPUTS)


def test_children_are_owned_by_the_gateway() -> None:
    children = stunner.children(gateway(), INPUTS)
    assert [c["kind"] for c in children] == ["Secret", "Service", "NetworkPolicy", "Deployment"]
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("StunnerGateway", "edge", "uid-9")
        assert child["metadata"]["labels"]["voxa.dev/stunnergateway"] == "edge"


def test_fixed_node_ports_per_slot() -> None:
    gw = gateway(
        {
            "service": {"type": "NodePort"},
            "listeners": [{"name": "u", "port": 3478, "nodePort": 30478, "alternateNodePort": 30479}],
        }
    )
    assert [(p["name"], p.get("nodePort")) for p in stunner.service(gw)["spec"]["ports"]] == [
        ("a-u", 30478),
        ("b-u", 30479),
    ]
