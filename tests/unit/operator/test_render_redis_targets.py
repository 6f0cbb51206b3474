"""A VoiceServer's Redis as a Sentinel set or a Redis Cluster: what signaling's pods are given, and that
signaling's settings and the operator's own connection (registry, drain marks, purge) read it the same."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.unit.operator.conftest import voiceserver
from voxa.operator import reconcile, secret_values
from voxa.operator.models import VoiceServer
from voxa.operator.render import signaling
from voxa.signaling.settings import SignalingSettings
from voxa.signaling.store.target import RedisTarget

SENTINEL = {
    "sentinel": {
        "hosts": ["sentinel-0.db:26379", "sentinel-1.db:26379", "[fd00::1]:26379"],
        "masterName": "voxa",
        "passwordSecretRef": {"name": "redis-auth", "key": "password"},
        "sentinelPasswordSecretRef": {"name": "redis-auth", "key": "sentinel"},
    }
}
SECRETS = {
    "redis": {"url": "redis://:pw@redis-cluster.db:6379"},
    "redis-auth": {"password": "p1", "sentinel": "p2"},
}


def env_of(vs: VoiceServer) -> tuple[dict[str, str], dict[str, Any]]:
    container = signaling.deployment(vs)["spec"]["template"]["spec"]["containers"][0]
    return signaling.config_data(vs), {e["name"]: e.get("valueFrom") for e in container["env"]}


def resolved(vs: VoiceServer) -> dict[str, str]:
    """The pod's VOXA_* environment with Secret references filled in."""
    data, env = env_of(vs)
    out = dict(data)
    for name, source in env.items():
        if source and "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            out[name] = SECRETS.get(ref["name"], {}).get(ref["key"], "x" * 32)
    return out


async def operator_target(vs: VoiceServer, monkeypatch: pytest.MonkeyPatch) -> RedisTarget | None:
    async def read_secret(kube: object, namespace: str, name: str) -> dict[str, str] | None:
        return SECRETS.get(name)

    monkeypatch.setattr(secret_values, "read_secret", read_secret)
    return await reconcile.Reconciler(kube=None).redis_target(vs)  # type: ignore[arg-type]


def signaling_target(vs: VoiceServer) -> RedisTarget | None:
    env: dict[str, Any] = {
        k.removeprefix("VOXA_").lower(): v for k, v in resolved(vs).items() if k.startswith("VOXA_")
    }
    return SignalingSettings(**env).redis_target()


async def test_a_sentinel_set_is_rendered_and_read_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    vs = voiceserver({"redis": SENTINEL})
    data, env = env_of(vs)
    assert data["VOXA_REDIS_SENTINELS"] == "sentinel-0.db:26379,sentinel-1.db:26379,[fd00::1]:26379"
    assert data["VOXA_REDIS_SENTINEL_MASTER"] == "voxa"
    assert "VOXA_REDIS_URL" not in data and "VOXA_REDIS_URL" not in env
    assert env["VOXA_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    assert env["VOXA_REDIS_SENTINEL_PASSWORD"] == {"secretKeyRef": {"name": "redis-auth", "key": "sentinel"}}
    expected = RedisTarget(
        sentinels=(("sentinel-0.db", 26379), ("sentinel-1.db", 26379), ("fd00::1", 26379)),
        sentinel_master="voxa",
        password="p1",
        sentinel_password="p2",
    )
    assert signaling_target(vs) == expected
    assert await operator_target(vs, monkeypatch) == expected


async def test_a_cluster_is_rendered_and_read_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    vs = voiceserver({"redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "cluster": True}})
    data, env = env_of(vs)
    assert data["VOXA_REDIS_CLUSTER"] == "true"
    assert env["VOXA_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    expected = RedisTarget(url="redis://:pw@redis-cluster.db:6379", cluster=True)
    assert signaling_target(vs) == expected
    assert await operator_target(vs, monkeypatch) == expected


async def test_one_redis_and_the_managed_one_stay_single(monkeypatch: pytest.MonkeyPatch) -> None:
    external = voiceserver()
    assert "VOXA_REDIS_CLUSTER" not in env_of(external)[0]
    assert await operator_target(external, monkeypatch) == RedisTarget(
        url="redis://:pw@redis-cluster.db:6379"
    )
    managed = voiceserver({"redis": {"managed": True}})
    assert await operator_target(managed, monkeypatch) == RedisTarget(
        url="redis://lobby-redis.games.svc:6379/0"
    )
    assert signaling_target(managed) == RedisTarget(url="redis://lobby-redis.games.svc:6379/0")


@pytest.mark.parametrize(
    "hosts", [[], ["no-port"], ["host:port"], ["a b:1"], [f"s{i}:26379" for i in range(17)]]
)
def test_sentinel_hosts_are_host_port_pairs(hosts: list[str]) -> None:
    with pytest.raises(ValidationError):
        voiceserver({"redis": {"sentinel": {"hosts": hosts, "masterName": "voxa"}}})


def test_the_crd_says_which_redis_shapes_go_together() -> None:
    from voxa.operator import crdgen

    crd = crdgen.all_crds()["voiceservers.yaml"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "redis"
    ]
    rules = {r["rule"] for r in schema["x-kubernetes-validations"]}
    assert "!self.cluster || has(self.urlSecretRef)" in rules
    assert any("has(self.sentinel)" in r and "== 1" in r for r in rules)
    assert set(schema["properties"]["sentinel"]["required"]) == {"hosts", "masterName"}
