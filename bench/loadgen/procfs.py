"""Moved to the harness kit, voxa.common.testing.procfs (and percentile to voxa.common.testing.stats);
this name stays for the benchmarks and soaks still importing it from here."""

from voxa.common.testing.procfs import (
    CLK_TCK,
    CpuSample,
    affinity,
    all_processes_cpu_seconds,
    core_ticks,
    cpu_seconds,
    pin,
    status_kib,
    threads,
)
from voxa.common.testing.stats import percentile

__all__ = [
    "CLK_TCK",
    "CpuSample",
    "affinity",
    "all_processes_cpu_seconds",
    "core_ticks",
    "cpu_seconds",
    "percentile",
    "pin",
    "status_kib",
    "threads",
]
