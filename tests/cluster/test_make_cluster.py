"""`make cluster` as a user runs it (`python -m e2e.cluster up|down`): the control plane, the CRDs
and the operator in the background, the samples applied with kubectl, and nothing left behind."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from e2e.cluster.controlplane import build_tools
from voxa.common.testing import procfs
from voxa.common.testing.wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def cli(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "e2e.cluster", *args, "--state-dir", str(state_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_make_cluster_up_samples_and_down(tmp_path: Path) -> None:
    kubectl = str(build_tools() / "kubectl")
    state = tmp_path / "cluster"
    up = cli("up", state_dir=state)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip().splitlines()[-1] == f"export KUBECONFIG={state.resolve() / 'kubeconfig'}"
    env = {**os.environ, "KUBECONFIG": str(state / "kubeconfig")}
    records = json.loads((state / "state.json").read_text())["processes"]
    assert "operator" in {r["name"] for r in records}
    pids = [int(r["pid"]) for r in records]
    try:
        subprocess.run(
            [kubectl, "apply", "-f", str(ROOT / "crds" / "samples")], env=env, check=True, timeout=60
        )
        rows: list[list[str]] = []

        def both_ready() -> bool:
            out = subprocess.run(
                [kubectl, "get", "voiceservers"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
            rows[:] = [line.split() for line in out.splitlines()]
            return len(rows) == 3 and all(r[1] == "True" for r in rows[1:])

        with contextlib.suppress(AssertionError):  # the asserts below say what is not ready
            eventually(both_ready, 90, "both sample VoiceServers Ready")
        assert rows[0] == ["NAME", "READY", "SFUS", "PARTICIPANTS", "ENDPOINT", "AGE"]
        assert [(r[0], r[1]) for r in rows[1:]] == [("arena", "True"), ("lobby", "True")], rows
        out = subprocess.run(
            [kubectl, "get", "stunnergateways"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert out.splitlines()[0].split() == ["NAME", "READY", "ADDRESS", "LISTENERS", "AGE"]
    finally:
        down = cli("down", state_dir=state)
    assert down.returncode == 0, down.stderr
    assert [pid for pid in pids if procfs.running(pid)] == []
