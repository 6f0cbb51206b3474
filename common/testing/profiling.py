"""py-spy recording of a server under test, and a summary of its raw (collapsed-stack) output: for
the benchmarks that report where a server spends its CPU."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


class Profiler:
    """py-spy recording the SFU for a fixed duration (raw collapsed stacks, or flamegraph for .svg)."""

    def __init__(self, output: Path, pid: int, seconds: int) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(output.suffix, "raw")
        self.output = output
        self.proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100",
             "--format", fmt, "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip

    def wait(self, timeout: float) -> str:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            try:
                _, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=5)
        return err.decode(errors="replace")[-500:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: one entry per function, not per line."""
    func, _, where = frame.partition(" (")
    if not where:
        return func
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions of a raw (collapsed) py-spy profile: self and inclusive share of samples."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_frame_name(f) for f in stack.split(";")]
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    if not samples:
        return {"samples": 0}
    return {
        "samples": samples,
        "self_top": [(name, round(100 * n / samples, 1)) for name, n in self_counts.most_common(top)],
        "inclusive_top": [(name, round(100 * n / samples, 1)) for name, n in total_counts.most_common(top)],
    }
