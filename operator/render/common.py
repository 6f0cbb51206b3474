"""Pieces every rendered manifest shares: names, labels, owner references, hardened pod settings.

Everything here is pure: a VoiceServer in, plain dicts out. The kopf handlers apply what these functions
return; tests compare them without any API server.
"""

from __future__ import annotations

from typing import Any

from voxa.operator.models import API_VERSION, Resources, VoiceServer

Manifest = dict[str, Any]

MANAGED_BY = "voxa-operator"
OWNER_LABEL = "voxa.dev/voiceserver"
COMPONENT_LABEL = "app.kubernetes.io/component"
CONFIG_HASH_ANNOTATION = "voxa.dev/config-hash"

SIGNALING_PORT = 4000
SIGNALING_SERVICE_PORT = 80
SFU_CONTROL_PORT = 4100
REDIS_PORT = 6379
RUN_AS_USER = 10001


def child_name(vs: VoiceServer, component: str) -> str:
    return f"{vs.name}-{component}"


def selector_labels(vs: VoiceServer, component: str) -> dict[str, str]:
    """The immutable labels a workload selects its pods by."""
    return {
        "app.kubernetes.io/name": "voxa",
        "app.kubernetes.io/instance": vs.name,
        COMPONENT_LABEL: component,
    }


def labels(vs: VoiceServer, component: str) -> dict[str, str]:
    return {
        **selector_labels(vs, component),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        OWNER_LABEL: vs.name,
    }


def selector_string(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def owner_reference(vs: VoiceServer) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "VoiceServer",
        "name": vs.name,
        "uid": vs.metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(vs: VoiceServer, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": vs.namespace,
        "labels": labels(vs, component),
        "ownerReferences": [owner_reference(vs)],
    }
    meta.update(extra)
    return meta


def resources(spec: Resources) -> dict[str, Any]:
    return spec.model_dump(exclude_none=True)


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def http_probe(path: str, port: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def spread(vs: VoiceServer, component: str) -> dict[str, Any]:
    """Prefer one pod per node, so a node failure takes as few calls as possible."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector_labels(vs, component)},
                    },
                }
            ]
        }
    }


def node_port(service_type: str, port: int | None) -> dict[str, int]:
    """A Service port's `nodePort` entry: only where one is asked for and the type has node ports."""
    return {"nodePort": port} if port is not None and service_type != "ClusterIP" else {}


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def ingress_policy(vs: VoiceServer, component: str, rules: list[dict[str, Any]]) -> Manifest:
    """A NetworkPolicy admitting to the component's pods only what `rules` allow."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(vs, child_name(vs, component), component),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(vs, component)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def pdb(vs: VoiceServer, component: str) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(vs, child_name(vs, component), component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(vs, component)}},
    }
