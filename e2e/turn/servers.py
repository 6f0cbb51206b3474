"""Real TURN servers on loopback for the tests: stunnerd (STUNner's dataplane) and coturn.

Both use the TURN REST API scheme that Voxa's signaling issues (voxa.common.turn): usernames
``<expiry>:<user>``, passwords base64(HMAC-SHA1(secret, username)). Both listen on 127.0.0.1 only for
clients (stunnerd binds its UDP listener on every interface, as it does in a pod, but is only ever
reached on loopback here) and relay only to the peers they are told to allow.

* `StunnerdProcess` renders its config with `stunnerd_config.render_stunnerd_config`, writes it to a
  file, and runs ``stunnerd -w -c file://...`` (watch mode) or ``-c`` (load once). `reconfigure()`
  rewrites the file and waits until stunnerd's own status shows the new config.
* `GatewayPod` is what one pod of a StunnerGateway runs: one stunnerd per slot, each loading the
  config the operator renders for it; `rotate()` changes the secret as the operator does.
* `CoturnProcess` runs ``turnserver -c <file>`` with ``use-auth-secret`` and one
  ``static-auth-secret`` line per secret, or (``secrets_in_db=True``) the secrets in its SQLite
  database, which `set_db_secrets` changes while it runs.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from voxa.common.ports import ANY, UDP, free_port
from voxa.common.testing.procs import Proc, wait_ready
from voxa.common.turn import turn_credentials
from voxa.operator.models import StunnerGateway
from voxa.operator.render import stunner
from voxa.operator.render.stunnerd_config import (
    Cluster,
    EphemeralAuth,
    Listener,
    dumps,
    render_stunnerd_config,
)
from voxa.operator.slots import SLOTS, Change, Slot, Slots, advance

LOOPBACK = "127.0.0.1"
BUILD_SCRIPT = Path(__file__).resolve().with_name("build.sh")


def self_signed_certificate(ip: str = LOOPBACK, days: int = 1) -> tuple[str, str]:
    """A throwaway certificate for `ip` (as its subject alternative name) and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voxa-turn-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


def stunnerd_cache_path() -> Path:
    """Where build.sh puts the binary for the current go.mod and go.sum (same rule as build.sh)."""
    here = BUILD_SCRIPT.parent
    go_mod = (here / "go.mod").read_bytes()
    version = next(
        line.split()[2]
        for line in go_mod.decode().splitlines()
        if line.split()[:2] == ["require", "github.com/l7mp/stunner"]
    )
    digest = hashlib.sha256(go_mod + (here / "go.sum").read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "voxa" / f"stunnerd-{version}-{digest}" / "stunnerd"


def stunnerd_is_built() -> bool:
    return os.access(stunnerd_cache_path(), os.X_OK)


def build_stunnerd(timeout: float = 1200.0) -> Path:
    """Run e2e/turn/build.sh (a no-op once the pinned version is cached) and return the binary."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"building stunnerd failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class TurnServerProcess:
    """What both servers have in common: a UDP port on 127.0.0.1, a realm, a log."""

    workdir: Path
    realm: str
    port: int
    proc: Proc | None = field(default=None, init=False)

    kind = "turn"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    @property
    def uri(self) -> str:
        """The ICE server URI clients use (what VOXA_TURN_URIS lists)."""
        return f"turn:{LOOPBACK}:{self.port}?transport=udp"

    def signing_secret(self) -> str:
        """The secret signaling should issue credentials with (VOXA_TURN_SECRET)."""
        raise NotImplementedError

    def credentials(self, user: str, ttl_s: int = 600, now: float | None = None) -> tuple[str, str]:
        """TURN REST credentials for `user`, signed with `signing_secret()`, as signaling issues them."""
        return turn_credentials(self.signing_secret(), user, ttl_s, now)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        self.proc = Proc(self.kind, argv, env, self.log_path, cwd=self.workdir).start()
        return self.proc

    def _wait(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        if self.proc is None:
            raise RuntimeError(f"{self.kind} is not running")
        wait_ready(self.proc, probe, timeout, what)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after half a second (stunnerd's graceful shutdown waits for every
        allocation to expire, which tests do not wait for)."""
        if self.proc is not None:
            self.proc.stop(timeout=0.5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()


@dataclass
class StunnerdProcess(TurnServerProcess):
    """stunnerd with ephemeral (TURN REST) auth, a TURN-UDP listener on 127.0.0.1 (plus any
    `extra_listeners`) and one STATIC cluster of allowed peers.

    In watch mode (`watch=True`) the config file can be changed with `reconfigure`. Watch mode also
    starts stunnerd's bootstrap health check on *:8086 (before the file is read), and it stays up;
    a second instance in watch mode cannot bind it, logs an error and carries on with the file's
    config. Without watch mode nothing listens there."""

    binary: Path = Path("stunnerd")
    secret: str = ""
    endpoints: Sequence[str] = ("127.0.0.2",)
    watch: bool = False
    extra_listeners: Sequence[Listener] = ()
    health_port: int = 0
    mounted: Path | None = None
    """A config file someone else writes (a `GatewayPod`'s Secret volume) instead of this harness's."""
    config: dict[str, Any] = field(default_factory=dict, init=False)

    kind = "stunnerd"

    @property
    def config_path(self) -> Path:
        return self.mounted or self.workdir / "stunnerd.json"

    @property
    def health_url(self) -> str:
        return f"http://{LOOPBACK}:{self.health_port}"

    def render(self) -> dict[str, Any]:
        return render_stunnerd_config(
            name="voxa-turn-test",
            realm=self.realm,
            auth=EphemeralAuth(self.secret),
            listeners=[Listener("udp", "TURN-UDP", LOOPBACK, self.port), *self.extra_listeners],
            clusters=[Cluster("sfu", list(self.endpoints))],
            health_check_endpoint=self.health_url,
        )

    def _write(self) -> None:
        if self.mounted is not None:  # written by its owner: only learn what stunnerd should apply
            self.config = json.loads(self.mounted.read_text())
            self.secret = str(self.config["auth"]["credentials"].get("secret", ""))
            return
        self.config = self.render()
        # In place (not rename-over): stunnerd watches the file itself and re-reads it on a write. A
        # read that sees the file half-written fails to parse and is retried on the next event.
        with self.config_path.open("r+" if self.config_path.exists() else "w") as f:
            f.seek(0)
            f.write(dumps(self.config))
            f.truncate()

    def start(self, timeout: float = 15.0) -> None:
        if not self.health_port:
            self.health_port = free_port()
        self._write()
        argv = [str(self.binary), "-c", f"file://{self.config_path}", "-l", "all:INFO"]
        if self.watch:
            argv.insert(1, "-w")
        # What the operator's Deployment sets from the downward API (status.podIP).
        self._spawn(argv, env={**os.environ, "STUNNER_ADDR": LOOPBACK})
        self.wait_applied(timeout)

    def status(self) -> dict[str, Any]:
        """stunnerd's own view (GET /status on the health-check port). It includes the secret."""
        with urllib.request.urlopen(self.health_url + "/status", timeout=1) as resp:  # noqa: S310 - http
            body: dict[str, Any] = json.load(resp)
            return body

    def _applied(self, status: dict[str, Any]) -> bool:
        clusters = {c["name"]: sorted(c["endpoints"]) for c in status.get("clusters") or []}
        listeners = {(x["name"], x["port"]) for x in status.get("listeners") or []}
        return (
            status.get("status") == "READY"
            and status.get("auth") == self.config["auth"]
            and clusters == {c["name"]: sorted(c["endpoints"]) for c in self.config["clusters"]}
            and listeners == {(x["name"], x["port"]) for x in self.config["listeners"]}
        )

    def wait_applied(self, timeout: float = 15.0) -> None:
        """Wait until stunnerd runs the config last written (its /status matches it)."""

        def applied() -> bool:
            try:
                return self._applied(self.status())
            except (urllib.error.URLError, OSError, ValueError):
                return False

        self._wait(applied, timeout, "stunnerd applying its config")

    def reconfigure(
        self,
        *,
        secret: str | None = None,
        realm: str | None = None,
        endpoints: Sequence[str] | None = None,
        timeout: float = 15.0,
    ) -> None:
        """Rewrite the watched config file and wait until stunnerd has reconciled to it."""
        if not self.watch:
            raise RuntimeError("reconfigure() needs watch mode (StunnerdProcess(watch=True))")
        if secret is not None:
            self.secret = secret
        if realm is not None:
            self.realm = realm
        if endpoints is not None:
            self.endpoints = endpoints
        self._write()
        self.wait_applied(timeout)

    def rewrite(self, timeout: float = 15.0) -> None:
        """Write the file again (a `mounted` one: read it again), wait until stunnerd has applied it."""
        self._write()
        self.wait_applied(timeout)

    @property
    def allocation_count(self) -> int:
        return int(self.status()["allocationCount"])

    def signing_secret(self) -> str:
        return self.secret


class SecretVolume:
    """A directory written the way the kubelet writes a Secret volume: the files live in a timestamped
    directory, ``..data`` links to it, each key is a link through ``..data``, and an update swaps
    ``..data`` atomically and removes the old directory (what stunnerd's file watcher must follow)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.version = 0

    def write(self, data: dict[str, str]) -> None:
        self.version += 1
        new = self.path / f"..{self.version:04d}"
        new.mkdir()
        for key, text in data.items():
            (new / key).write_text(text)
        link = self.path / "..data_tmp"
        link.symlink_to(new.name)
        old = (self.path / "..data").resolve() if (self.path / "..data").exists() else None
        os.replace(link, self.path / "..data")
        for key in data:
            if not (self.path / key).is_symlink():
                (self.path / key).symlink_to(f"..data/{key}")
        if old is not None:
            shutil.rmtree(old)


@dataclass
class GatewayPod:
    """One pod of a StunnerGateway, on loopback: a stunnerd per slot, in watch mode, each reading its
    file from a Secret volume holding what the operator renders for the gateway's config Secret
    (`voxa.operator.render.stunner.config_secret`) for a gateway with one TURN-UDP listener. The
    slots advance with `voxa.operator.slots`, as the operator advances them."""

    workdir: Path
    binary: Path
    secret: str
    realm: str = "voxa.test"
    endpoints: Sequence[str] = ("127.0.0.2",)
    ttl_s: int = 600
    slots: Slots = field(init=False)
    servers: dict[Slot, StunnerdProcess] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        port_a = free_port(ANY, UDP)
        port_b = free_port(ANY, UDP)
        self.gateway = StunnerGateway.model_validate(
            {
                "metadata": {"name": "edge", "namespace": "voxa", "uid": "uid"},
                "spec": {
                    "realm": self.realm,
                    "listeners": [{"name": "udp", "port": port_a, "alternatePort": port_b}],
                    "credentialTtlSeconds": self.ttl_s,
                },
            }
        )
        self.slots, _ = advance(None, EphemeralAuth(self.secret), self.ttl_s, int(time.time()), 0)
        self.volume = SecretVolume(self.workdir / "config")
        self.health_ports = {slot: free_port() for slot in SLOTS}

    def _publish(self) -> None:
        """What the kubelet does with the operator's config Secret: the same data in the volume. The
        one change: health checks on free loopback ports rather than the pod's 0.0.0.0:8087/8088."""
        inputs = stunner.GatewayInputs(
            slots=self.slots,
            clusters=[Cluster("voxa/lobby", list(self.endpoints), ports=(40000, 49999))],
        )
        data = dict(stunner.config_secret(self.gateway, inputs)["stringData"])
        for slot in SLOTS:
            config = json.loads(data[stunner.config_file(slot)])
            config["admin"]["healthcheck_endpoint"] = f"http://{LOOPBACK}:{self.health_ports[slot]}"
            data[stunner.config_file(slot)] = dumps(config)
        self.volume.write(data)

    def start(self) -> None:
        self._publish()
        (listener,) = self.gateway.spec.listeners
        for slot in SLOTS:
            workdir = self.workdir / f"slot-{slot}"
            workdir.mkdir(parents=True, exist_ok=True)
            server = StunnerdProcess(
                workdir,
                self.realm,
                stunner.slot_port(listener, slot),
                binary=self.binary,
                watch=True,
                health_port=self.health_ports[slot],
                mounted=self.volume.path / stunner.config_file(slot),
            )
            self.servers[slot] = server
            server.start()

    def rotate(self, secret: str, now: float | None = None) -> list[Change]:
        """What the operator does when the auth Secret changes: give the standby the new secret, wait
        until it has it (here: until its stunnerd has applied the file; the operator waits
        VOXA_OPERATOR_TURN_PROPAGATION_S for the kubelet), then switch. With the same secret and `now`
        a credential lifetime later: retire the previous one. Returns the changes, as events."""
        changes: list[Change] = []
        for _ in range(2):
            stamp = int(now if now is not None else time.time())
            self.slots, change = advance(self.slots, EphemeralAuth(secret), self.ttl_s, stamp, 0)
            if change is None:
                break
            changes.append(change)
            self._publish()
            for server in self.servers.values():
                server.rewrite()
        self.secret = secret
        return changes

    def server(self, slot: Slot) -> StunnerdProcess:
        return self.servers[slot]

    @property
    def active(self) -> StunnerdProcess:
        return self.servers[self.slots.active]

    def slot_secret(self, slot: Slot) -> str:
        auth = self.slots.auth(slot)
        assert isinstance(auth, EphemeralAuth)
        return auth.secret

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@dataclass
class CoturnProcess(TurnServerProcess):
    """coturn's turnserver with the TURN REST API (``use-auth-secret``): every secret in `secrets`
    is accepted. Loopback peers are allowed (coturn refuses them by default) only where
    `allowed_peers` says; `denied_peers` are refused."""

    secrets: Sequence[str] = ()
    allowed_peers: Sequence[str] = ("127.0.0.2",)
    denied_peers: Sequence[str] = ("127.0.0.0-127.255.255.255",)
    secrets_in_db: bool = False

    kind = "coturn"

    @property
    def config_path(self) -> Path:
        return self.workdir / "turnserver.conf"

    @property
    def db_path(self) -> Path:
        return self.workdir / "turndb"

    def config_lines(self) -> list[str]:
        lines = [
            f"listening-ip={LOOPBACK}",
            f"listening-port={self.port}",
            f"relay-ip={LOOPBACK}",
            f"realm={self.realm}",
            "use-auth-secret",
            *(() if self.secrets_in_db else (f"static-auth-secret={secret}" for secret in self.secrets)),
            "fingerprint",
            "allow-loopback-peers",
            *(f"allowed-peer-ip={peer}" for peer in self.allowed_peers),
            *(f"denied-peer-ip={peer}" for peer in self.denied_peers),
            "no-multicast-peers",
            "no-cli",
            "no-tls",
            "no-dtls",
            "no-tcp-relay",
            f"userdb={self.db_path}",
            f"pidfile={self.workdir / 'turnserver.pid'}",
            f"log-file={self.log_path}",
            "simple-log",
            "no-stdout-log",
            "verbose",
        ]
        return lines

    def start(self, timeout: float = 15.0) -> None:
        if not self.secrets:
            raise ValueError("coturn needs at least one static-auth-secret")
        binary = shutil.which("turnserver") or "/usr/bin/turnserver"
        if not os.path.exists(binary):
            raise RuntimeError("turnserver not found: install Debian's coturn package")
        self.config_path.write_text("\n".join(self.config_lines()) + "\n")
        self._spawn([binary, "-c", str(self.config_path)])
        self.wait_ready(timeout)
        if self.secrets_in_db:
            self.set_db_secrets(self.secrets)

    def set_db_secrets(self, secrets: Sequence[str]) -> None:
        """Replace the realm's secrets in coturn's SQLite database (what ``turnadmin -s``/``-X`` edit).
        coturn reads them on every authentication, so this takes effect without a restart; static
        ``static-auth-secret`` lines, by contrast, are read once at start."""
        if not self.secrets_in_db:
            raise RuntimeError("set_db_secrets() needs CoturnProcess(secrets_in_db=True)")
        with contextlib.closing(sqlite3.connect(self.db_path)) as db, db:
            db.execute("DELETE FROM turn_secret WHERE realm = ?", (self.realm,))
            db.executemany(
                "INSERT INTO turn_secret (realm, value) VALUES (?, ?)", [(self.realm, s) for s in secrets]
            )
        self.secrets = list(secrets)

    def wait_ready(self, timeout: float) -> None:
        """Ready once a STUN Binding request on the listening port is answered."""
        request = _binding_request()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)

            def answered() -> bool:
                s.sendto(request, self.address)
                try:
                    data, _ = s.recvfrom(2048)
                except OSError:
                    return False
                return data[8:20] == request[8:20]

            self._wait(answered, timeout, "coturn answering a STUN Binding request")

    def signing_secret(self) -> str:
        return self.secrets[0]


def _binding_request() -> bytes:
    """A bare STUN Binding request (RFC 8489: type 0x0001, length 0, magic cookie, transaction id)."""
    return b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
