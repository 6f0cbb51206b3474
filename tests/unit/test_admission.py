"""Per-address admission of signaling's TCP connections (signaling/admission.py), on a fake clock."""

from __future__ import annotations

import pytest

from voxa.signaling.admission import AddressLimits
from voxa.signaling.settings import SignalingSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_open_connections_per_address_are_capped_and_released() -> None:
    limits = AddressLimits(max_open=3, rate_per_s=0, burst=1, clock=Clock())
    assert [limits.admit("198.51.100.7") for _ in range(4)] == [None, None, None, "open"]
    assert limits.admit("198.51.100.8") is None  # another address has its own count
    limits.release("198.51.100.7")
    assert limits.admit("198.51.100.7") is None
    assert limits.open_from("198.51.100.7") == 3


def test_new_connections_per_address_follow_a_token_bucket() -> None:
    clock = Clock()
    limits = AddressLimits(max_open=0, rate_per_s=8, burst=5, clock=clock)
    assert [limits.admit("203.0.113.1") for _ in range(6)] == [None] * 5 + ["rate"]
    clock.now += 0.125  # one token back
    assert limits.admit("203.0.113.1") is None
    assert limits.admit("203.0.113.1") == "rate"
    clock.now += 10  # refilled to the burst, not beyond
    assert [limits.admit("203.0.113.1") for _ in range(6)] == [None] * 5 + ["rate"]


def test_refused_connections_are_not_counted_as_open() -> None:
    limits = AddressLimits(max_open=2, rate_per_s=1, burst=2, clock=Clock())
    assert [limits.admit("203.0.113.9") for _ in range(3)] == [None, None, "open"]
    limits.release("203.0.113.9")
    limits.release("203.0.113.9")
    limits.release("203.0.113.9")  # a stray release never goes below zero
    assert limits.open_from("203.0.113.9") == 0


def test_exempt_ranges_and_ipv4_mapped_addresses() -> None:
    limits = AddressLimits(1, 1, 1, exempt=["10.0.0.0/8", "fc00::/7"], clock=Clock())
    for address in ("10.1.2.3", "::ffff:10.1.2.3", "fd00::1"):
        assert [limits.admit(address) for _ in range(5)] == [None] * 5
    assert limits.admit("::ffff:192.0.2.1") is None
    assert limits.admit("::ffff:192.0.2.1") == "open"
    assert limits.admit("not-an-address") is None and limits.admit("not-an-address") == "open"


def test_zero_disables_both_limits() -> None:
    limits = AddressLimits(0, 0, 1, clock=Clock())
    assert not limits.enabled
    assert all(limits.admit("192.0.2.1") is None for _ in range(1000))
    assert len(limits) == 0


def test_idle_addresses_are_forgotten_once_many_are_known() -> None:
    clock = Clock()
    limits = AddressLimits(10, 1, 2, clock=clock)
    for i in range(4096):
        assert limits.admit(f"2001:db8::{i:x}") is None
        limits.release(f"2001:db8::{i:x}")
    assert limits.admit("2001:db8:1::1") is None  # still new within the refill time: nothing pruned
    assert len(limits) == 4097
    clock.now += 2  # every bucket has refilled
    limits.admit("2001:db8:1::2")
    assert len(limits) == 2  # the one held open stays, plus the newcomer


def test_settings_parse_and_check_the_exempt_list() -> None:
    def exempt(value: str) -> list[str]:
        settings = SignalingSettings.model_validate({"jwt_secret": "x" * 32, "address_limit_exempt": value})
        return settings.address_limit_exempt

    assert exempt("127.0.0.0/8, ::1") == ["127.0.0.0/8", "::1"]
    assert exempt("") == []
    with pytest.raises(ValueError, match="not an address or CIDR"):
        exempt("10.0.0.0/33")


def test_the_handshake_timeout_must_exceed_the_sfu_heartbeat_interval() -> None:
    base = {"jwt_secret": "x" * 32}
    SignalingSettings.model_validate({**base, "media_server_ttl_s": 27, "handshake_timeout_s": 10})
    with pytest.raises(ValueError, match="heartbeat interval"):
        SignalingSettings.model_validate({**base, "media_server_ttl_s": 30, "handshake_timeout_s": 10})
