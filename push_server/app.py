"""The thin Sanic adapter: HTTP routes, start-up and graceful drain.

Routes: ``/healthz`` (process alive), ``/readyz`` (Redis reachable and not draining), ``/metrics``
(Prometheus), ``/api/v1/history/*`` (REST history, :mod:`push_server.rest`) and ``/dashboard/``
(the live dashboard's static files; ``/`` redirects there). The push protocol on ``/ws`` shares
the port but not Sanic's websocket stack: :class:`push_server.listener.Listener`, Sanic's
protocol class for this app (:func:`serve`), hands those connections to
:class:`push_server.connection.Connection` before Sanic sees them.

On SIGTERM Sanic stops the loop and runs ``before_server_stop`` while the listener is still
open: the node refuses new connections (close 4000), tells every client to reconnect (close
4000) and waits up to ``SA_PUSH_DRAIN_TIMEOUT_S`` before the process exits.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from sanic import Request, Sanic, json, raw, redirect

from push_server import rest
from push_server.auth import TokenVerifier
from push_server.broker import Broker
from push_server.listener import Listener
from push_server.node import Node
from streaming_analytics.settings import Settings

DASHBOARD_PATH = "/dashboard/"
DASHBOARD_DIR = Path(__file__).parent / "static" / "dashboard"
# The dashboard loads only same-origin files (uPlot is vendored by `make install`, no CDN) and
# talks only to this server; the policy makes that a rule the browser enforces.
_DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                  "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_app_numbers = itertools.count()


def create_app(settings: Settings, *, broker: Broker | None = None,
               verifier: TokenVerifier | None = None, name: str | None = None) -> Sanic[Any, Any]:
    """Build the Sanic app around a :class:`Node`; the broker/verifier can be injected for tests."""
    app: Sanic[Any, Any] = Sanic(name or f"push_server_{next(_app_numbers)}", configure_logging=False)
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = float(settings.push_drain_timeout_s + 2)
    app.config.ACCESS_LOG = False  # URLs may carry ?token=
    app.config.MOTD = False
    node = Node(settings, broker=broker, verifier=verifier)
    app.ctx.node = node

    @app.before_server_start
    async def _start(_app: Sanic[Any, Any]) -> None:
        await node.start()

    # Sanic runs this while its listening socket is still open: new push connections are refused
    # with 4000 meanwhile, and every client gets 4000 (reconnect) before the process exits.
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


def serve(app: Sanic[Any, Any], settings: Settings) -> None:
    """Run ``app`` in this process with the push listener in front of Sanic's HTTP protocol."""
    ssl = None
    if settings.push_tls_cert and settings.push_tls_key:
        ssl = {"cert": settings.push_tls_cert, "key": settings.push_tls_key}
    app.run(host=settings.push_host, port=settings.push_port, single_process=True,
            access_log=False, ssl=ssl, motd=False, protocol=Listener)
