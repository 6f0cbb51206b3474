"""Driving the node scripts in e2e/js/ from pytest: each runs as a subprocess that prints one JSON event
per line; a reader thread collects them and tests wait on them with deadlines (never on sleeps)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
JS = Path(__file__).resolve().parent / "js"
WAIT_S = 10.0

Event = dict[str, Any]
Meta = dict[str, Any]
Predicate = Callable[[Event], bool]


class Signaling(Protocol):
    """What the tests use of the root conftest's SignalingProcess."""

    port: int
    env: dict[str, str]

    @property
    def url(self) -> str: ...

    @property
    def ws_url(self) -> str: ...

    def start(self, wait_ready: bool = True) -> None: ...

    def stop(self, kill: bool = False) -> None: ...


class NodeProcess:
    """One node script; `events` grows as it prints, `wait_for` blocks until a matching event arrives."""

    def __init__(self, name: str, script: str, args: list[str], token: str | None, log_dir: Path) -> None:
        self.name = name
        self.events: list[Event] = []
        self.exited = False
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        env = {k: v for k, v in os.environ.items() if k != "VOXA_TOKEN"}
        if token:
            env["VOXA_TOKEN"] = token
        self.stderr_path = log_dir / f"node-{name}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            ["node", str(JS / script), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"node-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event: Event = json.loads(line)
            except ValueError:
                event = {"ev": "stdout", "text": line}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.exited = True
            self._cond.notify_all()

    # --- waiting ----------------------------------------------------------------------------------
    def mark(self) -> int:
        """The index of the next event; pass it as `since` to wait only for later events."""
        with self._cond:
            return len(self.events)

    def wait_for(self, pred: Predicate, what: str, *, since: int = 0, timeout: float = WAIT_S) -> Event:
        deadline = time.monotonic() + timeout
        index = since
        with self._cond:
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if pred(event):
                        return event
                if self.exited:
                    raise AssertionError(f"{self.name} exited before {what}\n{self.describe()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: no {what} within {timeout} s\n{self.describe()}")
                self._cond.wait(remaining)

    def wait_ev(self, ev: str, *, since: int = 0, timeout: float = WAIT_S, **fields: Any) -> Event:
        """The first event named `ev` (from `since` on) whose fields equal `fields`."""

        def pred(event: Event) -> bool:
            return event.get("ev") == ev and all(event.get(k) == v for k, v in fields.items())

        detail = f"{ev} {fields}" if fields else ev
        return self.wait_for(pred, detail, since=since, timeout=timeout)

    def wait_sync(
        self, pred: Callable[[dict[str, list[Meta]]], bool], what: str, *, since: int = 0, timeout: float = WAIT_S
    ) -> dict[str, list[Meta]]:
        """The first Presence.onSync (from `since` on) whose state satisfies `pred`; returns {key: metas}."""
        event = self.wait_for(
            lambda e: e.get("ev") == "sync" and pred(presences(e)), f"sync where {what}", since=since, timeout=timeout
        )
        return presences(event)

    def select(self, ev: str, *, since: int = 0) -> list[Event]:
        with self._cond:
            return [e for e in self.events[since:] if e.get("ev") == ev]

    def describe(self, last: int = 40) -> str:
        with self._cond:
            tail = self.events[-last:]
        lines = [json.dumps(e)[:600] for e in tail]
        stderr = self.stderr_path.read_text(errors="replace")[-2000:] if self.stderr_path.exists() else ""
        return f"--- last events of {self.name}:\n" + "\n".join(lines) + f"\n--- stderr:\n{stderr}"

    # --- commands ---------------------------------------------------------------------------------
    def send(self, **command: Any) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()

    def push(self, event: str, payload: dict[str, Any] | None = None, *, timeout: float = WAIT_S) -> Event:
        """Push on the channel and wait for the reply event ({"status", "response"})."""
        ref = f"p{next(self._ids)}"
        self.send(cmd="push", id=ref, event=event, payload=payload or {})
        return self.wait_ev("reply", id=ref, timeout=timeout)

    def leave(self, *, timeout: float = WAIT_S) -> Event:
        ref = f"l{next(self._ids)}"
        self.send(cmd="leave", id=ref)
        return self.wait_ev("reply", id=ref, timeout=timeout)

    def disconnect(self, *, timeout: float = WAIT_S) -> Event:
        ref = f"d{next(self._ids)}"
        self.send(cmd="disconnect", id=ref)
        return self.wait_ev("disconnected", id=ref, timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="exit")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                _close_quietly(stream)
        self._stderr.close()


def _close_quietly(stream: IO[str]) -> None:
    try:
        stream.close()
    except (BrokenPipeError, OSError):
        pass


def presences(sync_event: Event) -> dict[str, list[Meta]]:
    """{key: metas} of a sync event (Presence.list of the phoenix client)."""
    return {entry["key"]: entry["metas"] for entry in sync_event["list"]}


def keys_are(*keys: str) -> Callable[[dict[str, list[Meta]]], bool]:
    expected = set(keys)
    return lambda state: set(state) == expected


def meta_of(state: dict[str, list[Meta]], key: str) -> Meta:
    """The single meta of `key` (each test user has one session)."""
    metas = state[key]
    assert len(metas) == 1, f"{key} has {len(metas)} metas: {metas}"
    return metas[0]


def meta_has(key: str, **fields: Any) -> Callable[[dict[str, list[Meta]]], bool]:
    def pred(state: dict[str, list[Meta]]) -> bool:
        metas = state.get(key)
        return bool(metas) and len(metas) == 1 and all(metas[0].get(k) == v for k, v in fields.items())

    return pred
