"""Driving the node scripts in e2e/js/ from pytest: each runs as a subprocess that prints one JSON event
per line; a reader thread collects them and tests wait on them with deadlines (never on sleeps)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.tokens import mint_token

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


class Redis(Protocol):
    """What the tests use of the root conftest's RedisServer."""

    @property
    def url(self) -> str: ...


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
        for raw in stdout:
            line = raw.strip()
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
        self,
        pred: Callable[[dict[str, list[Meta]]], bool],
        what: str,
        *,
        since: int = 0,
        timeout: float = WAIT_S,
    ) -> dict[str, list[Meta]]:
        """The first Presence.onSync (from `since` on) whose state satisfies `pred`; returns {key: metas}."""
        event = self.wait_for(
            lambda e: e.get("ev") == "sync" and pred(presences(e)),
            f"sync where {what}",
            since=since,
            timeout=timeout,
        )
        return presences(event)

    def wait_count(
        self, ev: str, count: int, *, since: int = 0, timeout: float = WAIT_S, **fields: Any
    ) -> Event:
        """The `count`-th event named `ev` (from `since` on) whose fields equal `fields`."""
        seen = 0

        def pred(event: Event) -> bool:
            nonlocal seen
            if event.get("ev") == ev and all(event.get(k) == v for k, v in fields.items()):
                seen += 1
            return seen >= count

        return self.wait_for(pred, f"{count} x {ev} {fields}", since=since, timeout=timeout)

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
            with contextlib.suppress(BrokenPipeError, OSError):
                self.send(cmd="exit")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
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


class MultiPeer(NodeProcess):
    """A node peer holding several channels on one socket (e2e/js/multi.mjs): a device's `user:` topic
    and a call's `call:` topic at once, as a calling client needs."""

    def join(self, topic: str, payload: dict[str, Any] | None = None, *, timeout: float = WAIT_S) -> Event:
        ref = f"j{next(self._ids)}"
        self.send(cmd="join", id=ref, topic=topic, payload=payload or {})
        return self.wait_ev("join", id=ref, timeout=timeout)

    def push_to(
        self, topic: str, event: str, payload: dict[str, Any] | None = None, *, timeout: float = WAIT_S
    ) -> Event:
        ref = f"p{next(self._ids)}"
        self.send(cmd="push", id=ref, topic=topic, event=event, payload=payload or {})
        return self.wait_ev("reply", id=ref, timeout=timeout)

    def leave_topic(self, topic: str, *, timeout: float = WAIT_S) -> Event:
        ref = f"l{next(self._ids)}"
        self.send(cmd="leave", id=ref, topic=topic)
        return self.wait_ev("reply", id=ref, timeout=timeout)

    def wait_msg(self, topic: str, event: str, *, since: int = 0, timeout: float = WAIT_S) -> dict[str, Any]:
        """The payload of the first server push `event` on `topic` (from `since` on)."""
        found = self.wait_ev("msg", topic=topic, event=event, since=since, timeout=timeout)
        payload: dict[str, Any] = found["payload"]
        return payload

    def wait_presence(
        self,
        topic: str,
        pred: Callable[[dict[str, list[Meta]]], bool],
        what: str,
        *,
        since: int = 0,
        timeout: float = WAIT_S,
    ) -> dict[str, list[Meta]]:
        """The first Presence.onSync of `topic`'s channel whose state satisfies `pred`."""
        event = self.wait_for(
            lambda e: e.get("ev") == "sync" and e.get("topic") == topic and pred(presences(e)),
            f"sync of {topic} where {what}",
            since=since,
            timeout=timeout,
        )
        return presences(event)


class Minter:
    """Signs tokens with the secret a signaling process verifies (its VOXA_JWT_SECRET)."""

    def __call__(
        self,
        signaling: Signaling,
        user: str,
        *,
        name: str | None = None,
        server: str = "s1",
        grant: str = "connect,speak",
        ttl_s: int = 3600,
        now: float | None = None,
        secret: str | None = None,
    ) -> str:
        claims = VoiceClaims(
            sub=user, name=name or user.title(), server=server, perms=parse_permissions(grant)
        )
        key = secret or signaling.env["VOXA_JWT_SECRET"]
        return mint_token(claims, key, ttl_s=ttl_s, now=now if now is not None else time.time())


class NodePeers:
    """Starts node peers (e2e/js/*.mjs) and stops every one of them at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[NodeProcess] = []

    def phoenix(
        self,
        name: str,
        signaling: Signaling,
        token: str | None,
        *,
        topic: str | None = None,
        auth: str = "params",
        reconnect_ms: int = 200,
        rejoin_ms: int = 200,
        heartbeat_ms: int | None = None,
        lifetime_ms: int = 90_000,
    ) -> NodeProcess:
        """A phoenix Socket (+ Channel and Presence when `topic` is given) connected to `signaling`."""
        args = [
            "--url", signaling.ws_url, "--auth", auth, "--reconnect-ms", str(reconnect_ms),
            "--rejoin-ms", str(rejoin_ms), "--lifetime-ms", str(lifetime_ms), "--frames",
        ]  # fmt: skip
        if topic:
            args += ["--topic", topic]
        if heartbeat_ms is not None:
            args += ["--heartbeat-ms", str(heartbeat_ms)]
        peer = NodeProcess(name, "client.mjs", args, token, self.log_dir)
        self.started.append(peer)
        return peer

    def multi(self, name: str, signaling: Signaling, token: str, *, lifetime_ms: int = 90_000) -> MultiPeer:
        """A phoenix Socket that joins, pushes to and leaves any number of topics on command."""
        args = ["--url", signaling.ws_url, "--lifetime-ms", str(lifetime_ms)]
        peer = MultiPeer(name, "multi.mjs", args, token, self.log_dir)
        self.started.append(peer)
        return peer

    def raw_idle(
        self, name: str, signaling: Signaling, token: str, *, lifetime_ms: int = 15_000
    ) -> NodeProcess:
        """A bare `ws` socket that never sends anything."""
        args = ["--url", f"{signaling.ws_url}/websocket", "--lifetime-ms", str(lifetime_ms)]
        peer = NodeProcess(name, "raw_idle.mjs", args, token, self.log_dir)
        self.started.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.started:
            peer.close()


def _close_quietly(stream: IO[str]) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.close()


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
        metas = state.get(key) or []
        return len(metas) == 1 and all(metas[0].get(k) == v for k, v in fields.items())

    return pred
