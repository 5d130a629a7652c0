"""Who is connected to this process and what they subscribe to; fan-out of stream entries.

The hub is synchronous and does no I/O: the broker's reader task calls :meth:`Hub.publish` once
per stream entry, the entry is serialised at most once (only if someone wants it) — the JSON text
and its WebSocket frame bytes (:func:`push_server.frames.text_frame`) — and the same pair is
offered to each matching subscriber's bounded :class:`~push_server.writer.Outbox`.
A subscriber whose outbox is full is disconnected with ``SLOW_CLIENT`` on the spot and removed, so
the loop never waits for anyone (backpressure policy in :mod:`push_server.writer`). A failure
while delivering to one client is logged and that client dropped; it never aborts the loop.

Recovery (subscribe with ``since``) registers the subscription in *recovering* mode first: live
entries are buffered for it while the connection replays history, then
:meth:`Hub.finish_recovery` flushes only buffered entries newer than the last replayed offset and
keeps skipping older live ones — together no gap and no duplicate, whatever the reader's lag.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from push_server import disconnect, frames, protocol
from push_server.disconnect import Disconnect
from push_server.protocol import KeyFilter, Offset
from push_server.seam import SeamFilter
from push_server.writer import Outbox
from streaming_analytics.streams import StreamEntry

log = logging.getLogger(__name__)


class AdmissionRefusedError(Exception):
    """A connection limit refuses this client; ``close`` is its close code."""

    def __init__(self, close: Disconnect) -> None:
        super().__init__(close.reason)
        self.close = close


@dataclass(eq=False, slots=True)
class Subscription:
    """One channel subscription of one client."""

    client: HubClient
    channel: str
    keys: KeyFilter | None
    # (offset, key, pane, frame, wire bytes) held back
    pending: list[tuple[Offset, str, int, str, bytes]] | None = None
    skip_until: Offset | None = None  # live entries at or before this were replayed already
    seam: SeamFilter | None = None  # (key, pane) a Postgres replay already sent


@dataclass(eq=False, slots=True)
class HubClient:
    """The hub's view of one authenticated connection."""

    id: str
    user: str
    outbox: Outbox
    on_kick: Callable[[Disconnect], None]
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    kicked: Disconnect | None = None


@dataclass(slots=True)
class HubStats:
    """Plain counters, read by the metrics collector at scrape time (keeps the hub free of I/O)."""

    enqueued: int = 0
    dropped: int = 0
    kicked: Counter[int] = field(default_factory=Counter)


class Hub:
    """Connections and subscriptions of this process."""

    def __init__(self, *, max_connections_per_user: int, max_pending: int) -> None:
        self._max_per_user = max_connections_per_user
        self._max_pending = max_pending
        self._clients: dict[str, HubClient] = {}
        self._per_user: Counter[str] = Counter()
        self._by_channel: dict[str, dict[str, Subscription]] = {}
        self.stats = HubStats()

    # --- membership ----------------------------------------------------------------------------
    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def subscription_count(self) -> int:
        return sum(len(subs) for subs in self._by_channel.values())

    def subscriptions_by_channel(self) -> dict[str, int]:
        return {channel: len(subs) for channel, subs in self._by_channel.items()}

    def register(self, client_id: str, user: str, outbox: Outbox,
                 on_kick: Callable[[Disconnect], None]) -> HubClient:
        """Add an authenticated connection or raise :class:`AdmissionRefusedError`."""
        if client_id in self._clients:
            raise ValueError(f"client {client_id} registered twice")
        if self._per_user[user] >= self._max_per_user:
            raise AdmissionRefusedError(disconnect.TOO_MANY_CONNECTIONS)
        client = HubClient(id=client_id, user=user, outbox=outbox, on_kick=on_kick)
        self._clients[client_id] = client
        self._per_user[user] += 1
        return client

    def unregister(self, client: HubClient) -> None:
        """Remove a connection and all its subscriptions; idempotent."""
        if self._clients.pop(client.id, None) is None:
            return
        for channel in list(client.subscriptions):
            self.unsubscribe(client, channel)
        self._per_user[client.user] -= 1
        if self._per_user[client.user] <= 0:
            del self._per_user[client.user]

    def subscribe(self, client: HubClient, channel: str, keys: KeyFilter | None, *,
                  recovering: bool = False) -> Subscription:
        """Start delivering ``channel`` to ``client`` (buffered while ``recovering``)."""
        if client.id not in self._clients:
            raise ValueError(f"client {client.id} is not registered")
        if channel in client.subscriptions:
            raise ValueError(f"client {client.id} already subscribed to {channel}")
        sub = Subscription(client=client, channel=channel, keys=keys,
                           pending=[] if recovering else None)
        client.subscriptions[channel] = sub
        self._by_channel.setdefault(channel, {})[client.id] = sub
        return sub

    def unsubscribe(self, client: HubClient, channel: str) -> None:
        """Stop delivering ``channel`` to ``client``; idempotent."""
        if client.subscriptions.pop(channel, None) is None:
            return
        subs = self._by_channel.get(channel)
        if subs is not None:
            subs.pop(client.id, None)
            if not subs:
                del self._by_channel[channel]

    def finish_recovery(self, client: HubClient, channel: str, last_sent: Offset | None, *,
                        seam: SeamFilter | None = None) -> None:
        """End the replay phase: flush held-back live entries newer than ``last_sent``.

        With ``seam`` (the replay came partly from Postgres), live entries that repeat a pane the
        replay already sent are dropped too, until the filter switches itself off.
        """
        sub = client.subscriptions.get(channel)
        if sub is None or sub.pending is None:
            return
        pending, sub.pending = sub.pending, None
        sub.skip_until = last_sent
        sub.seam = seam if seam is not None and seam.active else None
        for offset, key, pane, frame, wire in pending:
            self._deliver(sub, offset, key, pane, frame, wire=wire)
            if client.kicked is not None:
                return

    # --- fan-out -------------------------------------------------------------------------------
    def publish(self, channel: str, offset: str, entry: StreamEntry) -> int:
        """Offer one stream entry to every matching subscriber; returns how many got it queued."""
        subs = self._by_channel.get(channel)
        if not subs:
            return 0
        frame: str | None = None
        wire = b""
        parsed = protocol.parse_offset(offset)
        delivered = 0
        for sub in list(subs.values()):
            try:
                if sub.keys is not None and not sub.keys.matches(entry.key):
                    continue
                if frame is None:
                    frame = protocol.publication_frame(channel, offset, entry)
                    wire = frames.text_frame(frame)
                if self._deliver(sub, parsed, entry.key, entry.pane, frame, wire=wire):
                    delivered += 1
            except Exception:  # one broken client must not stop the fan-out to the others
                log.exception("delivery to client %s failed; disconnecting it", sub.client.id)
                self.kick(sub.client, disconnect.INTERNAL_ERROR)
        return delivered

    def _deliver(self, sub: Subscription, offset: Offset, key: str, pane: int, frame: str, *,
                 wire: bytes) -> bool:
        if sub.pending is not None:
            if len(sub.pending) >= self._max_pending:
                self.stats.dropped += 1
                self.kick(sub.client, disconnect.SLOW_CLIENT)
                return False
            sub.pending.append((offset, key, pane, frame, wire))
            return True
        if sub.skip_until is not None:
            if offset <= sub.skip_until:
                return False  # already sent during the replay
            sub.skip_until = None
        if sub.seam is not None:
            admitted = sub.seam.admit(offset, key, pane)
            if not sub.seam.active:
                sub.seam = None
            if not admitted:
                return False  # the Postgres replay sent this pane (or a newer one) already
        if sub.client.outbox.offer(frame, wire=wire):
            self.stats.enqueued += 1
            return True
        self.stats.dropped += 1
        self.kick(sub.client, disconnect.SLOW_CLIENT)
        return False

    # --- disconnects ---------------------------------------------------------------------------
    def kick(self, client: HubClient, reason: Disconnect) -> None:
        """Remove ``client`` now and tell its connection to close with ``reason``; idempotent."""
        if client.kicked is not None:
            return
        client.kicked = reason
        self.stats.kicked[reason.code] += 1
        self.unregister(client)
        try:
            client.on_kick(reason)
        except Exception:  # the client is already removed; its connection task cleans up
            log.exception("closing client %s failed", client.id)

    def kick_all(self, reason: Disconnect) -> int:
        """Disconnect every client (graceful drain); returns how many."""
        clients = list(self._clients.values())
        for client in clients:
            self.kick(client, reason)
        return len(clients)
