"""pytest plugin with the session-scoped `kube_cluster` fixture: a real local control plane.

Registered from the repository's root conftest.py (`pytest_plugins`). The first use on a machine
compiles Kubernetes (many minutes, then cached): that build runs before the first test, outside any
test's timeout, and only when a selected test uses the fixture.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.controlplane import ControlPlane, ControlPlaneError, build_tools

FIXTURE = "kube_cluster"
_build_error = pytest.StashKey[str]()


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl command whose message includes what kubectl printed."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@dataclass(frozen=True)
class KubeCluster:
    """A running local cluster: its admin kubeconfig, the folder of its binaries (kubectl among them),
    and the ControlPlane running it."""

    kubeconfig: Path
    bin_dir: Path
    state_dir: Path
    control_plane: ControlPlane

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the cluster; with check=True a non-zero exit raises KubectlError."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def get_json(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> None:
        """Apply manifests given as dicts (kubectl reads JSON as well as YAML)."""
        ns = [f"--namespace={namespace}"] if namespace else []
        items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", *ns, "-f", "-", input=json.dumps(items))


def _uses_cluster(session: pytest.Session) -> bool:
    return any(FIXTURE in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Build the binaries before the first test if any selected test needs the cluster, so that the
    cold build is not counted against that test's timeout. Its progress is shown live."""
    if session.config.option.collectonly or not _uses_cluster(session):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    try:
        if capture is not None:
            with capture.global_and_fixture_disabled():
                build_tools()
        else:
            build_tools()
    except ControlPlaneError as exc:
        session.config.stash[_build_error] = str(exc)


@pytest.fixture(scope="session")
def kube_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    """A control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok with three
    Ready fake nodes) for the whole session, stopped at its end. Tests share it: use a namespace or
    names of your own."""
    error = request.config.stash.get(_build_error, None)
    if error is not None:
        pytest.fail(f"building the control plane failed: {error}")
    bin_dir = build_tools()
    state_dir = tmp_path_factory.mktemp("kube-cluster")
    plane = ControlPlane(bin_dir, die_with_parent=True)
    plane.start(state_dir)
    try:
        yield KubeCluster(plane.kubeconfig, bin_dir, state_dir, plane)
    finally:
        plane.stop()


__all__ = ["KubeCluster", "KubectlError", "kube_cluster", "pytest_runtestloop"]
