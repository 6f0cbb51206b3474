"""/proc readings (CPU time, memory, per-core busy time, process state), and CPU pinning: what the
benchmarks measure and the harnesses use to tell a live process from a zombie or a recycled pid.

Every reader returns None (or an empty value) for a process that is gone rather than raising: a
process can exit between any two reads, and the callers measure or clean up, they do not fail on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "(comm)" (which may hold spaces and parentheses), so
    index 0 is field 3 of proc(5) (state), 1 ppid, 2 pgrp, 11/12 utime/stime, 19 starttime."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z, ...), or None if there is no such process."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (exited, not reaped yet)."""
    return state(pid) not in (None, "Z")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of process `pid` (all its threads), or None if it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def all_processes_cpu_seconds() -> float:
    """utime + stime of every live process (to estimate what else runs on this machine meanwhile)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            total += cpu_seconds(int(entry)) or 0.0
    return total


def group_members(pgid: int) -> list[int]:
    """Pids of the processes of a process group that still run (not zombies)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = stat_fields(int(entry))
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def status_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def core_ticks(core: int | None = None) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU core (line ``cpu<core>`` of /proc/stat), or of all of them for
    None (line ``cpu``); softirq counts as busy, guest time is already in user time."""
    prefix = "cpu " if core is None else f"cpu{core} "
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        if line.startswith(prefix):
            fields = [int(x) for x in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            idle = fields[3] + fields[4]
            return sum(fields) - idle, sum(fields)
    return 0, 0


def threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def pin(pid: int, cores: Iterable[int]) -> int:
    """Pin every thread of `pid` to `cores` (new threads inherit it from their creator); returns how many."""
    mask = set(cores)
    done = 0
    for tid in threads(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, mask)
            done += 1
    return done


def affinity(pid: int) -> list[int]:
    """The union of the CPU affinities of every thread of `pid`."""
    cores: set[int] = set()
    for tid in threads(pid):
        with contextlib.suppress(OSError):
            cores |= os.sched_getaffinity(tid)
    return sorted(cores)


class CpuSample:
    """CPU seconds of several processes and busy ticks of cores at one instant."""

    def __init__(self, pids: dict[str, list[int]], cores: Iterable[int]) -> None:
        self.cpu = {name: sum(cpu_seconds(p) or 0.0 for p in group) for name, group in pids.items()}
        self.cpu["all"] = all_processes_cpu_seconds()
        self.cores = {core: core_ticks(core) for core in cores}

    def percent_since(self, earlier: CpuSample, wall_s: float) -> dict[str, float]:
        """CPU % of one core per process group, ``other`` (every other process of the machine, an
        estimate: processes that exited meanwhile are missed) and ``core<N>_busy`` %, between two samples."""
        out = {
            name: round(100.0 * (self.cpu[name] - earlier.cpu.get(name, 0.0)) / wall_s, 1)
            for name in self.cpu
        }
        mine = sum(v for k, v in out.items() if k != "all")
        out["other"] = round(max(out.pop("all") - mine, 0.0), 1)
        for core, (busy, total) in self.cores.items():
            b0, t0 = earlier.cores.get(core, (0, 0))
            out[f"core{core}_busy"] = round(100.0 * (busy - b0) / max(total - t0, 1), 1)
        return out
