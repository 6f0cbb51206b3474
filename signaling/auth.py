"""Verifying client tokens: a JWT checked with pyjwt, then read into VoiceClaims.

Tokens never appear in logs or errors; a failure says which check failed, nothing more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
from pydantic import ValidationError

from voxa.common.claims import VoiceClaims

ASYMMETRIC_ALGORITHMS = ["RS256", "ES256", "EdDSA"]


class AuthError(Exception):
    """Why a token was refused, safe to show the client."""


class TokenVerifier:
    """Verifies HS256 tokens with a shared secret, or RS256/ES256/EdDSA with a public key or a JWKS."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key_pem: str | None = None,
        jwks: dict[str, Any] | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: float = 10.0,
    ) -> None:
        if not (secret or public_key_pem or jwks):
            raise ValueError("a secret, a public key or a JWKS is required")
        self._secret = secret
        self._public_key = public_key_pem
        self._jwks = jwt.PyJWKSet.from_dict(jwks) if jwks else None
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s

    @classmethod
    def from_files(
        cls,
        *,
        secret: str | None,
        public_key_file: str | None,
        jwks_file: str | None,
        issuer: str | None,
        audience: str | None,
        leeway_s: float,
    ) -> TokenVerifier:
        import json

        public_key = Path(public_key_file).read_text() if public_key_file else None
        jwks = json.loads(Path(jwks_file).read_text()) if jwks_file else None
        return cls(
            secret=secret,
            public_key_pem=public_key,
            jwks=jwks,
            issuer=issuer,
            audience=audience,
            leeway_s=leeway_s,
        )

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if alg == "HS256" and self._secret:
            return self._secret, ["HS256"]
        if alg in ASYMMETRIC_ALGORITHMS:
            if self._jwks is not None:
                kid = header.get("kid")
                for key in self._jwks.keys:
                    if kid is None or key.key_id == kid:
                        return key.key, [alg]
                raise AuthError("unknown signing key")
            if self._public_key:
                return self._public_key, [alg]
        raise AuthError(f"token algorithm {alg!r} is not accepted")

    def verify(self, token: str | None) -> VoiceClaims:
        if not token:
            raise AuthError("missing token")
        key, algorithms = self._key_for(token)
        options = {"require": ["exp", "sub"], "verify_aud": self._audience is not None}
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience mismatch") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer mismatch") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad token signature") from None
        except jwt.InvalidTokenError:
            raise AuthError("invalid token") from None
        try:
            return VoiceClaims.model_validate(payload)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
            raise AuthError(f"invalid claims: {fields}") from None
