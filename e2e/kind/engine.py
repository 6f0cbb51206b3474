"""The local Docker engine the images and kind clusters are built with: found, or started and stopped.

`.ci/run` machines have Docker's Debian packages (installed by `make test`'s set-up) but no engine
running. `ensure_engine` starts `dockerd` when none answers, with its data under ~/.cache/voxa/docker
(so built images and the node image survive between runs) and without the default bridge: nothing
started here gets a network that NATs to the outside unless it asks for one, and the kind network is
made without masquerading (`cluster.py`). Whoever started the engine stops it (`stop_engine`); an
engine that was already running is left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from e2e.kind.paths import CACHE_DIR


class EngineError(RuntimeError):
    """The Docker engine could not be found, started or used."""


def docker_client() -> str:
    """The docker client matching the engine: Debian's, where installed (the machine may also carry a
    newer client elsewhere on PATH, which then negotiates down to the engine's API)."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EngineError("no docker client: `make test` installs Debian's docker.io")


def engine_running(timeout: float = 10.0) -> bool:
    try:
        result = subprocess.run(
            [docker_client(), "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (subprocess.TimeoutExpired, EngineError):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


@dataclass(frozen=True)
class Engine:
    """A running engine; `pid_file` is set when this code started it (and so must stop it)."""

    client: str
    pid_file: Path | None = None


def ensure_engine(state_dir: Path, timeout: float = 120.0) -> Engine:
    """The running engine, started first if none answers. The pid of a started engine is written to
    state_dir/dockerd.pid; its log is state_dir/dockerd.log."""
    client = docker_client()
    if engine_running():
        return Engine(client)
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.access(dockerd, os.X_OK):
        raise EngineError("no dockerd: `make test` installs Debian's docker.io")
    state_dir.mkdir(parents=True, exist_ok=True)
    data_root = CACHE_DIR / "docker"
    data_root.mkdir(parents=True, exist_ok=True)
    pid_file = state_dir / "dockerd.pid"
    log = (state_dir / "dockerd.log").open("ab")
    proc = subprocess.Popen(
        [
            dockerd,
            f"--data-root={data_root}",
            f"--pidfile={pid_file}",
            "--bridge=none",
            "--ip-masq=false",
            "--log-level=warn",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # outlives `make kind`; stop_engine ends it
    )
    deadline = time.monotonic() + timeout
    while not engine_running(timeout=5):
        if proc.poll() is not None:
            tail = (state_dir / "dockerd.log").read_text(errors="replace")[-3000:]
            raise EngineError(f"dockerd exited with {proc.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise EngineError(f"dockerd did not answer within {timeout:.0f}s")
        time.sleep(0.5)
    pid_file.write_text(f"{proc.pid}\n")
    return Engine(client, pid_file)


def stop_engine(state_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the engine ensure_engine started with this state_dir, if any; True if one was stopped."""
    pid_file = state_dir / "dockerd.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def docker(
    *args: str, input: bytes | None = None, timeout: float = 1800.0, env: dict[str, str] | None = None
) -> str:
    """Run the docker client; a failure raises EngineError with what it printed."""
    argv = [docker_client(), *args]
    result = subprocess.run(
        argv,
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        out = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
        raise EngineError(f"docker {' '.join(args[:3])} ... failed ({result.returncode}):\n{out}")
    return result.stdout.decode(errors="replace")


def image_exists(ref: str) -> bool:
    result = subprocess.run(
        [docker_client(), "image", "inspect", ref], capture_output=True, timeout=60, check=False
    )
    return result.returncode == 0
