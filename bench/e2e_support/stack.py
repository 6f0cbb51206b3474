"""The processes of the end-to-end benchmark, all on loopback: an optional redis-server, one
`voxa signaling` and `voxa sfu --workers 1` processes registering with it for one voice server.

Everything here is synchronous (Popen and short HTTP polls); the async benchmark calls the blocking
parts through ``asyncio.to_thread``. `Stack.stop` ends every process this module started, and only
those (by the Popen handle, never by name).
"""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from voxa.common.ports import free_port
from voxa.common.testing import launch
from voxa.common.testing.procs import Proc, clean_env, http_json, http_ok, tail

# Proc, clean_env, tail, http_json and http_ok live in the harness kit (voxa.common.testing.procs);
# they stay importable from here for the benchmarks and soaks that import them from this module.
__all__ = ["Proc", "SfuHandle", "Stack", "clean_env", "http_json", "http_ok", "log", "tail"]

READY_TIMEOUT_S: Final = launch.READY_TIMEOUT_S
POLL_S: Final = 0.05


def log(text: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class SfuHandle:
    media_id: str
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """redis-server (optional) + one signaling + SFUs for voice server `server_id`, in `workdir`."""

    workdir: Path
    jwt_secret: str
    sfu_secret: str
    server_id: str = "g1"
    media_server_ttl_s: float = 3.0
    use_redis: bool = True
    procs: list[Proc] = field(default_factory=list)
    sfus: dict[str, SfuHandle] = field(default_factory=dict)
    signaling_port: int = 0
    redis_port: int = 0
    redis_version: str | None = None
    _generation: int = 0

    @property
    def signaling_url(self) -> str:
        return f"http://127.0.0.1:{self.signaling_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.signaling_port}/socket"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _track(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    # --- redis ------------------------------------------------------------------------------------
    def start_redis(self) -> None:
        proc = self._track(launch.redis_server(self.workdir, env=clean_env(), timeout=READY_TIMEOUT_S))
        self.redis_port = proc.port
        self.redis_version = launch.redis_version(proc.port)
        if not self.redis_version:
            raise RuntimeError(f"redis-server gave no version:\n{proc.tail()}")

    # --- signaling --------------------------------------------------------------------------------
    def start_signaling(self, **settings: str) -> int:
        """One more `voxa signaling` (the first is `signaling_url`); `settings` are extra VOXA_ env
        values by field name (call_ring_timeout_s="5"). Returns its port."""
        port = free_port()
        if not self.signaling_port:
            self.signaling_port = port
        env = clean_env()
        env.update(
            VOXA_JWT_SECRET=self.jwt_secret,
            VOXA_SFU_SECRET=self.sfu_secret,
            VOXA_ALLOWED_ORIGINS="*",
            VOXA_MEDIA_SERVER_TTL_S=f"{self.media_server_ttl_s:g}",
            VOXA_LOG_LEVEL="warning",
            VOXA_SHUTDOWN_GRACE_S="2",
            # Every load client comes from 127.0.0.1: no per-address connection limits.
            VOXA_MAX_CONNECTIONS_PER_ADDRESS="0",
            VOXA_CONNECTIONS_PER_ADDRESS_PER_S="0",
        )
        env.update({f"VOXA_{name.upper()}": value for name, value in settings.items()})
        if self.use_redis:
            env["VOXA_REDIS_URL"] = self.redis_url
        name = "signaling" if port == self.signaling_port else f"signaling-{port}"
        self._track(launch.signaling(self.workdir / f"{name}.log", env, port, name, timeout=READY_TIMEOUT_S))
        return port

    # --- SFUs -------------------------------------------------------------------------------------
    def start_sfu(self, media_id: str) -> SfuHandle:
        """Start `voxa sfu --workers 1` as media server `media_id` (replacing a dead one of that id)
        and wait for its /healthz; `wait_registered` waits for the registry entry."""
        old = self.sfus.get(media_id)
        if old is not None and old.proc.alive():
            raise RuntimeError(f"{media_id} is still running")
        self._generation += 1
        port = free_port()
        env = clean_env()
        env.update(
            VOXA_SFU_SECRET=self.sfu_secret,
            VOXA_SFU_ID=media_id,
            VOXA_SFU_SERVER_ID=self.server_id,
            VOXA_SFU_SIGNALING_URL=self.signaling_url,
            VOXA_SFU_RTC_LISTEN_IP="127.0.0.1",
            VOXA_SFU_RTC_REMOTE_NETWORKS="127.0.0.0/8",
            VOXA_SFU_LOG_LEVEL="warning",
            VOXA_SFU_PORT=str(port),
            VOXA_SFU_DRAIN_DEADLINE_S="2",
        )
        name = f"{media_id}-{self._generation}"
        proc = self._track(launch.sfu(self.workdir / f"{name}.log", env, port, name, timeout=READY_TIMEOUT_S))
        handle = self.sfus[media_id] = SfuHandle(media_id, port, proc)
        return handle

    def media_servers(self) -> dict[str, str]:
        """Registry entries of the voice server: media server id -> control URL."""
        body = http_json(
            f"{self.signaling_url}/internal/servers/{self.server_id}/media-servers", self.sfu_secret
        )
        return {str(m["id"]): str(m["url"]) for m in body["media_servers"]}

    def wait_registered(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every running SFU is in the registry under its id with its current URL."""
        deadline = time.monotonic() + timeout
        want = {h.media_id: h.url for h in self.sfus.values() if h.proc.alive()}
        found: dict[str, str] = {}
        while time.monotonic() < deadline:
            for handle in self.sfus.values():
                if handle.media_id in want:
                    handle.proc.check_alive()
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError):
                found = self.media_servers()
                if all(found.get(k) == v for k, v in want.items()):
                    return
            time.sleep(POLL_S)
        raise RuntimeError(f"SFUs not registered after {timeout:g} s: want {want}, registry has {found}")

    def host_of(self, channel_id: str) -> str | None:
        """The media server id the channel is assigned to (signaling's registry API)."""
        try:
            body = http_json(
                f"{self.signaling_url}/internal/servers/{self.server_id}/channels/{channel_id}/media-server",
                self.sfu_secret,
            )
        except urllib.error.HTTPError:
            return None
        return str(body["media_server"]["id"])

    def check_alive(self) -> None:
        """Raise if signaling or redis died (SFUs die on purpose)."""
        for proc in self.procs:
            if proc.name == "redis" or proc.name.startswith("signaling"):
                proc.check_alive()

    def stop(self) -> None:
        """Stop every process started here (SIGTERM, SIGKILL after STOP_TIMEOUT_S): signaling first (an
        SFU's graceful stop waits for signaling's open /v1/events WebSocket to go), SFUs, redis last."""
        order = sorted(self.procs, key=lambda p: {"signaling": 0, "redis": 2}.get(p.name, 1))
        for proc in order:
            began = time.monotonic()
            try:
                if proc.alive():
                    proc.stop()
                    log(f"stopped {proc.name} (pid {proc.pid}) in {time.monotonic() - began:.1f} s")
            except Exception as exc:  # keep stopping the others
                log(f"stopping {proc.name} (pid {proc.pid}) failed: {exc!r}")
