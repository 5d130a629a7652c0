"""One client WebSocket connection: an asyncio protocol around two sans-I/O cores.

``websockets``' :class:`~websockets.server.ServerProtocol` does the wire (opening handshake,
frame parsing and validation, ping/pong and close handshakes); :class:`ClientSession` does the
push protocol. This class only moves bytes between the transport and those two, and carries out
the session's effects.

Why a protocol and not a coroutine per connection: a push server spends its life with thousands
of mostly idle connections and a fan-out path that touches every one of them. Callbacks keep an
idle connection at a few objects (no task, no events, no queue; measured in docs/benchmarks.md),
and a delivery is one ``transport.write`` of bytes built once per publication
(:class:`~push_server.writer.Outbox`). A task exists only while a command needs I/O — a
subscription that recovers history — and reading from the socket is paused meanwhile, so
commands are still carried out strictly in order.

Time-driven work (the session's auth timeout and token expiry, keepalive pings, the close
handshake's timeout) is done by :meth:`Connection.tick`, which the node calls for every
connection from one sweeper task (:meth:`push_server.node.Node.sweep`).

Cleanup is in :meth:`connection_lost`, which asyncio always calls once: the connection leaves
the hub and the node whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Collection, Coroutine
from typing import Any, Final, Protocol, cast
from urllib.parse import parse_qsl, urlsplit

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from push_server import disconnect, history, protocol
from push_server.auth import TokenVerifier
from push_server.broker import Broker, BrokerUnavailableError
from push_server.client import (
    Authenticated,
    ClientSession,
    Close,
    Effect,
    Send,
    SessionLimits,
    StartSubscription,
    StopSubscription,
)
from push_server.disconnect import Disconnect
from push_server.hub import AdmissionRefusedError, Hub, HubClient
from push_server.metrics import Metrics
from push_server.pg import DatabaseUnavailableError
from push_server.pg_history import PostgresHistory
from push_server.writer import Outbox, OutboxClosedError, SendStats
from streaming_analytics.settings import Settings

log = logging.getLogger(__name__)
# websockets' sans-I/O core logs every closed connection at INFO; that is our log line's job.
_WIRE_LOG: Final = logging.getLogger("push_server.wire")
_WIRE_LOG.setLevel(logging.WARNING)

WS_PATH: Final = "/ws"
CLOSE_TIMEOUT_S: Final = 2.0  # a closing connection whose peer does not finish the close is cut
REPLAY_STALL_S: Final = 10.0  # a recovering client that reads nothing for this long is too slow
WRITE_HIGH: Final = 64 * 1024  # transport buffer above which frames wait in the outbox backlog
WRITE_LOW: Final = 16 * 1024


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


class NodeServices(Protocol):
    """What a connection needs from the process that accepted it (:class:`push_server.node.Node`).

    A protocol rather than the Node class so that the arrow points one way (``node`` imports
    ``connection``, never back) and so that this list stays the whole of the coupling.
    """

    @property
    def settings(self) -> Settings: ...  # allowed origins, history overlap
    @property
    def verifier(self) -> TokenVerifier: ...
    @property
    def channels(self) -> Collection[str]: ...
    @property
    def limits(self) -> SessionLimits: ...
    @property
    def ws_max_size(self) -> int: ...
    @property
    def ping_interval_s(self) -> float: ...
    @property
    def send_queue(self) -> int: ...
    @property
    def send_stats(self) -> SendStats: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def broker(self) -> Broker: ...
    @property
    def history(self) -> PostgresHistory | None: ...
    @property
    def history_channels(self) -> frozenset[str]: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def connections(self) -> set[Connection]: ...  # a connection adds itself, and leaves when lost

    def admission(self, connection: Connection) -> Disconnect | None:
        """Why a connection just past its handshake must be refused, if it must."""


class Connection(asyncio.Protocol):
    """One client connection, from the upgrade request to the closed socket."""

    __slots__ = ("_busy", "_close_frame_due", "_closing_since", "_due", "_fragments", "_inbox",
                 "_last_seen", "_lost", "_node", "_opened", "_ping_sent", "_recorded", "_task",
                 "_transport", "_ws", "close_reason", "hub_client", "id", "outbox", "remote", "session")

    def __init__(self, node: NodeServices) -> None:
        self._node = node
        self.id = secrets.token_hex(8)
        self.remote = ""
        self._transport: asyncio.Transport | None = None
        self._ws = ServerProtocol(max_size=node.ws_max_size, logger=_WIRE_LOG)
        self.session: ClientSession | None = None  # created once the handshake succeeds
        self.outbox = Outbox(node.send_queue, self._write_data, node.send_stats)
        self.hub_client: HubClient | None = None
        self.close_reason: Disconnect | None = None
        self._opened = time.monotonic()
        self._last_seen = self._opened
        self._ping_sent = 0.0  # monotonic time of the unanswered keepalive ping, 0: none
        self._closing_since = 0.0  # monotonic time we started closing, 0: not closing
        self._close_frame_due: Disconnect | None = None  # send once the backlog is flushed
        self._due = math.inf  # wall-clock time the session's tick() has something to do
        self._fragments: list[bytes] | None = None  # a fragmented message being assembled
        self._busy = False  # a command's I/O is running (reading is paused meanwhile)
        self._inbox: deque[str | bytes] | None = None  # messages that arrived while busy
        self._task: asyncio.Task[None] | None = None
        self._lost = False
        self._recorded = False  # the disconnect metric has this connection's close code

    # --- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        self._node.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._last_seen = time.monotonic()
        self._ping_sent = 0.0  # any traffic proves the peer alive
        ws = self._ws
        ws.receive_data(data)
        events = ws.events_received()
        self._flush_wire()  # pongs, the close echo, failures
        for event in events:
            if self._lost or self._closing_since:
                return
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        if not self._closing_since and (ws.state is State.CLOSED or ws.close_expected()):
            self._closing_since = time.monotonic()  # refused handshake, failed parser or peer close

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush_wire()
        return None

    def pause_writing(self) -> None:
        self.outbox.pause()

    def resume_writing(self) -> None:
        self.outbox.resume()
        if self._close_frame_due is not None and not len(self.outbox):
            reason, self._close_frame_due = self._close_frame_due, None
            self._send_close(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        node = self._node
        if self.hub_client is not None:
            node.hub.unregister(self.hub_client)
        self.outbox.close(discard=True)
        if self._task is not None:
            self._task.cancel()
        node.connections.discard(self)
        self._record_close("client")  # unless the server closed first

    def _record_close(self, code: str) -> None:
        """Count the disconnect once, under the code of whoever closed first, when it starts."""
        if self._recorded or self.session is None:  # a refused handshake was never a connection
            return
        self._recorded = True
        self._node.metrics.disconnects.labels(code=code).inc()

    # --- the wire ----------------------------------------------------------------------------
    def _write_data(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _flush_wire(self) -> None:
        """Write what the websockets core has to send (handshake replies, control frames)."""
        transport = self._transport
        for chunk in self._ws.data_to_send():
            if transport is None or transport.is_closing():
                return
            if chunk:
                transport.write(chunk)
            else:  # SEND_EOF: a server closes the TCP connection once the close handshake is done
                transport.close()

    def _handshake(self, request: Request) -> None:
        ws, node = self._ws, self._node
        path, _, query = request.path.partition("?")
        if path != WS_PATH:
            response = ws.reject(404, "not found\n")
        elif not origin_allowed(request.headers.get("Origin"), host=request.headers.get("Host"),
                                allowed=node.settings.push_allowed_origins):
            response = ws.reject(403, "origin not allowed\n")
        else:
            response = ws.accept(request)
        ws.send_response(response)
        self._flush_wire()
        if response.status_code != 101:
            return  # the core has queued the EOF: the transport closes after the response
        args = dict(parse_qsl(query, keep_blank_values=True))
        now = time.time()
        self.session = ClientSession(self.id, verifier=node.verifier, channels=node.channels,
                                     limits=node.limits, now=now)
        # Admission looks at the others only: SA_PUSH_MAX_CONNECTIONS = N serves N connections.
        refusal = node.admission(self)
        if refusal is not None:
            self._close(refusal, "refused at admission")
            return
        self._apply(self.session.open(token=args.get("token"), version=args.get("v"), now=now))

    def _frame(self, frame: Frame) -> None:
        opcode, data = frame.opcode, bytes(frame.data)
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [bytes([opcode is Opcode.TEXT]), data]
                return
            self._message(opcode is Opcode.TEXT, data)
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(data)
            if frame.fin:
                first, *parts = self._fragments
                self._fragments = None
                self._message(first == b"\x01", b"".join(parts))
        elif opcode is Opcode.CLOSE:
            self.outbox.close(discard=True)  # the peer is gone; the core has echoed its close

    def _message(self, is_text: bool, data: bytes) -> None:
        message: str | bytes = data
        if is_text:
            try:
                message = data.decode()
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
                return
        if self._busy:
            if self._inbox is None:
                self._inbox = deque()
            self._inbox.append(message)
            return
        if self.session is not None:
            self._apply(self.session.receive(message, time.time()))

    def _fail(self, code: int, reason: str) -> None:
        """Close for a wire-level violation (the WebSocket codes, not the push protocol's)."""
        self._record_close(str(code))
        self.outbox.close(discard=True)
        self._ws.fail(code, reason)
        self._flush_wire()
        self._closing_since = time.monotonic()

    # --- time --------------------------------------------------------------------------------
    def tick(self, now: float, wall: float) -> None:
        """Called about twice a second by the node's sweeper (``now`` monotonic, ``wall`` epoch)."""
        transport = self._transport
        if transport is None or self._lost:
            return
        if self._closing_since:
            if now - self._closing_since > CLOSE_TIMEOUT_S:
                transport.abort()  # the peer never finished the close handshake
            return
        session = self.session
        if session is None:  # still in the opening handshake
            if now - self._opened > self._node.limits.auth_timeout_s:
                transport.abort()
            return
        if wall >= self._due and not self._busy:
            self._apply(session.tick(wall))
            if self._closing_since:
                return
        interval = self._node.ping_interval_s
        if self._ping_sent:
            if now - self._ping_sent > interval:
                log.info("keepalive timeout client=%s", self.id)
                self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        elif now - self._last_seen >= interval:
            self._ws.send_ping(b"")
            self._flush_wire()
            self._ping_sent = now

    # --- closing -----------------------------------------------------------------------------
    def kick(self, reason: Disconnect) -> None:
        """Close soon with ``reason`` (sync: the hub calls it mid fan-out); idempotent."""
        if self.hub_client is not None and self.hub_client.kicked is None:
            self._node.hub.kick(self.hub_client, reason)  # comes back here via on_kick
            return
        self._on_kick(reason)

    def _on_kick(self, reason: Disconnect) -> None:
        if self.close_reason is not None or self._lost:
            return
        if self.session is None:  # still in the opening handshake: nothing to say goodbye with
            self.abort()
            return
        if reason is disconnect.SLOW_CLIENT:
            # The socket is backed up: drop the backlog (the client resumes from its last offset)
            # and put the close frame straight behind what the transport already holds.
            self.close_reason = reason
            self._record_close(str(reason.code))
            log.info("closing client=%s code=%d detail=slow", self.id, reason.code)
            self.outbox.close(discard=True)
            self._send_close(reason)
            return
        self._close(reason, "kicked")

    def _close(self, reason: Disconnect, detail: str) -> None:
        """Graceful close: what is queued still goes out, then the close frame."""
        if self.close_reason is not None or self._lost:
            return
        self.close_reason = reason
        self._record_close(str(reason.code))
        log.info("closing client=%s user=%s code=%d detail=%s", self.id,
                 self.hub_client.user if self.hub_client else "-", reason.code, detail)
        if self.hub_client is not None:
            self._node.hub.unregister(self.hub_client)  # nothing more is delivered
        self.outbox.close()
        if len(self.outbox):  # frames still wait for the socket
            self._close_frame_due = reason  # sent by resume_writing once the backlog is out
            self._closing_since = time.monotonic()
        else:
            self._send_close(reason)

    def _send_close(self, reason: Disconnect) -> None:
        if self._ws.state is State.OPEN:
            self._ws.send_close(reason.code, reason.reason)
            self._flush_wire()
        self._closing_since = time.monotonic()

    def abort(self) -> None:
        """Cut the connection now (the end of a drain that timed out)."""
        if self._transport is not None:
            self._transport.abort()

    # --- effects -----------------------------------------------------------------------------
    def _apply(self, effects: list[Effect]) -> None:
        """Carry out effects in order; the first that needs I/O continues in a task."""
        for index, effect in enumerate(effects):
            if self.close_reason is not None or self._lost:
                return
            match effect:
                case Send(frame=frame):
                    self.outbox.offer(frame, force=True)
                case Authenticated(claims=claims, reply=reply):
                    try:
                        self.hub_client = self._node.hub.register(self.id, claims.subject, self.outbox,
                                                                  self._on_kick)
                    except AdmissionRefusedError as exc:
                        self._close(exc.close, f"per-user limit for {claims.subject}")
                        return
                    self.outbox.offer(reply, force=True)
                case StartSubscription(since=None):
                    self._subscribe(effect)
                case StartSubscription():
                    self._start_io(self._recover(effect), effects[index + 1:])
                    return
                case StopSubscription(channel=channel):
                    if self.hub_client is not None:
                        self._node.hub.unsubscribe(self.hub_client, channel)
                case Close(reason=reason, detail=detail):
                    self._close(reason, detail)
                    return
        if self.session is not None:
            self._due = self.session.deadline() or math.inf

    def _start_io(self, work: Coroutine[Any, Any, None], rest: list[Effect]) -> None:
        """Run a command's I/O in a task; commands that arrive meanwhile wait, in order."""
        self._busy = True
        if self._transport is not None:
            self._transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._run_io(work, rest))

    async def _run_io(self, work: Coroutine[Any, Any, None], rest: list[Effect]) -> None:
        try:
            await work
        except Exception:  # a bug, not the client: it must not leave the connection half-served
            log.exception("command failed for client %s", self.id)
            self.kick(disconnect.INTERNAL_ERROR)
        finally:
            self._busy = False
            self._task = None
        if self._lost:
            return
        self._apply(rest)
        while self._inbox and not self._busy and self.session is not None and not self._lost:
            self._apply(self.session.receive(self._inbox.popleft(), time.time()))
        if not self._busy and self._transport is not None and not self._lost:
            self._transport.resume_reading()

    def _subscribe(self, command: StartSubscription) -> None:
        client = self.hub_client
        assert client is not None
        hub, broker = self._node.hub, self._node.broker
        hub.subscribe(client, command.channel, command.keys)
        self.outbox.offer(protocol.subscribed(command.cmd_id, channel=command.channel,
                                              offset=broker.last_offset(command.channel)), force=True)

    async def _recover(self, command: StartSubscription) -> None:
        """Subscribe with ``since``: replay what the client missed, then go live (no gap, no dup)."""
        client = self.hub_client
        assert client is not None and command.since is not None and self.session is not None
        hub, broker = self._node.hub, self._node.broker
        # Subscribing and reading the reader's position happen in one step of the event loop:
        # that position is the exact split between history and live delivery.
        hub.subscribe(client, command.channel, command.keys, recovering=True)
        position = broker.last_offset(command.channel)
        if position is None:  # the reader has not found its start yet: no safe split point
            self._apply(self.session.fail(disconnect.BACKEND_UNAVAILABLE, "reader not started"))
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
            self._apply(self.session.fail(disconnect.BACKEND_UNAVAILABLE, str(exc)))
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
