"""A voice stack applied to a kind cluster, seen from the host: readiness, tokens and invites, pods,
logs. Shared by `make kind-demo` (e2e/kind/__main__.py) and the kind suites (fixtures.py)."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from e2e.kind.cluster import OPERATOR_NAMESPACE, Cluster
from e2e.kind.stack import StackPorts
from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.tokens import mint_token

JWT_SECRET = "kind-e2e-jwt-secret-0123456789abcdefghij"


@dataclass
class Stack:
    """A voice stack (stack.manifests) applied to a cluster, reached from the host through its ports."""

    cluster: Cluster
    namespace: str
    ports: StackPorts
    jwt_secret: str = JWT_SECRET
    name: str = "demo"
    server_id: str = "demo"
    timings: dict[str, float] = field(default_factory=dict)
    """Figures measured on it (seconds), for the closing notes of those who run the suites."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.signaling.host_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ports.signaling.host_port}/socket"

    def token(self, user: str, grants: str = "connect,speak") -> str:
        claims = VoiceClaims(
            sub=user, name=user.title(), server=self.server_id, perms=parse_permissions(grants)
        )
        return mint_token(claims, self.jwt_secret, ttl_s=3600)

    def pods(self, component: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cluster.get(
            "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/component={component}"
        )["items"]
        return items

    def voiceserver(self) -> dict[str, Any]:
        body: dict[str, Any] = self.cluster.get("voiceserver", self.name, "-n", self.namespace)
        return body

    def ready(self) -> bool:
        for kind, name in (("stunnergateway", "edge"), ("voiceserver", self.name)):
            if not is_ready(self.cluster.get(kind, name, "-n", self.namespace)):
                return False
        # Every workload rolled out (a first rollout is often followed by one with the TURN settings).
        for kind in ("deployments", "statefulsets"):
            if not all(map(settled, self.cluster.get(kind, "-n", self.namespace)["items"])):
                return False
        # The gateway relays to every ready SFU pod (a channel may be placed on any of them).
        gateway = self.cluster.get("stunnergateway", "edge", "-n", self.namespace)
        sfus = [p for p in self.pods("sfu") if is_ready(p) and not p["metadata"].get("deletionTimestamp")]
        if (gateway.get("status") or {}).get("endpoints", 0) < len(sfus):
            return False
        return answers(f"{self.base_url}/readyz")

    def delete(self) -> None:
        self.cluster.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)

    def output(self) -> str:
        """For failure messages: the end of signaling's and the SFUs' logs, the namespace's events
        (scaling decisions, pod lifecycle) and the operator's log lines about this stack."""
        parts = []
        for component in ("signaling", "sfu"):
            selector = f"app.kubernetes.io/component={component}"
            logs = self.cluster.kubectl(
                "logs", "-n", self.namespace, "-l", selector, "--tail=60", "--prefix", check=False
            )
            parts.append(f"--- {component} logs (tail):\n{logs}")
        events = self.cluster.kubectl(
            "get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False
        )
        parts.append(f"--- events:\n{events}")
        operator = self.cluster.kubectl(
            "logs", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=voxa-operator",
            "--tail=400", "--prefix", check=False,
        )  # fmt: skip
        mine = [line for line in operator.splitlines() if self.namespace in line or '"scale"' in line]
        parts.append("--- operator log lines about it:\n" + "\n".join(mine[-60:]))
        return "\n".join(parts)

    def invite(self, user: str, grants: str = "connect,speak") -> str:
        return f"{self.base_url}/?channel=lobby&token={self.token(user, grants)}"


def answers(url: str) -> bool:
    """Whether an HTTP GET of this (host loopback) URL answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - http://127.0.0.1 only
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def is_ready(obj: dict[str, Any]) -> bool:
    """A pod, VoiceServer or StunnerGateway whose Ready condition is True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def settled(workload: dict[str, Any]) -> bool:
    """A Deployment or StatefulSet whose pods are all of its latest template, ready, and no more."""
    spec, status = workload.get("spec") or {}, workload.get("status") or {}
    wanted = spec.get("replicas", 1)
    return bool(
        status.get("observedGeneration") == workload["metadata"].get("generation")
        and status.get("updatedReplicas", 0) == wanted
        and status.get("readyReplicas", 0) == wanted
        and status.get("replicas", 0) == wanted
    )


def live_pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods matching a label selector that are not being deleted."""
    items: list[dict[str, Any]] = cluster.get("pods", "-n", namespace, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return live_pods(cluster, OPERATOR_NAMESPACE, "app.kubernetes.io/name=voxa-operator")


def pod_ready_seconds(pod: dict[str, Any]) -> float | None:
    """Seconds from a pod's creation to its Ready condition, or None while it is not ready."""
    conditions = {c["type"]: c for c in pod.get("status", {}).get("conditions") or []}
    ready = conditions.get("Ready")
    if not ready or ready.get("status") != "True":
        return None
    created = _time(pod["metadata"]["creationTimestamp"])
    return _time(ready["lastTransitionTime"]) - created


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
