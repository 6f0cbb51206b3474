"""Running a bench/ script the way a user does and reading the one JSON object it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    """Run `bench/<script> --json ARGS` and return its JSON; fail with its stderr tail otherwise."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{proc.stdout[-2000:]}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
