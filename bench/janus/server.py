"""Run a private, loopback-only Janus WebRTC server (HTTP transport + VideoRoom plugin) for benchmarks.

`JanusServer` writes its own configuration folder (never /etc/janus), starts ``janus`` in the foreground
as a child process, waits until the HTTP API answers ``{"janus": "info"}`` and stops it again (SIGTERM,
then SIGKILL). Everything it opens is on 127.0.0.1:

* the HTTP API listens on ``127.0.0.1:<http_port>`` only (admin API and HTTPS off);
* ICE gathers host candidates on the ``lo`` interface only (``ice_enforce_list = "lo"``), IPv4, with no
  STUN or TURN server, no 1:1 NAT mapping, no mDNS resolution: Janus never sends a packet off the machine.
  Janus (ice.c, ``janus_ice_setup_local``) unconditionally skips interfaces flagged ``IFF_LOOPBACK`` when it
  lists local addresses, and when it ends up with none libnice falls back to gathering on *every*
  non-loopback interface (IPv6 included, whatever ``ipv6`` says). So with the enforce list alone Janus would
  announce eth0's addresses. The harness therefore compiles a tiny ``LD_PRELOAD`` shim (needs ``cc``) that
  clears ``IFF_LOOPBACK`` on ``lo`` in ``getifaddrs()`` results for the Janus process only; Janus then
  hands libnice exactly 127.0.0.1 and every candidate it announces is 127.0.0.1;
* every transport but ``libjanus_http.so``, every plugin but ``libjanus_videoroom.so``, every external
  logger and every event handler is disabled, so startup loads nothing that reaches for a broker or a
  socket of its own (mqtt, rabbitmq, nanomsg, websockets, Unix sockets, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp

from voxa.common.ports import free_port
from voxa.common.testing import procfs
from voxa.common.testing.procs import Proc, wait_ready_async

VIDEOROOM_PLUGIN: Final = "janus.plugin.videoroom"
KEEP_PLUGINS: Final = frozenset({"libjanus_videoroom.so"})
KEEP_TRANSPORTS: Final = frozenset({"libjanus_http.so"})
_LIB_DIR_CANDIDATES: Final = (
    "/usr/lib/*/janus",
    "/usr/lib/janus",
    "/usr/local/lib/janus",
    "/opt/janus/lib/janus",
)

JcfgValue = str | int | float | bool | Sequence[str]

# getifaddrs() wrapper preloaded into Janus: `lo` loses IFF_LOOPBACK so that Janus's enforce list can pick it.
LOOPBACK_SHIM_SOURCE: Final = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <string.h>

int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **) = NULL;
    if (real == NULL)
        real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    if (real == NULL)
        return -1;
    int rc = real(ifap);
    if (rc == 0)
        for (struct ifaddrs *ifa = *ifap; ifa != NULL; ifa = ifa->ifa_next)
            if (ifa->ifa_name != NULL && strcmp(ifa->ifa_name, "lo") == 0)
                ifa->ifa_flags &= ~IFF_LOOPBACK;
    return rc;
}
"""


class JanusStartError(RuntimeError):
    """Janus could not be started (binary missing, bad configuration, API never answered...)."""


def janus_binary() -> str | None:
    """The path of the ``janus`` executable, or None when Janus is not installed."""
    return shutil.which("janus")


def find_lib_dir() -> Path:
    """The folder holding Janus's ``plugins/``, ``transports/``, ``events/`` and ``loggers/`` folders."""
    for pattern in _LIB_DIR_CANDIDATES:
        for candidate in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (candidate / "plugins" / "libjanus_videoroom.so").exists():
                return candidate
    raise JanusStartError("cannot find Janus's plugins folder (libjanus_videoroom.so); is `janus` installed?")


async def build_loopback_shim(dest_dir: Path, cc: str | None = None) -> Path:
    """Compile `LOOPBACK_SHIM_SOURCE` into ``dest_dir/libvoxa_lo_ice.so`` and return its path."""
    compiler = cc or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise JanusStartError(
            "a C compiler (cc) is needed to build the loopback ICE shim for Janus "
            "(Janus never gathers candidates on lo by itself); install gcc"
        )
    source = dest_dir / "voxa_lo_ice.c"
    library = dest_dir / "libvoxa_lo_ice.so"
    source.write_text(LOOPBACK_SHIM_SOURCE)
    proc = await asyncio.create_subprocess_exec(
        compiler,
        "-shared",
        "-fPIC",
        "-O2",
        "-o",
        str(library),
        str(source),
        "-ldl",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise JanusStartError(f"building the loopback ICE shim failed:\n{output.decode(errors='replace')}")
    return library


def _jcfg_value(value: JcfgValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_jcfg_value(item) for item in value) + "]"


def render_jcfg(sections: Mapping[str, Mapping[str, JcfgValue]]) -> str:
    """Render sections of settings in Janus's libconfig (``.jcfg``) syntax."""
    out: list[str] = []
    for name, settings in sections.items():
        out.append(f"{name}: {{")
        out.extend(f"\t{key} = {_jcfg_value(value)}" for key, value in settings.items())
        out.append("}")
    return "\n".join(out) + "\n"


def _shared_objects(folder: Path) -> list[str]:
    # Janus loads every file of a folder whose name ends in ".so" (not the versioned ".so.1" links).
    return sorted(p.name for p in folder.glob("*.so")) if folder.is_dir() else []


class JanusServer:
    """A Janus process with a private configuration, bound to loopback. Use as ``async with``.

    The configuration, the shim and the logs go to `workdir` (kept) or to a temporary folder removed by
    `stop`. `http_port` and `rtp_port_range` default to a free TCP port and a random block of `rtp_ports`
    UDP ports. `debug_level` is Janus's log level (4 = info; 3 or lower for benchmarks). `event_loops` > 0
    makes Janus share that many media threads among all handles instead of one thread per handle.
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        http_port: int | None = None,
        rtp_port_range: tuple[int, int] | None = None,
        rtp_ports: int = 2000,
        debug_level: int = 4,
        session_timeout: int = 60,
        event_loops: int = 0,
        binary: str | None = None,
        lib_dir: Path | None = None,
        cc: str | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.binary = binary or janus_binary() or "janus"
        self.lib_dir = lib_dir
        self.cc = cc
        self.http_port = http_port
        self.rtp_port_range = rtp_port_range
        self.rtp_ports = rtp_ports
        self.debug_level = debug_level
        self.session_timeout = session_timeout
        self.event_loops = event_loops
        self.startup_timeout = startup_timeout
        self._workdir = workdir
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.config_dir = Path()
        self.proc: Proc | None = None
        self.server_info: dict[str, Any] = {}
        self.exit_code: int | None = None

    # -- derived properties ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None or self.proc.pid is None:
            raise RuntimeError("Janus is not running")
        return self.proc.pid

    @property
    def http_url(self) -> str:
        """Base URL of the Janus HTTP API, e.g. ``http://127.0.0.1:8088/janus``."""
        return f"http://127.0.0.1:{self.http_port}/janus"

    @property
    def log_path(self) -> Path:
        """Janus's own log file (``log_to_file``)."""
        return self.config_dir / "janus.log"

    @property
    def stdout_path(self) -> Path:
        """Where the process's stdout/stderr go (only output printed before logging starts)."""
        return self.config_dir / "janus.stdout.log"

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used by the Janus process so far (all its threads)."""
        seconds = procfs.cpu_seconds(self.pid)
        if seconds is None:
            raise JanusStartError(f"janus (pid {self.pid}) is gone")
        return seconds

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts) or "(no output)"

    # -- configuration -----------------------------------------------------------------------------

    def _choose_ports(self) -> None:
        if self.http_port is None:
            self.http_port = free_port()
        if self.rtp_port_range is None:
            for _ in range(100):
                low = random.randrange(20000, 60000 - self.rtp_ports)
                if not low <= self.http_port <= low + self.rtp_ports:
                    break
            self.rtp_port_range = (low, low + self.rtp_ports - 1)

    def config_files(self) -> dict[str, str]:
        """The configuration files to write (file name -> content); ports must be chosen first."""
        assert self.http_port is not None and self.rtp_port_range is not None
        lib_dir = self.lib_dir or find_lib_dir()
        folders = {name: lib_dir / name for name in ("plugins", "transports", "events", "loggers")}
        disabled_plugins = [n for n in _shared_objects(folders["plugins"]) if n not in KEEP_PLUGINS]
        disabled_transports = [n for n in _shared_objects(folders["transports"]) if n not in KEEP_TRANSPORTS]
        general: dict[str, JcfgValue] = {
            "configs_folder": str(self.config_dir),
            "plugins_folder": str(folders["plugins"]),
            "transports_folder": str(folders["transports"]),
            "events_folder": str(folders["events"]),
            "loggers_folder": str(folders["loggers"]),
            "log_to_stdout": False,
            "log_to_file": str(self.log_path),
            "debug_level": self.debug_level,
            "debug_timestamps": True,
            "debug_colors": False,
            "interface": "127.0.0.1",
            "server_name": "voxa-bench-janus",
            "session_timeout": self.session_timeout,
            "reclaim_session_timeout": 0,
            "hide_dependencies": False,
            "exit_on_dl_error": False,
        }
        if self.event_loops > 0:
            general["event_loops"] = self.event_loops
        janus = render_jcfg(
            {
                "general": general,
                # Empty: Janus generates a self-signed P-256 certificate for DTLS at startup.
                "certificates": {},
                "media": {
                    "ipv6": False,
                    "ipv6_linklocal": False,
                    "rtp_port_range": f"{self.rtp_port_range[0]}-{self.rtp_port_range[1]}",
                    # Benchmarks send steady audio; "media stopped" events would only add noise.
                    "no_media_timer": 0,
                    "slowlink_threshold": 0,
                },
                "nat": {
                    # No stun_server / turn_server / turn_rest_api / nat_1_1_mapping: no public IP discovery.
                    "nice_debug": False,
                    "full_trickle": False,
                    "ice_lite": False,
                    "ice_tcp": False,
                    "ignore_mdns": True,
                    "ice_enforce_list": "lo",
                    "ignore_unreachable_ice_server": False,
                },
                "plugins": {"disable": ",".join(disabled_plugins)},
                "transports": {"disable": ",".join(disabled_transports)},
                "loggers": {"disable": ",".join(_shared_objects(folders["loggers"]))},
                "events": {"broadcast": False, "disable": ",".join(_shared_objects(folders["events"]))},
            }
        )
        http = render_jcfg(
            {
                "general": {
                    "json": "compact",
                    "base_path": "/janus",
                    "http": True,
                    "port": self.http_port,
                    "ip": "127.0.0.1",
                    "https": False,
                },
                "admin": {"admin_http": False, "admin_https": False},
                "cors": {},
            }
        )
        # No static rooms: the harness creates (non-permanent) rooms through the API.
        videoroom = render_jcfg({"general": {"string_ids": False, "events": False}})
        return {
            "janus.jcfg": janus,
            "janus.transport.http.jcfg": http,
            "janus.plugin.videoroom.jcfg": videoroom,
        }

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("Janus already started")
        if shutil.which(self.binary) is None:
            raise JanusStartError(f"`{self.binary}` not found; install it with `apt-get install janus`")
        if self._workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="voxa-janus-")
            self.config_dir = Path(self._tempdir.name)
        else:
            self.config_dir = self._workdir
            self.config_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._choose_ports()
            for name, content in self.config_files().items():
                (self.config_dir / name).write_text(content)
            shim = await build_loopback_shim(self.config_dir, self.cc)
            env = {**os.environ, "LD_PRELOAD": str(shim)}
            argv = [
                self.binary,
                "--configs-folder",
                str(self.config_dir),
                "--config",
                str(self.config_dir / "janus.jcfg"),
            ]
            self.proc = Proc("janus", argv, env, self.stdout_path, start_new_session=True).start()
            await self._wait_ready(self.proc)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, proc: Proc) -> None:
        timeout = aiohttp.ClientTimeout(total=2.0)
        attempts = itertools.count()
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def answers() -> bool:
                try:
                    body = {"janus": "info", "transaction": f"ready-{next(attempts)}"}
                    async with http.post(self.http_url, json=body) as resp:
                        info: dict[str, Any] = await resp.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return False
                if info.get("janus") != "server_info":
                    return False
                if VIDEOROOM_PLUGIN not in info.get("plugins", {}):
                    raise JanusStartError(f"Janus started without {VIDEOROOM_PLUGIN}:\n{self.log_tail()}")
                self.server_info = info
                return True

            try:
                await wait_ready_async(
                    proc, answers, self.startup_timeout, f"the Janus API at {self.http_url}", self.log_tail
                )
            except JanusStartError:
                raise
            except RuntimeError as exc:
                raise JanusStartError(str(exc)) from None

    async def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code (None if never started)."""
        proc, self.proc = self.proc, None
        code: int | None = None
        if proc is not None:
            await asyncio.to_thread(proc.stop, timeout)
            code = self.exit_code = proc.returncode
        if self._tempdir is not None:
            # Startup errors carry the log's tail; pass `workdir` to keep the whole log.
            self._tempdir.cleanup()
            self._tempdir = None
        return code

    async def __aenter__(self) -> JanusServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
