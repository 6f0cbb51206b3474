"""Run a private, loopback-only livekit-server for the SFU benchmark, and speak its room API.

`livekit_binaries()` builds (once, cached under ``~/.cache/voxa/livekit/``) the server and the Go load
client with ``bench/livekit/build.sh``. `LiveKitServer` writes a configuration of its own and starts
``livekit-server --config FILE`` as a child process, waits until its HTTP endpoint answers, and stops it
again (SIGTERM, then SIGKILL). Everything it opens is on 127.0.0.1:

* HTTP/WebSocket signalling and the room API on ``127.0.0.1:<port>`` (``bind_addresses``);
* media on ONE UDP port (``rtc.udp_port``, LiveKit's UDP mux), no ICE/TCP (``rtc.tcp_port: 0``), no
  TURN, no Redis (a single node), no external IP discovery (``rtc.use_external_ip: false`` and an
  explicit ``rtc.node_ip: 127.0.0.1``: with a node IP given, LiveKit adds no STUN server either);
* ICE candidates from ``lo`` only (``rtc.interfaces``, ``rtc.ips``, ``rtc.enable_loopback_candidate``),
  mDNS off;
* the API key and secret are in the configuration (random per run); access tokens are HS256 JWTs
  signed with them (`access_token`).

Production defaults are kept where they do not concern the network (``development: false``, so no
debug logging), with one exception for the benchmark: congestion control is off
(``rtc.congestion_control.enabled: false``). The load peers send no RTCP feedback (as for Voxa and
Janus), and LiveKit's stream allocator would otherwise throttle or pause streams on an estimate it has
no feedback for.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp

from voxa.common.ports import UDP, free_port
from voxa.common.testing.procs import Proc, tail, wait_ready_async

HERE: Final = Path(__file__).resolve().parent
BUILD_SCRIPT: Final = HERE / "build.sh"
ROOM_SERVICE: Final = "/twirp/livekit.RoomService/"
BUILD_NOTE: Final = (
    "livekit-server v1.13.11 from its Go module, built against upstream pion/webrtc v4.2.18, "
    "pion/dtls v3.1.9 and pion/ice v4.4.0 (the versions its go.mod requires): the module proxy serves "
    "none of LiveKit's pion forks that its go.mod's replace directives name; one fork-only call "
    "(SettingEngine.EnableSped, made only for the optional 'warp' transport, off here) is left out"
)


class LiveKitUnavailable(RuntimeError):
    """livekit-server or the load client cannot be had here (no Go, the build failed...)."""


def livekit_binaries(timeout: float = 1800.0) -> tuple[Path, Path]:
    """(livekit-server, lkload): built once by build.sh (minutes the first time), then cached."""
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").exists():
        raise LiveKitUnavailable("no Go toolchain to build livekit-server and the load client")
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "server", "load"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LiveKitUnavailable(f"build.sh did not finish within {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise LiveKitUnavailable(f"build.sh failed ({proc.returncode}): {proc.stderr[-1500:]}")
    paths = [Path(line) for line in proc.stdout.split("\n") if line.strip()]
    if len(paths) != 2 or not all(p.is_file() for p in paths):
        raise LiveKitUnavailable(f"build.sh printed {proc.stdout!r}, not two binaries")
    return paths[0], paths[1]


# --- access tokens -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(
    api_key: str,
    api_secret: str,
    *,
    identity: str = "",
    grants: dict[str, Any],
    ttl_s: int = 3600,
    now: float | None = None,
) -> str:
    """A LiveKit access token: a JWT (HS256, signed with the API secret) whose issuer is the API key,
    subject the participant identity, and ``video`` claim the grants (``roomJoin``, ``room``,
    ``canPublish``, ``canSubscribe``; ``roomCreate`` for the room API)."""
    issued = int(time.time() if now is None else now)
    header = {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, Any] = {"iss": api_key, "nbf": issued - 10, "exp": issued + ttl_s, "video": grants}
    if identity:
        claims["sub"] = identity
        claims["name"] = identity
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(api_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def verify_token(token: str, api_secret: str) -> dict[str, Any]:
    """The claims of `token` if its HS256 signature is the secret's (for tests), else ValueError."""
    head, body, sig = token.split(".")
    expected = hmac.new(api_secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    padded = sig + "=" * (-len(sig) % 4)
    if not hmac.compare_digest(base64.urlsafe_b64decode(padded), expected):
        raise ValueError("bad signature")
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


# --- the server ----------------------------------------------------------------------------------


class LiveKitServer:
    """A livekit-server process with a private configuration, bound to loopback. Use as ``async with``.

    The configuration and the log go to `workdir` (kept) or to a temporary folder removed by `stop`.
    The process inherits the caller's CPU affinity: start it inside a pinned block.
    """

    def __init__(
        self,
        binary: Path,
        *,
        workdir: Path | None = None,
        log_level: str = "warn",
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.api_key = "voxa-bench"
        self.api_secret = secrets.token_urlsafe(32)
        self.port = 0
        self.udp_port = 0
        self._workdir = workdir
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.config_dir = Path()
        self.proc: Proc | None = None
        self.http: aiohttp.ClientSession | None = None
        self.version = ""
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.pid is not None
        return self.proc.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.config_dir / "livekit.log"

    def log_tail(self, chars: int = 3000) -> str:
        return tail(self.log_path, chars)

    def config_yaml(self) -> str:
        """livekit-server's configuration (JSON is YAML)."""
        config = {
            "port": self.port,
            "bind_addresses": ["127.0.0.1"],
            "log_level": self.log_level,
            "development": False,
            "keys": {self.api_key: self.api_secret},
            "rtc": {
                "udp_port": self.udp_port,
                "tcp_port": 0,
                "node_ip": "127.0.0.1",
                "use_external_ip": False,
                "enable_loopback_candidate": True,
                "use_mdns": False,
                "interfaces": {"includes": ["lo"]},
                "ips": {"includes": ["127.0.0.1/32"]},
                "congestion_control": {"enabled": False},
            },
            "turn": {"enabled": False},
            "room": {"auto_create": False, "empty_timeout": 600},
        }
        return json.dumps(config, indent=2) + "\n"

    def token(self, identity: str, room: str, *, publish: bool) -> str:
        grants = {"roomJoin": True, "room": room, "canPublish": publish, "canSubscribe": True}
        return access_token(self.api_key, self.api_secret, identity=identity, grants=grants)

    def admin_token(self) -> str:
        grants = {"roomCreate": True, "roomList": True, "roomAdmin": True}
        return access_token(self.api_key, self.api_secret, grants=grants, ttl_s=600)

    async def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("livekit-server already started")
        if self._workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="voxa-livekit-")
            self.config_dir = Path(self._tempdir.name)
        else:
            self.config_dir = self._workdir
            self.config_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.port = free_port()
            self.udp_port = free_port(kinds=UDP)
            config = self.config_dir / "livekit.yaml"
            config.write_text(self.config_yaml())
            config.chmod(0o600)
            env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
            argv = [str(self.binary), "--config", str(config)]
            self.proc = Proc("livekit-server", argv, env, self.log_path, start_new_session=True).start()
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            await self._wait_ready(self.proc, self.http)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, proc: Proc, http: aiohttp.ClientSession) -> None:
        async def answers() -> bool:
            try:
                async with http.get(self.http_url + "/", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        async def room_api_answers() -> bool:
            # The room API answers too once the node is registered (ListRooms with an admin token).
            try:
                await self.room_api("ListRooms", {})
            except (aiohttp.ClientError, TimeoutError, RuntimeError):
                return False
            return True

        try:
            await wait_ready_async(proc, answers, self.startup_timeout, f"livekit-server at {self.http_url}")
            await wait_ready_async(proc, room_api_answers, self.startup_timeout, "livekit-server's room API")
        except RuntimeError as exc:
            raise LiveKitUnavailable(str(exc)) from None

    async def room_api(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """One RoomService call (Twirp, JSON), with an admin token."""
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self.admin_token()}"}
        async with self.http.post(self.http_url + ROOM_SERVICE + method, json=body, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"{method}: HTTP {resp.status} {text[:300]}")
        answer: dict[str, Any] = json.loads(text) if text else {}
        return answer

    async def create_room(self, name: str) -> None:
        await self.room_api("CreateRoom", {"name": name, "empty_timeout": 600})

    async def delete_room(self, name: str) -> None:
        await self.room_api("DeleteRoom", {"room": name})

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code (None if never started)."""
        if self.http is not None:
            await self.http.close()
            self.http = None
        proc, self.proc = self.proc, None
        code: int | None = None
        if proc is not None:
            await asyncio.to_thread(proc.stop, timeout)
            code = self.exit_code = proc.returncode
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
        return code

    async def __aenter__(self) -> LiveKitServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def server_version(binary: Path) -> str:
    """``livekit-server --version``'s version number."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip().rpartition(" ")[2]
