"""The operator's own installation manifests, pure: namespace, service account, least-privilege RBAC and
a two-replica Deployment with peering. Written to charts/voxa-operator/operator.yaml by `voxa crds`
(CI fails on drift) and exercised on the real control plane: the tests run the operator with exactly
this ClusterRole.
"""

from __future__ import annotations

from typing import Any

from voxa.operator.models import DEFAULT_IMAGE, GROUP

NAMESPACE = "voxa-system"
NAME = "voxa-operator"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "voxa"}

_READ = ["get", "list", "watch"]
_WRITE = ["create", "update", "patch", "delete"]


def cluster_role() -> dict[str, Any]:
    """Exactly what the operator does: watch and own its children, patch SFU pods' deletion cost,
    read Secrets it is pointed at, post events, and take part in kopf peering."""
    rules = [
        {"apiGroups": [GROUP], "resources": ["voiceservers", "stunnergateways"], "verbs": [*_READ, "patch"]},
        {
            "apiGroups": [GROUP],
            "resources": ["voiceservers/status", "stunnergateways/status"],
            "verbs": ["patch"],
        },
        {"apiGroups": [""], "resources": ["configmaps", "secrets", "services"], "verbs": [*_READ, *_WRITE]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": [*_READ, "patch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": [*_READ, *_WRITE]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": [*_READ, *_WRITE]},
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies", "ingresses"],
            "verbs": [*_READ, *_WRITE],
        },
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings", "kopfpeerings"],
            "verbs": [*_READ, "create", "patch"],
        },
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": _READ},
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": NAME, "labels": LABELS},
        "rules": rules,
    }


def manifests(image: str = DEFAULT_IMAGE, replicas: int = 2) -> list[dict[str, Any]]:
    probe = {"httpGet": {"path": "/healthz", "port": "liveness"}, "periodSeconds": 10, "failureThreshold": 3}
    container = {
        "name": "operator",
        "image": image,
        "args": ["operator"],
        "env": [
            {"name": "VOXA_OPERATOR_PEERING", "value": NAME},
            {"name": "VOXA_OPERATOR_LIVENESS_PORT", "value": "8080"},
            {"name": "VOXA_OPERATOR_METRICS_PORT", "value": "9090"},
        ],
        "ports": [
            {"name": "liveness", "containerPort": 8080, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "livenessProbe": probe,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": LABELS}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": LABELS},
        },
        cluster_role(),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME, "labels": LABELS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": LABELS},
            "spec": {
                # Two replicas in one kopf peering: one works, the other takes over when it stops.
                "replicas": replicas,
                "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {
                        "serviceAccountName": NAME,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        },
    ]
