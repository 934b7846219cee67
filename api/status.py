"""Operational routes: the realtime status for dashboards, liveness, the dashboard page."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from api.access import Who
from api.models import ERRORS, StatusOut
from api.responses import status_body
from api.services import Shared

router = APIRouter()


@router.get("/status", response_model=StatusOut, responses=ERRORS)
async def status(who: Who, svc: Shared) -> Any:
    current = await asyncio.to_thread(svc.board.status)
    return status_body(current, admin=who.admin)


@router.get(
    "/healthz",
    response_model=dict[str, str],
    responses={503: {"description": "Redis does not answer"}},
)
async def healthz(svc: Shared) -> Any:
    try:
        await svc.client.ping()
    except Exception as error:
        return JSONResponse({"status": "unhealthy", "redis": type(error).__name__}, status_code=503)
    return {"status": "ok"}


PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # The page's own inline script and style only; no framing (clickjacking), no referrer.
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    page = files("api") / "static" / "dashboard.html"
    return HTMLResponse(page.read_text(), headers=PAGE_HEADERS)
