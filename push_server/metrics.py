"""Prometheus metrics of one push process (prometheus-client, a registry per node).

Gauges whose source of truth lives in the hub or the broker (connections, subscriptions, drops,
read lag) are computed at scrape time by a custom collector instead of being updated on every
change, so the hot fan-out path only bumps plain integers. The same goes for the per-delivery
numbers: frames written are a plain ``int`` (:attr:`push_server.writer.SendStats.frames`, exported
as ``push_messages_sent_total``), and ``push_send_latency_seconds`` is observed once per
publication fan-out and once per backlog flush, not once per frame: prometheus-client's locked
updates were ~17% of the per-delivery cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from push_server.writer import SendStats

if TYPE_CHECKING:
    from push_server.broker import BrokerStats
    from push_server.hub import Hub

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _StateCollector(Collector):
    def __init__(self, hub: Hub, broker_stats: Callable[[], BrokerStats],
                 open_connections: Callable[[], int], frames_sent: Callable[[], int]) -> None:
        self._hub = hub
        self._broker_stats = broker_stats
        self._open = open_connections
        self._frames_sent = frames_sent

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("push_connections_open", "WebSocket connections open (any state).",
                                value=self._open())
        yield GaugeMetricFamily("push_connections_active", "Authenticated connections in the hub.",
                                value=self._hub.client_count)
        subs = GaugeMetricFamily("push_subscriptions", "Channel subscriptions.", labels=["channel"])
        for channel, count in sorted(self._hub.subscriptions_by_channel().items()):
            subs.add_metric([channel], count)
        yield subs
        yield CounterMetricFamily("push_messages_sent", "Frames written to client sockets.",
                                  value=self._frames_sent())
        yield CounterMetricFamily("push_messages_dropped", "Messages not queued because a client's "
                                  "send queue was full (that client is then disconnected).",
                                  value=self._hub.stats.dropped)
        stats = self._broker_stats()
        lag = GaugeMetricFamily("push_redis_read_lag_seconds",
                                "Now minus the entry-id time of the last entry read, per channel.",
                                labels=["channel"])
        for channel, lag_ms in sorted(stats.read_lag_ms.items()):
            lag.add_metric([channel], lag_ms / 1000.0)
        yield lag
        yield CounterMetricFamily("push_redis_read_errors", "Failed stream reads (each retried).",
                                  value=stats.read_errors)
        yield CounterMetricFamily("push_stream_bad_entries", "Stream entries that did not decode.",
                                  value=stats.bad_entries)


class Metrics:
    """The metrics of one node; ``render()`` is what /metrics serves."""

    def __init__(self, hub: Hub, broker_stats: Callable[[], BrokerStats],
                 open_connections: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.send_latency = Histogram("push_send_latency_seconds",
                                      "Time from a frame reaching this process's fan-out to its "
                                      "write to the socket: one observation per publication (until "
                                      "its last subscriber's write) and per backlog flush (its "
                                      "oldest frame's wait), a bound for every frame in it.",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        # bumped by the connections' outboxes, exported at scrape time
        self.send_stats = SendStats(observe_latency=self.send_latency.observe)
        self.disconnects = Counter("push_disconnects", "Closed connections by close code "
                                   "('client' when the client closed first).", ["code"],
                                   registry=self.registry)
        self.history_rows = Counter("push_history_rows", "Rows replayed from Postgres to recovering "
                                    "clients (offsets older than the Redis stream).", ["channel"],
                                    registry=self.registry)
        self.history_requests = Counter("push_history_requests", "REST history requests by endpoint "
                                        "and HTTP status.", ["endpoint", "status"], registry=self.registry)
        self.registry.register(_StateCollector(hub, broker_stats, open_connections,
                                               lambda: self.send_stats.frames))

    def render(self) -> bytes:
        return generate_latest(self.registry)
