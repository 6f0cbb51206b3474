"""The stunnerd config renderer (e2e/turn/stunnerd_config.py): the exact v1 document, normalisation, and
refusal of inputs stunnerd would reject or misread. tests/integration/turn runs real stunnerd on it."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from voxa.operator.render.stunnerd_config import (
    Cluster,
    EphemeralAuth,
    Listener,
    StaticAuth,
    dumps,
    render_stunnerd_config,
)

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def render(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": "voxa/turn-gateway",
        "realm": "turn.example.com",
        "auth": EphemeralAuth("s3cret"),
        "listeners": [Listener("udp", "TURN-UDP", "10.0.0.7", 3478)],
        "clusters": [Cluster("sfu", ["10.244.1.5"])],
        "health_check_endpoint": "http://0.0.0.0:8086",
    }
    args.update(overrides)
    return render_stunnerd_config(**args)


def test_the_whole_document() -> None:
    config = render(
        listeners=[
            Listener("udp", "TURN-UDP", "10.0.0.7", 3478, public_address="203.0.113.9", public_port=3478),
            Listener("tcp", "TURN-TCP", "10.0.0.7", 3478),
            Listener("tls", "TURN-TLS", "10.0.0.7", 443, cert_pem=CERT, key_pem=KEY),
        ],
        clusters=[Cluster("sfu-pods", ["10.244.0.0/16", "10.245.3.4"])],
        metrics_endpoint="http://0.0.0.0:8080/metrics",
    )
    tls = {"cert": base64.b64encode(CERT.encode()).decode(), "key": base64.b64encode(KEY.encode()).decode()}
    assert config == {
        "version": "v1",
        "admin": {
            "name": "voxa/turn-gateway",
            "loglevel": "all:INFO",
            "healthcheck_endpoint": "http://0.0.0.0:8086",
            "metrics_endpoint": "http://0.0.0.0:8080/metrics",
        },
        "auth": {"type": "ephemeral", "realm": "turn.example.com", "credentials": {"secret": "s3cret"}},
        "listeners": [
            {
                "name": "udp",
                "protocol": "TURN-UDP",
                "address": "10.0.0.7",
                "port": 3478,
                "public_address": "203.0.113.9",
                "public_port": 3478,
                "routes": ["sfu-pods"],
            },
            {
                "name": "tcp",
                "protocol": "TURN-TCP",
                "address": "10.0.0.7",
                "port": 3478,
                "routes": ["sfu-pods"],
            },
            {
                "name": "tls",
                "protocol": "TURN-TLS",
                "address": "10.0.0.7",
                "port": 443,
                **tls,
                "routes": ["sfu-pods"],
            },
        ],
        "clusters": [
            {
                "name": "sfu-pods",
                "type": "STATIC",
                "protocol": "UDP",
                "endpoints": ["10.244.0.0/16", "10.245.3.4/32"],
            }
        ],
    }


def test_the_address_may_be_an_environment_placeholder() -> None:
    # One ConfigMap for every gateway pod: stunnerd expands $POD_IP itself.
    for address in ("$POD_IP", "${POD_IP}"):
        [listener] = render(listeners=[Listener("udp", "TURN-UDP", address, 3478)])["listeners"]
        assert listener["address"] == address
    with pytest.raises(ValueError, match="not an IP or a \\$VARIABLE"):
        render(listeners=[Listener("udp", "TURN-UDP", "$POD IP", 3478)])


def test_static_auth() -> None:
    auth = render(auth=StaticAuth("voxa", "pa55"))["auth"]
    assert auth == {
        "type": "static",
        "realm": "turn.example.com",
        "credentials": {"username": "voxa", "password": "pa55"},
    }


def test_the_health_check_endpoint_is_always_written_and_may_be_off() -> None:
    # Left out, stunnerd would listen on http://:8086 on every interface.
    assert render(health_check_endpoint="")["admin"]["healthcheck_endpoint"] == ""
    assert "metrics_endpoint" not in render()["admin"]


def test_endpoints_are_normalised_sorted_and_deduplicated() -> None:
    cluster = Cluster("sfu", ["10.1.2.3/8", "10.0.0.0/8", "fd00::5", " 192.168.0.9 ", "10.0.0.0/8"])
    assert render(clusters=[cluster])["clusters"][0]["endpoints"] == [
        "10.0.0.0/8",
        "192.168.0.9/32",
        "fd00::5/128",
    ]


def test_a_port_range_restricts_every_endpoint() -> None:
    cluster = Cluster("sfu", ["10.244.0.0/16", "fd00::/8"], ports=(40000, 49999))
    assert render(clusters=[cluster])["clusters"][0]["endpoints"] == [
        "10.244.0.0/16:<40000-49999>",
        "fd00::/8:<40000-49999>",
    ]


def test_same_inputs_same_document_and_inputs_untouched() -> None:
    listeners = [Listener("udp", "TURN-UDP", "10.0.0.7", 3478)]
    endpoints = ["10.244.0.9", "10.244.0.8"]
    kept = (copy.deepcopy(listeners), list(endpoints))
    first = render(listeners=listeners, clusters=[Cluster("sfu", endpoints)])
    second = render(listeners=listeners, clusters=[Cluster("sfu", endpoints)])
    assert first == second and dumps(first) == dumps(second)
    assert (listeners, endpoints) == kept
    assert json.loads(dumps(first)) == first
    assert dumps(first).endswith("}\n")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "needs a name"),
        ({"realm": ""}, "realm"),
        ({"auth": EphemeralAuth("")}, "non-empty secret"),
        ({"auth": StaticAuth("voxa", "")}, "username and a password"),
        ({"listeners": []}, "at least one listener"),
        (
            {
                "listeners": [
                    Listener("a", "TURN-UDP", "10.0.0.7", 1),
                    Listener("a", "TURN-TCP", "10.0.0.7", 2),
                ]
            },
            "unique",
        ),
        ({"listeners": [Listener("a", "UDP", "10.0.0.7", 3478)]}, "protocol must be one of"),  # type: ignore[arg-type]
        ({"listeners": [Listener("a", "TURN-UDP", "turn.example.com", 3478)]}, "is not an IP"),
        ({"listeners": [Listener("a", "TURN-UDP", "$(hostname -i)", 3478)]}, "is not an IP"),
        ({"listeners": [Listener("a", "TURN-UDP", "10.0.0.7", 0)]}, "1..65535"),
        ({"listeners": [Listener("a", "TURN-UDP", "10.0.0.7", 70000)]}, "1..65535"),
        ({"listeners": [Listener("a", "TURN-UDP", "10.0.0.7", 3478, public_port=0)]}, "1..65535"),
        ({"listeners": [Listener("a", "TURN-TLS", "10.0.0.7", 443, cert_pem=CERT)]}, "needs a certificate"),
        ({"listeners": [Listener("a", "TURN-DTLS", "10.0.0.7", 443)]}, "needs a certificate"),
        ({"listeners": [Listener("a", "TURN-UDP", "10.0.0.7", 3478, key_pem=KEY)]}, "takes no certificate"),
        ({"clusters": [Cluster("", ["10.0.0.1"])]}, "unique, non-empty names"),
        ({"clusters": [Cluster("a", ["10.0.0.1"]), Cluster("a", ["10.0.0.2"])]}, "unique, non-empty names"),
        ({"clusters": [Cluster("sfu", ["sfu.default.svc"])]}, "not an IP address or CIDR"),
        ({"clusters": [Cluster("sfu", ["10.0.0.1"], ports=(50000, 40000))]}, "is empty"),
        ({"clusters": [Cluster("sfu", ["10.0.0.1"], ports=(0, 40000))]}, "1..65535"),
    ],
)
def test_inputs_stunnerd_would_refuse_or_misread(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(**overrides)


def test_dtls_listener_carries_its_certificate() -> None:
    [listener] = render(
        listeners=[Listener("dtls", "TURN-DTLS", "10.0.0.7", 3479, cert_pem=CERT, key_pem=KEY)]
    )["listeners"]
    assert base64.b64decode(listener["cert"]).decode() == CERT
    assert base64.b64decode(listener["key"]).decode() == KEY


def test_every_listener_routes_to_every_cluster_and_an_empty_cluster_relays_nowhere() -> None:
    config = render(clusters=[Cluster("ns/b", ["10.0.0.2"]), Cluster("ns/a", [])])
    assert config["listeners"][0]["routes"] == ["ns/a", "ns/b"]
    assert [(c["name"], c["endpoints"]) for c in config["clusters"]] == [
        ("ns/a", []),
        ("ns/b", ["10.0.0.2/32"]),
    ]
    assert render(clusters=[])["clusters"] == []
