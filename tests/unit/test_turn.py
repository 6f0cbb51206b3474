"""TURN REST credentials, checked against an independent HMAC-SHA1 (cryptography's, not hmac's)."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from voxa.common.turn import ice_config, turn_credentials, turn_password, verify_credential


def independent_password(secret: str, username: str) -> str:
    mac = crypto_hmac.HMAC(secret.encode(), hashes.SHA1())  # noqa: S303 - the TURN REST scheme is SHA-1
    mac.update(username.encode())
    return base64.b64encode(mac.finalize()).decode()


def test_credentials_match_independent_hmac() -> None:
    username, credential = turn_credentials("s3cret", "alice", 600, now=1_700_000_000)
    assert username == "1700000600:alice"
    assert credential == independent_password("s3cret", username)


def test_known_vector() -> None:
    # Computed once with `printf '%s' 1700000600:alice | openssl dgst -sha1 -hmac s3cret -binary | base64`.
    assert turn_password("s3cret", "1700000600:alice") == "bUIJIVaC05oyFgKsQvKAparqg1Q="


def test_ice_config_shape() -> None:
    config = ice_config("k", ["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"], "bob", 60, now=100)
    data = config.model_dump(exclude_none=True)
    assert data["iceTransportPolicy"] == "all"
    stun, turn = data["iceServers"]
    assert stun == {"urls": ["stun:127.0.0.1:3478"]}
    assert turn["urls"] == ["turn:127.0.0.1:3478?transport=udp"]
    assert turn["username"] == "160:bob"
    assert turn["credential"] == independent_password("k", "160:bob")


def test_no_uris_no_servers() -> None:
    assert ice_config("k", [], "bob", 60).iceServers == []


def test_turn_without_secret_is_not_offered() -> None:
    assert ice_config(None, ["turn:x:3478"], "bob", 60).iceServers == []


def test_verify_during_rotation() -> None:
    username, old_cred = turn_credentials("old", "alice", 600, now=1000)
    _, new_cred = turn_credentials("new", "alice", 600, now=1000)
    assert verify_credential(["new", "old"], username, old_cred, now=1200)
    assert verify_credential(["new", "old"], username, new_cred, now=1200)
    assert not verify_credential(["new"], username, old_cred, now=1200)
    assert not verify_credential(["new", "old"], username, old_cred, now=1601)  # expired
    assert not verify_credential(["new"], "alice", new_cred, now=1200)  # no expiry in the username
    assert not verify_credential(["new"], username, "forged", now=1200)


def test_the_transport_policy_is_passed_on_only_with_turn_servers() -> None:
    relay = ice_config("k", ["turn:127.0.0.1:3478?transport=udp"], "bob", 60, transport_policy="relay")
    assert relay.iceTransportPolicy == "relay"
    # Relay with nothing to relay through would connect nothing: STUN only keeps "all".
    assert (
        ice_config("k", ["stun:127.0.0.1:3478"], "bob", 60, transport_policy="relay").iceTransportPolicy
        == "all"
    )
    assert ice_config(None, ["turn:x:3478"], "bob", 60, transport_policy="relay").iceTransportPolicy == "all"
