"""Who is asking and whether they may read a coach: the request side of `api.auth`.

Every coach route needs a bearer token, or the `access_token` query parameter for EventSource,
which cannot set headers.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import AuthError, ForbiddenError, Principal
from api.services import Shared

BEARER = HTTPBearer(
    auto_error=False,
    description="A Supabase access token (HS256 project secret or a key of the project's JWKS).",
)


def presented_token(
    authorization: str | None, bearer: str | None, access_token: str | None
) -> str | None:
    """The token a request presents: its bearer token, else `access_token`.

    `bearer` is what `HTTPBearer` parsed from the `Authorization` header (None unless it reads
    `Bearer <token>`); any other scheme is refused rather than silently ignored.
    """
    if authorization and bearer is None:
        raise AuthError("Authorization must be 'Bearer <token>'")
    return bearer if bearer is not None else access_token


def require_reader(who: Principal, coach_id: UUID) -> None:
    if not who.may_read(coach_id):
        raise ForbiddenError("this token may only read its own coach's aggregates")


async def principal(
    request: Request,
    svc: Shared,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    access_token: Annotated[
        str | None, Query(description="The token, for EventSource (it cannot set headers).")
    ] = None,
) -> Principal:
    """The verified holder of the request's token."""
    bearer = credentials.credentials if credentials is not None else None
    token = presented_token(request.headers.get("authorization"), bearer, access_token)
    return await svc.verifier.verify_async(token)


# Module level, so FastAPI resolves the (postponed) annotation as a dependency.
Who = Annotated[Principal, Depends(principal)]
