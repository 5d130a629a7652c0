"""Wires one push process together: verifier, hub, broker, metrics, limits, drain.

Everything the Sanic adapter needs hangs off a :class:`Node`, so the adapter stays a few routes
and tests can build a node around an in-memory broker.
"""

from __future__ import annotations

import asyncio
import logging
import time

from push_server import disconnect
from push_server.auth import TokenVerifier
from push_server.broker import Broker, make_broker
from push_server.client import SessionLimits
from push_server.connection import Connection
from push_server.disconnect import Disconnect
from push_server.hub import Hub
from push_server.metrics import Metrics
from push_server.pg import AsyncPgPool
from push_server.pg_history import KIND_OF_CHANNEL, PostgresHistory
from streaming_analytics.settings import ConfigError, Settings
from streaming_analytics.streams import CHANNEL_ALERTS, CHANNELS, StreamEntry

log = logging.getLogger(__name__)

HISTORY_BACKENDS = ("postgres", "none")
SWEEP_INTERVAL_S = 0.5  # resolution of auth timeouts, token expiry and keepalive pings


def make_history(settings: Settings) -> tuple[AsyncPgPool | None, PostgresHistory | None]:
    """The history store named by ``SA_PUSH_HISTORY`` (the one place that picks it)."""
    if settings.push_history == "none":
        return None, None
    if settings.push_history == "postgres":
        pool = AsyncPgPool(settings.postgres_dsn, size=settings.push_history_pool_size)
        return pool, PostgresHistory(pool, schema=settings.push_history_schema)
    raise ConfigError(f"SA_PUSH_HISTORY={settings.push_history!r} is not one of "
                      f"{', '.join(HISTORY_BACKENDS)}")


class Node:
    """The push server of this process, independent of the web framework."""

    def __init__(self, settings: Settings, *, broker: Broker | None = None,
                 verifier: TokenVerifier | None = None) -> None:
        self.settings = settings
        self.channels = CHANNELS
        self.verifier = verifier or TokenVerifier.from_settings(settings)
        self.broker = broker or make_broker(settings)
        self.pg_pool, self.history = make_history(settings)
        self.history_channels = frozenset((*KIND_OF_CHANNEL, CHANNEL_ALERTS))
        self.send_queue = settings.push_send_queue
        self.hub = Hub(max_connections_per_user=settings.push_max_connections_per_user,
                       max_pending=settings.push_send_queue)
        self.limits = SessionLimits(
            max_message_bytes=settings.push_max_message_bytes,
            max_subscriptions=settings.push_max_subscriptions,
            command_rate=float(settings.push_command_rate),
            command_burst=settings.push_command_burst,
            auth_timeout_s=float(settings.push_auth_timeout_s),
            expiry_grace_s=float(settings.jwt_leeway_s),
        )
        # Our own size check gives oversize messages the documented 4503; the wire cap above it
        # only bounds memory for absurd frames (those get the WebSocket 1009).
        self.ws_max_size = max(4 * settings.push_max_message_bytes, 1 << 20)
        self.ping_interval_s = float(settings.push_ping_interval_s)
        self.connections: set[Connection] = set()
        self.draining = False
        self.metrics = Metrics(self.hub, lambda: self.broker.stats, lambda: len(self.connections))
        self.send_stats = self.metrics.send_stats
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.broker.start(self.publish)
        self._sweeper = asyncio.create_task(self._sweep(), name="push-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.broker.close()
        if self.pg_pool is not None:
            self.pg_pool.close()

    def publish(self, channel: str, offset: str, entry: StreamEntry) -> int:
        """The broker's callback: fan one entry out, timing it for the send-latency metric."""
        started = time.monotonic()
        delivered = self.hub.publish(channel, offset, entry)
        if delivered:
            self.metrics.send_latency.observe(time.monotonic() - started)
        return delivered

    async def _sweep(self) -> None:
        """Drive every connection's timers from one task (see Connection.tick)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now, wall = time.monotonic(), time.time()
            for connection in list(self.connections):
                try:
                    connection.tick(now, wall)
                except Exception:  # one broken connection must not stop the others' timers
                    log.exception("tick failed for client %s", connection.id)
                    connection.abort()

    def admission(self, connection: Connection) -> Disconnect | None:
        """Why ``connection`` (just past its handshake) must be refused right away, if it must."""
        if self.draining:
            return disconnect.SHUTDOWN
        others = len(self.connections) - (connection in self.connections)
        if others >= self.settings.push_max_connections:
            return disconnect.TOO_MANY_CONNECTIONS
        return None

    async def drain(self, timeout: float) -> None:
        """Graceful shutdown: refuse new clients, tell every client to reconnect, wait for them."""
        self.draining = True
        connections = list(self.connections)
        log.info("draining %d connections (timeout %.1fs)", len(connections), timeout)
        for connection in connections:
            connection.kick(disconnect.SHUTDOWN)
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.connections:
            log.warning("drain timeout: %d connections still open; cutting them", len(self.connections))
            for connection in list(self.connections):
                connection.abort()
