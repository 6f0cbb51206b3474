"""pytest plugin of the kind suite: one kind cluster for the session, with Voxa installed by Helm.

Registered from the repository's root conftest.py. Before the first test that uses `voxa_kind`, the
Docker engine is started if none runs, and the node image and Voxa's images are built (cached; the
first build on a machine compiles Kubernetes and takes minutes), outside any test's timeout and with
the progress shown. The cluster (`voxa-e2e`) maps STACKS sets of ports on 127.0.0.1, one per voice
stack a test module applies (`deploy_stack`), so modules never share a VoiceServer.

`--keep-cluster` (pytest-kind's option) keeps the cluster, and the engine, after the session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from e2e.kind import images, stack
from e2e.kind.cluster import Cluster, ClusterSpec, PortMapping
from e2e.kind.deployed import JWT_SECRET, Stack, pod_ready_seconds
from e2e.kind.engine import EngineError, ensure_engine, stop_engine
from e2e.kind.paths import BUILD_DIR
from voxa.common.ports import UDP, free_port
from voxa.common.testing.wait import eventually

FIXTURE = "voxa_kind"
NAME = "voxa-e2e"
STATE_DIR = BUILD_DIR / "kind-e2e"
STACKS = 6
NODE_PORT_BASE = 30100
OPERATOR_VALUES: dict[str, Any] = {
    "resources": {"requests": {"cpu": "20m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}},
    "logLevel": "info",
}
_prepared = pytest.StashKey[dict[str, Any]]()


def _host_ports(count: int) -> list[tuple[int, int, int]]:
    """(signaling TCP, TURN slot a UDP, slot b UDP) host ports, each free now."""
    return [(free_port(), free_port(kinds=UDP), free_port(kinds=UDP)) for _ in range(count)]


def stack_ports(host_ports: list[tuple[int, int, int]]) -> list[stack.StackPorts]:
    out = []
    for i, (sig, a, b) in enumerate(host_ports):
        base = NODE_PORT_BASE + 10 * i
        out.append(
            stack.StackPorts(
                signaling=PortMapping(sig, base, "TCP"),
                turn_a=PortMapping(a, base + 1, "UDP"),
                turn_b=PortMapping(b, base + 2, "UDP"),
            )
        )
    return out


@dataclass
class KindEnv:
    """The session's cluster, its port sets and what setting it up took."""

    cluster: Cluster
    ports: list[stack.StackPorts]
    images: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    _handed_out: int = 0

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.cluster.kubectl(*args, input=input, check=check)

    def get(self, *args: str) -> Any:
        return self.cluster.get(*args)

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(stack.as_list(objects)))

    def take_ports(self) -> stack.StackPorts:
        """A port set no other module uses."""
        if self._handed_out >= len(self.ports):
            raise RuntimeError(f"all {len(self.ports)} port sets are taken: raise STACKS")
        ports = self.ports[self._handed_out]
        self._handed_out += 1
        return ports


def deploy_stack(env: KindEnv, namespace: str, timeout: float = 300.0, **options: Any) -> Stack:
    """Apply the voice stack (e2e/kind/stack.py) in `namespace` with a port set of its own and wait
    until the gateway and the VoiceServer are Ready and signaling answers on the host; the pods'
    created-to-Ready times go into the session's figures."""
    ports = env.take_ports()
    objects = stack.manifests(namespace=namespace, ports=ports, jwt_secret=JWT_SECRET, **options)
    env.apply(objects)
    deployed = Stack(env.cluster, namespace, ports, timings=env.timings)
    eventually(deployed.ready, timeout, f"the voice stack in {namespace} Ready")
    for component in ("signaling", "sfu", "redis", "stunnerd"):
        times = [t for t in map(pod_ready_seconds, deployed.pods(component)) if t is not None]
        if times:
            env.timings.setdefault(f"pod_ready_s.{component}", max(times))
    return deployed


def _uses_kind(session: pytest.Session) -> bool:
    return any(FIXTURE in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Start the engine and build the images before the first test, when a selected test needs the
    cluster, so that the cold build counts against no test's timeout. Its progress is shown live."""
    if session.config.option.collectonly or not _uses_kind(session):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    prepared: dict[str, Any] = {}
    try:
        if capture is not None:
            with capture.global_and_fixture_disabled():
                prepared = _prepare()
        else:
            prepared = _prepare()
    except (EngineError, OSError) as exc:
        prepared = {"error": str(exc)}
    session.config.stash[_prepared] = prepared


def _prepare() -> dict[str, Any]:
    start = time.monotonic()
    engine = ensure_engine(STATE_DIR)
    node, refs = images.build_all()
    sizes = {name: images.image_size(ref) for name, ref in refs.items()}
    return {
        "engine_started": engine.pid_file is not None,
        "node_image": node,
        "images": refs,
        "sizes": sizes,
        "build_s": time.monotonic() - start,
    }


@pytest.fixture(scope="session")
def voxa_kind(request: pytest.FixtureRequest) -> Iterator[KindEnv]:
    prepared = request.config.stash.get(_prepared, {})
    if "error" in prepared or not prepared:
        pytest.fail(f"building the kind cluster's images failed: {prepared.get('error', 'not prepared')}")
    keep = bool(request.config.getoption("keep_cluster", False))
    ports = stack_ports(_host_ports(STACKS))
    spec = ClusterSpec(
        NAME, ports=[m for p in ports for m in p.mappings()], node_image=prepared["node_image"]
    )
    cluster = Cluster(spec, STATE_DIR / NAME)
    if cluster.exists():  # left by an interrupted session: its port mappings are not these
        cluster.delete()
    env = KindEnv(cluster, ports, prepared["images"])
    env.timings["images_build_s"] = prepared["build_s"]
    try:
        try:
            env.timings["kind_create_s"] = cluster.create()
        except EngineError as exc:  # e.g. a host port taken between choosing and mapping it
            print(f"kind create failed, once more with other ports: {exc}")
            cluster.delete()
            env.ports = stack_ports(_host_ports(STACKS))
            spec = ClusterSpec(
                NAME, ports=[m for p in env.ports for m in p.mappings()], node_image=spec.node_image
            )
            cluster = env.cluster = Cluster(spec, STATE_DIR / NAME)
            env.timings["kind_create_s"] = cluster.create()
        start = time.monotonic()
        cluster.load_images(list(prepared["images"].values()))
        env.timings["images_load_s"] = time.monotonic() - start
        start = time.monotonic()
        cluster.install_chart(OPERATOR_VALUES)
        env.timings["helm_install_s"] = time.monotonic() - start
        yield env
    finally:
        (STATE_DIR / "timings.json").write_text(
            json.dumps({**env.timings, "image_sizes": prepared.get("sizes", {})}, indent=1)
        )
        if not keep:
            cluster.delete()
            if prepared.get("engine_started"):
                stop_engine(STATE_DIR)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The kind suite's set-up figures, for the closing notes of those who run it."""
    path = STATE_DIR / "timings.json"
    if not terminalreporter.config.stash.get(_prepared, None) or not path.exists():
        return
    terminalreporter.write_sep("-", "kind cluster figures")
    terminalreporter.write_line(path.read_text())


__all__ = [
    "FIXTURE",
    "KindEnv",
    "Stack",
    "deploy_stack",
    "pytest_runtestloop",
    "pytest_terminal_summary",
    "voxa_kind",
]
