"""The thin Sanic adapter: routes, origin check, start-up and graceful drain.

Routes: ``/ws`` (the push protocol), ``/healthz`` (process alive), ``/readyz`` (Redis reachable
and not draining), ``/metrics`` (Prometheus), ``/api/v1/history/*`` (REST history,
:mod:`push_server.rest`) and ``/dashboard/`` (the live dashboard's static files; ``/`` redirects
there). All protocol behaviour lives in the framework-free modules; this file only translates
Sanic's request/websocket objects into :class:`Connection`.

On SIGTERM Sanic stops the loop and runs ``before_server_stop`` while the listener is still
open: the node refuses new connections (close 4000), tells every client to reconnect (close
4000) and waits up to ``SA_PUSH_DRAIN_TIMEOUT_S`` before the process exits.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sanic import Request, Sanic, json, raw, redirect, text

from push_server import rest
from push_server.auth import TokenVerifier
from push_server.broker import Broker
from push_server.connection import Connection
from push_server.node import Node
from streaming_analytics.settings import Settings

WS_PATH = "/ws"
DASHBOARD_PATH = "/dashboard/"
DASHBOARD_DIR = Path(__file__).parent / "static" / "dashboard"
# The dashboard loads only same-origin files (uPlot is vendored by `make install`, no CDN) and
# talks only to this server; the policy makes that a rule the browser enforces.
_DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                  "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_app_numbers = itertools.count()


def origin_allowed(origin: str | None, *, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Cross-site WebSocket hijacking guard.

    Browsers always send ``Origin``; other clients usually do not and cannot be abused by a web
    page, so a missing header is accepted. A present one must be listed in ``allowed`` (``*``
    allows any) or name this very host (same origin).
    """
    if origin is None:
        return True
    normalised = origin.strip().rstrip("/").lower()
    if "*" in allowed or normalised in {a.rstrip("/").lower() for a in allowed}:
        return True
    netloc = urlsplit(normalised).netloc
    return bool(netloc) and host is not None and netloc == host.strip().lower()


def create_app(settings: Settings, *, broker: Broker | None = None,
               verifier: TokenVerifier | None = None, name: str | None = None) -> Sanic[Any, Any]:
    """Build the Sanic app around a :class:`Node`; the broker/verifier can be injected for tests."""
    app: Sanic[Any, Any] = Sanic(name or f"push_server_{next(_app_numbers)}", configure_logging=False)
    # Our own size check gives oversize frames the documented 4503; the transport cap above it
    # only bounds memory for absurd frames (those get the WebSocket 1009).
    app.config.WEBSOCKET_MAX_SIZE = max(4 * settings.push_max_message_bytes, 1 << 20)
    app.config.WEBSOCKET_PING_INTERVAL = settings.push_ping_interval_s
    app.config.WEBSOCKET_PING_TIMEOUT = settings.push_ping_interval_s
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = float(settings.push_drain_timeout_s + 2)
    app.config.ACCESS_LOG = False  # URLs may carry ?token=
    app.config.MOTD = False
    node = Node(settings, broker=broker, verifier=verifier)
    app.ctx.node = node

    @app.before_server_start
    async def _start(_app: Sanic[Any, Any]) -> None:
        await node.start()

    @app.on_request
    async def _check_origin(request: Request) -> Any:
        if request.path == WS_PATH and not origin_allowed(
                request.headers.get("origin"), host=request.headers.get("host"),
                allowed=settings.push_allowed_origins):
            return text("origin not allowed", status=403)
        return None

    @app.websocket(WS_PATH)  # type: ignore[untyped-decorator]
    async def _ws(request: Request, ws: Any) -> None:
        connection = Connection(ws, node, remote=request.remote_addr or request.ip)
        await connection.run(token=request.args.get("token"), version=request.args.get("v"))

    # Registered after the websocket route on purpose: shutdown listeners run in reverse order, and
    # Sanic's own listener that cancels websocket handlers comes with the route. Draining first
    # gives clients the 4000 close code instead of a bare cancellation.
    @app.before_server_stop
    async def _drain(_app: Sanic[Any, Any]) -> None:
        await node.drain(float(settings.push_drain_timeout_s))
        await node.stop()

    rest.register(app, node)
    app.static(DASHBOARD_PATH, str(DASHBOARD_DIR), name="dashboard", index="index.html",
               directory_view=False)

    @app.get("/")
    async def _root(_request: Request) -> Any:
        return redirect(DASHBOARD_PATH)

    @app.on_response  # type: ignore[untyped-decorator]
    async def _security_headers(request: Request, response: Any) -> None:
        if request.path.startswith(DASHBOARD_PATH):
            response.headers["Content-Security-Policy"] = _DASHBOARD_CSP
            response.headers["X-Content-Type-Options"] = "nosniff"

    @app.get("/healthz")
    async def _healthz(_request: Request) -> Any:
        return json({"status": "ok"})

    @app.get("/readyz")
    async def _readyz(_request: Request) -> Any:
        if node.draining:
            return json({"status": "draining"}, status=503)
        if not await node.broker.ping():
            return json({"status": "broker unreachable"}, status=503)
        return json({"status": "ready"})

    @app.get("/metrics")
    async def _metrics(_request: Request) -> Any:
        return raw(node.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    return app
