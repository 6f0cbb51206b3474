"""A StunnerGateway's children, pure: stunnerd's config, its Deployment and Service, the auth Secret.

The config is stunnerd's own format (`stunnerd_config`). It holds the TURN secret in clear, so it is a
Secret rather than a ConfigMap; stunnerd watches the mounted file (`-w`) and applies changes (new SFU
endpoints, a new secret) without restarting, so live allocations survive them. Listeners bind the pod
IP (`$STUNNER_ADDR`, which stunnerd expands from its environment) and relay only to the clusters: one
per VoiceServer that references the gateway, holding that server's SFU pod IPs and media port range.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from voxa.operator.models import API_VERSION, StunnerGateway
from voxa.operator.render.common import (
    COMPONENT_LABEL,
    MANAGED_BY,
    Manifest,
    container_security_context,
    pod_security_context,
    resources,
)
from voxa.operator.render.stunnerd_config import (
    POD_ADDRESS,
    Cluster,
    EphemeralAuth,
    Listener,
    StaticAuth,
    render_stunnerd_config,
)

COMPONENT = "stunnerd"
GATEWAY_LABEL = "voxa.dev/stunnergateway"
CONFIG_DIR = "/etc/stunnerd"
CONFIG_FILE = "stunnerd.conf"
HEALTH_PORT = 8086
UDP_PROTOCOLS = ("TURN-UDP", "TURN-DTLS")


def auth_secret_name(gw: StunnerGateway) -> str:
    ref = gw.spec.auth.secretRef
    return ref.name if ref is not None else f"{gw.name}-auth"


def config_secret_name(gw: StunnerGateway) -> str:
    return f"{gw.name}-stunnerd-config"


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

    secret: str = ""
    """The ephemeral shared secret (ephemeral auth)."""
    username: str = ""
    password: str = ""
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


def stunnerd_config(gw: StunnerGateway, inputs: GatewayInputs) -> dict[str, Any]:
    spec = gw.spec
    auth: EphemeralAuth | StaticAuth
    if spec.auth.type == "ephemeral":
        auth = EphemeralAuth(secret=inputs.secret)
    else:
        auth = StaticAuth(username=inputs.username, password=inputs.password)
    listeners = []
    for item in spec.listeners:
        cert, key = inputs.tls.get(item.name, (None, None))
        listeners.append(
            Listener(
                name=item.name,
                protocol=item.protocol,
                address=POD_ADDRESS,
                port=item.port,
                public_address=spec.publicAddress,
                cert_pem=cert,
                key_pem=key,
            )
        )
    return render_stunnerd_config(
        name=f"{gw.namespace}/{gw.name}",
        realm=spec.realm,
        auth=auth,
        listeners=listeners,
        clusters=inputs.clusters,
        health_check_endpoint=f"http://0.0.0.0:{HEALTH_PORT}",
        log_level="all:WARN",
    )


def config_secret(gw: StunnerGateway, inputs: GatewayInputs) -> Manifest:
    text = json.dumps(stunnerd_config(gw, inputs), indent=2, sort_keys=True) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(gw, config_secret_name(gw)),
        "type": "Opaque",
        "stringData": {CONFIG_FILE: text},
    }


def _transport(protocol: str) -> str:
    return "UDP" if protocol in UDP_PROTOCOLS else "TCP"


def deployment(gw: StunnerGateway) -> Manifest:
    spec = gw.spec
    probe = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}
    container = {
        "name": COMPONENT,
        "image": spec.image,
        "command": ["stunnerd"],
        "args": ["-w", "-c", f"file://{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": [{"name": "STUNNER_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [
            {"name": item.name, "containerPort": item.port, "protocol": _transport(item.protocol)}
            for item in spec.listeners
        ],
        "resources": resources(spec.resources),
        "securityContext": container_security_context(),
        "readinessProbe": {"httpGet": {"path": "/ready", "port": HEALTH_PORT}, **probe},
        "livenessProbe": {"httpGet": {"path": "/live", "port": HEALTH_PORT}, **probe},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
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
                    "containers": [container],
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
                "name": item.name,
                "port": item.port,
                "targetPort": item.port,
                "protocol": _transport(item.protocol),
            }
            for item in gw.spec.listeners
        ],
    }
    if svc.type != "ClusterIP":
        body["externalTrafficPolicy"] = "Local"  # keep client addresses (and affinity) intact
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def children(gw: StunnerGateway, inputs: GatewayInputs) -> list[Manifest]:
    return [config_secret(gw, inputs), service(gw), deployment(gw)]


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
    """(address, listener → port) clients use: spec.publicAddress, else the load balancer's ingress,
    else a node's address with the NodePorts; ("", {}) while none is known."""
    ports = {item.name: item.port for item in gw.spec.listeners}
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


def uris(gw: StunnerGateway, address: str, ports: dict[str, int]) -> list[str]:
    """One TURN URI per listener, as clients put them in iceServers."""
    if not address:
        return []
    host = f"[{address}]" if ":" in address else address
    out = []
    for item in gw.spec.listeners:
        scheme, transport = _scheme(item.protocol)
        out.append(f"{scheme}:{host}:{ports[item.name]}?transport={transport}")
    return out
