"""Print a `service_role` key for the self-hosted Realtime of docker-compose.yml.

The listener's SUPABASE_KEY is a JWT that Realtime verifies with its tenant's secret, which the
compose file sets to SUPABASE_JWT_SECRET. Realtime reads the `role` claim to decide what the
listener may see: `service_role` sees every row. Usage, with the secret in the environment (not
on the command line, where shell history would keep it):

    SUPABASE_JWT_SECRET=... python3 deploy/service_key.py [--days 3650]

Standard library only, so it runs with any Python 3 on the host.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def service_key(secret: str, *, days: float, now: float | None = None) -> str:
    """An HS256 JWT with `role: service_role`, valid for `days` from `now`."""
    issued = int(time.time() if now is None else now)
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "iss": "supabase",
        "role": "service_role",
        "iat": issued,
        "exp": issued + int(days * 86_400),
    }
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=3650, help="validity (default 3650)")
    args = parser.parse_args(argv)
    secret = os.environ.get("SUPABASE_JWT_SECRET", "")
    if len(secret) < 32:
        sys.stderr.write("set SUPABASE_JWT_SECRET (at least 32 characters) in the environment\n")
        return 2
    sys.stdout.write(service_key(secret, days=args.days) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
