"""SFU pods: control Secret, Deployment (replicas decided by the scaler), headless Service, PDB and the
NetworkPolicy that lets only signaling reach the control port.

Each SFU pod registers itself in the media-server registry under its pod name (VOXA_SFU_ID from the
downward API), which is how the operator maps a registry entry to the pod it drains and removes.
"""

from __future__ import annotations

from typing import Any

from voxa.operator.models import VoiceServer
from voxa.operator.render.common import (
    CONFIG_HASH_ANNOTATION,
    SFU_CONTROL_PORT,
    Manifest,
    child_name,
    container_security_context,
    field_env,
    http_probe,
    ingress_policy,
    labels,
    metadata,
    pdb,
    pod_security_context,
    resources,
    secret_env,
    selector_labels,
    spread,
)
from voxa.operator.render.signaling import internal_url, sfu_secret_name

COMPONENT = "sfu"
# Past the drain deadline the SFU exits by itself; the kubelet's kill comes this much later.
TERMINATION_SLACK_S = 30


def control_secret(vs: VoiceServer, secret: str) -> Manifest:
    """The bearer secret between signaling and the SFUs; generated once, never rewritten."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(vs, sfu_secret_name(vs), COMPONENT),
        "type": "Opaque",
        "stringData": {"secret": secret},
    }


def env(vs: VoiceServer) -> list[dict[str, Any]]:
    spec = vs.spec.sfu
    plain = {
        "VOXA_SFU_HOST": "0.0.0.0",
        "VOXA_SFU_PORT": str(SFU_CONTROL_PORT),
        "VOXA_SFU_WORKERS": "1",
        "VOXA_SFU_SERVER_ID": vs.server_id,
        "VOXA_SFU_CAPACITY": str(spec.capacityPerPod),
        "VOXA_SFU_SIGNALING_URL": internal_url(vs),
        "VOXA_SFU_ADVERTISE_URL": f"http://$(POD_IP):{SFU_CONTROL_PORT}",
        "VOXA_SFU_RTC_LISTEN_IP": "$(POD_IP)",
        # One worker per pod, on one port for all its peers (the native data plane's WebRtcServer).
        "VOXA_SFU_RTC_MIN_PORT": str(spec.media_port),
        "VOXA_SFU_RTC_MAX_PORT": str(spec.media_port),
        "VOXA_SFU_DRAIN_DEADLINE_S": str(spec.drainDeadlineSeconds),
    }
    return [
        field_env("POD_IP", "status.podIP"),
        field_env("VOXA_SFU_ID", "metadata.name"),
        secret_env("VOXA_SFU_SECRET", sfu_secret_name(vs), "secret"),
        *({"name": k, "value": v} for k, v in plain.items()),
    ]


def deployment(vs: VoiceServer, replicas: int) -> Manifest:
    spec = vs.spec.sfu
    container = {
        "name": COMPONENT,
        "image": spec.image,
        "args": ["sfu"],
        "ports": [
            {"name": "control", "containerPort": SFU_CONTROL_PORT, "protocol": "TCP"},
            {"name": "media", "containerPort": spec.media_port, "protocol": "UDP"},
        ],
        "env": env(vs),
        "resources": resources(spec.resources),
        "securityContext": container_security_context(),
        "readinessProbe": http_probe("/readyz", "control", 5, 2),
        "livenessProbe": http_probe("/healthz", "control", 10, 3),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir under a read-only root
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(vs, child_name(vs, COMPONENT), COMPONENT),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(vs, COMPONENT)},
            # A rollout never removes a pod before its replacement is ready; SIGTERM starts a drain.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels(vs, COMPONENT),
                    "annotations": {CONFIG_HASH_ANNOTATION: str(spec.media_port)},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": spec.drainDeadlineSeconds + TERMINATION_SLACK_S,
                    "affinity": spread(vs, COMPONENT),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(vs: VoiceServer) -> Manifest:
    """Headless: each SFU pod is addressed on its own (the registry holds pod URLs); this gives DNS."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(vs, child_name(vs, COMPONENT), COMPONENT),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(vs, COMPONENT),
            "ports": [
                {"name": "control", "port": SFU_CONTROL_PORT, "targetPort": "control", "protocol": "TCP"}
            ],
        },
    }


def network_policy(vs: VoiceServer) -> Manifest:
    """Control port: signaling pods only. The media port: anyone (clients, or the TURN gateway)."""
    port = vs.spec.sfu.media_port
    return ingress_policy(
        vs,
        COMPONENT,
        [
            {
                "from": [{"podSelector": {"matchLabels": selector_labels(vs, "signaling")}}],
                "ports": [{"protocol": "TCP", "port": SFU_CONTROL_PORT}],
            },
            {"ports": [{"protocol": "UDP", "port": port}]},
        ],
    )


def disruption_budget(vs: VoiceServer) -> Manifest:
    return pdb(vs, COMPONENT)
