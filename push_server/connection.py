"""The asyncio driver of one WebSocket connection around the sans-I/O :class:`ClientSession`.

Two tasks per connection: this coroutine reads frames and applies the session's effects; a writer
task drains the bounded :class:`~push_server.writer.Outbox` to the socket, so a client that reads
slowly only ever blocks its own writer (and is disconnected by the hub when its queue fills).
Cleanup is in ``finally``: the connection always leaves the hub and the node, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Protocol

from sanic.exceptions import ServerError, WebsocketClosed
from websockets.exceptions import ConnectionClosed

from push_server import disconnect, history, protocol
from push_server.broker import BrokerUnavailableError
from push_server.client import (
    Authenticated,
    ClientSession,
    Close,
    Effect,
    Send,
    StartSubscription,
    StopSubscription,
)
from push_server.disconnect import Disconnect
from push_server.frames import DirectWriter, text_frame
from push_server.hub import AdmissionRefusedError, HubClient
from push_server.pg import DatabaseUnavailableError
from push_server.writer import Outbox, OutboxClosedError

if TYPE_CHECKING:
    from push_server.node import Node

log = logging.getLogger(__name__)

_CLOSED_ERRORS = (ConnectionClosed, WebsocketClosed, ServerError, ConnectionError)
FLUSH_TIMEOUT_S = 2.0  # how long a graceful close lets queued frames go out first
REPLAY_STALL_S = 10.0  # a recovering client that reads nothing for this long is too slow
LATENCY_BATCH = 64  # at most this many frames per send-latency observation (see _write_loop)


class WebSocket(Protocol):
    """The part of Sanic's websocket object this module uses."""

    async def recv(self, timeout: float | None = None) -> str | bytes | None: ...
    async def send(self, message: str) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...
    def fail_connection(self, code: int = 1006, reason: str = "") -> bool: ...


class Connection:
    """One client connection."""

    def __init__(self, ws: WebSocket, node: Node, *, remote: str = "") -> None:
        self.id = secrets.token_hex(8)
        self.remote = remote
        self._ws = ws
        self._node = node
        self.outbox = Outbox(node.send_queue)
        self.session = ClientSession(self.id, verifier=node.verifier, channels=node.channels,
                                     limits=node.limits, now=time.time())
        self.hub_client: HubClient | None = None
        self.close_reason: Disconnect | None = None
        self._closing = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------------
    async def run(self, *, token: str | None, version: str | None) -> None:
        """Serve the connection until it closes; never raises for client behaviour."""
        node = self._node
        # Admission looks at the others only: SA_PUSH_MAX_CONNECTIONS = N serves N connections.
        refusal = node.admission()
        node.connections.add(self)
        self._writer = asyncio.create_task(self._write_loop(), name=f"writer:{self.id}")
        try:
            if refusal is not None:
                await self._close(refusal, "refused at admission")
                return
            await self._apply(self.session.open(token=token, version=version, now=time.time()))
            await self._read_loop()
            if self.close_reason is not None:  # kicked by the hub or the drain
                await self._close(self.close_reason, "kicked")
        except _CLOSED_ERRORS:
            pass  # the client went away
        finally:
            await self._cleanup()

    async def _read_loop(self) -> None:
        closing = asyncio.create_task(self._closing.wait())
        recv: asyncio.Task[str | bytes | None] | None = None
        try:
            while not self._closing.is_set():
                if recv is None:
                    recv = asyncio.create_task(self._ws.recv())
                deadline = self.session.deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                done, _ = await asyncio.wait({recv, closing}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if closing in done:
                    return
                if recv in done:
                    task, recv = recv, None
                    try:
                        data = task.result()
                    except asyncio.CancelledError:  # Sanic cancels recv when the socket dies
                        return
                    if data is None:
                        continue
                    effects = self.session.receive(data, time.time())
                else:
                    effects = self.session.tick(time.time())
                await self._apply(effects)
        finally:
            closing.cancel()
            if recv is not None:
                recv.cancel()

    async def _write_loop(self) -> None:
        """Drain the outbox to the socket, one frame at a time (the outbox bounds what is pending).

        Metrics are kept off the per-frame path: frames written are summed locally and added to
        the node's plain counter, and the send latency is observed once per *batch* — the frames
        written back to back until the outbox is empty, or :data:`LATENCY_BATCH` of them — as the
        time from queueing the batch's oldest frame until its last frame is written: an upper
        bound of every frame's queue-to-socket latency in the batch, so no tail is hidden.

        A frame goes to the transport as ready-made bytes (a publication's, built once by the hub,
        or encoded here) whenever :class:`~push_server.frames.DirectWriter` says that is what
        ``ws.send`` would do anyway; otherwise — socket backed up, closing, an unusual connection —
        through ``ws.send``, which waits for the drain or raises as before.
        """
        metrics = self._node.metrics
        outbox, ws = self.outbox, self._ws
        direct = DirectWriter.attach(ws)
        written = 0  # frames of the current batch already on the socket
        oldest = 0.0  # enqueue time of the current batch's first frame
        try:
            while True:
                frame, queued_at, wire = await outbox.get()
                if not written:
                    oldest = queued_at
                if direct is None or not direct.write(text_frame(frame) if wire is None else wire):
                    await ws.send(frame)
                written += 1
                if written >= LATENCY_BATCH or not outbox:
                    metrics.frames_sent += written
                    metrics.send_latency.observe(time.monotonic() - oldest)
                    written = 0
        except OutboxClosedError:
            return
        except _CLOSED_ERRORS:
            self._closing.set()
        finally:
            metrics.frames_sent += written  # a batch cut short still counts what was written

    def kick(self, reason: Disconnect) -> None:
        """Close soon with ``reason`` (sync: the hub calls it mid fan-out); idempotent."""
        if self.hub_client is not None and self.hub_client.kicked is None:
            self._node.hub.kick(self.hub_client, reason)  # comes back here via on_kick
            return
        self._on_kick(reason)

    def _on_kick(self, reason: Disconnect) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._closing.set()
        if reason is disconnect.SLOW_CLIENT:
            # The socket is backed up: drop the backlog (the client resumes from its last offset)
            # and put the close frame straight behind what the transport already holds.
            self.outbox.close(discard=True)
            if self._writer is not None:
                self._writer.cancel()
            self._ws.fail_connection(reason.code, reason.reason)
        else:
            self.outbox.close()  # what is queued still goes out, then the close frame

    async def _close(self, reason: Disconnect, detail: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.close_reason is None:
            self.close_reason = reason
        log.info("closing client=%s user=%s code=%d detail=%s", self.id,
                 self.hub_client.user if self.hub_client else "-", reason.code, detail)
        self._closing.set()
        self.outbox.close()
        if self._writer is not None and not self._writer.done():
            done, _ = await asyncio.wait({self._writer}, timeout=FLUSH_TIMEOUT_S)
            if not done:
                self._writer.cancel()
        try:
            await asyncio.wait_for(self._ws.close(reason.code, reason.reason), FLUSH_TIMEOUT_S)
        except TimeoutError:
            self._ws.fail_connection(reason.code, reason.reason)

    async def _cleanup(self) -> None:
        node = self._node
        if self.hub_client is not None:
            node.hub.unregister(self.hub_client)
        self.outbox.close(discard=True)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_CLOSED_ERRORS):
                await self._writer
        node.connections.discard(self)
        code = str(self.close_reason.code) if self.close_reason is not None else "client"
        node.metrics.disconnects.labels(code=code).inc()

    # --- effects ---------------------------------------------------------------------------------
    async def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if self._closed or self.close_reason is not None:
                return
            match effect:
                case Send(frame=frame):
                    self.outbox.offer(frame, force=True)
                case Authenticated(claims=claims, reply=reply):
                    try:
                        self.hub_client = self._node.hub.register(self.id, claims.subject, self.outbox,
                                                                  self._on_kick)
                    except AdmissionRefusedError as exc:
                        await self._close(exc.close, f"per-user limit for {claims.subject}")
                        return
                    self.outbox.offer(reply, force=True)
                case StartSubscription():
                    await self._subscribe(effect)
                case StopSubscription(channel=channel):
                    if self.hub_client is not None:
                        self._node.hub.unsubscribe(self.hub_client, channel)
                case Close(reason=reason, detail=detail):
                    await self._close(reason, detail)
                    return

    async def _subscribe(self, command: StartSubscription) -> None:
        client = self.hub_client
        assert client is not None
        hub, broker = self._node.hub, self._node.broker
        # Subscribing and reading the reader's position happen in one step of the event loop:
        # that position is the exact split between history and live delivery.
        hub.subscribe(client, command.channel, command.keys, recovering=command.since is not None)
        position = broker.last_offset(command.channel)
        if command.since is None:
            self.outbox.offer(protocol.subscribed(command.cmd_id, channel=command.channel,
                                                  offset=position), force=True)
            return
        if position is None:  # the reader has not found its start yet: no safe split point
            await self._apply(self.session.fail(disconnect.BACKEND_UNAVAILABLE, "reader not started"))
            return

        async def send(frame: str) -> None:
            await self.outbox.put(frame, timeout=REPLAY_STALL_S, limit=self.outbox.maxsize // 2)

        try:
            recovered = await broker.covers(command.channel, command.since)
            pg_replay = None if recovered else await self._postgres_replay(command)
            source = protocol.SOURCE_REDIS if pg_replay is None else protocol.SOURCE_POSTGRES_REDIS
            reply = protocol.subscribed(command.cmd_id, channel=command.channel, offset=command.since,
                                        recovered=recovered or pg_replay is not None, source=source)
            self.outbox.offer(reply, force=True)
            seam = None if pg_replay is None else await pg_replay.run(send)
            live_from = await history.replay(broker, command.channel, command.since, position,
                                             keys=command.keys, send=send, seam=seam)
        except (BrokerUnavailableError, DatabaseUnavailableError) as exc:
            await self._apply(self.session.fail(disconnect.BACKEND_UNAVAILABLE, str(exc)))
            return
        except TimeoutError:
            self.kick(disconnect.SLOW_CLIENT)
            return
        except OutboxClosedError:
            return  # kicked while replaying
        if pg_replay is not None:
            self._node.metrics.history_rows.labels(channel=command.channel).inc(pg_replay.sent)
        hub.finish_recovery(client, command.channel, protocol.parse_offset(live_from), seam=seam)

    async def _postgres_replay(self, command: StartSubscription) -> history.PostgresReplay | None:
        """The Postgres part of a recovery whose ``since`` Redis no longer holds, if Postgres answers.

        None (the reply then says ``recovered: false``) when no history store is configured or its
        first query fails; the client still gets everything Redis holds.
        """
        store = self._node.history
        assert command.since is not None
        if store is None or command.channel not in self._node.history_channels:
            return None
        oldest = await self._node.broker.first_offset(command.channel)
        pg_replay = history.PostgresReplay(store, command.channel, since=command.since, oldest=oldest,
                                           overlap_ms=self._node.settings.push_history_overlap_ms,
                                           keys=command.keys)
        try:
            await pg_replay.prepare()
        except DatabaseUnavailableError as exc:
            log.warning("history fallback unavailable for %s: %s", command.channel, exc)
            return None
        return pg_replay
