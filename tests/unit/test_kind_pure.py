"""The pure parts of the kind tooling (e2e/kind/): the cluster config, the network fence, the demo
stack's manifests (valid for the CRD models), the docker shim's flag rewriting, and the peering
priority by seniority the operator replicas use."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import yaml

from e2e.kind import stack
from e2e.kind.cluster import POD_SUBNET, ClusterSpec, PortMapping, isolation_rules, kind_config
from voxa.operator.main import seniority_priority
from voxa.operator.models import StunnerGatewaySpec, VoiceServerSpec

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "e2e" / "kind"


def test_kind_config_maps_ports_on_loopback_only_and_fits_this_host() -> None:
    config = kind_config(ClusterSpec("t", ports=[PortMapping(4080, 30080), PortMapping(3478, 30478, "UDP")]))
    networking = config["networking"]
    assert networking["apiServerAddress"] == "127.0.0.1" and networking["ipFamily"] == "ipv4"
    assert networking["disableDefaultCNI"] is True  # the node image brings its own
    (node,) = config["nodes"]
    assert {m["listenAddress"] for m in node["extraPortMappings"]} == {"127.0.0.1"}
    assert node["extraPortMappings"][1] == {
        "containerPort": 30478,
        "hostPort": 3478,
        "listenAddress": "127.0.0.1",
        "protocol": "UDP",
    }
    assert yaml.safe_load(node["kubeadmConfigPatches"][0])["failCgroupV1"] is False


def test_the_node_cni_config_serves_the_first_pod_subnet_block() -> None:
    conflist = json.loads(
        (KIND / "node" / "rootfs" / "etc" / "cni" / "net.d" / "10-voxa.conflist").read_text()
    )
    subnet = ipaddress.ip_network(conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    assert subnet.subnet_of(ipaddress.ip_network(POD_SUBNET))  # type: ignore[arg-type]
    assert subnet.network_address == ipaddress.ip_network(POD_SUBNET).network_address


def test_the_fence_drops_both_forwarding_directions_and_new_connections_to_the_host() -> None:
    rules = isolation_rules("br0")
    assert ("DOCKER-USER", ["-i", "br0", "!", "-o", "br0", "-j", "DROP"]) in rules
    assert ("DOCKER-USER", ["-o", "br0", "!", "-i", "br0", "-j", "DROP"]) in rules
    assert ("INPUT", ["-i", "br0", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"]) in rules


def test_the_demo_stack_is_valid_and_dials_what_kind_maps() -> None:
    objects = stack.manifests(namespace="ns", ports=stack.DEMO_PORTS, jwt_secret="x" * 32)
    kinds = {o["kind"]: o for o in objects}
    gateway = StunnerGatewaySpec.model_validate(kinds["StunnerGateway"]["spec"])
    server = VoiceServerSpec.model_validate(kinds["VoiceServer"]["spec"])
    (listener,) = gateway.listeners
    assert gateway.publicAddress == "127.0.0.1"
    # What clients dial (publicAddress:port) is the host port kind maps to the listener's node port.
    assert (listener.port, listener.nodePort) == (3478, 30478)
    assert (listener.alternatePort, listener.alternateNodePort) == (3479, 30479)
    assert server.signaling.service.nodePort == stack.DEMO_PORTS.signaling.node_port
    assert server.stunnerGatewayRef is not None and server.stunnerGatewayRef.name == "edge"


def test_the_docker_shim_replaces_privileged_in_run_and_drops_it_in_exec() -> None:
    env = {**os.environ, "VOXA_REAL_DOCKER": "/bin/echo"}
    shim = str(KIND / "shim" / "docker")
    run = subprocess.run(
        [shim, "run", "--privileged", "-d", "img"], env=env, capture_output=True, text=True, check=True
    )
    args = run.stdout.split()
    assert "--privileged" not in args and "--cap-add=ALL" in args and "--cap-drop=SYS_RESOURCE" in args
    assert args[0] == "run" and args[-2:] == ["-d", "img"]
    exec_ = subprocess.run(
        [shim, "exec", "--privileged", "-i", "node", "ctr"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert exec_.stdout.split() == ["exec", "-i", "node", "ctr"]


def test_earlier_replicas_get_higher_peering_priorities() -> None:
    assert seniority_priority(1_000) > seniority_priority(2_000) > 0
