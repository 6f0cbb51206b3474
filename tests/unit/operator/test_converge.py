"""Applying children: pods are not rolled when the configuration they read failed to apply."""

from __future__ import annotations

from typing import Any, cast

import pytest

from voxa.operator import reconcile
from voxa.operator.kube import ApiError, KubeClient
from voxa.operator.reconcile import Reconciler, State


class StubKube:
    def __init__(self, refuse: str) -> None:
        self.refuse = refuse
        self.applied: list[str] = []

    async def apply(self, manifest: dict[str, Any]) -> None:
        if manifest["kind"] == self.refuse:
            raise ApiError(422, "refused by a webhook", "Invalid")
        self.applied.append(manifest["kind"])


def child(kind: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": "lobby-signaling", "namespace": "games"}}


async def test_a_deployment_waits_for_its_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "info", lambda *a, **k: None)
    monkeypatch.setattr(reconcile, "warn", lambda *a, **k: None)
    kube = StubKube(refuse="ConfigMap")
    rec = Reconciler(cast(KubeClient, kube))
    body = {"metadata": {"name": "lobby"}}
    rendered = [child("ConfigMap"), child("Service"), child("Deployment")]
    errors = await rec.converge(body, "games", rendered, {}, State())
    assert kube.applied == ["Service"]
    assert errors == [
        "ConfigMap lobby-signaling: refused by a webhook",
        "Deployment lobby-signaling: not updated, its configuration failed to apply",
    ]

    kube.refuse = ""
    assert await rec.converge(body, "games", rendered, {}, State()) == []
    assert kube.applied[1:] == ["ConfigMap", "Service", "Deployment"]
