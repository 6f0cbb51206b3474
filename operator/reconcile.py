"""One VoiceServer's reconciliation: render, apply what changed, scale, report status.

Level-triggered and idempotent: it runs on every change of the VoiceServer and on a timer, compares
what it renders with what the watch caches (kopf indexes) say exists, and writes only differences. Each
applied child carries a hash of its rendered manifest; equal hash, no request at all, which is why an
operator restart makes zero writes. Writes are server-side applies owned by field manager
`voxa-operator`, so fields other controllers set (a Service's clusterIP, a Deployment's status) are
never fought over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from voxa.operator import registry, secret_values
from voxa.operator import status as status_mod
from voxa.operator.events import info, warn
from voxa.operator.kube import ApiError, KubeClient, object_path, path_for
from voxa.operator.metrics import RECONCILES, SCALING_DECISIONS
from voxa.operator.models import API_VERSION, SecretKeyRef, VoiceServer
from voxa.operator.render import Inputs, PushSecrets, TurnInputs, voiceserver_children
from voxa.operator.render import calls as calls_render
from voxa.operator.render import sfu as sfu_render
from voxa.operator.render.common import child_name
from voxa.operator.render.signaling import redis_url, sfu_secret_name
from voxa.operator.scaling import (
    DELETION_COST_ANNOTATION,
    DRAIN_DELETION_COST,
    Decision,
    DrainState,
    SfuPod,
    decide,
    desired_replicas,
)
from voxa.operator.slots import Slots
from voxa.operator.turn import GatewayView, rendered_turn, turn_inputs
from voxa.signaling.store.target import RedisTarget, parse_hosts

log = logging.getLogger("voxa.operator")

HASH_ANNOTATION = "voxa.dev/applied-hash"
# Kinds whose children are deleted when no longer rendered (the generated Secret never is).
PRUNABLE = (
    "ConfigMap",
    "Service",
    "Deployment",
    "StatefulSet",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Ingress",
)


@dataclass(frozen=True)
class Child:
    """A child as the watch cache holds it: enough to decide whether to write, and to report status."""

    api_version: str
    kind: str
    name: str
    hash: str | None
    status: dict[str, Any] = field(default_factory=dict)
    replicas: int | None = None
    ready: bool = False
    deleting: bool = False
    ip: str = ""
    """A pod's IP (SFU pods: the gateway relays to them)."""
    ports: tuple[tuple[str, int], ...] = ()
    """A Service's (port name, nodePort) pairs."""
    service_type: str = ""


@dataclass
class State:
    """Per-VoiceServer memory of this operator process (kopf's per-object memo holds one)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sfu_replicas: int | None = None
    applied: dict[tuple[str, str], str] = field(default_factory=dict)
    last_registry_error: str | None = None
    turn: TurnInputs | None = None
    """The TURN settings last rendered (VoiceServers with a gateway)."""
    turn_read_back: bool = False
    slots: Slots | None = None
    """A gateway's stunnerd slots as last written (read back from its config Secret after a restart)."""
    low_since: float | None = None
    """When the load started asking for fewer SFU pods (the scale-down stabilization window). Kept in
    memory only: after an operator restart the window starts over, which delays a scale-down and
    never hastens one."""


def manifest_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def with_hash(manifest: dict[str, Any]) -> tuple[dict[str, Any], str]:
    digest = manifest_hash(manifest)
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), HASH_ANNOTATION: digest}
    return {**manifest, "metadata": meta}, digest


class Reconciler:
    """The I/O side: a KubeClient for writes, Redis for load, kopf for events."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube

    async def _secret_value(self, vs: VoiceServer, ref: SecretKeyRef) -> str:
        data = await secret_values.read_secret(self.kube, vs.namespace, ref.name) or {}
        if ref.key not in data:
            raise LookupError(f"Secret {ref.name} has no key {ref.key!r}")
        return data[ref.key].strip()

    async def redis_target(self, vs: VoiceServer) -> RedisTarget | None:
        """The Redis signaling uses, as the operator reaches it too (registry loads, drain marks,
        the purge of a deleted voice server): managed, a URL (one server or a cluster node), or a
        Sentinel set."""
        managed = redis_url(vs)
        if managed:
            return RedisTarget(url=managed)
        spec = vs.spec.redis
        if spec.sentinel is not None:
            s = spec.sentinel
            return RedisTarget(
                sentinels=parse_hosts(s.hosts),
                sentinel_master=s.masterName,
                password=await self._secret_value(vs, s.passwordSecretRef) if s.passwordSecretRef else None,
                sentinel_password=(
                    await self._secret_value(vs, s.sentinelPasswordSecretRef)
                    if s.sentinelPasswordSecretRef
                    else None
                ),
            )
        if spec.urlSecretRef is None:
            return None
        return RedisTarget(url=await self._secret_value(vs, spec.urlSecretRef), cluster=spec.cluster)

    async def push_secrets(self, vs: VoiceServer) -> tuple[PushSecrets | None, str | None]:
        """The revision of the Secrets holding push keys, or (None, what is wrong with them). Read on
        every reconcile (briefly cached), so a changed Secret rolls signaling within a resync or two."""
        names = calls_render.secret_names(vs)
        if not names:
            return None, None
        found: dict[str, frozenset[str] | None] = {}
        invalid: dict[tuple[str, str], str] = {}
        versions: list[str] = []
        for name in names:
            expected = calls_render.expected_keys(vs, name)
            try:
                shape = await secret_values.read_shape(
                    self.kube, vs.namespace, name, expected, calls_render.key_problem
                )
            except ApiError as exc:
                return None, f"cannot read Secret {name}: {exc.message or exc}"
            found[name] = None if shape is None else shape.keys
            if shape is not None:
                versions.append(f"{name}={shape.resource_version}")
                invalid.update({(name, key): problem for key, problem in shape.problems})
        problems = calls_render.missing_keys(vs, found, invalid)
        if problems:
            return None, "; ".join(problems) + "; signaling is left as it is until that is fixed"
        return PushSecrets(revision=",".join(versions)), None

    async def ensure_control_secret(
        self, vs: VoiceServer, body: dict[str, Any], children: dict[tuple[str, str], Child]
    ) -> None:
        if ("Secret", sfu_secret_name(vs)) in children:
            return
        created = await self.kube.create(sfu_render.control_secret(vs, secrets.token_urlsafe(32)))
        if created is not None:
            info(body, reason="SecretCreated", message=f"generated {sfu_secret_name(vs)}")

    async def scale(
        self, vs: VoiceServer, body: dict[str, Any], state: State, replicas: int, pods: list[Child]
    ) -> tuple[Decision, int, str | None]:
        """One scaling step; returns the decision, participants and a registry error, if any."""
        drain = status_mod.drain_state(vs.status)
        try:
            target = await self.redis_target(vs)
            loads = await registry.loads(target, vs.server_id) if target else {}
            error = None
        except Exception as exc:
            loads, error = {}, f"{type(exc).__name__}: {exc}"[:200]
        if error is not None:
            # Without load figures the only safe moves are towards [min, max] and the pinned count.
            hold = max(vs.spec.sfu.minReplicas, min(vs.spec.sfu.maxReplicas, replicas))
            if vs.spec.sfu.replicas is not None:
                hold = desired_replicas(vs.spec.sfu, 0)
            if error != state.last_registry_error:
                warn(body, reason="RegistryUnavailable", message=error)
            state.last_registry_error = error
            return Decision(replicas=hold, desired=hold, draining=drain), 0, error
        state.last_registry_error = None
        sfu_pods = [SfuPod(name=p.name, ready=p.ready, deleting=p.deleting) for p in pods]
        decision = decide(vs.spec.sfu, replicas, sfu_pods, loads, drain, time.time(), state.low_since)
        state.low_since = decision.low_since
        if decision.mark and target:
            await registry.mark_draining(target, vs.server_id, decision.mark, True)
        if decision.unmark and target:
            await registry.mark_draining(target, vs.server_id, decision.unmark, False)
        if decision.remove:
            # The ReplicaSet removes the pod with the lowest deletion cost: this one, not a busy one.
            path = path_for("v1", "Pod", vs.namespace, decision.remove)
            try:
                await self.kube.merge_patch(
                    path, {"metadata": {"annotations": {DELETION_COST_ANNOTATION: DRAIN_DELETION_COST}}}
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
        if decision.reason:
            SCALING_DECISIONS.labels(decision.reason).inc()
            info(body, reason=decision.reason, message=decision.message)
            log.info(
                "scale", extra={"voiceserver": vs.name, "reason": decision.reason, "detail": decision.message}
            )
        participants = sum(load.peers for load in loads.values())
        return decision, participants, None

    async def reconcile(
        self,
        body: dict[str, Any],
        state: State,
        children: dict[tuple[str, str], Child],
        pods: list[Child],
        *,
        scale: bool,
        gateway: GatewayView | None = None,
    ) -> None:
        """Converge one VoiceServer's children, scale (on the timer) and write its status."""
        async with state.lock:
            RECONCILES.labels("timer" if scale else "event").inc()
            vs = VoiceServer.model_validate(body)
            if vs.metadata.get("deletionTimestamp"):
                return
            await self.ensure_control_secret(vs, body, children)

            sfu_name = child_name(vs, "sfu")
            live_sfu = children.get(("Deployment", sfu_name))
            if state.sfu_replicas is None:
                state.sfu_replicas = (
                    live_sfu.replicas
                    if live_sfu and live_sfu.replicas is not None
                    else desired_replicas(vs.spec.sfu, 0)
                )
            replicas = state.sfu_replicas
            participants = vs.status.participants
            registry_error = (
                state.last_registry_error
            )  # the event path does not read Redis; keep the last word
            drain: DrainState | None = status_mod.drain_state(vs.status)
            desired = vs.status.sfu.desiredReplicas or replicas
            if scale:
                decision, participants, registry_error = await self.scale(vs, body, state, replicas, pods)
                replicas = state.sfu_replicas = decision.replicas
                drain, desired = decision.draining, decision.desired
            elif (target := desired_replicas(vs.spec.sfu, participants)) > replicas:
                # Scaling up is safe at once (a spec change, new bounds); scaling down waits for the timer,
                # which drains first.
                replicas = state.sfu_replicas = desired = target

            turn, turn_error = await turn_inputs(self.kube, vs, body, gateway, state.turn)
            if turn is not None:
                state.turn = turn
            elif vs.spec.stunnerGatewayRef is not None:
                # Keep the last good TURN settings while the gateway is unavailable (after a restart, the
                # ones signaling runs with).
                if state.turn is None and not state.turn_read_back:
                    state.turn = await rendered_turn(self.kube, vs)
                    state.turn_read_back = True  # only once it worked: an API error tries again
                turn = state.turn
            push, push_error = await self.push_secrets(vs)
            rendered = voiceserver_children(vs, Inputs(sfu_replicas=replicas, turn=turn, push=push))
            # Pods that cannot mount their push keys would never start, and a ConfigMap naming key
            # files would break any signaling container that restarts: both wait for the Secrets.
            signaling_name = child_name(vs, "signaling")
            held = (
                frozenset({("ConfigMap", signaling_name), ("Deployment", signaling_name)})
                if push_error
                else frozenset()
            )
            errors = await self.converge(body, vs.namespace, rendered, children, state, held)

            observed = status_mod.Observed(
                signaling=child_status(children, "Deployment", child_name(vs, "signaling")),
                sfu=child_status(children, "Deployment", sfu_name),
                redis=child_status(children, "StatefulSet", child_name(vs, "redis")),
                service=child_status(children, "Service", child_name(vs, "signaling")),
                sfu_replicas=replicas,
                desired_sfus=desired,
                participants=participants,
                draining=drain,
                apply_errors=errors,
                registry_error=registry_error,
                gateway_error=turn_error,
                secret_error=push_error,
            )
            await self.write_status(vs, body, status_mod.compute(vs, observed, time.time()))

    async def converge(
        self,
        body: dict[str, Any],
        namespace: str,
        rendered: list[dict[str, Any]],
        children: dict[tuple[str, str], Child],
        state: State,
        held: frozenset[tuple[str, str]] = frozenset(),
    ) -> list[str]:
        """Apply what differs from the watch cache, delete what is no longer rendered; return errors.
        Children in `held` are left exactly as they are (neither written nor deleted)."""
        errors: list[str] = []
        wanted: set[tuple[str, str]] = set()
        applied: list[str] = []
        config_failed = False
        for manifest in rendered:
            key = (manifest["kind"], manifest["metadata"]["name"])
            wanted.add(key)
            if key in held:
                continue
            full, digest = with_hash(manifest)
            live = children.get(key)
            if config_failed and key[0] in ("Deployment", "StatefulSet"):
                # Pods roll only once the configuration they read is in place: with half of it they
                # could start with one gateway slot's URIs and another's secret.
                if live is None or digest != live.hash:
                    errors.append(f"{key[0]} {key[1]}: not updated, its configuration failed to apply")
                continue
            if live is not None and digest == live.hash and not live.deleting:
                state.applied[key] = digest
                continue
            if live is not None and state.applied.get(key) == digest and live.hash is not None:
                continue  # applied a moment ago; the watch cache has not caught up yet
            try:
                await self.kube.apply(full)
                state.applied[key] = digest
                applied.append(f"{key[0]}/{key[1]}")
            except ApiError as exc:
                errors.append(f"{key[0]} {key[1]}: {exc.message or exc}")
                config_failed = config_failed or key[0] in ("ConfigMap", "Secret")
        for key, child in children.items():
            if key[0] in PRUNABLE and key not in wanted and not child.deleting:
                await self.kube.delete(path_for(child.api_version, child.kind, namespace, child.name))
                state.applied.pop(key, None)
                applied.append(f"-{key[0]}/{key[1]}")
        if applied:
            info(body, reason="Applied", message="applied " + ", ".join(applied))
            log.info("applied", extra={"owner": body["metadata"]["name"], "children": applied})
        if errors:
            warn(body, reason="ApplyFailed", message="; ".join(errors)[:1000])
        return errors

    async def write_status(self, vs: VoiceServer, body: dict[str, Any], new: Any) -> None:
        await self.write_status_of(body, "VoiceServer", vs.status.conditions, new)

    async def write_status_of(self, body: dict[str, Any], kind: str, conditions: list[Any], new: Any) -> None:
        """Patch the status subresource if it differs; post an event for every condition change."""
        current = body.get("status") or {}
        compact = new.model_dump(mode="json", exclude_none=True)
        if _same_status(current, compact):
            return
        before = {c.type: c for c in conditions}
        path = (
            object_path({"apiVersion": API_VERSION, "kind": kind, "metadata": body["metadata"]}) + "/status"
        )
        await self.kube.merge_patch(path, {"status": new.model_dump(mode="json")})
        for cond in new.conditions:
            old = before.get(cond.type)
            if old is None or old.status != cond.status or old.reason != cond.reason:
                post = warn if (cond.type == "Degraded" and cond.status == "True") else info
                post(body, reason=f"{cond.type}{cond.status}", message=f"{cond.reason}: {cond.message}")


def _same_status(current: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal except for fields the API server defaulted (absent in ours) — compare on our keys."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v not in (None, {}, [])}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return bool(strip(current) == strip(new))


def child_status(children: dict[tuple[str, str], Child], kind: str, name: str) -> dict[str, Any] | None:
    child = children.get((kind, name))
    return None if child is None else child.status
