"""VoiceServer status from what the operator observed, pure (conditions as Kubernetes spells them).

`Ready` says whether clients can connect and talk; `Progressing` whether something is still changing
(a rollout, a scale step, a drain); `Degraded` whether something needs a human (an apply the API server
refused, an unreachable registry, pods that will not become ready). Each has a CamelCase reason for
machines and a message for people; `lastTransitionTime` moves only when `status` flips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from voxa.operator.models import (
    Condition,
    Draining,
    SfuStatus,
    SignalingStatus,
    StunnerGateway,
    StunnerGatewayStatus,
    VoiceServer,
    VoiceServerStatus,
)
from voxa.operator.render import signaling
from voxa.operator.render.common import selector_labels, selector_string
from voxa.operator.scaling import DrainState


@dataclass(frozen=True)
class Observed:
    """The facts a status is computed from."""

    signaling: dict[str, Any] | None = None
    """The signaling Deployment's status, or None if it does not exist yet."""
    sfu: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None
    """The managed Redis StatefulSet's status (managed Redis only)."""
    service: dict[str, Any] | None = None
    """The signaling Service's status (load-balancer ingress)."""
    sfu_replicas: int = 0
    """The SFU Deployment's replicas as the operator set them."""
    desired_sfus: int = 0
    participants: int = 0
    draining: DrainState | None = None
    apply_errors: list[str] = field(default_factory=list)
    registry_error: str | None = None
    gateway_error: str | None = None
    """Why the referenced StunnerGateway's TURN settings are not (or no longer) available."""
    secret_error: str | None = None
    """What is wrong with the Secrets holding push keys (signaling is not updated meanwhile)."""


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _count(status: dict[str, Any] | None, key: str) -> int:
    return int((status or {}).get(key) or 0)


def _rolling(status: dict[str, Any] | None, replicas: int) -> bool:
    if status is None:
        return True
    return _count(status, "updatedReplicas") < replicas or _count(status, "replicas") > replicas


def _condition(
    type_: str, ok: bool, reason: str, message: str, generation: int, previous: list[Condition], now: str
) -> Condition:
    status = "True" if ok else "False"
    before = next((c for c in previous if c.type == type_), None)
    since = before.lastTransitionTime if before is not None and before.status == status else now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observedGeneration=generation,
        lastTransitionTime=since or now,
    )


def compute(vs: VoiceServer, seen: Observed, now: float) -> VoiceServerStatus:
    spec = vs.spec
    stamp = iso(now)
    previous = vs.status.conditions
    sig_ready = _count(seen.signaling, "readyReplicas")
    sfu_ready = _count(seen.sfu, "readyReplicas")
    redis_ready = _count(seen.redis, "readyReplicas")

    if sig_ready < 1:
        ready, reason, message = False, "SignalingUnavailable", "no signaling pod is ready"
    elif seen.sfu_replicas > 0 and sfu_ready < 1:
        ready, reason, message = False, "SfuUnavailable", "no SFU pod is ready"
    elif spec.redis.managed and redis_ready < 1:
        ready, reason, message = False, "RedisUnavailable", "the managed Redis is not ready"
    else:
        ready, reason = True, "Available"
        message = f"{sig_ready} signaling and {sfu_ready} SFU pods ready"

    if seen.draining is not None:
        progressing, p_reason = True, "Draining"
        p_message = f"draining SFU pod {seen.draining.pod} before scaling down"
    elif seen.sfu_replicas != seen.desired_sfus:
        progressing, p_reason = True, "Scaling"
        p_message = f"SFU pods {seen.sfu_replicas} → {seen.desired_sfus}"
    elif _rolling(seen.signaling, spec.signaling.replicas) or _rolling(seen.sfu, seen.sfu_replicas):
        progressing, p_reason, p_message = True, "RollingOut", "pods are being created or updated"
    else:
        progressing, p_reason, p_message = False, "Stable", "every child is as specified"

    if seen.apply_errors:
        degraded, d_reason, d_message = True, "ApplyFailed", "; ".join(seen.apply_errors)
    elif seen.secret_error:
        degraded, d_reason, d_message = True, "SecretUnavailable", seen.secret_error
    elif seen.gateway_error:
        degraded, d_reason, d_message = True, "GatewayUnavailable", seen.gateway_error
    elif seen.registry_error:
        degraded, d_reason = True, "RegistryUnavailable"
        d_message = f"cannot read SFU load from Redis ({seen.registry_error}); scaling holds"
    elif not progressing and (sig_ready < spec.signaling.replicas or sfu_ready < seen.sfu_replicas):
        degraded, d_reason = True, "PodsNotReady"
        d_message = (
            f"{sig_ready}/{spec.signaling.replicas} signaling and "
            f"{sfu_ready}/{seen.sfu_replicas} SFU pods ready"
        )
    else:
        degraded, d_reason, d_message = False, "AsExpected", "nothing needs attention"

    generation = vs.generation
    conditions = [
        _condition("Ready", ready, reason, message, generation, previous, stamp),
        _condition("Progressing", progressing, p_reason, p_message, generation, previous, stamp),
        _condition("Degraded", degraded, d_reason, d_message, generation, previous, stamp),
    ]
    draining = None
    if seen.draining is not None:
        draining = Draining(
            pod=seen.draining.pod, since=iso(seen.draining.since), deadline=iso(seen.draining.deadline)
        )
    return VoiceServerStatus(
        observedGeneration=generation,
        conditions=conditions,
        endpoint=signaling.endpoint(vs, seen.service),
        serverId=vs.server_id,
        sfu=SfuStatus(
            replicas=_count(seen.sfu, "replicas"),
            readyReplicas=sfu_ready,
            desiredReplicas=seen.desired_sfus,
            selector=selector_string(selector_labels(vs, "sfu")),
            draining=draining,
        ),
        signaling=SignalingStatus(replicas=_count(seen.signaling, "replicas"), readyReplicas=sig_ready),
        participants=seen.participants,
        sfus=f"{sfu_ready}/{seen.sfu_replicas}",
        ready="True" if ready else "False",
    )


def drain_state(status: VoiceServerStatus) -> DrainState | None:
    """The drain in progress, read back from a status (so it survives operator restarts)."""
    d = status.sfu.draining
    if d is None:
        return None
    return DrainState(pod=d.pod, since=parse_iso(d.since), deadline=parse_iso(d.deadline))


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class GatewayObserved:
    deployment: dict[str, Any] | None = None
    address: str = ""
    uris: list[str] = field(default_factory=list)
    """The active slot's URIs."""
    active_slot: str = ""
    standby_uris: list[str] = field(default_factory=list)
    previous_secret_valid_until: str = ""
    switch_at: str = ""
    """When new calls move to the standby slot, during a secret rotation."""
    secret_name: str = ""
    endpoints: int = 0
    errors: list[str] = field(default_factory=list)


def gateway(gw: StunnerGateway, seen: GatewayObserved, now: float) -> StunnerGatewayStatus:
    """A StunnerGateway's status: Ready once a stunnerd pod is ready and clients have an address."""
    stamp = iso(now)
    previous = gw.status.conditions
    ready_pods = _count(seen.deployment, "readyReplicas")
    if ready_pods < 1:
        ready, reason, message = False, "NoReadyPods", "no stunnerd pod is ready"
    elif not seen.address:
        ready, reason = False, "AddressPending"
        message = "waiting for the Service's load-balancer address (or set spec.publicAddress)"
    else:
        ready, reason = True, "Available"
        message = f"{ready_pods} stunnerd pods relay at {seen.address}"
    rolling = _rolling(seen.deployment, gw.spec.replicas)
    if seen.switch_at:
        progressing, p_reason = True, "RotatingSecret"
        p_message = f"the standby slot has the new secret; new calls move to it at {seen.switch_at}"
    elif rolling:
        progressing, p_reason, p_message = True, "RollingOut", "stunnerd pods are being created or updated"
    else:
        progressing, p_reason, p_message = False, "Stable", "every child is as specified"
    if seen.errors:
        degraded, d_reason, d_message = True, "ConfigInvalid", "; ".join(seen.errors)
    else:
        degraded, d_reason, d_message = False, "AsExpected", "nothing needs attention"
    generation = gw.generation
    conditions = [
        _condition("Ready", ready, reason, message, generation, previous, stamp),
        _condition("Progressing", progressing, p_reason, p_message, generation, previous, stamp),
        _condition("Degraded", degraded, d_reason, d_message, generation, previous, stamp),
    ]
    return StunnerGatewayStatus(
        observedGeneration=generation,
        conditions=conditions,
        address=seen.address,
        uris=seen.uris,
        activeSlot=seen.active_slot,
        standbyUris=seen.standby_uris,
        previousSecretValidUntil=seen.previous_secret_valid_until,
        listeners=len(gw.spec.listeners),
        ready="True" if ready else "False",
        secretName=seen.secret_name,
        endpoints=seen.endpoints,
    )
