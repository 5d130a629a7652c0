"""The first protocol of every accepted TCP connection: WebSocket to us, the rest to Sanic.

One port serves both the push protocol and HTTP (REST history, health, metrics, the dashboard).
Sanic stays the HTTP server; the WebSocket endpoint is :class:`push_server.connection.Connection`,
a callback protocol that costs a fraction of Sanic's websocket stack per connection (a handler
task, a frame assembler with its queue and events, a keepalive task: ~24 KiB per idle
connection, measured in docs/benchmarks.md).

:class:`Listener` is what Sanic's server instantiates for each accepted connection (passed as
``app.run(protocol=Listener)``). It reads only the request line: ``GET /ws…`` switches the
transport to a :class:`Connection` (which then does the whole opening handshake itself, origin
check included); anything else switches it to Sanic's ``HttpProtocol``, created with the very
arguments Sanic gave us, and replays the bytes read so far. Either way the switch happens once,
on the first bytes, before anything was answered.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast

from sanic.server.protocols.http_protocol import HttpProtocol

from push_server.connection import WS_PATH, Connection
from push_server.node import Node

MAX_REQUEST_LINE: Final = 8192  # longer first lines go to Sanic, which answers 414/400
_WS_TARGETS: Final = (b"GET " + WS_PATH.encode() + b" ", b"GET " + WS_PATH.encode() + b"?")


class Listener(asyncio.Protocol):
    """Routes one new connection by its request line; see the module docstring."""

    __slots__ = ("_buffer", "_kwargs", "_timer", "_transport")

    def __init__(self, **sanic_kwargs: Any) -> None:
        self._kwargs = sanic_kwargs  # loop, app, connections, signal, state, unix
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        app = self._kwargs["app"]
        # A client that connects and says nothing is cut like Sanic cuts a silent HTTP client.
        self._timer = asyncio.get_running_loop().call_later(float(app.config.REQUEST_TIMEOUT),
                                                            transport.abort)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n", 0, MAX_REQUEST_LINE)
        if end < 0 and len(buffer) < MAX_REQUEST_LINE:
            return  # the request line is not complete yet
        if buffer.startswith(_WS_TARGETS):
            node: Node = self._kwargs["app"].ctx.node
            self._switch(Connection(node))
        else:
            self._switch(HttpProtocol(**self._kwargs))

    def _switch(self, protocol: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        data, self._buffer = bytes(self._buffer), bytearray()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return None  # nothing was routed yet: let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
