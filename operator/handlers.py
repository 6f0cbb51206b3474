"""kopf wiring: watch caches (indexes) of the children, and the VoiceServer handlers.

kopf fills every index before any handler runs, so after a restart the first reconcile already sees
every child and finds nothing to write. Children are found by the labels the operator puts on them
(`voxa.dev/voiceserver`, `app.kubernetes.io/managed-by: voxa-operator`), never by listing the API.

The index functions are coroutines: kopf runs plain functions in its thread pool, which also serves
DNS lookups (of a managed Redis, say), and a slow resolver would then hold up every index, and so
every reconcile.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from voxa.operator import registry
from voxa.operator.gateway import SfuRef, reconcile_gateway
from voxa.operator.kube import KubeClient
from voxa.operator.models import DEFAULT_MEDIA_PORT, GROUP, VERSION, VoiceServer
from voxa.operator.reconcile import HASH_ANNOTATION, Child, Reconciler, State
from voxa.operator.turn import GatewayView

__all__ = ["FINALIZER", "Reconciler", "Runtime"]
from voxa.operator.render.common import COMPONENT_LABEL, MANAGED_BY, OWNER_LABEL
from voxa.operator.render.signaling import redis_url
from voxa.operator.render.stunner import CONFIG_REVISION_ANNOTATION, GATEWAY_LABEL
from voxa.operator.settings import OperatorSettings

log = logging.getLogger("voxa.operator")

VOICESERVERS = (GROUP, VERSION, "voiceservers")
GATEWAYS = (GROUP, VERSION, "stunnergateways")
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
FINALIZER = "voxa.dev/finalizer"
GATEWAY_KEY_PREFIX = "gateway:"


class Runtime:
    """Process-wide objects the handlers share, set up at startup."""

    settings = OperatorSettings()
    kube: KubeClient | None = None
    reconciler: Reconciler | None = None


def _ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _child(kind: str, api_version: str, body: Any, spec: Any, status: Any) -> Child:
    meta = body.get("metadata", {})
    replicas = (spec or {}).get("replicas")
    status = dict(status or {})
    return Child(
        api_version=api_version,
        kind=kind,
        name=meta.get("name", ""),
        hash=(meta.get("annotations") or {}).get(HASH_ANNOTATION),
        status=status,
        replicas=int(replicas) if isinstance(replicas, int) else None,
        ready=_ready(status),
        deleting=bool(meta.get("deletionTimestamp")),
        ip=str(status.get("podIP") or ""),
        ports=tuple(
            (str(p.get("name", "")), int(p.get("nodePort") or 0)) for p in (spec or {}).get("ports") or []
        )
        if kind == "Service"
        else (),
        service_type=str((spec or {}).get("type", "")) if kind == "Service" else "",
    )


def _index_of(kind: str, api_version: str, body: Any, namespace: str | None, labels: Any, **kw: Any) -> Any:
    """Children are keyed by their owner: (namespace, voiceserver) or (namespace, "gateway:" + name)."""
    owner = labels.get(OWNER_LABEL)
    if not owner and labels.get(GATEWAY_LABEL):
        owner = GATEWAY_KEY_PREFIX + labels[GATEWAY_LABEL]
    if not owner:
        return None
    return {(namespace or "", owner): _child(kind, api_version, body, kw.get("spec"), kw.get("status"))}


@kopf.index("v1", "configmaps", labels=MANAGED)
async def configmaps_idx(body: Any, namespace: str | None, labels: Any, **_: Any) -> Any:
    return _index_of("ConfigMap", "v1", body, namespace, labels)


@kopf.index("v1", "secrets", labels=MANAGED)
async def secrets_idx(body: Any, namespace: str | None, labels: Any, **_: Any) -> Any:
    # Only names and the applied hash are kept: secret values never sit in the operator's memory.
    meta = body["metadata"]
    hashed = {HASH_ANNOTATION: (meta.get("annotations") or {}).get(HASH_ANNOTATION)}
    return _index_of(
        "Secret", "v1", {"metadata": {"name": meta["name"], "annotations": hashed}}, namespace, labels
    )


@kopf.index("v1", "services", labels=MANAGED)
async def services_idx(
    body: Any, namespace: str | None, labels: Any, spec: Any, status: Any, **_: Any
) -> Any:
    return _index_of("Service", "v1", body, namespace, labels, spec=spec, status=status)


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
async def deployments_idx(
    body: Any, namespace: str | None, labels: Any, spec: Any, status: Any, **_: Any
) -> Any:
    return _index_of("Deployment", "apps/v1", body, namespace, labels, spec=spec, status=status)


@kopf.index("apps", "v1", "statefulsets", labels=MANAGED)
async def statefulsets_idx(
    body: Any, namespace: str | None, labels: Any, spec: Any, status: Any, **_: Any
) -> Any:
    return _index_of("StatefulSet", "apps/v1", body, namespace, labels, spec=spec, status=status)


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
async def pdbs_idx(body: Any, namespace: str | None, labels: Any, **_: Any) -> Any:
    return _index_of("PodDisruptionBudget", "policy/v1", body, namespace, labels)


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)
async def netpols_idx(body: Any, namespace: str | None, labels: Any, **_: Any) -> Any:
    return _index_of("NetworkPolicy", "networking.k8s.io/v1", body, namespace, labels)


@kopf.index("networking.k8s.io", "v1", "ingresses", labels=MANAGED)
async def ingresses_idx(body: Any, namespace: str | None, labels: Any, **_: Any) -> Any:
    return _index_of("Ingress", "networking.k8s.io/v1", body, namespace, labels)


@kopf.index("v1", "pods", labels={**MANAGED, COMPONENT_LABEL: "sfu"})
async def sfu_pods_idx(body: Any, namespace: str | None, labels: Any, status: Any, **_: Any) -> Any:
    return _index_of("Pod", "v1", body, namespace, labels, status=status)


@kopf.index("v1", "pods", labels={**MANAGED, COMPONENT_LABEL: "stunnerd"})
async def gateway_pods_idx(body: Any, namespace: str | None, labels: Any, **_: Any) -> Any:
    """Gateway pods by gateway, with the config revision they were last told of as their hash."""
    meta = body["metadata"]
    revision = (meta.get("annotations") or {}).get(CONFIG_REVISION_ANNOTATION)
    trimmed = {"metadata": {"name": meta["name"], "annotations": {HASH_ANNOTATION: revision}}}
    if meta.get("deletionTimestamp"):
        trimmed["metadata"]["deletionTimestamp"] = meta["deletionTimestamp"]
    return _index_of("Pod", "v1", trimmed, namespace, labels)


CHILD_INDEXES = (
    "configmaps_idx",
    "secrets_idx",
    "services_idx",
    "deployments_idx",
    "statefulsets_idx",
    "pdbs_idx",
    "netpols_idx",
    "ingresses_idx",
)


def _children(key: tuple[str, str], indexes: dict[str, Any]) -> dict[tuple[str, str], Child]:
    found: dict[tuple[str, str], Child] = {}
    for index_name in CHILD_INDEXES:
        for child in indexes[index_name].get(key, []):
            found[(child.kind, child.name)] = child
    return found


def _state(memo: Any) -> State:
    state = getattr(memo, "voxa_state", None)
    if state is None:
        state = State()
        memo.voxa_state = state
    assert isinstance(state, State)
    return state


async def _run(
    body: Any, memo: Any, namespace: str | None, name: str, scale: bool, kwargs: dict[str, Any]
) -> None:
    assert Runtime.reconciler is not None
    key = (namespace or "", name)
    children = _children(key, kwargs)
    pods = list(kwargs["sfu_pods_idx"].get(key, []))
    view = None
    ref = (body.get("spec") or {}).get("stunnerGatewayRef")
    if ref:
        views = list(kwargs["gateways_idx"].get((ref.get("namespace") or key[0], ref["name"]), []))
        view = views[0] if views else None
    await Runtime.reconciler.reconcile(dict(body), _state(memo), children, pods, scale=scale, gateway=view)


@kopf.index(*VOICESERVERS)
async def routes_idx(spec: Any, namespace: str | None, name: str, **_: Any) -> Any:
    """VoiceServers by the gateway they route through: the gateway relays to their SFU pods."""
    ref = (spec or {}).get("stunnerGatewayRef")
    if not ref:
        return None
    sfu = spec.get("sfu") or {}
    port = int(sfu.get("mediaPort") or (sfu.get("udpPortRange") or {}).get("min") or DEFAULT_MEDIA_PORT)
    gw_key = (ref.get("namespace") or namespace or "", ref["name"])
    return {gw_key: SfuRef(namespace or "", name, port, port)}


@kopf.index(*GATEWAYS)
async def gateways_idx(spec: Any, status: Any, namespace: str | None, name: str, **_: Any) -> Any:
    """What VoiceServers need of a gateway: its slots' URIs (status), auth type and credential lifetime."""
    auth = (spec or {}).get("auth") or {}
    status = status or {}
    return {
        (namespace or "", name): GatewayView(
            name=name,
            uris=tuple(status.get("uris") or []),
            active_slot=str(status.get("activeSlot") or ""),
            standby_uris=tuple(status.get("standbyUris") or []),
            auth_type=str(auth.get("type", "ephemeral")),
            ttl_s=int((spec or {}).get("credentialTtlSeconds", 86400)),
        )
    }


@kopf.on.event(*VOICESERVERS)
async def voiceserver_changed(
    type: str | None, body: Any, memo: Any, namespace: str | None, name: str, **kwargs: Any
) -> None:
    """Any change (including the initial listing) reconciles at once; status-only echoes find nothing."""
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        return
    await _run(body, memo, namespace, name, scale=False, kwargs=kwargs)


@kopf.timer(*VOICESERVERS, interval=Runtime.settings.resync_s, initial_delay=0.5, idle=None)
async def voiceserver_tick(body: Any, memo: Any, namespace: str | None, name: str, **kwargs: Any) -> None:
    """Scaling and status, and repair of anything deleted or edited behind the operator's back."""
    await _run(body, memo, namespace, name, scale=True, kwargs=kwargs)


@kopf.on.delete(*VOICESERVERS)
async def voiceserver_deleted(body: Any, retry: int, **_: Any) -> None:
    """Forget the server's Redis keys; the children go with their owner (garbage collector)."""
    vs = VoiceServer.model_validate(dict(body))
    if redis_url(vs):
        return  # a managed Redis is deleted with the voice server, keys and all
    assert Runtime.reconciler is not None
    started = time.monotonic()
    try:
        target = await Runtime.reconciler.redis_target(vs)
        if target is None:
            return
        gone = await registry.purge(target, vs.server_id)
    except LookupError as exc:
        kopf.warn(
            body, reason="CleanupSkipped", message=f"Redis URL unavailable ({exc}); keys left to expire"
        )
        return
    except Exception as exc:
        if retry + 1 >= Runtime.settings.cleanup_attempts:
            kopf.warn(body, reason="CleanupFailed", message=f"gave up removing Redis keys: {exc}")
            return
        raise kopf.TemporaryError(f"cannot reach Redis: {exc}", delay=5) from exc
    log.info(
        "purged",
        extra={"voiceserver": vs.name, "keys": gone, "ms": round((time.monotonic() - started) * 1000)},
    )


async def _run_gateway(
    body: Any, memo: Any, namespace: str | None, name: str, kwargs: dict[str, Any]
) -> None:
    assert Runtime.reconciler is not None
    ns = namespace or ""
    children = _children((ns, GATEWAY_KEY_PREFIX + name), kwargs)
    routes = sorted(kwargs["routes_idx"].get((ns, name), []), key=lambda r: (r.namespace, r.name))
    pods_of = {
        (r.namespace, r.name): list(kwargs["sfu_pods_idx"].get((r.namespace, r.name), [])) for r in routes
    }
    await reconcile_gateway(
        Runtime.reconciler,
        dict(body),
        _state(memo),
        children,
        routes,
        pods_of,
        propagation_s=Runtime.settings.turn_propagation_s,
        gateway_pods=list(kwargs["gateway_pods_idx"].get((ns, GATEWAY_KEY_PREFIX + name), [])),
    )


@kopf.on.event(*GATEWAYS)
async def gateway_changed(
    type: str | None, body: Any, memo: Any, namespace: str | None, name: str, **kwargs: Any
) -> None:
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        return
    await _run_gateway(body, memo, namespace, name, kwargs)


@kopf.timer(*GATEWAYS, interval=Runtime.settings.resync_s, initial_delay=0.5, idle=None)
async def gateway_tick(body: Any, memo: Any, namespace: str | None, name: str, **kwargs: Any) -> None:
    """SFU endpoints follow pods, the address follows the Service, status follows the Deployment; a
    changed auth Secret rotates the slots, and the previous secret is retired when its time is up."""
    await _run_gateway(body, memo, namespace, name, kwargs)
