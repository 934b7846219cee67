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
    """401: no usable credentials. `reason` is a short stable label (metrics, logs)."""

    status = 401

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class ForbiddenError(AuthError):
    """403: valid credentials, but not for this coach."""

    status = 403

    def __init__(self, message: str, reason: str = "forbidden") -> None:
        super().__init__(message, reason)


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
        self._audience = settings.jwt_audience
        self._issuer = settings.expected_issuer()
        self._max_lifetime_s = settings.jwt_max_lifetime_s
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
                raise AuthError(f"signing key not found: {error}", "unknown_key") from None
            if signing_key.algorithm_name != algorithm:
                raise AuthError(
                    f"key {signing_key.key_id!r} does not sign with {algorithm!r}", "algorithm"
                )
            return signing_key.key, [algorithm]
        raise AuthError(f"tokens signed with {algorithm!r} are not accepted", "algorithm")

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
            raise AuthError(
                "token verification is not configured (SUPABASE_JWT_SECRET or JWKS)",
                "not_configured",
            )
        if not token:
            raise AuthError("missing bearer token", "missing")
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
        except jwt.InvalidSignatureError as error:
            raise AuthError(f"invalid token: {error}", "signature") from None
        except jwt.InvalidTokenError as error:
            raise AuthError(f"invalid token: {error}", "malformed") from None
        expires = claims["exp"]
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise AuthError("invalid token: exp must be a number", "malformed")
        if now > expires + LEEWAY_S:
            raise AuthError("token expired", "expired")
        role = claims["role"] if isinstance(claims.get("role"), str) else ""
        if role == "anon":
            raise ForbiddenError("anonymous tokens cannot read dashboards", "anon")
        metadata = claims.get("app_metadata")  # set by the server; user_metadata is the user's
        app_role = metadata.get("role") if isinstance(metadata, dict) else None
        admin = role in ADMIN_ROLES or app_role == "admin"
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            if not admin:
                raise AuthError("token has no subject", "no_subject")
            subject = ""
        else:
            self._check_user_token(claims, now)
        return Principal(subject=subject, role=role, admin=admin), expires + LEEWAY_S

    def _check_user_token(self, claims: dict[str, Any], now: float) -> None:
        """A user's token (it has a subject) carries the audience and issuer Supabase Auth
        gives it and lives hours, not years; project keys (`service_role`, no subject) carry
        neither and live for years by design."""
        issued = claims.get("iat")
        start = issued if isinstance(issued, int | float) and not isinstance(issued, bool) else now
        if claims["exp"] - start > self._max_lifetime_s:
            raise AuthError("token lifetime exceeds JWT_MAX_LIFETIME_S", "lifetime")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self._audience and self._audience not in audiences:
            raise AuthError(f"token audience is not {self._audience!r}", "audience")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise AuthError("token issuer is not this project's", "issuer")


class RejectionLog:
    """One log line per rejection reason per `every_s`, saying how many it stands for, so a
    client retrying a bad token cannot flood the log (every rejection is still counted in
    `coachpipe_api_auth_rejected_total`)."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def should_log(self, reason: str) -> int:
        """How many rejections of `reason` the line to write now stands for; 0: write none."""
        self._since[reason] = self._since.get(reason, 0) + 1
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self._every_s:
            return 0
        self._last[reason] = now
        return self._since.pop(reason)


def _algorithm(token: str) -> object:
    try:
        return jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        return None
