"""SFU scaling policy, pure: live load in, one decision out.

The policy is a buffer, as game-server fleets do it: keep enough SFU pods for the participants there are
plus `buffer` idle ones for sudden joins, i.e. ceil(participants / targetParticipantsPerPod) + buffer,
clamped to [minReplicas, maxReplicas] (or the pinned `spec.sfu.replicas`). Scaling up is immediate.
Scaling down never cuts a call short: one pod at a time is marked draining in the registry (signaling
stops placing channels on it), and it is removed only once it is empty or its drain deadline has passed.
A drain starts only once the load has asked for fewer pods for `scaleDownStabilizationSeconds` without a
break (as the HorizontalPodAutoscaler's scale-down stabilization window), so a dip moves no call.
Removal sets `controller.kubernetes.io/pod-deletion-cost` on exactly that pod before lowering replicas,
so the ReplicaSet deletes it and not a busy neighbour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from voxa.operator.models import SfuSpec

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
DRAIN_DELETION_COST = "-1000"


@dataclass(frozen=True)
class SfuPod:
    """What the scaler needs to know of one SFU pod."""

    name: str
    ready: bool
    deleting: bool = False


@dataclass(frozen=True)
class PodLoad:
    """One registry entry: the SFU's id is its pod name."""

    peers: int
    draining: bool = False


@dataclass(frozen=True)
class DrainState:
    """The scale-down in progress, persisted in the VoiceServer's status (survives operator restarts)."""

    pod: str
    since: float
    deadline: float


@dataclass(frozen=True)
class Decision:
    replicas: int
    """The SFU Deployment's replicas after this decision."""
    desired: int
    """What the policy asks for (replicas converge to it, one drained pod at a time)."""
    draining: DrainState | None
    """The drain in progress after this decision."""
    mark: str | None = None
    """Pod to mark draining in the registry now."""
    unmark: str | None = None
    """Pod whose drain mark is withdrawn (load came back, or its pod is gone)."""
    remove: str | None = None
    """Pod to give the lowest deletion cost before replicas go down by one."""
    reason: str = ""
    message: str = ""
    low_since: float | None = None
    """Since when the load has asked for fewer pods than there are, without a break (None: it does not)."""


def desired_replicas(spec: SfuSpec, participants: int) -> int:
    if spec.replicas is not None:
        wanted = spec.replicas
    else:
        wanted = math.ceil(participants / spec.targetParticipantsPerPod) + spec.buffer
    return max(spec.minReplicas, min(spec.maxReplicas, wanted))


def _victim(pods: list[SfuPod], loads: dict[str, PodLoad]) -> SfuPod | None:
    """The cheapest pod to remove: not ready first (the ReplicaSet would pick it anyway), then fewest
    participants, then the newest name for a stable choice."""
    live = [p for p in pods if not p.deleting]
    if not live:
        return None
    return min(live, key=lambda p: (p.ready, loads.get(p.name, PodLoad(0)).peers, p.name))


def decide(
    spec: SfuSpec,
    replicas: int,
    pods: list[SfuPod],
    loads: dict[str, PodLoad],
    draining: DrainState | None,
    now: float,
    low_since: float | None = None,
) -> Decision:
    """One scaling step.

    `replicas` is the Deployment's current replicas; `pods` its pods; `loads` the registry by pod name;
    `draining` the drain in progress, if any; `low_since` the previous decision's (when the load
    started asking for fewer pods).
    """
    participants = sum(load.peers for load in loads.values())
    desired = desired_replicas(spec, participants)
    names = {p.name for p in pods if not p.deleting}

    if draining is not None and draining.pod not in names:
        # The pod went away by itself (evicted, node lost): nothing left to drain.
        return Decision(
            replicas=replicas,
            desired=desired,
            draining=None,
            unmark=draining.pod,
            low_since=low_since,
            reason="DrainTargetGone",
            message=f"SFU pod {draining.pod} disappeared while draining",
        )

    if desired >= replicas:
        if draining is not None:
            return Decision(
                replicas=desired,
                desired=desired,
                draining=None,
                unmark=draining.pod,
                reason="DrainCancelled",
                message=f"load needs {desired} SFU pods again; {draining.pod} takes calls again",
            )
        if desired > replicas:
            return Decision(
                replicas=desired,
                desired=desired,
                draining=None,
                reason="ScaledUp",
                message=f"SFU pods {replicas} → {desired} for {participants} participants",
            )
        return Decision(replicas=replicas, desired=desired, draining=None)

    low_since = now if low_since is None else low_since
    if draining is None and now - low_since < spec.scaleDownStabilizationSeconds:
        return Decision(replicas=replicas, desired=desired, draining=None, low_since=low_since)

    if draining is None:
        victim = _victim(pods, loads)
        if victim is None:
            return Decision(
                replicas=desired, desired=desired, draining=None, reason="ScaledDown", low_since=low_since
            )
        # Even an empty pod is marked first: signaling must stop placing channels on it before it goes.
        load = loads.get(victim.name, PodLoad(0))
        state = DrainState(pod=victim.name, since=now, deadline=now + spec.drainDeadlineSeconds)
        return Decision(
            replicas=replicas,
            desired=desired,
            draining=state,
            mark=victim.name,
            low_since=low_since,
            reason="DrainStarted",
            message=f"draining SFU pod {victim.name} ({load.peers} participants) before scaling "
            f"{replicas} → {replicas - 1}; deadline in {spec.drainDeadlineSeconds} s",
        )

    peers = loads.get(draining.pod, PodLoad(0)).peers
    if peers == 0 or now >= draining.deadline:
        why = "empty" if peers == 0 else f"deadline passed with {peers} participants"
        return Decision(
            replicas=replicas - 1,
            desired=desired,
            draining=None,
            remove=draining.pod,
            low_since=low_since,
            reason="ScaledDown",
            message=f"SFU pods {replicas} → {replicas - 1}: removed drained pod {draining.pod} ({why})",
        )
    return Decision(replicas=replicas, desired=desired, draining=draining, low_since=low_since)
