"""Which Redis signaling is told to use (settings → RedisTarget), and how the store names a topic's voice
server (the hash tag every key of that server carries)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from voxa.signaling.settings import SignalingSettings
from voxa.signaling.store.base import check_topic, index_server, topic_server
from voxa.signaling.store.redis import broadcast_channel, channels_key, presence_key, server_tag
from voxa.signaling.store.target import RedisTarget, parse_hosts

SECRET: dict[str, Any] = {"jwt_secret": "x" * 32}


def test_hosts_parse_with_ipv6_and_spaces() -> None:
    assert parse_hosts(" a:1, [::1]:26379,b.c:2 ") == (("a", 1), ("::1", 26379), ("b.c", 2))
    for bad in ("a", "a:", ":1", "a:x", "a:70000"):
        with pytest.raises(ValueError, match="host:port"):
            parse_hosts(bad)


def test_settings_name_one_redis_a_cluster_or_a_sentinel_set() -> None:
    assert SignalingSettings(**SECRET).redis_target() is None
    assert SignalingSettings(**SECRET, redis_url="redis://r:6379/0").redis_target() == RedisTarget(
        url="redis://r:6379/0"
    )
    assert SignalingSettings(**SECRET, redis_url="redis://n1:6379", redis_cluster=True).redis_target() == (
        RedisTarget(url="redis://n1:6379", cluster=True)
    )
    sentinel = SignalingSettings(
        **SECRET,
        redis_sentinels="s1:26379,s2:26379",
        redis_sentinel_master="voxa",
        redis_password="p",
    ).redis_target()
    assert sentinel == RedisTarget(
        sentinels=(("s1", 26379), ("s2", 26379)), sentinel_master="voxa", password="p"
    )
    assert sentinel is not None and "p" not in repr(sentinel) and sentinel.kind == "sentinel"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis_sentinels": "s:1"}, "VOXA_REDIS_SENTINEL_MASTER"),
        ({"redis_sentinels": "s:1", "redis_sentinel_master": "m", "redis_url": "redis://r"}, "not both"),
        ({"redis_sentinels": "nope", "redis_sentinel_master": "m"}, "host:port"),
        ({"redis_cluster": True}, "VOXA_REDIS_URL"),
        ({"redis_url": "redis://r", "redis_password": "p"}, "go with VOXA_REDIS_SENTINELS"),
    ],
)
def test_settings_refuse_mixed_redis_shapes(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SignalingSettings(**SECRET, **values)


def test_descriptions_for_logs_carry_no_credentials() -> None:
    assert RedisTarget(url="rediss://user:pw@h:6380/0").describe() == "single rediss://h:6380/0"
    assert RedisTarget(url="redis://:pw@h:1", cluster=True).describe() == "cluster redis://h:1"


def test_a_topic_belongs_to_the_server_of_its_second_field() -> None:
    assert topic_server("voice:g1:lobby") == "g1"
    assert topic_server("user:g1:alice:x") == "g1"
    assert topic_server("lonely") == "lonely"
    assert index_server("g1") == "g1" and index_server("users:g1") == "g1"
    check_topic("user:g1:alice", "users:g1")
    with pytest.raises(ValueError, match="voice server"):
        check_topic("voice:g1:lobby", "g2")


def test_every_key_of_a_topic_carries_its_servers_tag() -> None:
    for key in (presence_key("voice:g1:c"), broadcast_channel("voice:g1:c"), channels_key("users:g1")):
        assert key.startswith("voxa:{g1}:")
    with pytest.raises(ValueError, match="hash tag"):
        server_tag("a}b")
