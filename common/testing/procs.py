"""Child processes of the harnesses (servers under test, tools), each with its own log file.

One `Proc` for every harness, so that starting, readiness, failure messages and cleanup behave the
same everywhere: a harness ends only the processes it started, by their Popen handle (never by name),
and a process that dies while we wait for it fails the wait at once with the tail of its log, rather
than after the whole deadline with no clue.

The HTTP helpers are loopback-only on purpose: harnesses probe their own children, never the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from voxa.common.testing.wait import scaled

T = TypeVar("T")
STOP_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.05


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any VOXA_ variable of the caller (a developer's shell must not
    reconfigure the servers under test), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXA_")}
    env.update(extra or {})
    return env


def tail(path: Path, chars: int = 2000) -> str:
    """The end of a log file, for failure messages ("" if it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _get(url: str, secret: str | None, timeout: float) -> tuple[int, bytes]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"loopback http only: {url}")
    request = urllib.request.Request(url)  # noqa: S310 - loopback http only (checked above)
    if secret:
        request.add_header("Authorization", f"Bearer {secret}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
        return int(resp.status), bytes(resp.read())


def http_json(url: str, secret: str | None = None, timeout: float = 2.0) -> Any:
    """GET a loopback URL (with a bearer secret) and decode its JSON body; HTTP errors raise."""
    return json.loads(_get(url, secret, timeout)[1])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether a loopback URL answers 200 now (a readiness probe: errors are just "not yet")."""
    try:
        return _get(url, None, timeout)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Proc:
    """One child process with its log file (stdout and stderr, appended: a restart keeps the history)."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    start_new_session: bool = False
    port: int = 0
    """The port it listens on, when a launcher chose it (voxa.common.testing.launch)."""
    cwd: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(self.argv),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=self.start_new_session,
            cwd=self.cwd,
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc is not None else None
            raise RuntimeError(f"{self.name} exited ({code}):\n{self.tail()}")

    def tail(self, chars: int = 2000) -> str:
        return tail(self.log_path, chars)

    def kill(self) -> None:
        """SIGKILL, no drain, no goodbye; reaps the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT_S)
        self._close_log()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if the process has not exited within `timeout` s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(STOP_TIMEOUT_S)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


async def wait_ready_async(
    proc: Proc,
    probe: Callable[[], Awaitable[T | None]],
    timeout: float,
    what: str,
    logs: Callable[[], str] | None = None,
) -> T:
    """`wait_ready` for a probe that is a coroutine (an aiohttp client's request): the event loop runs
    while it waits. `logs` gives the text for the failure messages (default: the tail of proc's log)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    describe = logs or proc.tail
    while True:
        if not proc.alive():
            code = proc.proc.returncode if proc.proc is not None else None
            raise RuntimeError(f"{proc.name} exited ({code}) before {what}:\n{describe()}")
        result = await probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what} not within {limit:g} s:\n{describe()}")
        await asyncio.sleep(POLL_S)


def wait_ready(proc: Proc, probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `probe` until it returns something truthy (and return it), for up to scaled(timeout) s;
    fail at once if `proc` exits meanwhile. Either failure carries the tail of its log."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        proc.check_alive()
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what} not within {limit:g} s:\n{proc.tail()}")
        time.sleep(POLL_S)
