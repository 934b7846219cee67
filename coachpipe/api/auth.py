"""Who may read what: Supabase-style JWTs, verified, turned into a principal.

The pipeline reads Postgres with service credentials, past row-level security, so the read side
re-imposes it: a coach reads only their own aggregates, an admin reads any. Tokens are verified
with the project's HS256 secret or, for projects on asymmetric signing keys, with the keys of
its JWKS endpoint. Only the algorithms those keys use are accepted; `alg=none`, expired,
malformed and wrongly signed tokens are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import jwt
from jwt import PyJWKClient

from config import Settings

ASYMMETRIC = ["RS256", "ES256", "EdDSA"]
ADMIN_ROLES = frozenset({"service_role", "admin"})
LEEWAY_S = 30


class AuthError(Exception):
    """401: no usable credentials."""

    status = 401


class ForbiddenError(AuthError):
    """403: valid credentials, but not for this coach."""

    status = 403


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    admin: bool

    def may_read(self, coach_id: UUID) -> bool:
        return self.admin or self.subject == str(coach_id)


class Verifier:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.supabase_jwt_secret
        self._jwks = (
            PyJWKClient(
                settings.supabase_jwks_url.get_secret_value(), cache_keys=True, lifespan=600
            )
            if settings.supabase_jwks_url is not None
            else None
        )

    @property
    def configured(self) -> bool:
        return self._secret is not None or self._jwks is not None

    def _key(self, token: str, header: dict[str, Any]) -> tuple[Any, list[str]]:
        algorithm = header.get("alg")
        if algorithm == "HS256" and self._secret is not None:
            return self._secret.get_secret_value(), ["HS256"]
        if algorithm in ASYMMETRIC and self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key, ASYMMETRIC
            except jwt.PyJWKClientError as error:
                raise AuthError(f"signing key not found: {error}") from None
        raise AuthError(f"tokens signed with {algorithm!r} are not accepted")

    def verify(self, token: str | None) -> Principal:
        if not self.configured:
            raise AuthError("token verification is not configured (SUPABASE_JWT_SECRET or JWKS)")
        if not token:
            raise AuthError("missing bearer token")
        try:
            header = jwt.get_unverified_header(token)
            key, algorithms = self._key(token, header)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                options={"require": ["sub", "exp"], "verify_aud": False},
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}") from None
        role = claims.get("role") if isinstance(claims.get("role"), str) else ""
        metadata = claims.get("app_metadata")
        app_role = metadata.get("role") if isinstance(metadata, dict) else None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("token has no subject")
        if role == "anon":
            raise ForbiddenError("anonymous tokens cannot read dashboards")
        return Principal(
            subject=subject, role=role, admin=role in ADMIN_ROLES or app_role == "admin"
        )
