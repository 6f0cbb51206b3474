"""The operator as a real process (`voxa operator`) against the real local control plane."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, VOXA
from e2e.cluster.fixtures import KubeCluster
from voxa.common.ports import free_port
from voxa.common.testing.procs import Proc, http_ok, tail, wait_ready
from voxa.common.testing.wait import eventually


@dataclass
class OperatorProcess:
    """One `voxa operator` process; start/stop/restart keep the same settings and log file."""

    cluster: KubeCluster
    log_path: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    handle: Proc | None = None
    port: int = 0
    metrics_port: int = 0

    def start(self) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "VOXA_OPERATOR_RESYNC_S": "1",
            # kwok runs no kubelet: nothing propagates mounted Secrets, so there is nothing to wait for.
            "VOXA_OPERATOR_TURN_PROPAGATION_S": "2",
            "VOXA_OPERATOR_LIVENESS_PORT": str(self.port),
            "VOXA_OPERATOR_LIVENESS_HOST": "127.0.0.1",
            "VOXA_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "VOXA_OPERATOR_PEERING": "",
            "VOXA_OPERATOR_CLEANUP_ATTEMPTS": "3",
            **self.env_overrides,
        }
        self.handle = Proc("operator", [VOXA, "operator"], env, self.log_path).start()
        wait_ready(self.handle, self._healthy, 60, "the operator's liveness endpoint")

    def _healthy(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.port}/healthz")

    def alive(self) -> bool:
        assert self.handle is not None
        self.handle.check_alive()
        return self._healthy()

    def reconciles(self) -> float:
        """voxa_operator_reconciles_total, all triggers."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("voxa_operator_reconciles_total{")
        )

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop(timeout=20)

    def log_tail(self, chars: int = 4000) -> str:
        return tail(self.log_path, chars)


@pytest.fixture(scope="session")
def crds_installed(kube_cluster: KubeCluster) -> KubeCluster:
    kube_cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd", "--all")
    return kube_cluster


@pytest.fixture
def operator(crds_installed: KubeCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crds_installed, tmp_path / "operator.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print(f"--- operator log tail ---\n{proc.log_tail()}")


@pytest.fixture
def namespace(crds_installed: KubeCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    crds_installed.kubectl("create", "namespace", name)
    yield name
    crds_installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def voiceserver(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}},
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
    }
    body.update(spec)
    return {
        "apiVersion": "voxa.dev/v1alpha1",
        "kind": "VoiceServer",
        "metadata": {"name": name},
        "spec": body,
    }


def get(cluster: KubeCluster, namespace: str, *what: str) -> Any:
    result = cluster.kubectl("get", "-n", namespace, *what, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    return json.loads(result.stdout)


def voiceserver_when(
    cluster: KubeCluster,
    namespace: str,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Wait until the VoiceServer satisfies predicate; return its body."""

    def check() -> dict[str, Any] | None:
        body = get(cluster, namespace, "voiceserver", name)
        return dict(body) if body is not None and predicate(body) else None

    return eventually(check, timeout, what)


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None
