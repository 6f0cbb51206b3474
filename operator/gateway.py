"""StunnerGateway reconciliation.

A gateway relays only to the SFU pods of the VoiceServers that reference it: one stunnerd cluster per
VoiceServer, holding its SFU pod IPs and media port range, rewritten (hot, stunnerd watches the file)
as pods come and go. A change of the auth Secret rotates the slots (`voxa.operator.slots`). Secret
values are read from the API when needed and kept a few seconds, never in the watch caches; the
slots' state is read back uncached, once, after a restart.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voxa.operator import secret_values
from voxa.operator import slots as slots_mod
from voxa.operator import status as status_mod
from voxa.operator.events import info, warn
from voxa.operator.kube import ApiError, path_for
from voxa.operator.models import StunnerGateway
from voxa.operator.reconcile import Child, Reconciler, State, child_status
from voxa.operator.render import stunner
from voxa.operator.render.stunnerd_config import Auth, Cluster, EphemeralAuth, StaticAuth

log = logging.getLogger("voxa.operator")

NODES_TTL_S = 60.0


@dataclass(frozen=True)
class SfuRef:
    """A VoiceServer that routes through a gateway (from the VoiceServer watch cache)."""

    namespace: str
    name: str
    min_port: int
    max_port: int


@dataclass
class NodeCache:
    nodes: tuple[float, list[str]] | None = None


CACHE = NodeCache()


async def node_addresses(rec: Reconciler) -> list[str]:
    if CACHE.nodes is not None and time.monotonic() - CACHE.nodes[0] < NODES_TTL_S:
        return CACHE.nodes[1]
    nodes = await rec.kube.list("/api/v1/nodes")
    found: list[str] = []
    for kind in ("ExternalIP", "InternalIP"):
        for node in nodes:
            found += [a["address"] for a in node.get("status", {}).get("addresses", []) if a["type"] == kind]
    CACHE.nodes = (time.monotonic(), found)
    return found


async def reconcile_gateway(
    rec: Reconciler,
    body: dict[str, Any],
    state: State,
    children: dict[tuple[str, str], Child],
    routes: list[SfuRef],
    pods_of: dict[tuple[str, str], list[Child]],
    propagation_s: int,
    gateway_pods: Sequence[Child] = (),
) -> None:
    async with state.lock:
        gw = StunnerGateway.model_validate(body)
        if gw.metadata.get("deletionTimestamp"):
            return
        errors: list[str] = []
        secret_name = stunner.auth_secret_name(gw)
        if gw.spec.auth.secretRef is None and ("Secret", secret_name) not in children:
            created = await rec.kube.create(stunner.generated_auth_secret(gw, secrets.token_urlsafe(32)))
            if created is not None:
                info(body, reason="SecretCreated", message=f"generated {secret_name}")
        auth_values = await secret_values.read_secret(rec.kube, gw.namespace, secret_name) or {}
        auth: Auth | None = None
        if gw.spec.auth.type == "ephemeral":
            secret = auth_values.get("secret", "")
            if not secret:
                errors.append(f"Secret {secret_name} has no key 'secret'")
            elif "$" in secret:
                errors.append("the TURN secret must not contain '$' (stunnerd expands variables)")
            else:
                auth = EphemeralAuth(secret=secret)
        else:
            username, password = auth_values.get("username", ""), auth_values.get("password", "")
            if not username or not password:
                errors.append(f"Secret {secret_name} needs keys 'username' and 'password'")
            else:
                auth = StaticAuth(username=username, password=password)
        tls: dict[str, tuple[str, str]] = {}
        for listener in gw.spec.listeners:
            if listener.tlsSecretRef is not None:
                ref = listener.tlsSecretRef
                data = (
                    await secret_values.read_secret(rec.kube, ref.namespace or gw.namespace, ref.name) or {}
                )
                if "tls.crt" in data and "tls.key" in data:
                    tls[listener.name] = (data["tls.crt"], data["tls.key"])
                else:
                    errors.append(f"listener {listener.name}: Secret {ref.name} needs tls.crt and tls.key")
        clusters = [
            Cluster(
                name=f"{ref.namespace}/{ref.name}",
                endpoints=sorted(
                    p.ip for p in pods_of.get((ref.namespace, ref.name), []) if p.ip and not p.deleting
                ),
                ports=(ref.min_port, ref.max_port),
            )
            for ref in routes
        ]
        rendered: list[dict[str, Any]] = []
        slots: slots_mod.Slots | None = None
        change: slots_mod.Change | None = None
        config_key = ("Secret", stunner.config_secret_name(gw))
        live = children.get(config_key)
        if state.slots is None or (live is not None and live.hash != state.applied.get(config_key)):
            # After a restart, or written by someone else since (another replica that led meanwhile).
            state.slots = await _written_slots(rec, gw)
            if live is not None and live.hash is not None:
                state.applied[config_key] = live.hash
        before = state.slots
        if auth is not None:
            ttl = gw.spec.credentialTtlSeconds
            slots, change = slots_mod.advance(state.slots, auth, ttl, int(time.time()), propagation_s)
        if slots is not None and not errors:
            inputs = stunner.GatewayInputs(slots=slots, tls=tls, clusters=clusters)
            try:
                rendered = stunner.children(gw, inputs)
            except ValueError as exc:
                errors.append(str(exc))
        shown = before
        if rendered:
            failed = await rec.converge(body, gw.namespace, rendered, children, state)
            errors += failed
            if any(e.startswith(f"Secret {config_key[1]}:") for e in failed):
                state.slots = None  # what the config Secret holds is unknown: read it back next time
            else:
                state.slots = shown = slots
                if change is not None:
                    (warn if change.warning else info)(body, reason=change.reason, message=change.message)
                revision = state.applied.get(config_key)
                if revision:
                    await _nudge(rec, gw, gateway_pods, revision)

        service = children.get(("Service", gw.name))
        service_body: dict[str, Any] | None = None
        if service is not None:
            service_body = {
                "spec": {
                    "type": service.service_type,
                    "ports": [{"name": n, "nodePort": p} for n, p in service.ports],
                },
                "status": service.status,
            }
        needs_nodes = (
            not gw.spec.publicAddress and service is not None and service.service_type != "ClusterIP"
        )
        nodes = await node_addresses(rec) if needs_nodes else []
        address, ports = stunner.public_endpoint(gw, service_body, nodes)
        observed = status_mod.GatewayObserved(
            deployment=child_status(children, "Deployment", gw.name),
            address=address,
            uris=stunner.uris(gw, address, ports, shown.active) if shown else [],
            active_slot=shown.active if shown else "",
            standby_uris=stunner.uris(gw, address, ports, shown.standby) if shown else [],
            previous_secret_valid_until=slots_mod.previous_valid_until(shown) if shown else "",
            switch_at=slots_mod.pending_switch(shown, auth, propagation_s) if shown else "",
            secret_name=secret_name,
            endpoints=sum(len(c.endpoints) for c in clusters),
            errors=errors,
        )
        new = status_mod.gateway(gw, observed, time.time())
        await rec.write_status_of(body, "StunnerGateway", gw.status.conditions, new)


async def _nudge(rec: Reconciler, gw: StunnerGateway, pods: Sequence[Child], revision: str) -> None:
    """Tell every gateway pod of the config revision it should run (see CONFIG_REVISION_ANNOTATION):
    its kubelet then refreshes the mounted config now, and stunnerd, which watches it, follows."""
    for pod in pods:
        if pod.deleting or pod.hash == revision:
            continue
        patch = {"metadata": {"annotations": {stunner.CONFIG_REVISION_ANNOTATION: revision}}}
        try:
            await rec.kube.merge_patch(path_for("v1", "Pod", gw.namespace, pod.name), patch)
        except ApiError as exc:
            if exc.status != 404:  # a pod that is gone needs nothing
                log.warning("nudge_failed", extra={"pod": pod.name, "error": str(exc)})


async def _written_slots(rec: Reconciler, gw: StunnerGateway) -> slots_mod.Slots | None:
    """The slots recorded in the gateway's config Secret (read uncached: a stale copy could undo a
    rotation), or None for a new gateway."""
    body = await rec.kube.get(path_for("v1", "Secret", gw.namespace, stunner.config_secret_name(gw)))
    return None if body is None else stunner.slots_from_config(secret_values.decode(body))
