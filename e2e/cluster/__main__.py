"""`python -m e2e.cluster up|down|status [--state-dir build/cluster]`: a local cluster for development.

`up` builds the binaries (cached), starts the control plane in the background, applies the CRDs in
crds/ and starts `voxa operator` against it, then prints `export KUBECONFIG=...` as the last line of
stdout, so that `eval "$(make -s cluster)"` or copying that line points kubectl at it. Running it
again while the cluster is up changes nothing but re-applies the CRDs and starts the operator if it is
not running. `down` stops everything, the operator first. `status` tells what runs (exit code 0 when
everything does).

Run it from the repository root as `.venv/bin/python -m e2e.cluster`: never put the repository root
on PYTHONPATH instead, as its operator/ folder would then shadow the standard library's `operator`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

from e2e.cluster.controlplane import (
    TIER_COMPONENT,
    ControlPlane,
    ControlPlaneError,
    build_tools,
    http_get,
    is_alive,
    log_tail,
    read_state,
    stop_from_state,
    stop_processes,
)
from voxa.common.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = ROOT / "build" / "cluster"
CRDS_DIR = ROOT / "crds"
OPERATOR = "operator"
OPERATOR_HEALTH_TIMEOUT = 60.0


def log(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


def _cluster_running(state_dir: Path) -> bool:
    """Whether every control-plane process recorded in state_dir runs and the API server is ready."""
    state = read_state(state_dir)
    if state is None:
        return False
    core = [p for p in state.processes if p.tier <= TIER_COMPONENT]
    if not core or not all(is_alive(p) for p in core):
        return False
    plane = ControlPlane(Path(state.bin_dir))
    plane.attach(state_dir)
    try:
        return plane.client().request("GET", "/readyz", timeout=3)[0] == 200
    except OSError:
        return False


def _kubectl(plane: ControlPlane, *args: str, timeout: float = 120.0) -> None:
    result = subprocess.run(
        [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def apply_crds(plane: ControlPlane, crds_dir: Path = CRDS_DIR) -> None:
    """Apply every manifest in crds/ with server-side apply and wait until the CRDs are Established."""
    manifests = sorted(p for p in crds_dir.glob("*") if p.suffix in (".yaml", ".yml", ".json"))
    if not manifests:
        log(f"no CRDs in {crds_dir}, skipping")
        return
    # The files one by one: given a folder, `kubectl wait` would also read crds/samples/.
    files = [arg for path in manifests for arg in ("-f", str(path))]
    _kubectl(plane, "apply", "--server-side", "--force-conflicts", *files)
    _kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", *files)
    log(f"applied {len(manifests)} CRD manifest(s) from {crds_dir}")


def _voxa() -> str | None:
    sibling = Path(sys.executable).with_name("voxa")
    if sibling.is_file():
        return str(sibling)
    return shutil.which("voxa")


def _operator_available(voxa: str) -> bool:
    try:
        result = subprocess.run([voxa, "operator", "--help"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _healthz_ok(port: int) -> bool:
    try:
        with http_get(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_operator(plane: ControlPlane) -> None:
    """Start `voxa operator` against the cluster unless it already runs, and wait for its /healthz."""
    assert plane.state is not None and plane.state_dir is not None
    running = [p for p in plane.state.processes if p.name == OPERATOR and is_alive(p)]
    if running:
        log(f"operator already running (pid {running[0].pid})")
        return
    # Forget operators that died, so that `status` and `down` only see the live one.
    plane.state.processes = [p for p in plane.state.processes if p.name != OPERATOR]
    voxa = _voxa()
    if voxa is None or not _operator_available(voxa):
        log("`voxa operator --help` does not work yet: not starting the operator")
        plane.state.save(plane.state_dir)
        return
    port = free_port()
    env = dict(os.environ)
    env.update(KUBECONFIG=str(plane.kubeconfig), VOXA_OPERATOR_LIVENESS_PORT=str(port))
    plane.state.ports["operator-liveness"] = port
    record = plane.spawn(OPERATOR, [voxa, "operator"], env=env, cwd=ROOT)
    deadline = time.monotonic() + OPERATOR_HEALTH_TIMEOUT
    while not _healthz_ok(port):
        if not is_alive(record) or time.monotonic() > deadline:
            why = "exited" if not is_alive(record) else f"no /healthz 200 in {OPERATOR_HEALTH_TIMEOUT:.0f}s"
            stop_processes([record])
            raise ControlPlaneError(f"voxa operator {why}; the end of {record.log}:\n{log_tail(record.log)}")
        time.sleep(0.1)
    log(f"operator running (pid {record.pid}, liveness on 127.0.0.1:{port}, log {record.log})")


def up(state_dir: Path) -> int:
    started = time.monotonic()
    if _cluster_running(state_dir):
        state = read_state(state_dir)
        assert state is not None
        plane = ControlPlane(Path(state.bin_dir))
        plane.attach(state_dir)
        log(f"control plane already running at {plane.server}")
    else:
        # Whatever a crashed or half-stopped run left behind goes first.
        stop_from_state(state_dir)
        bin_dir = build_tools()
        plane = ControlPlane(bin_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        plane.start(state_dir)
        elapsed = time.monotonic() - started
        log(f"control plane up at {plane.server} in {elapsed:.1f}s; logs in {state_dir / 'logs'}")
    apply_crds(plane)
    start_operator(plane)
    print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
    return 0


def down(state_dir: Path) -> int:
    if stop_from_state(state_dir):
        log(f"stopped the cluster in {state_dir}")
    else:
        log(f"no cluster recorded in {state_dir}")
    return 0


def status(state_dir: Path) -> int:
    state = read_state(state_dir)
    if state is None:
        print(f"no cluster recorded in {state_dir}")
        return 1
    all_alive = True
    for record in state.processes:
        alive = is_alive(record)
        all_alive &= alive
        print(f"{record.name:<24} {'running' if alive else 'stopped':<8} pid {record.pid:<8} {record.log}")
    ready = _cluster_running(state_dir)
    print(f"api server: {state.server} ({'ready' if ready else 'not ready'})")
    print(f"kubeconfig: {state.kubeconfig}")
    return 0 if all_alive and ready else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    try:
        if args.command == "up":
            return up(state_dir)
        if args.command == "down":
            return down(state_dir)
        return status(state_dir)
    except ControlPlaneError as exc:
        log(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
