"""The orchestrator's side of the Go load processes (bench/livekit/load, ``lkload``) for LiveKit.

`LiveKitLoad` offers what `loadgen.control.LoadProcesses` offers (``ready``, ``call``, ``broadcast``,
``stop``, ``pids``, ``len``), so bench/sfu.py drives both alike. Each process gets one JSON command per
line on stdin and answers with one JSON line on stdout; this side turns `PeerSpec` objects into the
peers the Go side expects (with a LiveKit access token each) and the Go answers into worker.py's
fields (``latencies`` as the bytes of an ``array("q")``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from loadgen.media import MediaCatalog
from loadgen.plan import PeerSpec

Message = dict[str, Any]
TokenMaker = Callable[[PeerSpec], str]


class LoadError(RuntimeError):
    """A load process failed a command, died, or did not answer in time."""


def write_catalog(catalog: MediaCatalog, path: Path) -> Path:
    """The pre-encoded media for the Go processes: JSON, payloads base64 (Go's []byte encoding)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {"opus": [b64(p) for p in catalog.opus], "vp8": [[b64(p) for p in frame] for frame in catalog.vp8]}
    path.write_text(json.dumps(doc))
    return path


def peer_message(spec: PeerSpec, token: str) -> Message:
    return {
        "id": spec.id,
        "room": spec.room,
        "audio": spec.audio,
        "video": spec.video,
        "expect_streams": spec.expect_streams,
        "token": token,
    }


class _Process:
    def __init__(self, index: int, argv: list[str], log: IO[bytes]) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        self.answers: queue.Queue[Message | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name=f"lkload-{index}-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                self.answers.put(json.loads(line))
            except ValueError:
                self.answers.put({"error": f"bad answer line {line[:200]!r}"})
        self.answers.put(None)  # EOF

    def send(self, command: Message) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, deadline: float, what: str) -> Message:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadError(f"LiveKit load process {self.index} did not answer {what!r} in time")
            try:
                answer = self.answers.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if answer is None:
                raise LoadError(
                    f"LiveKit load process {self.index} exited ({self.proc.poll()}) during {what!r}"
                )
            if "error" in answer:
                raise LoadError(f"LiveKit load process {self.index} failed {what!r}: {answer['error']}")
            return answer


class LiveKitLoad:
    """`count` lkload processes against one livekit-server (they inherit the caller's CPU affinity)."""

    def __init__(
        self,
        binary: Path,
        *,
        ws_url: str,
        catalog_path: Path,
        count: int,
        tokens: TokenMaker,
        log_path: Path,
        concurrency: int = 12,
        decrypt_every: int = 8,
        max_runtime_s: float = 900.0,
        join_timeout_s: float = 40.0,
    ) -> None:
        self.tokens = tokens
        self._log = log_path.open("ab")
        self.procs: list[_Process] = []
        for index in range(count):
            argv = [
                str(binary),
                f"--index={index}",
                f"--url={ws_url}",
                f"--catalog={catalog_path}",
                f"--decrypt-every={decrypt_every}",
                f"--concurrency={concurrency}",
                f"--join-timeout={join_timeout_s:.0f}s",
                f"--max-runtime={max_runtime_s:.0f}s",
            ]
            self.procs.append(_Process(index, argv, self._log))

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    def __len__(self) -> int:
        return len(self.procs)

    def _translate(self, command: Message) -> Message:
        if command.get("op") == "join":
            peers: Sequence[PeerSpec] = command["peers"]
            return {**command, "peers": [peer_message(p, self.tokens(p)) for p in peers]}
        return command

    @staticmethod
    def _answer(answer: Message) -> Message:
        if "latencies_b64" in answer:
            answer["latencies"] = base64.b64decode(answer.pop("latencies_b64"))
        return answer

    async def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(asyncio.to_thread(p.receive, deadline, "ready") for p in self.procs))

    async def call(self, commands: Sequence[Message], timeout: float) -> list[Message]:
        """One command per process (in order), all answers (bounded by `timeout`)."""
        for proc, command in zip(self.procs, commands, strict=True):
            try:
                proc.send(self._translate(command))
            except OSError as exc:
                raise LoadError(f"LiveKit load process {proc.index}: {exc}") from exc
        deadline = time.monotonic() + timeout
        what = str(commands[0].get("op")) if commands else "?"
        answers = await asyncio.gather(*(asyncio.to_thread(p.receive, deadline, what) for p in self.procs))
        return [self._answer(a) for a in answers]

    async def broadcast(self, command: Message, timeout: float) -> list[Message]:
        return await self.call([command] * len(self), timeout)

    def stop(self, graceful: bool = True) -> None:
        """Ask the processes to exit (they leave their rooms), else terminate, then kill (bounded)."""
        if graceful:
            for proc in self.procs:
                with contextlib.suppress(OSError, ValueError):
                    proc.send({"op": "exit"})
        deadline = time.monotonic() + (15.0 if graceful else 0.0)
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.proc.stdin is not None
                proc.proc.stdin.close()
            try:
                proc.proc.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                proc.proc.terminate()
        for proc in self.procs:
            try:
                proc.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.proc.kill()
                proc.proc.wait(5.0)
        self.procs.clear()
        with contextlib.suppress(OSError):
            self._log.close()
