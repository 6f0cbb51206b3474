"""A real Kubernetes control plane made of local processes on loopback, for tests and `make cluster`.

There is no container engine on the machines Voxa is developed and tested on, so kind or k3d cannot
run. What the operator needs from a cluster is the API server's real behaviour (validation, CEL rules,
server-side apply, watches) and the real controllers around it (Deployments roll out ReplicaSets and
Pods, owner references garbage-collect, PodDisruptionBudgets get a status, the scheduler binds pods),
not containers. So this module runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler
as plain processes, and kwok in place of kubelets: kwok keeps a few fake Nodes Ready and moves the
pods bound to them to Running/Ready without running anything.

Everything listens on 127.0.0.1 on ports picked at start. The certificates (a CA, one loopback
serving certificate, an admin client certificate in system:masters and the service-account signing
key) are made afresh at every start, and an admin kubeconfig with embedded credentials is written to
`<state_dir>/kubeconfig`. Each process runs in a process group of its own with its log in
`<state_dir>/logs/`; their ids are recorded in `<state_dir>/state.json`, so that another process
(`python -m e2e.cluster down`) can stop them with `stop_from_state`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voxa.common.ports import free_port
from voxa.common.testing import procfs

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
STATE_FILE = "state.json"
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
# kwok only manages the Nodes carrying this annotation, so a cluster could also hold other Nodes.
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
FRONT_PROXY_CLIENT = "front-proxy-client"

# Processes are stopped tier by tier, highest first, so that clients go before the API server and the
# API server before etcd; within a tier they are stopped together.
TIER_STORAGE = 0
TIER_APISERVER = 1
TIER_COMPONENT = 2
TIER_EXTRA = 3
CONTROL_PLANE_GRACE = 1.0


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def build_tools(env: Mapping[str, str] | None = None) -> Path:
    """Build (or find in the cache) the control plane's binaries with build.sh and return their folder.

    The first build compiles Kubernetes from source and takes many minutes; later calls return at once.
    Its progress goes to this process's stderr."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ if env is None else env),
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    bin_dir = Path(lines[-1])
    if not (bin_dir / "kube-apiserver").is_file():
        raise ControlPlaneError(f"{BUILD_SCRIPT} printed {bin_dir}, which holds no kube-apiserver")
    return bin_dir


def http_get(url: str, timeout: float) -> Any:
    """GET a plain-HTTP loopback URL directly, whatever proxy the environment names; the response is
    a context manager, as from urlopen."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(url, timeout=timeout)


# --- certificates -----------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _sign(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Pki:
    """Paths of the credentials made by `make_pki`."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path
    proxy_cert: Path
    proxy_key: Path

    @classmethod
    def at(cls, pki_dir: Path) -> Pki:
        return cls(
            ca_cert=pki_dir / "ca.crt",
            ca_key=pki_dir / "ca.key",
            serving_cert=pki_dir / "serving.crt",
            serving_key=pki_dir / "serving.key",
            admin_cert=pki_dir / "admin.crt",
            admin_key=pki_dir / "admin.key",
            sa_key=pki_dir / "sa.key",
            sa_pub=pki_dir / "sa.pub",
            proxy_cert=pki_dir / "front-proxy-client.crt",
            proxy_key=pki_dir / "front-proxy-client.key",
        )


def make_pki(pki_dir: Path) -> Pki:
    """Make a fresh CA and the certificates and keys the control plane needs, all ECDSA P-256.

    One serving certificate for 127.0.0.1/localhost (and the in-cluster names of the API server) is
    shared by every component, so that clients can verify them all against the one CA. The admin
    client certificate is in system:masters, which RBAC lets do anything. The front-proxy client
    certificate is what the API server presents to aggregated API servers; with it configured, the
    controller manager and the scheduler find the request-header CA they look up at start."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki = Pki.at(pki_dir)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _sign(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voxa-local-ca")]),
        ca_key,
        None,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
        ],
    )
    issuer = (ca_cert, ca_key)
    service_ip = next(ipaddress.IPv4Network(SERVICE_CIDR).hosts())
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving_names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.IPv4Address(LOOPBACK)),
        x509.IPAddress(service_ip),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    serving_cert = _sign(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voxa-local-serving")]),
        serving_key,
        issuer,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_leaf_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(serving_names), False),
        ],
    )
    client_extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_leaf_usage(), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_cert = _sign(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "voxa-admin"),
            ]
        ),
        admin_key,
        issuer,
        client_extensions,
    )
    proxy_key = ec.generate_private_key(ec.SECP256R1())
    proxy_cert = _sign(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, FRONT_PROXY_CLIENT)]),
        proxy_key,
        issuer,
        client_extensions,
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        pki.ca_cert: _pem_cert(ca_cert),
        pki.ca_key: _pem_key(ca_key),
        pki.serving_cert: _pem_cert(serving_cert),
        pki.serving_key: _pem_key(serving_key),
        pki.admin_cert: _pem_cert(admin_cert),
        pki.admin_key: _pem_key(admin_key),
        pki.proxy_cert: _pem_cert(proxy_cert),
        pki.proxy_key: _pem_key(proxy_key),
        pki.sa_key: _pem_key(sa_key),
        pki.sa_pub: sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for path, data in files.items():
        path.write_bytes(data)
        path.chmod(0o600)
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    """Write an admin kubeconfig with the CA and client credentials embedded, so that it works from any
    directory and for clients that cannot read files beside it (kopf, the kubernetes library, kubectl).
    """

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    path.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: voxa-local\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {b64(pki.ca_cert)}\n"
        "users:\n"
        "- name: voxa-admin\n"
        "  user:\n"
        f"    client-certificate-data: {b64(pki.admin_cert)}\n"
        f"    client-key-data: {b64(pki.admin_key)}\n"
        "contexts:\n"
        "- name: voxa-local\n"
        "  context:\n"
        "    cluster: voxa-local\n"
        "    user: voxa-admin\n"
        "    namespace: default\n"
        "current-context: voxa-local\n"
    )
    path.chmod(0o600)


# --- a minimal API client ---------------------------------------------------------------------------


class ApiClient:
    """Just enough of an HTTPS client for the control plane's own waits and setup (health endpoints,
    Nodes, ServiceAccounts), authenticated as the admin; it keeps this module free of a Kubernetes
    client library."""

    def __init__(self, server: str, pki: Pki) -> None:
        self.server = server.rstrip("/")
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        # No proxy from the environment: everything is on loopback.
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 5.0, server: str | None = None
    ) -> tuple[int, bytes]:
        """Send one request; return the status and the body, also for error statuses."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - the URL is always https on loopback
            (server or self.server) + path, data=data, method=method
        )
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise ControlPlaneError(f"GET {path}: HTTP {status}: {body[:500]!r}")
        return json.loads(body)


# --- processes --------------------------------------------------------------------------------------


@dataclass
class ProcessRecord:
    """One process of the control plane as recorded in state.json.

    start_time (clock ticks after boot, from /proc) tells the recorded process from a later one that
    got the same pid, so that a stale state file never makes `stop_from_state` signal a stranger."""

    name: str
    pid: int
    start_time: int
    tier: int
    log: str


@dataclass
class State:
    """What state.json holds: where the control plane listens and which processes make it up."""

    server: str
    kubeconfig: str
    bin_dir: str
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, state_dir: Path) -> None:
        tmp = state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(state_dir / STATE_FILE)


def read_state(state_dir: Path) -> State | None:
    """The recorded state of the control plane in state_dir, or None if there is none."""
    try:
        raw = json.loads((state_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return State(
        server=raw["server"],
        kubeconfig=raw["kubeconfig"],
        bin_dir=raw["bin_dir"],
        ports=dict(raw.get("ports", {})),
        processes=[ProcessRecord(**p) for p in raw.get("processes", [])],
        extra=dict(raw.get("extra", {})),
    )


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a process from /proc, or None if there is no such process."""
    fields = procfs.stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[19]))


def is_alive(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (zombies count as gone; ours are reaped on the way)."""
    stat = _proc_stat(record.pid)
    if stat is None or stat[1] != record.start_time:
        return False
    if stat[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record.pid, os.WNOHANG)
        return False
    return True


def _signal_group(record: ProcessRecord, sig: signal.Signals) -> None:
    if not is_alive(record):
        return
    # Each process leads its own group (start_new_session), so this reaches anything it started too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, sig)


def _group_gone(record: ProcessRecord) -> bool:
    """Whether nothing runs any more in the record's process group. The leader is reaped if it is our
    child; zombies left to init count as gone, as init may take its time to reap them."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(record.pid, os.WNOHANG)
    return not procfs.group_members(record.pid)


def stop_processes(records: Iterable[ProcessRecord], grace: float = 10.0) -> None:
    """Stop the given processes with their groups, tier by tier (highest first): SIGTERM, then SIGKILL
    for any that outlives its grace period, and wait until they are gone.

    Processes of the control plane itself get at most CONTROL_PLANE_GRACE seconds: their state is
    thrown away anyway, and a graceful kube-apiserver or etcd shutdown takes seconds. Extra processes
    (the operator) get the full grace period to shut down cleanly."""
    by_tier: dict[int, list[ProcessRecord]] = {}
    for record in records:
        by_tier.setdefault(record.tier, []).append(record)
    for tier in sorted(by_tier, reverse=True):
        group = by_tier[tier]
        for record in group:
            _signal_group(record, signal.SIGTERM)
        deadline = time.monotonic() + (grace if tier >= TIER_EXTRA else min(grace, CONTROL_PLANE_GRACE))
        while time.monotonic() < deadline and not all(_group_gone(r) for r in group):
            time.sleep(0.02)
        for record in group:
            if not _group_gone(record):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not all(_group_gone(r) for r in group):
            time.sleep(0.02)


def stop_from_state(state_dir: Path, grace: float = 10.0) -> bool:
    """Stop every process recorded in state_dir's state.json, from any process; return whether there
    was anything recorded. The state file is removed, the logs are kept."""
    state = read_state(state_dir)
    if state is None:
        return False
    stop_processes(state.processes, grace)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return True


def _die_with_parent() -> None:
    """In the child before exec: have the kernel SIGKILL it when the process that started it exits,
    so that a test session killed hard (a timeout, ^C twice) leaves no control plane behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def log_tail(path: Path | str, chars: int = 3000) -> str:
    """The end of a log file, for error messages."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return f"({path} does not exist)"
    return data[-chars:].decode(errors="replace")


# --- the control plane ------------------------------------------------------------------------------


def _fake_node(name: str) -> dict[str, Any]:
    """A Node for kwok to keep Ready: roomy enough that no test is ever limited by its resources."""
    resources = {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1],
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
                "topology.kubernetes.io/zone": f"zone-{name.rsplit('-', 1)[-1]}",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "kubeProxyVersion": "fake",
                "kubeletVersion": "fake",
                "operatingSystem": "linux",
            },
            "phase": "Running",
        },
    }


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as local processes.

    `start(state_dir)` returns once the API server is ready, the fake Nodes are Ready and the default
    ServiceAccount exists (so Pods can be created); `stop()` stops every process it started. Processes
    started with `spawn` (the operator, say) are recorded alongside and stopped first.

    die_with_parent=True has the kernel kill the processes when this Python process exits (for test
    sessions); leave it False for a control plane that must outlive its starter (`make cluster`)."""

    def __init__(
        self,
        bin_dir: Path,
        *,
        etcd: Path | None = None,
        nodes: int = 3,
        die_with_parent: bool = False,
    ) -> None:
        self.bin_dir = bin_dir
        self.etcd = etcd or bin_dir / "etcd"
        self.node_names = [f"kwok-node-{i}" for i in range(nodes)]
        self.die_with_parent = die_with_parent
        self.state_dir: Path | None = None
        self.state: State | None = None
        self.pki: Pki | None = None
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def kubeconfig(self) -> Path:
        if self.state is None:
            raise ControlPlaneError("the control plane is not started")
        return Path(self.state.kubeconfig)

    @property
    def server(self) -> str:
        if self.state is None:
            raise ControlPlaneError("the control plane is not started")
        return self.state.server

    def client(self) -> ApiClient:
        if self.state is None or self.pki is None:
            raise ControlPlaneError("the control plane is not started")
        return ApiClient(self.state.server, self.pki)

    # -- lifecycle --

    def start(self, state_dir: Path, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start every process in state_dir (wiping what an earlier, stopped run left there) and wait
        until the cluster can run Pods. On failure everything started is stopped again.

        Ports are picked free and then bound by the processes a moment later; on a busy machine
        another process can take one in between ("address already in use"), so a failed start is
        retried with new ports."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(state_dir, timeout)
                return
            except ControlPlaneError:
                if attempt == attempts:
                    raise

    def _start_once(self, state_dir: Path, timeout: float) -> None:
        state_dir = state_dir.resolve()
        old = read_state(state_dir)
        if old is not None and any(is_alive(p) for p in old.processes):
            raise ControlPlaneError(f"a control plane already runs from {state_dir}")
        for sub in ("etcd", "pki", "logs", "run"):
            shutil.rmtree(state_dir / sub, ignore_errors=True)
        (state_dir / "logs").mkdir(parents=True)
        (state_dir / "run").mkdir()
        self.state_dir = state_dir
        self.pki = pki = make_pki(state_dir / "pki")
        ports = {
            name: free_port()
            for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
        }
        server = f"https://{LOOPBACK}:{ports['apiserver']}"
        kubeconfig = state_dir / "kubeconfig"
        write_kubeconfig(kubeconfig, server, pki)
        self.state = State(server=server, kubeconfig=str(kubeconfig), bin_dir=str(self.bin_dir), ports=ports)
        self.state.save(state_dir)
        deadline = time.monotonic() + timeout
        try:
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self._create_nodes()
            self._start_components()
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process this control plane recorded (also those started by another ControlPlane
        object from the same state_dir) and reap the ones this object started."""
        if self.state_dir is not None:
            stop_from_state(self.state_dir)
        for proc in self._popen.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._popen.clear()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        tier: int = TIER_EXTRA,
        cwd: Path | None = None,
    ) -> ProcessRecord:
        """Start a process in a group of its own, its output in logs/<name>.log, and record it in
        state.json so that `stop_from_state` stops it too."""
        if self.state is None or self.state_dir is None:
            raise ControlPlaneError("the control plane is not started")
        log_path = self.state_dir / "logs" / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ if env is None else env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        stat = _proc_stat(proc.pid)
        record = ProcessRecord(name, proc.pid, stat[1] if stat else -1, tier, str(log_path))
        self._popen[proc.pid] = proc
        self.state.processes.append(record)
        self.state.save(self.state_dir)
        return record

    def attach(self, state_dir: Path) -> None:
        """Take over a control plane that another process started in state_dir (to spawn more processes
        beside it, or to stop it)."""
        state_dir = state_dir.resolve()
        state = read_state(state_dir)
        if state is None:
            raise ControlPlaneError(f"no control plane recorded in {state_dir}")
        self.state_dir = state_dir
        self.state = state
        self.bin_dir = Path(state.bin_dir)
        self.pki = Pki.at(state_dir / "pki")

    # -- the steps of start() --

    def _wait(self, what: str, check: Callable[[], bool], deadline: float, logs: Sequence[str]) -> None:
        """Poll check() until it is true; fail early if a recorded process has died."""
        assert self.state is not None
        while True:
            for record in self.state.processes:
                if not is_alive(record):
                    raise ControlPlaneError(
                        f"{record.name} exited while waiting for {what}:\n{log_tail(record.log)}"
                    )
            try:
                if check():
                    return
            except (OSError, ControlPlaneError, ValueError):
                pass
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {r.name}:\n{log_tail(r.log)}" for r in self.state.processes if r.name in logs
                )
                raise ControlPlaneError(f"timed out waiting for {what}\n{tails}")
            time.sleep(0.05)

    def _start_etcd(self, deadline: float) -> None:
        assert self.state is not None and self.state_dir is not None
        ports = self.state.ports
        client_url = f"http://{LOOPBACK}:{ports['etcd']}"
        peer_url = f"http://{LOOPBACK}:{ports['etcd-peer']}"
        argv = [
            str(self.etcd),
            "--name=voxa-local",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=voxa-local={peer_url}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            # A throwaway cluster: nothing is worth an fsync, and tests write a lot.
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=2147483648",
        ]
        self.spawn("etcd", argv, tier=TIER_STORAGE)

        def healthy() -> bool:
            with http_get(client_url + "/health", timeout=1) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")

        self._wait("etcd /health", healthy, deadline, ["etcd"])

    def _start_apiserver(self, deadline: float) -> None:
        assert self.state is not None and self.state_dir is not None and self.pki is not None
        pki = self.pki
        argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://{LOOPBACK}:{self.state.ports['etcd']}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.state.ports['apiserver']}",
            f"--cert-dir={self.state_dir / 'run'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--requestheader-client-ca-file={pki.ca_cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.proxy_cert}",
            f"--proxy-client-key-file={pki.proxy_key}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # Endpoints may not hold a loopback address, so the `kubernetes` Service gets none.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
            "--event-ttl=10m",
        ]
        self.spawn("kube-apiserver", argv, tier=TIER_APISERVER)
        client = self.client()

        def ready() -> bool:
            return client.request("GET", "/readyz", timeout=2)[0] == 200

        self._wait("kube-apiserver /readyz", ready, deadline, ["kube-apiserver", "etcd"])

    def _create_nodes(self) -> None:
        client = self.client()
        for name in self.node_names:
            status, body = client.request("POST", "/api/v1/nodes", _fake_node(name))
            if status not in (201, 409):
                raise ControlPlaneError(f"creating node {name}: HTTP {status}: {body[:500]!r}")

    def _start_components(self) -> None:
        assert self.state is not None and self.state_dir is not None and self.pki is not None
        pki = self.pki
        kubeconfig = self.state.kubeconfig
        ports = self.state.ports
        serving = [
            f"--bind-address={LOOPBACK}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # A single instance: leader election would only delay the start by a lease period.
            "--leader-elect=false",
        ]
        self.spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                *serving,
                f"--secure-port={ports['controller-manager']}",
                "--controllers=*",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                # Hundreds of Deployments at once (bench/operator.py) must not queue behind the
                # default client rate limit of 20 requests/s.
                "--kube-api-qps=300",
                "--kube-api-burst=600",
                "--concurrent-deployment-syncs=20",
                "--concurrent-replicaset-syncs=20",
                # kwok's node heartbeats can be late on a busy 2-core machine; a short grace period
                # would mark every fake node NotReady and every pod on it unready.
                "--node-monitor-grace-period=5m",
            ],
            tier=TIER_COMPONENT,
        )
        self.spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                *serving,
                f"--secure-port={ports['scheduler']}",
                "--profiling=false",
                "--kube-api-qps=300",
                "--kube-api-burst=600",
            ],
            tier=TIER_COMPONENT,
        )
        kwok_config = self.state_dir / "run" / "kwok.yaml"
        # An explicit (empty) configuration file keeps kwok from reading ~/.kwok/kwok.yaml.
        kwok_config.write_text(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"
        )
        self.spawn(
            "kwok",
            [
                str(self.bin_dir / "kwok"),
                f"--config={kwok_config}",
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=" + "=".join(FAKE_NODE_ANNOTATION),
                f"--server-address={LOOPBACK}:{ports['kwok']}",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.240.0.1",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
            ],
            tier=TIER_COMPONENT,
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self.state is not None
        client = self.client()
        ports = self.state.ports

        def healthy(port_name: str) -> Callable[[], bool]:
            server = f"https://{LOOPBACK}:{ports[port_name]}"
            return lambda: client.request("GET", "/healthz", timeout=2, server=server)[0] == 200

        def nodes_ready() -> bool:
            items = client.get_json("/api/v1/nodes")["items"]
            ready = {n["metadata"]["name"] for n in items if _node_ready(n)}
            return ready >= set(self.node_names)

        def default_service_account() -> bool:
            return client.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

        self._wait(
            "kube-controller-manager /healthz",
            healthy("controller-manager"),
            deadline,
            ["kube-controller-manager"],
        )
        self._wait("kube-scheduler /healthz", healthy("scheduler"), deadline, ["kube-scheduler"])
        self._wait("the fake nodes to be Ready", nodes_ready, deadline, ["kwok"])
        self._wait(
            "the default ServiceAccount", default_service_account, deadline, ["kube-controller-manager"]
        )
