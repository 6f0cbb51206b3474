"""TURN relay suites: real stunnerd and coturn processes (e2e/turn) with a real signaling and SFU.

The SFU's media listens on 127.0.0.2 and the TURN servers relay only there, so the allowed-peer rules
are exercised: 127.0.0.3 stands for any address outside the allowed endpoints.
"""

from __future__ import annotations

import pytest

import conftest as root_conftest
from e2e.turn.fixtures import SFU_HOST


@pytest.fixture(autouse=True)
def sfu_on_second_loopback(monkeypatch: pytest.MonkeyPatch, loopback_ice: list[tuple[str, int]]) -> None:
    """Let aiortc clients in this process answer connectivity checks from the SFU on 127.0.0.2: they
    reach the client through the TURN relay, from the SFU's address (root conftest's `loopback_ice`
    drops checks from anything but 127.0.0.1)."""
    monkeypatch.setattr(root_conftest, "LOOPBACK", root_conftest.LOOPBACK | {SFU_HOST})
