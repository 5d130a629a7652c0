"""WebSocket text frames built once per publication, the same bytes for every subscriber.

Server-to-client frames are not masked (RFC 6455 §5.1), and our connections negotiate no
extension (no permessage-deflate), so the bytes of one text message are the same for every
client: :func:`text_frame` builds them once per publication (the hub does) and each connection's
:class:`~push_server.writer.Outbox` writes them with one ``transport.write`` — no per-client
framing, UTF-8 encoding or copying. Each frame is one ``write`` call, so frames never interleave
with the control frames websockets' core writes (ping, pong, close).
"""

from __future__ import annotations

import struct

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
