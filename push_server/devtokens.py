"""Mint client tokens for local development and tests (never used by the server itself).

    python -m push_server.devtokens --sub alice --channels 'aggregates.*,alerts' --ttl 3600

prints an HS256 token signed with SA_JWT_SECRET and the configured audience/issuer.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import jwt

from streaming_analytics.settings import Settings


def claims_for(settings: Settings, *, sub: str, channels: Sequence[str], ttl_s: int = 3600,
               now: float | None = None, **overrides: Any) -> dict[str, Any]:
    """A complete claim set the server accepts; ``overrides`` replace or (value None) drop claims."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "channels": list(channels), "aud": settings.jwt_audience,
                              "iss": settings.jwt_issuer, "iat": issued, "nbf": issued,
                              "exp": issued + ttl_s}
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def hs256(settings: Settings, claims: dict[str, Any], *, secret: str | None = None) -> str:
    """Sign ``claims`` with the HMAC secret (or another one, to test rejection)."""
    return jwt.encode(claims, settings.jwt_secret if secret is None else secret, algorithm="HS256")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sub", default="dev")
    parser.add_argument("--channels", default="*", help="comma-separated grants (default: *)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until exp")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    grants = [c.strip() for c in args.channels.split(",") if c.strip()]
    print(hs256(settings, claims_for(settings, sub=args.sub, channels=grants, ttl_s=args.ttl)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
