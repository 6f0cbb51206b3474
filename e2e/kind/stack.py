"""The voice stack `make kind-demo` and the kind suite apply: a StunnerGateway and a VoiceServer whose
signaling and TURN listeners are reached from the host through ports kind maps on 127.0.0.1.

Pure: it returns manifests. The gateway's `publicAddress` is 127.0.0.1 and each listener's port is
the host port mapped to its node port, so the TURN URIs signaling hands out are exactly what a client
on the host dials; the SFU pods stay unreachable from the host but through the gateway (signaling tells
clients to relay, see VOXA_ICE_TRANSPORT_POLICY).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from e2e.kind.cluster import PortMapping
from voxa.operator.models import API_VERSION

Manifest = dict[str, Any]


@dataclass(frozen=True)
class StackPorts:
    """Host port -> node port of signaling (TCP) and of the TURN listener's slots a and b (UDP)."""

    signaling: PortMapping
    turn_a: PortMapping
    turn_b: PortMapping

    def mappings(self) -> list[PortMapping]:
        return [self.signaling, self.turn_a, self.turn_b]


DEMO_PORTS = StackPorts(
    signaling=PortMapping(4080, 30080, "TCP"),
    turn_a=PortMapping(3478, 30478, "UDP"),
    turn_b=PortMapping(3479, 30479, "UDP"),
)
"""`make kind`'s cluster: signaling on http://127.0.0.1:4080, TURN on 127.0.0.1:3478 and 3479."""


def small(cpu: str, memory: str, limit: str) -> dict[str, Any]:
    """Resources that fit a two-core kind node beside its control plane."""
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}


def manifests(
    *,
    namespace: str,
    ports: StackPorts,
    jwt_secret: str,
    name: str = "demo",
    server_id: str = "demo",
    signaling_replicas: int = 2,
    sfu: dict[str, Any] | None = None,
) -> list[Manifest]:
    """Namespace, the JWT Secret, the gateway `edge` and the VoiceServer `name` (managed Redis)."""
    sfu_spec = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "buffer": 0,
        "resources": small("50m", "96Mi", "512Mi"),
        **(sfu or {}),
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-jwt", "namespace": namespace},
            "type": "Opaque",
            "stringData": {"secret": jwt_secret},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "StunnerGateway",
            "metadata": {"name": "edge", "namespace": namespace},
            "spec": {
                "publicAddress": "127.0.0.1",
                "service": {"type": "NodePort"},
                "resources": small("20m", "32Mi", "128Mi"),
                "listeners": [
                    {
                        "name": "turn-udp",
                        "protocol": "TURN-UDP",
                        "port": ports.turn_a.host_port,
                        "alternatePort": ports.turn_b.host_port,
                        "nodePort": ports.turn_a.node_port,
                        "alternateNodePort": ports.turn_b.node_port,
                    }
                ],
            },
        },
        {
            "apiVersion": API_VERSION,
            "kind": "VoiceServer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "serverId": server_id,
                "auth": {"jwtSecretRef": {"name": f"{name}-jwt", "key": "secret"}},
                "redis": {"managed": True, "resources": small("20m", "32Mi", "128Mi")},
                "signaling": {
                    "replicas": signaling_replicas,
                    "resources": small("20m", "64Mi", "256Mi"),
                    "service": {"type": "NodePort", "nodePort": ports.signaling.node_port},
                },
                "sfu": sfu_spec,
                "stunnerGatewayRef": {"name": "edge"},
            },
        },
    ]


def as_list(objects: Sequence[Manifest]) -> Manifest:
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}
