"""Who may read what: Supabase-style JWTs, verified, turned into a principal.

The pipeline reads Postgres with service credentials, past row-level security, so the read side
re-imposes it: a coach reads only their own aggregates, an admin reads any. Tokens are verified
with the project's HS256 secret or, for projects on asymmetric signing keys, with the keys of
its JWKS endpoint. Only the algorithms those keys use are accepted; `alg=none`, expired,
malformed and wrongly signed tokens are refused. An asymmetric token is checked with the one
algorithm its JWKS key declares, so a key can never be used with an algorithm it was not made for.

Supabase's own project keys (`anon`, `service_role`) carry a role but no subject; user tokens
carry the user's id as `sub`. So a subject is required only where it decides anything: for a
token that is not an admin's.

A dashboard sends the same token with every request, so a verified token is remembered (a
bounded LRU keyed by the whole token, signature included) until it expires, or for at most
`CACHE_TTL_S`, which bounds how long a token stays trusted after its key leaves the JWKS.
Expiry is checked against the verifier's own clock, for cached and fresh tokens alike.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import jwt
from jwt import PyJWKClient

from config import Settings

ASYMMETRIC = ["RS256", "ES256", "EdDSA"]
ADMIN_ROLES = frozenset({"service_role", "admin"})
LEEWAY_S = 30
JWKS_TIMEOUT_S = 5
CACHE_SIZE = 4096
CACHE_TTL_S = 60.0


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
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()  # verify() also runs in threads (asymmetric tokens)
        self._secret = settings.supabase_jwt_secret
        self._jwks = (
            PyJWKClient(
                settings.supabase_jwks_url.get_secret_value(),
                cache_keys=True,
                lifespan=600,
                timeout=JWKS_TIMEOUT_S,
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
                signing_key = self._jwks.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientError as error:
                raise AuthError(f"signing key not found: {error}") from None
            if signing_key.algorithm_name != algorithm:
                raise AuthError(f"key {signing_key.key_id!r} does not sign with {algorithm!r}")
            return signing_key.key, [algorithm]
        raise AuthError(f"tokens signed with {algorithm!r} are not accepted")

    async def verify_async(self, token: str | None) -> Principal:
        """`verify` without blocking the event loop: remembered and HS256 tokens are checked in
        place (microseconds); an asymmetric one goes to a thread, as its key may need fetching."""
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        if self._jwks is not None and token and _algorithm(token) in ASYMMETRIC:
            return await asyncio.to_thread(self.verify, token)
        return self.verify(token)

    def verify(self, token: str | None) -> Principal:
        if not self.configured:
            raise AuthError("token verification is not configured (SUPABASE_JWT_SECRET or JWKS)")
        if not token:
            raise AuthError("missing bearer token")
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        now = self._clock()
        principal, expires_at = self._verify(token, now)
        with self._lock:
            self._verified[token] = (principal, min(expires_at, now + CACHE_TTL_S))
            if len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        return principal

    def _remembered(self, token: str | None) -> Principal | None:
        if not token:
            return None
        with self._lock:
            found = self._verified.get(token)
            if found is None:
                return None
            if self._clock() >= found[1]:
                del self._verified[token]
                return None
            self._verified.move_to_end(token)
            return found[0]

    def _verify(self, token: str, now: float) -> tuple[Principal, float]:
        """The principal and the time its token stops being valid."""
        try:
            header = jwt.get_unverified_header(token)
            key, algorithms = self._key(token, header)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                options={"require": ["exp"], "verify_exp": False, "verify_aud": False},
                leeway=LEEWAY_S,
            )
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}") from None
        expires = claims["exp"]
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise AuthError("invalid token: exp must be a number")
        if now > expires + LEEWAY_S:
            raise AuthError("token expired")
        role = claims["role"] if isinstance(claims.get("role"), str) else ""
        if role == "anon":
            raise ForbiddenError("anonymous tokens cannot read dashboards")
        metadata = claims.get("app_metadata")  # set by the server; user_metadata is the user's
        app_role = metadata.get("role") if isinstance(metadata, dict) else None
        admin = role in ADMIN_ROLES or app_role == "admin"
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            if not admin:
                raise AuthError("token has no subject")
            subject = ""
        return Principal(subject=subject, role=role, admin=admin), expires + LEEWAY_S


def _algorithm(token: str) -> object:
    try:
        return jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        return None
