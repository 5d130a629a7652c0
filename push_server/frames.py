"""WebSocket text frames built once and written straight to a connection's transport.

Server-to-client frames are not masked (RFC 6455 §5.1), so without a per-message extension the
bytes of one text message are the same for every client: :func:`text_frame` builds them once per
publication (the hub does) and :class:`DirectWriter` writes them with one ``transport.write``,
skipping what Sanic's ``send`` repeats per client — its lock, state checks, an
``http.lifecycle.send`` signal dispatch, websockets' framing and the UTF-8 encode.

The fast path is taken only when it is the same as Sanic's: the connection is OPEN and its
handler not finished, no extension was negotiated (Sanic's ``ServerProtocol`` is created without
extensions, so permessage-deflate is never on; checked anyway), and the transport's write buffer
is below its low-water mark — the protocol cannot be paused then, so Sanic would write at once
too. In every other case :meth:`DirectWriter.write` returns False and the caller uses ``ws.send``,
which waits for the drain (a backed-up client blocks only its own writer, and the hub closes it
with 4001 when its queue fills) or raises the usual closed errors. Control frames (ping, pong,
close) always go through Sanic; each frame is one ``write`` call, so frames never interleave and
a close frame sent after the writer stopped comes after every data frame.
"""

from __future__ import annotations

import struct
from typing import Any

from websockets.protocol import State
from websockets.server import ServerProtocol

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text)
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def encode_text(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame carrying ``payload`` (already UTF-8)."""
    size = len(payload)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + payload
    if size < 1 << 16:
        return _HEADER_16.pack(_FIN_TEXT, 126, size) + payload
    return _HEADER_64.pack(_FIN_TEXT, 127, size) + payload


def text_frame(text: str) -> bytes:
    """The wire bytes of ``text`` sent as one server-to-client text message."""
    return encode_text(text.encode())


class DirectWriter:
    """Writes data frames of one Sanic websocket straight to its transport when that is safe."""

    __slots__ = ("_low", "_proto", "_transport", "_ws")

    def __init__(self, ws: Any, proto: ServerProtocol, transport: Any, low: int) -> None:
        self._ws = ws
        self._proto = proto
        self._transport = transport
        self._low = low

    @classmethod
    def attach(cls, ws: Any) -> DirectWriter | None:
        """The direct writer of Sanic websocket ``ws``; None if anything is unusual (use ``ws.send``)."""
        proto = getattr(ws, "ws_proto", None)
        transport = getattr(getattr(ws, "io_proto", None), "transport", None)
        if not isinstance(proto, ServerProtocol) or transport is None or proto.extensions:
            return None
        if not hasattr(ws, "data_finished_fut"):
            return None
        try:
            low, _high = transport.get_write_buffer_limits()
            transport.get_write_buffer_size()
        except (AttributeError, NotImplementedError):
            return None
        return cls(ws, proto, transport, int(low))

    def write(self, wire: bytes) -> bool:
        """Write one frame now; False (nothing written) when the caller must use ``ws.send``."""
        transport = self._transport
        if self._proto.state is not State.OPEN or transport.is_closing():
            return False
        finished = self._ws.data_finished_fut
        if finished is None or finished.done():
            return False
        if transport.get_write_buffer_size() >= self._low:
            return False  # backed up (or about to be): ws.send waits for the drain
        transport.write(wire)
        return True
