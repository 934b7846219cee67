"""What `coachpipe api` writes to its log: plain text (no terminal colours), one access line
per request, and no credential from the request."""

from __future__ import annotations

from pathlib import Path

import httpx

from devtools.processes import wait_for


def test_access_lines_are_plain_and_mask_the_token(api: str, tmp_path: Path) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWhlcmU"
    assert httpx.get(f"{api}/healthz?access_token={token}", timeout=5).status_code == 200
    log = tmp_path / "api.log"
    wait_for(lambda: "access_token" in log.read_text(), 10, message="an access line")
    text = log.read_text()
    assert "\x1b[" not in text  # no ANSI colour codes in a file
    access = next(line for line in text.splitlines() if "access_token" in line)
    assert "GET" in access and "200" in access
    assert token not in text and "access_token=***" in access
