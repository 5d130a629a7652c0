"""REST history endpoints (Sanic adapter): aggregates and alerts from Postgres, keyset-paged.

    GET /api/v1/history/aggregates?kind=fixed&dimension=country&key=DE&from=...&to=...&limit=100
    GET /api/v1/history/alerts?user_id=u1&min_score=0.9&from=...&to=...&limit=100
    Authorization: Bearer <the same JWT as the WebSocket>

Each endpoint reads one channel's data, and the token's ``channels`` claim must grant that channel
(``aggregates.<kind>`` or ``alerts``), exactly as a WebSocket subscribe would. Errors are JSON
``{"error": {"code", "message", "param"?}}``: 400 bad parameter, 401 bad/expired token, 403 channel
not granted, 503 history unavailable. Parameter parsing lives in :mod:`push_server.rest_params`
and SQL in :mod:`push_server.pg_history`; this module only translates HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from sanic import HTTPResponse, Request, Sanic, json

from push_server import cursor
from push_server.auth import AuthError, Claims
from push_server.pg import DatabaseUnavailableError
from push_server.pg_history import Page
from push_server.rest_params import BadParamError, parse_aggregate_query, parse_alert_query

if TYPE_CHECKING:
    from push_server.node import Node

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1/history"
_NO_STORE: Final = {"Cache-Control": "no-store"}


def error(status: int, code: str, message: str, *, param: str | None = None,
          headers: dict[str, str] | None = None) -> HTTPResponse:
    """The one JSON error shape of the REST API."""
    body: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        body["param"] = param
    return json({"error": body}, status=status, headers={**_NO_STORE, **(headers or {})})


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def register(app: Sanic[Any, Any], node: Node) -> None:
    """Add the history routes to ``app``."""

    def authenticate(request: Request) -> Claims | HTTPResponse:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return error(401, "unauthorized", "send 'Authorization: Bearer <token>'",
                         headers={"WWW-Authenticate": 'Bearer realm="history"'})
        try:
            return node.verifier.verify(token)
        except AuthError as exc:  # the detail names the failed check, never the token
            return error(401, "unauthorized", exc.detail,
                         headers={"WWW-Authenticate": 'Bearer realm="history", error="invalid_token"'})

    async def serve(request: Request, endpoint: str, parse: Callable[[], Any],
                    fetch: Callable[[Any], Awaitable[Page]]) -> HTTPResponse:
        response = await _serve(request, parse, fetch)
        node.metrics.history_requests.labels(endpoint=endpoint, status=str(response.status)).inc()
        return response

    async def _serve(request: Request, parse: Callable[[], Any],
                     fetch: Callable[[Any], Awaitable[Page]]) -> HTTPResponse:
        claims = authenticate(request)
        if isinstance(claims, HTTPResponse):
            return claims
        try:
            query = parse()
        except BadParamError as exc:
            return error(400, "bad_request", exc.message, param=exc.param)
        if not claims.grant.allows(query.channel):
            return error(403, "forbidden", f"token does not grant {query.channel}")
        try:
            page = await fetch(query)
        except DatabaseUnavailableError as exc:
            log.warning("history query failed: %s", exc)
            return error(503, "unavailable", "history is unavailable; retry later")
        next_cursor = None
        if page.more and page.last_position is not None:
            next_cursor = cursor.encode(query.fingerprint, page.last_position)
        return json({"items": page.items, "next_cursor": next_cursor, "limit": query.limit},
                    headers=_NO_STORE)

    def disabled() -> HTTPResponse:
        return error(503, "unavailable", "history is disabled on this server (SA_PUSH_HISTORY=none)")

    @app.get(f"{API_PREFIX}/aggregates")
    async def _aggregates(request: Request) -> HTTPResponse:
        store = node.history
        if store is None:
            return disabled()
        return await serve(request, "aggregates", lambda: parse_aggregate_query(_args(request)),
                           store.aggregates_page)

    @app.get(f"{API_PREFIX}/alerts")
    async def _alerts(request: Request) -> HTTPResponse:
        store = node.history
        if store is None:
            return disabled()
        return await serve(request, "alerts", lambda: parse_alert_query(_args(request)), store.alerts_page)


def _args(request: Request) -> dict[str, list[str]]:
    # Blank values are kept so that "?dimension=" is a 400, not silently "every dimension".
    return dict(request.get_args(keep_blank_values=True))
