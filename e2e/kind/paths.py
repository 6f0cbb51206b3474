"""Where the kind tooling keeps things: the repository, its build/ folder and ~/.cache/voxa."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD_DIR = ROOT / "build"
CACHE_DIR = Path(
    os.environ.get("VOXA_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voxa"
)
