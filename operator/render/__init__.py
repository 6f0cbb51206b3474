"""Pure rendering: a VoiceServer (plus the few facts only the cluster knows) → the manifests it needs."""

from __future__ import annotations

from dataclasses import dataclass

from voxa.operator.models import VoiceServer
from voxa.operator.render import redis, sfu, signaling
from voxa.operator.render.calls import PushSecrets
from voxa.operator.render.common import Manifest
from voxa.operator.render.signaling import TurnInputs

__all__ = ["Inputs", "PushSecrets", "TurnInputs", "voiceserver_children"]


@dataclass(frozen=True)
class Inputs:
    """What rendering needs beyond the spec."""

    sfu_replicas: int
    """The SFU Deployment's replicas, as the scaler decided."""
    turn: TurnInputs | None = None
    """The referenced StunnerGateway's URIs and secret, once known."""
    push: PushSecrets | None = None
    """The revision of the Secrets holding push keys (`spec.calls.push`), once read."""


def voiceserver_children(vs: VoiceServer, inputs: Inputs) -> list[Manifest]:
    """Every child the VoiceServer should have, in apply order (config before the pods that read it).

    The generated SFU control Secret is not here: it is created once, with a random value, and never
    re-applied (see `sfu.control_secret`).
    """
    children: list[Manifest] = [signaling.config_map(vs, inputs.turn)]
    if inputs.turn is not None:
        children.append(signaling.turn_secret(vs, inputs.turn))
    if vs.spec.redis.managed:
        children += [redis.service(vs), redis.stateful_set(vs), redis.network_policy(vs)]
    children += [
        signaling.service(vs),
        signaling.deployment(vs, inputs.turn, inputs.push),
        signaling.disruption_budget(vs),
        sfu.service(vs),
        sfu.deployment(vs, inputs.sfu_replicas),
        sfu.disruption_budget(vs),
        sfu.network_policy(vs),
    ]
    ingress = signaling.ingress(vs)
    if ingress is not None:
        children.append(ingress)
    return children
