"""The managed Redis (spec.redis.managed): a one-pod StatefulSet, its Service and a NetworkPolicy.

It holds presence, call state and the SFU registry, all of which rebuild themselves after a restart
(signaling replicas resync presence, SFUs re-register within a heartbeat), so it keeps no disk: no
snapshots, no append-only file, an emptyDir for the working directory.
"""

from __future__ import annotations

from voxa.operator.models import VoiceServer
from voxa.operator.render.common import (
    REDIS_PORT,
    Manifest,
    child_name,
    container_security_context,
    ingress_policy,
    labels,
    metadata,
    pod_security_context,
    resources,
    selector_labels,
)

COMPONENT = "redis"
OPERATOR_SELECTOR = {"app.kubernetes.io/name": "voxa-operator"}


def stateful_set(vs: VoiceServer) -> Manifest:
    spec = vs.spec.redis
    probe = {"tcpSocket": {"port": "redis"}, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(vs, child_name(vs, COMPONENT), COMPONENT),
        "spec": {
            "replicas": 1,
            "serviceName": child_name(vs, COMPONENT),
            "selector": {"matchLabels": selector_labels(vs, COMPONENT)},
            "template": {
                "metadata": {"labels": labels(vs, COMPONENT)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [
                        {
                            "name": COMPONENT,
                            "image": spec.image,
                            "args": ["--save", "", "--appendonly", "no", "--protected-mode", "no"],
                            "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
                            "resources": resources(spec.resources),
                            "securityContext": container_security_context(),
                            "readinessProbe": probe,
                            "livenessProbe": {**probe, "periodSeconds": 10},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }


def service(vs: VoiceServer) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(vs, child_name(vs, COMPONENT), COMPONENT),
        "spec": {
            "selector": selector_labels(vs, COMPONENT),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}],
        },
    }


def network_policy(vs: VoiceServer) -> Manifest:
    """Signaling (state) and the operator (the registry it scales on) reach Redis; nobody else."""
    return ingress_policy(
        vs,
        COMPONENT,
        [
            {
                "from": [
                    {"podSelector": {"matchLabels": selector_labels(vs, "signaling")}},
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": OPERATOR_SELECTOR}},
                ],
                "ports": [{"protocol": "TCP", "port": REDIS_PORT}],
            }
        ],
    )
