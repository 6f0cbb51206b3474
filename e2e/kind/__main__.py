"""`python -m e2e.kind images|up|demo|down|status`: Voxa on a local kind cluster with real pods.

- `images [--registry R]`: build the voxa, stunnerd and redis images tagged R/<name>:<version> (the
  Docker engine is started if none runs).
- `up`: the node image (built once), the cluster `voxa` with signaling and the TURN gateway's ports
  mapped on 127.0.0.1, Voxa's images loaded, the chart installed; prints `export KUBECONFIG=...` last.
- `demo`: after `up`, a StunnerGateway and a VoiceServer in namespace voxa-demo; waits until they are
  Ready and signaling answers on the host, then prints invite links as `make demo` does.
- `down`: the cluster, its network and fence, and the engine if `up` started it.

Run it as `.venv/bin/python -m e2e.kind` from the repository root (`make kind`, `make kind-demo`).
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from e2e.kind import images, stack
from e2e.kind.cluster import Cluster, ClusterSpec, log
from e2e.kind.deployed import Stack
from e2e.kind.engine import EngineError, ensure_engine, stop_engine
from e2e.kind.paths import BUILD_DIR
from voxa.common.demo import invites
from voxa.common.testing.wait import eventually
from voxa.common.version import IMAGE_REGISTRY

NAME = "voxa"
STATE_DIR = BUILD_DIR / "kind"
DEMO_NAMESPACE = "voxa-demo"

OPERATOR_VALUES: dict[str, Any] = {
    # A two-core node also runs the control plane: the operator asks for little.
    "resources": {"requests": {"cpu": "20m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}},
}


def cluster(state_dir: Path, node_image: str = "") -> Cluster:
    spec = ClusterSpec(NAME, ports=stack.DEMO_PORTS.mappings(), node_image=node_image)
    return Cluster(spec, state_dir / NAME)


def build_images(registry: str) -> int:
    ensure_engine(STATE_DIR)
    for target, ref in images.voxa_images(registry).items():
        print(f"{target:<9} {ref:<40} {images.image_size(ref) / 1e6:.0f} MB", flush=True)
    return 0


def up(state_dir: Path) -> int:
    start = time.monotonic()
    ensure_engine(state_dir)
    node_image, refs = images.build_all()
    kind = cluster(state_dir, node_image)
    took = kind.create()
    if took:
        log(f"kind create took {took:.0f}s")
    kind.load_images(list(refs.values()))
    log("installing the chart (two operator replicas)")
    kind.install_chart(OPERATOR_VALUES)
    log(f"cluster {NAME} ready in {time.monotonic() - start:.0f}s")
    print(f"export KUBECONFIG={kind.kubeconfig}", flush=True)
    return 0


def _demo_secret(kind: Cluster) -> str:
    """The demo's JWT secret: the one in the cluster when the demo was applied before (its invites
    stay valid), else a new one."""
    found = kind.kubectl("get", "secret", "demo-jwt", "-n", DEMO_NAMESPACE, "-o", "json", check=False)
    if found:
        return base64.b64decode(json.loads(found)["data"]["secret"]).decode()
    return secrets.token_urlsafe(32)


def demo(state_dir: Path) -> int:
    kind = cluster(state_dir)
    if not kind.exists():
        log(f"no cluster {NAME}: run `make kind` first")
        return 1
    kind.create()  # exports the kubeconfig again, in case it was removed
    secret = _demo_secret(kind)
    objects = stack.manifests(namespace=DEMO_NAMESPACE, ports=stack.DEMO_PORTS, jwt_secret=secret)
    kind.kubectl("apply", "-f", "-", input=json.dumps(stack.as_list(objects)))
    deployed = Stack(kind, DEMO_NAMESPACE, stack.DEMO_PORTS, jwt_secret=secret)
    eventually(deployed.ready, 300, "the StunnerGateway and the VoiceServer Ready, signaling answering")
    base = deployed.base_url
    print("Voxa on kind: signaling, SFU, Redis and a TURN gateway in namespace voxa-demo.", flush=True)
    print(f"  Open:    {base}/  (channel voice:demo:lobby)", flush=True)
    for line in invites(base, "demo", secret):
        print(f"  {line}", flush=True)
    turn = stack.DEMO_PORTS
    print(
        f"  Media is relayed by the gateway at 127.0.0.1:{turn.turn_a.host_port}/udp"
        f" (and :{turn.turn_b.host_port} after a secret rotation).",
        flush=True,
    )
    print(f"  The cluster stays up: `make kind-down` removes it. export KUBECONFIG={kind.kubeconfig}")
    return 0


def down(state_dir: Path) -> int:
    kind = cluster(state_dir)
    try:
        kind.delete()
        log(f"deleted cluster {NAME}")
    except EngineError as exc:
        log(str(exc))
    if stop_engine(state_dir):
        log("stopped the Docker engine `make kind` started")
    return 0


def status(state_dir: Path) -> int:
    kind = cluster(state_dir)
    if not kind.exists():
        print(f"no kind cluster {NAME}")
        return 1
    print(kind.kubectl("get", "nodes,pods", "-A", "-o", "wide"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.kind", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["images", "up", "demo", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR)
    parser.add_argument(
        "--registry", default=IMAGE_REGISTRY, help="images: the repository prefix of the tags (to push them)"
    )
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    commands = {
        "images": lambda _: build_images(args.registry),
        "up": up,
        "demo": demo,
        "down": down,
        "status": status,
    }
    try:
        result: int = commands[args.command](state_dir)
    except (EngineError, AssertionError) as exc:
        log(str(exc))
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
