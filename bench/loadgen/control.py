"""The orchestrator's side of the load processes: spawn them, send commands, gather answers (bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import time
from collections.abc import Sequence
from typing import Any

from loadgen.worker import WorkerConfig, worker_main

Message = dict[str, Any]


class LoadError(RuntimeError):
    """A load process failed a command, died, or did not answer in time."""


class LoadProcesses:
    def __init__(self, configs: Sequence[WorkerConfig]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[multiprocessing.connection.Connection] = []
        for config in configs:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(child_end, config),
                name=f"sfu-bench-load-{config.index}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.procs.append(proc)
            self.pipes.append(parent_end)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def __len__(self) -> int:
        return len(self.procs)

    def _receive(self, index: int, deadline: float, what: str) -> Message:
        pipe = self.pipes[index]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadError(f"load process {index} did not answer {what!r} in time")
            if pipe.poll(min(remaining, 0.5)):
                try:
                    answer: Message = pipe.recv()
                except EOFError:
                    raise LoadError(f"load process {index} died during {what!r}") from None
                if "error" in answer:
                    raise LoadError(f"load process {index} failed {what!r}: {answer['error']}")
                return answer
            if not self.procs[index].is_alive():
                raise LoadError(f"load process {index} exited ({self.procs[index].exitcode}) during {what!r}")

    async def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        await asyncio.gather(
            *(asyncio.to_thread(self._receive, i, deadline, "ready") for i in range(len(self)))
        )

    async def call(self, commands: Sequence[Message], timeout: float) -> list[Message]:
        """One command per process (in order), all answers (bounded by `timeout`)."""
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)
        deadline = time.monotonic() + timeout
        what = str(commands[0].get("op")) if commands else "?"
        return list(
            await asyncio.gather(
                *(asyncio.to_thread(self._receive, i, deadline, what) for i in range(len(self)))
            )
        )

    async def broadcast(self, command: Message, timeout: float) -> list[Message]:
        return await self.call([command] * len(self), timeout)

    def stop(self, graceful: bool = True) -> None:
        """Ask the processes to exit (they close their peers), else terminate, then kill (bounded)."""
        if graceful:
            for pipe in self.pipes:
                with contextlib.suppress(OSError, ValueError):
                    pipe.send({"op": "exit"})
        deadline = time.monotonic() + (25.0 if graceful else 0.0)
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.0))
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for pipe in self.pipes:
            pipe.close()
        self.procs.clear()
        self.pipes.clear()
