"""A StunnerGateway's children, pure: stunnerd's config, its Deployment, Service and NetworkPolicy,
the auth Secret.

Each pod runs two stunnerd processes, slots "a" and "b" (`voxa.operator.slots`): slot a listens on
each listener's `port`, slot b on its `alternatePort`, and a secret rotation moves new calls from one
to the other while calls in progress keep theirs. The config is stunnerd's own format
(`stunnerd_config`), one file per slot plus the slots' state, in one Secret (it holds the TURN secret
in clear); stunnerd watches its mounted file (`-w`) and applies changes (new SFU endpoints, a new
secret) without restarting, so live allocations survive them. Listeners bind the pod IP
(`$STUNNER_ADDR`, which stunnerd expands from its environment) and relay only to the clusters: one per
VoiceServer that references the gateway, holding that server's SFU pod IPs and their media port.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from voxa.operator.models import API_VERSION, GatewayListener, StunnerGateway
from voxa.operator.render.common import (
    COMPONENT_LABEL,
    MANAGED_BY,
    Manifest,
    container_security_context,
    node_port,
    pod_security_context,
    resources,
)
from voxa.operator.render.stunnerd_config import (
    POD_ADDRESS,
    Cluster,
    Listener,
    auth_of,
    dumps,
    render_stunnerd_config,
)
from voxa.operator.slots import SLOTS, Slot, Slots

COMPONENT = "stunnerd"
GATEWAY_LABEL = "voxa.dev/stunnergateway"
CONFIG_REVISION_ANNOTATION = "voxa.dev/stunnerd-config"
"""Set on each gateway pod (not its template) to the config Secret's revision after every change of
it: a pod update makes the kubelet sync the pod, and so its mounted Secret, at once, where it would
otherwise refresh it on its periodic sync, about a minute later (and new SFU pods could not be
relayed to until then)."""
CONFIG_DIR = "/etc/stunnerd"
STATE_FILE = "slots.json"
# Not stunnerd's default 8086: each process first serves its health check there while it boots, and
# the two would race for it.
HEALTH_PORTS: dict[Slot, int] = {"a": 8087, "b": 8088}
UDP_PROTOCOLS = ("TURN-UDP", "TURN-DTLS")


def config_file(slot: Slot) -> str:
    return f"{slot}.json"


def alternate_port(listener: GatewayListener) -> int:
    return listener.alternatePort if listener.alternatePort is not None else listener.port + 1


def slot_port(listener: GatewayListener, slot: Slot) -> int:
    return listener.port if slot == "a" else alternate_port(listener)


def port_name(listener: str, slot: Slot) -> str:
    """The Service port of a listener's slot (listener names are at most 61 characters)."""
    return f"{slot}-{listener}"


def auth_secret_name(gw: StunnerGateway) -> str:
    ref = gw.spec.auth.secretRef
    return ref.name if ref is not None else f"{gw.name}-auth"


def config_secret_name(gw: StunnerGateway | str) -> str:
    """The config Secret of a gateway (or of the gateway with that name)."""
    return f"{gw if isinstance(gw, str) else gw.name}-stunnerd-config"


def selector(gw: StunnerGateway) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "stunnerd",
        "app.kubernetes.io/instance": gw.name,
        COMPONENT_LABEL: COMPONENT,
    }


def labels(gw: StunnerGateway) -> dict[str, str]:
    return {**selector(gw), "app.kubernetes.io/managed-by": MANAGED_BY, GATEWAY_LABEL: gw.name}


def metadata(gw: StunnerGateway, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": gw.namespace,
        "labels": labels(gw),
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": "StunnerGateway",
                "name": gw.name,
                "uid": gw.metadata["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


@dataclass(frozen=True)
class GatewayInputs:
    """What the gateway's config needs beyond its spec, read from the cluster by the operator."""

    slots: Slots
    """The auth of each slot, and which one is active."""
    tls: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Listener name → (certificate PEM, key PEM)."""
    clusters: Sequence[Cluster] = ()


def generated_auth_secret(gw: StunnerGateway, secret: str) -> Manifest:
    """The ephemeral secret the operator generates when the spec names none; created once."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(gw, auth_secret_name(gw)),
        "type": "Opaque",
        "stringData": {"secret": secret},
    }


def stunnerd_config(gw: StunnerGateway, inputs: GatewayInputs, slot: Slot) -> dict[str, Any]:
    """One slot's stunnerd config: the spec's listeners on the slot's ports, the slot's auth."""
    spec = gw.spec
    listeners = []
    for item in spec.listeners:
        cert, key = inputs.tls.get(item.name, (None, None))
        listeners.append(
            Listener(
                name=item.name,
                protocol=item.protocol,
                address=POD_ADDRESS,
                port=slot_port(item, slot),
                public_address=spec.publicAddress,
                cert_pem=cert,
                key_pem=key,
            )
        )
    return render_stunnerd_config(
        name=f"{gw.namespace}/{gw.name}/{slot}",
        realm=spec.realm,
        auth=inputs.slots.auth(slot),
        listeners=listeners,
        clusters=inputs.clusters,
        health_check_endpoint=f"http://0.0.0.0:{HEALTH_PORTS[slot]}",
        log_level="all:WARN",
    )


def config_secret(gw: StunnerGateway, inputs: GatewayInputs) -> Manifest:
    """Both slots' configs and the slots' state (which is active and since when, since when the standby
    holds its secret and until when it keeps the previous one): the operator reads it back after a
    restart."""
    slots = inputs.slots
    state = {
        "active": slots.active,
        "activatedAt": slots.activated_at,
        "standbySince": slots.standby_since,
        "standbyUntil": slots.standby_until,
    }
    data = {config_file(slot): dumps(stunnerd_config(gw, inputs, slot)) for slot in SLOTS}
    data[STATE_FILE] = json.dumps(state, sort_keys=True) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(gw, config_secret_name(gw)),
        "type": "Opaque",
        "stringData": data,
    }


def slots_from_config(data: dict[str, str]) -> Slots | None:
    """The slots a config Secret's decoded data records, or None if it holds no complete state."""
    try:
        state = json.loads(data[STATE_FILE])
        a = auth_of(json.loads(data[config_file("a")]))
        b = auth_of(json.loads(data[config_file("b")]))
        active = state["active"]
        times = {key: int(state.get(key) or 0) for key in ("activatedAt", "standbySince", "standbyUntil")}
    except (KeyError, ValueError, TypeError):
        return None
    if a is None or b is None or active not in SLOTS:
        return None
    return Slots(
        active=active,
        a=a,
        b=b,
        activated_at=times["activatedAt"],
        standby_since=times["standbySince"],
        standby_until=times["standbyUntil"],
    )


def _transport(protocol: str) -> str:
    return "UDP" if protocol in UDP_PROTOCOLS else "TCP"


def _container(gw: StunnerGateway, slot: Slot) -> dict[str, Any]:
    spec = gw.spec
    probe = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}
    return {
        "name": f"{COMPONENT}-{slot}",
        "image": spec.image,
        "command": ["stunnerd"],
        "args": ["-w", "-c", f"file://{CONFIG_DIR}/{config_file(slot)}"],
        "env": [{"name": "STUNNER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        # Unnamed: container port names are limited to 15 characters, listener names are not.
        "ports": [
            {"containerPort": slot_port(item, slot), "protocol": _transport(item.protocol)}
            for item in spec.listeners
        ],
        "resources": resources(spec.resources),
        "securityContext": container_security_context(),
        "readinessProbe": {"httpGet": {"path": "/ready", "port": HEALTH_PORTS[slot]}, **probe},
        "livenessProbe": {"httpGet": {"path": "/live", "port": HEALTH_PORTS[slot]}, **probe},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }


def deployment(gw: StunnerGateway) -> Manifest:
    spec = gw.spec
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(gw, gw.name),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(gw)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels(gw)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    # Allocations live in the pod: give clients time to move on a rollout.
                    "terminationGracePeriodSeconds": 60,
                    "containers": [_container(gw, slot) for slot in SLOTS],
                    "volumes": [{"name": "config", "secret": {"secretName": config_secret_name(gw)}}],
                },
            },
        },
    }


def service(gw: StunnerGateway) -> Manifest:
    svc = gw.spec.service
    meta = metadata(gw, gw.name)
    if svc.annotations:
        meta["annotations"] = dict(svc.annotations)
    body: dict[str, Any] = {
        "type": svc.type,
        "selector": selector(gw),
        # A TURN client's allocation lives on one pod: keep each client on the pod it started on.
        "sessionAffinity": "ClientIP",
        "ports": [
            {
                "name": port_name(item.name, slot),
                "port": slot_port(item, slot),
                "targetPort": slot_port(item, slot),
                "protocol": _transport(item.protocol),
                **node_port(svc.type, item.nodePort if slot == "a" else item.alternateNodePort),
            }
            for slot in SLOTS
            for item in gw.spec.listeners
        ],
    }
    if svc.type != "ClusterIP":
        body["externalTrafficPolicy"] = "Local"  # keep client addresses (and affinity) intact
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def network_policy(gw: StunnerGateway) -> Manifest:
    """Only the TURN ports are open: the health ports also serve /status, which shows the secret."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(gw, gw.name),
        "spec": {
            "podSelector": {"matchLabels": selector(gw)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [
                        {"port": slot_port(item, slot), "protocol": _transport(item.protocol)}
                        for slot in SLOTS
                        for item in gw.spec.listeners
                    ]
                }
            ],
        },
    }


def check_ports(gw: StunnerGateway) -> None:
    """What the CRD's CEL rules refuse, again, for objects stored before a rule existed: both slots'
    ports share the pod's network, and TCP 8086-8088 belong to stunnerd's health checks."""
    seen: dict[tuple[str, int], str] = {}
    for slot in SLOTS:
        for item in gw.spec.listeners:
            key = (_transport(item.protocol), slot_port(item, slot))
            if key in seen:
                raise ValueError(f"listeners {seen[key]} and {item.name} both use {key[0]} port {key[1]}")
            if key[0] == "TCP" and 8086 <= key[1] <= 8088:
                raise ValueError(
                    f"listener {item.name}: TCP port {key[1]} is taken by stunnerd's health check"
                )
            if slot_port(item, slot) > 65535:
                raise ValueError(f"listener {item.name}: port 65535 needs an explicit alternatePort")
            seen[key] = item.name


def children(gw: StunnerGateway, inputs: GatewayInputs) -> list[Manifest]:
    check_ports(gw)
    return [config_secret(gw, inputs), service(gw), network_policy(gw), deployment(gw)]


def _scheme(protocol: str) -> tuple[str, str]:
    return {
        "TURN-UDP": ("turn", "udp"),
        "TURN-TCP": ("turn", "tcp"),
        "TURN-TLS": ("turns", "tcp"),
        "TURN-DTLS": ("turns", "udp"),
    }[protocol]


def public_endpoint(
    gw: StunnerGateway, service_body: dict[str, Any] | None, node_addresses: Sequence[str]
) -> tuple[str, dict[str, int]]:
    """(address, Service port name → port) clients use: spec.publicAddress, else the load balancer's
    ingress, else a node's address with the NodePorts; ("", {}) while none is known."""
    ports = {
        port_name(item.name, slot): slot_port(item, slot) for slot in SLOTS for item in gw.spec.listeners
    }
    spec = (service_body or {}).get("spec") or {}
    status = (service_body or {}).get("status") or {}
    if gw.spec.publicAddress:
        return gw.spec.publicAddress, ports
    for entry in (status.get("loadBalancer") or {}).get("ingress") or []:
        address = entry.get("ip") or entry.get("hostname")
        if address:
            return str(address), ports
    if spec.get("type") in ("NodePort", "LoadBalancer") and node_addresses:
        node_ports = {p.get("name"): p.get("nodePort") for p in spec.get("ports") or []}
        if all(node_ports.get(name) for name in ports):
            return node_addresses[0], {name: int(node_ports[name]) for name in ports}
    return "", {}


def uris(gw: StunnerGateway, address: str, ports: dict[str, int], slot: Slot) -> list[str]:
    """One TURN URI per listener of `slot`, as clients put them in iceServers."""
    if not address:
        return []
    host = f"[{address}]" if ":" in address else address
    out = []
    for item in gw.spec.listeners:
        scheme, transport = _scheme(item.protocol)
        out.append(f"{scheme}:{host}:{ports[port_name(item.name, slot)]}?transport={transport}")
    return out
