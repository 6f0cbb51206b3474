"""Signaling: ConfigMap of settings, Deployment, Service, optional Ingress and a PodDisruptionBudget."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from voxa.operator.models import VoiceServer
from voxa.operator.render import calls
from voxa.operator.render.calls import PushSecrets
from voxa.operator.render.common import (
    CONFIG_HASH_ANNOTATION,
    SIGNALING_PORT,
    SIGNALING_SERVICE_PORT,
    Manifest,
    child_name,
    container_security_context,
    http_probe,
    labels,
    metadata,
    node_port,
    pdb,
    pod_security_context,
    resources,
    secret_env,
    selector_labels,
    spread,
)

COMPONENT = "signaling"
JWT_MOUNT = "/etc/voxa/jwt"
TURN_REVISION_ANNOTATION = "voxa.dev/turn-revision"


@dataclass(frozen=True)
class TurnInputs:
    """TURN settings from the referenced StunnerGateway: the URIs of its active slot and that slot's
    secret (a rotation changes both; calls older than it stay on the other slot)."""

    uris: tuple[str, ...]
    ttl_s: int
    secret: str
    revision: str = ""
    """Changes with the secret (the gateway's slot and when it became active), revealing nothing of it."""


def turn_secret_name(vs: VoiceServer) -> str:
    return child_name(vs, "turn")


def turn_secret(vs: VoiceServer, turn: TurnInputs) -> Manifest:
    """The gateway's secret, copied next to signaling (Secrets cannot be referenced across namespaces)."""
    meta = metadata(vs, turn_secret_name(vs), COMPONENT)
    meta["annotations"] = {TURN_REVISION_ANNOTATION: turn.revision}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": {"secret": turn.secret},
    }


def sfu_secret_name(vs: VoiceServer) -> str:
    return child_name(vs, "sfu-control")


def redis_url(vs: VoiceServer) -> str | None:
    """The managed Redis's in-cluster URL; None when the URL comes from the user's Secret."""
    if vs.spec.redis.managed:
        return f"redis://{child_name(vs, 'redis')}.{vs.namespace}.svc:6379/0"
    return None


def service_host(vs: VoiceServer) -> str:
    return f"{child_name(vs, COMPONENT)}.{vs.namespace}.svc"


def internal_url(vs: VoiceServer) -> str:
    """What SFU pods use to reach signaling's registry API."""
    return f"http://{service_host(vs)}:{SIGNALING_SERVICE_PORT}"


def config_data(vs: VoiceServer, turn: TurnInputs | None = None) -> dict[str, str]:
    """Signaling's non-secret settings (VOXA_* variables, see the README's configuration reference)."""
    auth = vs.spec.auth
    data = {
        "VOXA_HOST": "0.0.0.0",
        "VOXA_PORT": str(SIGNALING_PORT),
        "VOXA_MAX_CHANNEL_MEMBERS": str(vs.spec.limits.maxParticipantsPerChannel),
    }
    if auth.issuer:
        data["VOXA_JWT_ISSUER"] = auth.issuer
    if auth.audience:
        data["VOXA_JWT_AUDIENCE"] = auth.audience
    if auth.publicKeyRef:
        data["VOXA_JWT_PUBLIC_KEY_FILE"] = f"{JWT_MOUNT}/{auth.publicKeyRef.key}"
    if auth.jwksRef:
        data["VOXA_JWT_JWKS_FILE"] = f"{JWT_MOUNT}/{auth.jwksRef.key}"
    url = redis_url(vs)
    if url:
        data["VOXA_REDIS_URL"] = url
    redis = vs.spec.redis
    if redis.cluster:
        data["VOXA_REDIS_CLUSTER"] = "true"
    if redis.sentinel is not None:
        data["VOXA_REDIS_SENTINELS"] = ",".join(redis.sentinel.hosts)
        data["VOXA_REDIS_SENTINEL_MASTER"] = redis.sentinel.masterName
    if turn is not None:
        data["VOXA_TURN_URIS"] = ",".join(turn.uris)
        data["VOXA_TURN_TTL_S"] = str(turn.ttl_s)
        # SFU pods have pod addresses only: clients must not try them directly (a check to a pod
        # address would leave through the client's default route); media enters through the gateway.
        data["VOXA_ICE_TRANSPORT_POLICY"] = "relay"
    data.update(calls.config_data(vs))
    return data


def config_map(vs: VoiceServer, turn: TurnInputs | None = None) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(vs, child_name(vs, COMPONENT), COMPONENT),
        "data": config_data(vs, turn),
    }


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def deployment(vs: VoiceServer, turn: TurnInputs | None = None, push: PushSecrets | None = None) -> Manifest:
    spec = vs.spec.signaling
    auth = vs.spec.auth
    env: list[dict[str, Any]] = [secret_env("VOXA_SFU_SECRET", sfu_secret_name(vs), "secret")]
    turn_fingerprint = None
    if turn is not None:
        env.append(secret_env("VOXA_TURN_SECRET", turn_secret_name(vs), "secret"))
        # A rotation rolls signaling: the template carries the revision, never the secret or a digest
        # of it (a digest of a weak secret could be tested against guesses).
        turn_fingerprint = turn.revision
    if auth.jwtSecretRef:
        env.append(secret_env("VOXA_JWT_SECRET", auth.jwtSecretRef.name, auth.jwtSecretRef.key))
    if vs.spec.redis.urlSecretRef:
        ref = vs.spec.redis.urlSecretRef
        env.append(secret_env("VOXA_REDIS_URL", ref.name, ref.key))
    sentinel = vs.spec.redis.sentinel
    if sentinel is not None and sentinel.passwordSecretRef:
        ref = sentinel.passwordSecretRef
        env.append(secret_env("VOXA_REDIS_PASSWORD", ref.name, ref.key))
    if sentinel is not None and sentinel.sentinelPasswordSecretRef:
        ref = sentinel.sentinelPasswordSecretRef
        env.append(secret_env("VOXA_REDIS_SENTINEL_PASSWORD", ref.name, ref.key))
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108 - emptyDir
    key_ref = auth.publicKeyRef or auth.jwksRef
    if key_ref:
        volumes.append(
            {
                "name": "jwt",
                "secret": {"secretName": key_ref.name, "items": [{"key": key_ref.key, "path": key_ref.key}]},
            }
        )
        mounts.append({"name": "jwt", "mountPath": JWT_MOUNT, "readOnly": True})
    push_volume = calls.volume(vs)
    if push_volume is not None:
        volumes.append(push_volume)
        mounts.append(calls.mount())
    # Pods roll when settings change: the template carries a fingerprint of everything they read.
    inputs: dict[str, Any] = {
        "config": config_data(vs, turn),
        "env": env,
        "volumes": volumes,
        "turn": turn_fingerprint,
    }
    if push_volume is not None:
        # A changed push Secret rolls the pods: its resourceVersion is in the fingerprint, never its
        # content or a digest of it.
        inputs["pushSecrets"] = (push or PushSecrets()).revision
    fingerprint = _fingerprint(inputs)
    container = {
        "name": COMPONENT,
        "image": spec.image,
        "args": ["signaling"],
        "ports": [{"name": "http", "containerPort": SIGNALING_PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": child_name(vs, COMPONENT)}}],
        "env": env,
        "resources": resources(spec.resources),
        "securityContext": container_security_context(),
        "readinessProbe": http_probe("/readyz", "http", 5, 2),
        "livenessProbe": http_probe("/healthz", "http", 10, 3),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(vs, child_name(vs, COMPONENT), COMPONENT),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(vs, COMPONENT)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels(vs, COMPONENT),
                    "annotations": {CONFIG_HASH_ANNOTATION: fingerprint},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    # Sockets get the shutdown grace to move to another replica (close code 1012).
                    "terminationGracePeriodSeconds": 30,
                    "affinity": spread(vs, COMPONENT),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(vs: VoiceServer) -> Manifest:
    svc = vs.spec.signaling.service
    meta = metadata(vs, child_name(vs, COMPONENT), COMPONENT)
    if svc.annotations:
        meta["annotations"] = dict(svc.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": svc.type,
            "selector": selector_labels(vs, COMPONENT),
            "ports": [
                {
                    "name": "http",
                    "port": SIGNALING_SERVICE_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    **node_port(svc.type, svc.nodePort),
                }
            ],
        },
    }


def ingress(vs: VoiceServer) -> Manifest | None:
    spec = vs.spec.signaling.ingress
    if spec is None:
        return None
    meta = metadata(vs, child_name(vs, COMPONENT), COMPONENT)
    if spec.annotations:
        meta["annotations"] = dict(spec.annotations)
    body: dict[str, Any] = {
        "rules": [
            {
                "host": spec.host,
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {
                                "service": {
                                    "name": child_name(vs, COMPONENT),
                                    "port": {"number": SIGNALING_SERVICE_PORT},
                                }
                            },
                        }
                    ]
                },
            }
        ]
    }
    if spec.className:
        body["ingressClassName"] = spec.className
    if spec.tlsSecretName:
        body["tls"] = [{"hosts": [spec.host], "secretName": spec.tlsSecretName}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": body}


def disruption_budget(vs: VoiceServer) -> Manifest:
    return pdb(vs, COMPONENT)


def endpoint(vs: VoiceServer, service_status: dict[str, Any] | None) -> str:
    """Where clients open their socket: the ingress host, a load balancer's address, else in-cluster DNS."""
    ingress_spec = vs.spec.signaling.ingress
    if ingress_spec is not None:
        scheme = "wss" if ingress_spec.tlsSecretName else "ws"
        return f"{scheme}://{ingress_spec.host}/socket"
    for entry in ((service_status or {}).get("loadBalancer") or {}).get("ingress") or []:
        address = entry.get("hostname") or entry.get("ip")
        if address:
            return f"ws://{address}/socket"
    return f"ws://{service_host(vs)}/socket"
