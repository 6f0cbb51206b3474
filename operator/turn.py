"""The TURN settings a VoiceServer gets from the StunnerGateway it references.

Signaling issues credentials for the gateway, so it needs the gateway's URIs, credential lifetime
and secret. The secret is copied next to signaling (Secrets cannot be read across namespaces); when
the gateway's secret changes, the copy keeps the previous one for a credential lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voxa.operator.events import info
from voxa.operator.kube import KubeClient, path_for
from voxa.operator.models import VoiceServer
from voxa.operator.render.signaling import ROTATED_AT_ANNOTATION, TurnInputs, turn_secret_name
from voxa.operator.secret_values import decode, read_secret


@dataclass(frozen=True)
class GatewayView:
    """What a VoiceServer needs of its gateway, from the gateway's watch cache."""

    uris: tuple[str, ...]
    secret_name: str
    auth_type: str
    ttl_s: int


async def turn_inputs(
    kube: KubeClient,
    vs: VoiceServer,
    body: dict[str, Any],
    view: GatewayView | None,
    current: TurnInputs | None,
    now: float,
) -> tuple[TurnInputs | None, str | None]:
    """The TURN settings for a VoiceServer with stunnerGatewayRef, or (None, why not). `current` is
    what was rendered last (None after a restart: then signaling's copy is read back)."""
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
    if not view.uris:
        return None, f"StunnerGateway {ref.name} has no address yet"
    data = await read_secret(kube, ref.namespace or vs.namespace, view.secret_name) or {}
    secret = data.get("secret", "")
    if not secret:
        return None, f"Secret {view.secret_name} of StunnerGateway {ref.name} has no key 'secret'"
    if current is None:
        # After a restart: what signaling's copy holds, the previous secret and its deadline included.
        copy = await kube.get(path_for("v1", "Secret", vs.namespace, turn_secret_name(vs)))
        if copy is not None:
            values = decode(copy)
            annotations = copy.get("metadata", {}).get("annotations") or {}
            current = TurnInputs(
                uris=view.uris,
                ttl_s=view.ttl_s,
                secret=values.get("secret", ""),
                previous=values.get("previous"),
                previous_until=int(annotations.get(ROTATED_AT_ANNOTATION, "0")),
            )
    previous, until = None, 0
    if current is not None and current.secret and current.secret != secret:
        # Rotation: credentials already issued were made with the old secret; keep accepting it
        # for one credential lifetime.
        previous, until = current.secret, int(now) + view.ttl_s
        info(
            body,
            reason="TurnSecretRotated",
            message=f"TURN secret of {ref.name} changed; the previous one is accepted until {until}",
        )
    elif current is not None and current.previous and now < current.previous_until:
        previous, until = current.previous, current.previous_until
    turn = TurnInputs(
        uris=view.uris, ttl_s=view.ttl_s, secret=secret, previous=previous, previous_until=until
    )
    return turn, None
