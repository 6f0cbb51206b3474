"""The TURN settings a VoiceServer gets from the StunnerGateway it references.

Signaling issues credentials for the gateway, so it needs the URIs of the gateway's active slot, the
credential lifetime and that slot's secret. Both come from one snapshot of the gateway's config
Secret (which slot is active, and its secret), so the pair is always consistent: a copy a few seconds
old names the previous slot with the previous secret, which that slot still accepts. The secret is
copied next to signaling (Secrets cannot be read across namespaces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voxa.operator.events import info
from voxa.operator.kube import KubeClient, path_for
from voxa.operator.models import VoiceServer
from voxa.operator.render.common import child_name
from voxa.operator.render.signaling import TURN_REVISION_ANNOTATION, TurnInputs, turn_secret_name
from voxa.operator.render.stunner import config_secret_name, slots_from_config
from voxa.operator.render.stunnerd_config import EphemeralAuth
from voxa.operator.secret_values import decode, read_secret


@dataclass(frozen=True)
class GatewayView:
    """What a VoiceServer needs of its gateway, from the gateway's watch cache."""

    name: str
    uris: tuple[str, ...]
    """The active slot's URIs."""
    active_slot: str
    standby_uris: tuple[str, ...]
    auth_type: str
    ttl_s: int

    @property
    def config_secret_name(self) -> str:
        return config_secret_name(self.name)

    def uris_of(self, slot: str) -> tuple[str, ...]:
        return self.uris if slot == self.active_slot else self.standby_uris


async def turn_inputs(
    kube: KubeClient,
    vs: VoiceServer,
    body: dict[str, Any],
    view: GatewayView | None,
    current: TurnInputs | None,
) -> tuple[TurnInputs | None, str | None]:
    """The TURN settings for a VoiceServer with stunnerGatewayRef, or (None, why not). `current` is
    what was rendered last (None after a restart)."""
    ref = vs.spec.stunnerGatewayRef
    if ref is None:
        return None, None
    if view is None:
        return None, f"StunnerGateway {ref.name} not found"
    if view.auth_type != "ephemeral":
        return (
            None,
            f"StunnerGateway {ref.name} uses static auth; signaling issues ephemeral credentials only",
        )
    if not view.uris or not view.active_slot:
        return None, f"StunnerGateway {ref.name} has no address yet"
    data = await read_secret(kube, ref.namespace or vs.namespace, view.config_secret_name) or {}
    slots = slots_from_config(data)
    if slots is None:
        return None, f"StunnerGateway {ref.name} has not written its configuration yet"
    auth = slots.auth(slots.active)
    uris = view.uris_of(slots.active)
    if not isinstance(auth, EphemeralAuth) or not uris:
        return None, f"StunnerGateway {ref.name} is changing its auth; waiting for it"
    turn = TurnInputs(uris=uris, ttl_s=view.ttl_s, secret=auth.secret, revision=slots.revision)
    if current is not None and current != turn:
        info(
            body,
            reason="TurnSettingsChanged",
            message=f"signaling now issues TURN credentials for slot {slots.active} of {ref.name}; "
            "calls in progress keep theirs",
        )
    return turn, None


async def rendered_turn(kube: KubeClient, vs: VoiceServer) -> TurnInputs | None:
    """The TURN settings signaling runs with now, read back from its children: what a restarted
    operator keeps while the gateway cannot say (rather than rolling signaling without TURN)."""
    copy = await kube.get(path_for("v1", "Secret", vs.namespace, turn_secret_name(vs)))
    config = await kube.get(path_for("v1", "ConfigMap", vs.namespace, child_name(vs, "signaling")))
    if copy is None or config is None:
        return None
    data = config.get("data") or {}
    uris = tuple(u for u in str(data.get("VOXA_TURN_URIS", "")).split(",") if u)
    secret = decode(copy).get("secret", "")
    if not uris or not secret:
        return None
    revision = ((copy.get("metadata") or {}).get("annotations") or {}).get(TURN_REVISION_ANNOTATION, "")
    ttl = int(data.get("VOXA_TURN_TTL_S") or 0)
    return TurnInputs(uris=uris, ttl_s=ttl, secret=secret, revision=str(revision))
