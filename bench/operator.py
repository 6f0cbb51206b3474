"""Operator benchmark on the local control plane: many VoiceServers at once, then a quiet minute.

    python bench/operator.py --count 200 --json

Starts the control plane from e2e/cluster (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok), a redis-server, and `voxa operator` (with peering, as in production), applies
`--count` VoiceServers in one go and prints one JSON object:

- all_ready_s: from the apply until every VoiceServer reports Ready for its generation;
- operator_rss_mib / operator_peak_rss_mib: the operator process at the end / its high-water mark;
- api_writes_per_reconcile, api_writes_per_voiceserver: the operator's own write requests during
  creation, per reconciliation and per VoiceServer (children, status, the generated Secret);
- steady_state_writes: write requests the API server received for VoiceServers and their children
  (status subresources of children excluded: those are the controllers') during `--steady-s` seconds
  with nothing changing, plus the operator's own count of its writes over the same window, and
  kopf's peering keep-alives apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from voxa.common.ports import free_port
from voxa.common.testing import procfs

ROOT = Path(__file__).resolve().parents[1]


def _load_controlplane() -> ModuleType:
    """e2e/cluster/controlplane.py by path: as a script in bench/, `e2e` would be bench/e2e.py, and the
    repository root must not go on sys.path (operator/ would shadow the standard library's module)."""
    spec = importlib.util.spec_from_file_location(
        "voxa_controlplane", ROOT / "e2e" / "cluster" / "controlplane.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


controlplane = _load_controlplane()
build_tools = controlplane.build_tools

VOXA = str(Path(sys.executable).with_name("voxa"))
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "CREATE", "UPDATE"}
CHILD_RESOURCES = {
    "voiceservers",
    "configmaps",
    "secrets",
    "services",
    "deployments",
    "statefulsets",
    "poddisruptionbudgets",
    "networkpolicies",
    "ingresses",
    "pods",
    "replicasets",
}
METRIC = re.compile(r"^(\w+)\{(.*)\}\s+([0-9.e+]+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def log(message: str) -> None:
    print(f"[bench/operator] {message}", file=sys.stderr, flush=True)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        match = METRIC.match(line)
        if match:
            out.append((match[1], dict(LABEL.findall(match[2])), float(match[3])))
    return out


class Bench:
    def __init__(self, workdir: Path, resync_s: float) -> None:
        self.workdir = workdir
        self.resync_s = resync_s
        self.plane: Any = None  # a controlplane.ControlPlane
        self.procs: list[subprocess.Popen[bytes]] = []
        self.kubectl_bin = ""
        self.kubeconfig = ""
        self.metrics_port = free_port()
        self.operator: subprocess.Popen[bytes] | None = None

    def kubectl(self, *args: str, input: str | None = None) -> str:
        result = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        bin_dir = build_tools()
        self.kubectl_bin = str(bin_dir / "kubectl")
        self.plane = controlplane.ControlPlane(bin_dir, die_with_parent=True)
        started = time.monotonic()
        self.plane.start(self.workdir / "cluster")
        self.kubeconfig = str(self.plane.kubeconfig)
        log(f"control plane up in {time.monotonic() - started:.1f} s")
        self.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd", "--all")
        redis_port = free_port()
        redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
        redis = subprocess.Popen(
            [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(redis)
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "VOXA_OPERATOR_RESYNC_S": str(self.resync_s),
            "VOXA_OPERATOR_LIVENESS_PORT": str(free_port()),
            "VOXA_OPERATOR_LIVENESS_HOST": "127.0.0.1",
            "VOXA_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "VOXA_OPERATOR_LOG_LEVEL": os.environ.get("VOXA_OPERATOR_LOG_LEVEL", "warning"),
        }
        log_file = (self.workdir / "operator.log").open("ab")
        self.operator = subprocess.Popen(
            [VOXA, "operator"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        self.procs.append(self.operator)
        self.wait(lambda: self.operator_metrics() is not None, 60, "operator metrics")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.plane is not None:
            self.plane.stop()

    @staticmethod
    def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {what}")

    def operator_metrics(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        out = {"writes": 0.0, "reads": 0.0, "reconciles": 0.0}
        for name, labels, value in parse_metrics(text):
            if name == "voxa_operator_api_requests_total":
                out["writes" if labels["verb"] != "GET" else "reads"] += value
            elif name == "voxa_operator_reconciles_total":
                out["reconciles"] += value
        return out

    def apiserver_writes(self) -> tuple[float, float]:
        """(writes to VoiceServers and children, peering keep-alives) so far, from the API server."""
        children = peering = 0.0
        for name, labels, value in parse_metrics(self.kubectl("get", "--raw", "/metrics")):
            if name != "apiserver_request_total" or labels.get("verb") not in WRITE_VERBS:
                continue
            resource, sub = labels.get("resource"), labels.get("subresource", "")
            if resource == "clusterkopfpeerings":
                peering += value
            elif resource in CHILD_RESOURCES and (sub == "" or resource == "voiceservers"):
                children += value
        return children, peering

    def rss_mib(self) -> tuple[float, float]:
        assert self.operator is not None
        rss, hwm = (procfs.status_kib(self.operator.pid, field) for field in ("VmRSS", "VmHWM"))
        if rss is None or hwm is None:
            raise RuntimeError(f"the operator (pid {self.operator.pid}) is gone")
        return rss / 1024, hwm / 1024

    def ready_count(self) -> int:
        items = json.loads(self.kubectl("get", "voiceservers", "-n", "bench", "-o", "json"))["items"]
        ready = 0
        for item in items:
            for cond in (item.get("status") or {}).get("conditions") or []:
                if (
                    cond["type"] == "Ready"
                    and cond["status"] == "True"
                    and cond["observedGeneration"] == item["metadata"]["generation"]
                ):
                    ready += 1
        return ready

    def run(self, count: int, steady_s: float) -> dict[str, Any]:
        self.kubectl("create", "namespace", "bench")
        secrets = [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "jwt"},
                "stringData": {"secret": "s" * 32},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "redis"},
                "stringData": {"url": self.redis_url},
            },
        ]
        servers = [
            {
                "apiVersion": "voxa.dev/v1alpha1",
                "kind": "VoiceServer",
                "metadata": {"name": f"vs-{i:04d}"},
                "spec": {
                    "signaling": {"replicas": 1},
                    "sfu": {"minReplicas": 1, "maxReplicas": 4},
                    "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}},
                    "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
                },
            }
            for i in range(count)
        ]
        self.kubectl(
            "apply",
            "-n",
            "bench",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": secrets}),
        )
        before = self.operator_metrics() or {}
        started = time.monotonic()
        self.kubectl(
            "apply",
            "-n",
            "bench",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": servers}),
        )
        last_log = 0.0
        while (ready := self.ready_count()) < count:
            elapsed = time.monotonic() - started
            if elapsed - last_log > 10:
                log(f"{ready}/{count} ready after {elapsed:.0f} s")
                last_log = elapsed
            if elapsed > 900:
                raise TimeoutError(f"only {ready}/{count} VoiceServers ready after 900 s")
            time.sleep(0.5)
        all_ready_s = time.monotonic() - started
        log(f"all {count} ready in {all_ready_s:.1f} s")
        created = self.operator_metrics() or {}
        writes = created["writes"] - before.get("writes", 0)
        reconciles = created["reconciles"] - before.get("reconciles", 0)

        # Let in-flight status updates land (a few resync periods), then a quiet window.
        time.sleep(max(10.0, 3 * self.resync_s))
        op_before = self.operator_metrics() or {}
        api_before, peer_before = self.apiserver_writes()
        log(f"measuring {steady_s:.0f} s of steady state")
        time.sleep(steady_s)
        op_after = self.operator_metrics() or {}
        api_after, peer_after = self.apiserver_writes()
        rss, peak = self.rss_mib()
        return {
            "count": count,
            "resync_s": self.resync_s,
            "all_ready_s": round(all_ready_s, 2),
            "operator_rss_mib": round(rss, 1),
            "operator_peak_rss_mib": round(peak, 1),
            "api_writes_per_reconcile": round(writes / reconciles, 3) if reconciles else None,
            "api_writes_per_voiceserver": round(writes / count, 2),
            "reconciles_during_creation": int(reconciles),
            "steady_state_s": steady_s,
            "steady_state_writes": int(api_after - api_before),
            "steady_state_operator_writes": int(op_after["writes"] - op_before["writes"]),
            "steady_state_operator_reads": int(op_after["reads"] - op_before["reads"]),
            "steady_state_reconciles": int(op_after["reconciles"] - op_before["reconciles"]),
            "peering_keepalive_writes": int(peer_after - peer_before),
            "cpus": os.cpu_count(),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200, help="VoiceServers to create")
    parser.add_argument("--steady-s", type=float, default=60.0, help="quiet window measured for writes")
    parser.add_argument("--resync-s", type=float, default=5.0, help="the operator's VOXA_OPERATOR_RESYNC_S")
    parser.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="voxa-bench-operator-"))
    bench = Bench(workdir, args.resync_s)

    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through `finally`, which stops every process

    signal.signal(signal.SIGTERM, interrupted)
    try:
        bench.start()
        result = bench.run(args.count, args.steady_s)
    finally:
        bench.stop()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
