"""Fixtures of the end-to-end suites: node peers running the official `phoenix` JS client.

The signaling and Redis processes come from the repository-root conftest (`signaling_factory`,
`redis_server`); these fixtures add the JavaScript side and token minting.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.phoenix_harness import ROOT, Minter, NodePeers


@pytest.fixture
def mint() -> Minter:
    return Minter()


@pytest.fixture
def node_peers(tmp_path: Path) -> Iterator[NodePeers]:
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH")
    if not (ROOT / "node_modules" / "phoenix").is_dir() or not (ROOT / "node_modules" / "ws").is_dir():
        pytest.skip("node_modules lacks phoenix or ws: run `bash .ci/setup.sh`")
    peers = NodePeers(tmp_path)
    yield peers
    peers.close()
