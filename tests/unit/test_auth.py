"""Token verification: algorithms, registered claims, and the claims model."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from voxa.common.claims import Permission, VoiceClaims
from voxa.common.tokens import mint_token
from voxa.signaling.auth import AuthError, TokenVerifier

SECRET = "unit-test-secret-0123456789abcdef"
CLAIMS = VoiceClaims(sub="alice", name="Alice", server="g1", perms=frozenset({Permission.CONNECT}))


def _pem_pair(private: Any) -> tuple[str, str]:
    priv = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pub = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return priv, pub


def test_hs256_roundtrip() -> None:
    token = mint_token(CLAIMS, SECRET)
    claims = TokenVerifier(secret=SECRET).verify(token)
    assert claims.sub == "alice" and claims.server == "g1" and claims.perms == {Permission.CONNECT}


def test_missing_token() -> None:
    with pytest.raises(AuthError, match="missing token"):
        TokenVerifier(secret=SECRET).verify(None)


def test_garbage_token() -> None:
    with pytest.raises(AuthError, match="malformed token"):
        TokenVerifier(secret=SECRET).verify("garbage")


def test_bad_signature() -> None:
    token = mint_token(CLAIMS, "another-secret-0123456789abcdefgh")
    with pytest.raises(AuthError, match="bad token signature"):
        TokenVerifier(secret=SECRET).verify(token)


def test_expired_beyond_leeway() -> None:
    token = mint_token(CLAIMS, SECRET, ttl_s=10, now=time.time() - 100)
    with pytest.raises(AuthError, match="token expired"):
        TokenVerifier(secret=SECRET, leeway_s=5).verify(token)


def test_expired_within_leeway_is_accepted() -> None:
    token = mint_token(CLAIMS, SECRET, ttl_s=10, now=time.time() - 12)
    assert TokenVerifier(secret=SECRET, leeway_s=5).verify(token).sub == "alice"


def test_not_yet_valid() -> None:
    token = mint_token(CLAIMS, SECRET, now=time.time() + 600)
    with pytest.raises(AuthError, match="not yet valid"):
        TokenVerifier(secret=SECRET).verify(token)


def test_exp_is_required() -> None:
    token = jwt.encode({"sub": "a", "server": "g"}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="'exp'"):
        TokenVerifier(secret=SECRET).verify(token)


def test_issuer_and_audience() -> None:
    verifier = TokenVerifier(secret=SECRET, issuer="https://app", audience="voxa")
    good = mint_token(CLAIMS, SECRET, issuer="https://app", audience="voxa")
    assert verifier.verify(good).sub == "alice"
    with pytest.raises(AuthError, match="issuer"):
        verifier.verify(mint_token(CLAIMS, SECRET, issuer="https://evil", audience="voxa"))
    with pytest.raises(AuthError, match="audience"):
        verifier.verify(mint_token(CLAIMS, SECRET, issuer="https://app", audience="other"))


def test_invalid_claims_are_named() -> None:
    token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="invalid claims: server"):
        TokenVerifier(secret=SECRET).verify(token)


def test_unknown_permission_is_refused() -> None:
    payload = {"sub": "a", "server": "g", "perms": ["connect", "root"], "exp": int(time.time()) + 60}
    with pytest.raises(AuthError, match="invalid claims"):
        TokenVerifier(secret=SECRET).verify(jwt.encode(payload, SECRET, algorithm="HS256"))


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "a", "server": "g", "exp": int(time.time()) + 60}, "", algorithm="none")
    with pytest.raises(AuthError, match="not accepted"):
        TokenVerifier(secret=SECRET).verify(token)


@pytest.mark.parametrize(
    ("algorithm", "make_key"),
    [
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
    ],
)
def test_asymmetric_public_key(algorithm: str, make_key: Any) -> None:
    priv, pub = _pem_pair(make_key())
    token = mint_token(CLAIMS, priv, algorithm=algorithm)
    assert TokenVerifier(public_key_pem=pub).verify(token).sub == "alice"


def test_hs256_is_refused_when_only_a_public_key_is_configured() -> None:
    """No algorithm confusion: with a public key configured, an HMAC token is never checked with it."""
    _, pub = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    token = mint_token(CLAIMS, "some-other-hmac-secret-0123456789ab")
    with pytest.raises(AuthError, match="not accepted"):
        TokenVerifier(public_key_pem=pub).verify(token)


def test_jwks_selects_key_by_kid() -> None:
    key_a = ec.generate_private_key(ec.SECP256R1())
    key_b = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key_a.public_key())), "kid": "a", "alg": "ES256"},
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key_b.public_key())), "kid": "b", "alg": "ES256"},
        ]
    }
    verifier = TokenVerifier(jwks=jwks)
    priv_b, _ = _pem_pair(key_b)
    assert verifier.verify(mint_token(CLAIMS, priv_b, algorithm="ES256", kid="b")).sub == "alice"
    with pytest.raises(AuthError, match="bad token signature"):
        verifier.verify(mint_token(CLAIMS, priv_b, algorithm="ES256", kid="a"))
    with pytest.raises(AuthError, match="unknown signing key"):
        verifier.verify(mint_token(CLAIMS, priv_b, algorithm="ES256", kid="zzz"))


def test_claims_reject_separator_characters() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        VoiceClaims(sub="a:b", server="g")
