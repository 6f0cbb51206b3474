"""kind clusters on an isolated Docker network: created, loaded with Voxa's images, given the chart.

`KindCluster` (pytest-kind's, which `make kind` and the e2e/kind suite share) is driven here with
what this machine needs:

- kind runs with `shim/docker` first on its PATH (no --privileged here), the node image of
  `images.node_image()` and the Docker network `voxa-kind`, made beforehand without masquerading and
  fenced by iptables rules: nothing on it is forwarded off the bridge, and it cannot open connections
  to the host. The host reaches the cluster only through ports kind maps on 127.0.0.1.
- CoreDNS answers cluster names only (its `forward` to the node's resolver is removed), so no lookup
  leaves the machine either.
- Every image the cluster runs is in it before it is used: the components in the node image, Voxa's
  loaded with `kind load`; no pull is ever attempted (the node's registry hosts point at a closed port).

The pure parts (`kind_config`, `isolation_rules`) are unit-tested without Docker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pytest_kind import KindCluster

from e2e.kind import images
from e2e.kind.engine import EngineError, docker, docker_client
from e2e.kind.paths import HERE, ROOT

NETWORK = "voxa-kind"
BRIDGE = "voxa-kind0"
SUBNET = "172.31.250.0/24"
POD_SUBNET = "10.244.0.0/16"  # the node's CNI config (node/rootfs/etc/cni) uses its first /24
SERVICE_SUBNET = "10.96.0.0/16"
CHART = ROOT / "charts" / "voxa"
OPERATOR_NAMESPACE = "voxa-system"
RELEASE = "voxa"


def log(message: str) -> None:
    print(f"kind: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PortMapping:
    """A node port published on the host's loopback: 127.0.0.1:host_port -> node:node_port."""

    host_port: int
    node_port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    ports: Sequence[PortMapping] = ()
    node_image: str = ""


def kind_config(spec: ClusterSpec) -> dict[str, Any]:
    """kind's cluster config: one node, no default CNI (the node image has its own), IPv4, the API
    server and every mapped port on 127.0.0.1, and a kubelet that accepts this host's cgroup v1."""
    kubelet_patch = {
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "failCgroupV1": False,
    }
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": spec.name,
        "networking": {
            "ipFamily": "ipv4",
            "apiServerAddress": "127.0.0.1",
            "disableDefaultCNI": True,
            "podSubnet": POD_SUBNET,
            "serviceSubnet": SERVICE_SUBNET,
            "kubeProxyMode": "iptables",
        },
        "nodes": [
            {
                "role": "control-plane",
                "kubeadmConfigPatches": [yaml.safe_dump(kubelet_patch)],
                "extraPortMappings": [
                    {
                        "containerPort": p.node_port,
                        "hostPort": p.host_port,
                        "listenAddress": "127.0.0.1",
                        "protocol": p.protocol,
                    }
                    for p in spec.ports
                ],
            }
        ],
    }


def isolation_rules(bridge: str = BRIDGE) -> list[tuple[str, list[str]]]:
    """(chain, rule) pairs that keep the kind network on this machine: nothing is forwarded off or
    onto the bridge (the host reaches nodes directly, and published ports go through docker-proxy on
    the host), and nodes open no connection to the host (only replies pass)."""
    return [
        ("DOCKER-USER", ["-i", bridge, "!", "-o", bridge, "-j", "DROP"]),
        ("DOCKER-USER", ["-o", bridge, "!", "-i", bridge, "-j", "DROP"]),
        ("INPUT", ["-i", bridge, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"]),
    ]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    return subprocess.run([*sudo, "iptables", "-w", *args], capture_output=True, text=True, check=False)


def ensure_network() -> None:
    """The `voxa-kind` network and its fence; idempotent."""
    existing = docker("network", "ls", "--filter", f"name=^{NETWORK}$", "--format", "{{.Name}}").split()
    if NETWORK not in existing:
        log(f"creating the isolated Docker network {NETWORK} ({SUBNET}, no masquerading)")
        docker(
            "network",
            "create",
            "--driver=bridge",
            f"--subnet={SUBNET}",
            f"--opt=com.docker.network.bridge.name={BRIDGE}",
            "--opt=com.docker.network.bridge.enable_ip_masquerade=false",
            "--opt=com.docker.network.driver.mtu=1500",
            NETWORK,
        )
    for chain, rule in isolation_rules():
        if _iptables("-C", chain, *rule).returncode != 0:
            result = _iptables("-I", chain, "1", *rule)
            if result.returncode != 0:
                raise EngineError(f"iptables -I {chain} {' '.join(rule)}: {result.stderr.strip()}")


def remove_network() -> None:
    """Remove the network and its fence once no container uses it."""
    try:
        attached = json.loads(docker("network", "inspect", NETWORK, "--format", "{{json .Containers}}"))
    except EngineError:
        attached = None
    if attached:
        return
    if attached is not None:
        docker("network", "rm", NETWORK)
    for chain, rule in isolation_rules():
        while _iptables("-C", chain, *rule).returncode == 0:
            _iptables("-D", chain, *rule)


@dataclass
class Cluster:
    """A kind cluster of this machine, through pytest-kind's KindCluster with the right environment."""

    spec: ClusterSpec
    state_dir: Path
    kind: KindCluster = field(init=False)

    def __post_init__(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.kind = KindCluster(
            self.spec.name,
            kubeconfig=self.state_dir / "kubeconfig",
            image=self.spec.node_image or None,
            kind_path=images.tool("kind"),
            kubectl_path=images.kube_binary().with_name("kubectl"),
        )

    @property
    def kubeconfig(self) -> Path:
        return Path(self.kind.kubeconfig_path)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{HERE / 'shim'}:{os.environ.get('PATH', '')}",
            "VOXA_REAL_DOCKER": docker_client(),
            "KIND_EXPERIMENTAL_DOCKER_NETWORK": NETWORK,
            "KUBECONFIG": str(self.kubeconfig),
        }

    def _run(self, name: str, argv: list[str], timeout: float, input: str | None = None) -> str:
        """Run one of the cluster's tools with its environment; a failure raises with its output."""
        result = subprocess.run(
            argv, env=self.env(), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise EngineError(f"{name} {' '.join(argv[1:4])} ... failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def _kind(self, *args: str, timeout: float = 600.0) -> str:
        return self._run("kind", [str(self.kind.kind_path), *args], timeout)

    def exists(self) -> bool:
        return self.spec.name in self._kind("get", "clusters").split()

    def create(self) -> float:
        """Create the cluster unless it exists; returns the seconds `kind create` took (0 if reused)."""
        ensure_network()
        if self.exists():
            self._kind("export", "kubeconfig", "--name", self.spec.name, "--kubeconfig", str(self.kubeconfig))
            return 0.0
        config = self.state_dir / "kind-config.yaml"
        config.write_text(yaml.safe_dump(kind_config(self.spec), sort_keys=False))
        log(f"creating kind cluster {self.spec.name}")
        start = time.monotonic()
        self._kind(
            "create",
            "cluster",
            "--name",
            self.spec.name,
            "--image",
            self.spec.node_image,
            "--config",
            str(config),
            "--kubeconfig",
            str(self.kubeconfig),
            "--wait",
            "180s",
            timeout=900,
        )
        took = time.monotonic() - start
        self.cluster_dns_only()
        return took

    def delete(self) -> None:
        if self.exists():
            self._kind("delete", "cluster", "--name", self.spec.name, "--kubeconfig", str(self.kubeconfig))
        remove_network()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        argv = [str(self.kind.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        if check:
            return self._run("kubectl", argv, 300, input)
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=300, check=False)
        return result.stdout if result.returncode == 0 else ""

    def get(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def cluster_dns_only(self) -> None:
        """Drop CoreDNS's forwarding to the node's resolver: pods resolve cluster names, nothing else."""
        corefile = json.loads(self.kubectl("get", "configmap", "coredns", "-n", "kube-system", "-o", "json"))
        text = corefile["data"]["Corefile"]
        lines = text.splitlines()
        kept = []
        skipping = False
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("forward ."):
                skipping = stripped.endswith("{")
                continue
            if skipping:
                skipping = stripped != "}"
                continue
            kept.append(line)
        if kept != lines:
            corefile["data"]["Corefile"] = "\n".join(kept) + "\n"
            self.kubectl("apply", "-f", "-", input=json.dumps(corefile))
            self.kubectl("rollout", "restart", "deployment/coredns", "-n", "kube-system")

    def load_images(self, refs: Sequence[str]) -> None:
        """`kind load docker-image`: the images go into the node's containerd, no registry involved."""
        self._kind("load", "docker-image", "--name", self.spec.name, *refs, timeout=900)

    def helm(self, *args: str, timeout: float = 600.0) -> str:
        return self._run(
            "helm", [str(images.tool("helm")), "--kubeconfig", str(self.kubeconfig), *args], timeout
        )

    def install_chart(self, values: dict[str, Any] | None = None, *, upgrade: bool = False) -> str:
        """`helm upgrade --install` of charts/voxa into voxa-system, waiting for the operator."""
        values_file = self.state_dir / "values.yaml"
        values_file.write_text(yaml.safe_dump(values or {}))
        return self.helm(
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--values",
            str(values_file),
            "--wait",
            "--timeout",
            "5m",
            *(["--reuse-values"] if upgrade else []),
        )
