"""In-memory stand-ins for a socket, to unit-test the push server's send path without one."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri


class FakeTransport(asyncio.Transport):
    """Collects written bytes; ``block()`` simulates a peer that stopped reading.

    Like asyncio's transports it calls the protocol's ``pause_writing`` once its buffer passes
    the high-water mark and ``resume_writing`` when :meth:`drain` empties it.
    """

    def __init__(self, protocol: asyncio.Protocol | None = None, *, peer: str = "127.0.0.1") -> None:
        super().__init__()
        self.protocol = protocol
        self.wire = bytearray()  # what the peer has received
        self.buffered = bytearray()  # written while blocked
        self.blocked = False
        self.closed = False
        self.aborted = False
        self.reading = True
        self.high = 64 * 1024
        self.low = 16 * 1024
        self._paused = False
        self._peer = (peer, 50000)

    # --- asyncio.Transport --------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        if not self.blocked:
            self.wire += data
            return
        self.buffered += data
        if not self._paused and len(self.buffered) > self.high and self.protocol is not None:
            self._paused = True
            self.protocol.pause_writing()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high if high is not None else self.high
        self.low = low if low is not None else self.low

    def get_write_buffer_size(self) -> int:
        return len(self.buffered)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    # --- test controls ------------------------------------------------------------------------
    def block(self) -> None:
        self.blocked = True

    def drain(self) -> None:
        """The peer reads everything buffered (and keeps reading)."""
        self.blocked = False
        self.wire += self.buffered
        self.buffered.clear()
        if self._paused and self.protocol is not None:
            self._paused = False
            self.protocol.resume_writing()


class Peer:
    """The client side of a connection: writes client frames into a protocol and reads its replies."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN, max_size=None)
        self._read = 0

    def send_text(self, text: str) -> None:
        self.client.send_text(text.encode())
        self.flush()

    def send_binary(self, data: bytes) -> None:
        self.client.send_binary(data)
        self.flush()

    def send_frame(self, frame: Frame) -> None:
        """Any frame, even one a well-behaved client would not send (bad UTF-8, fragments)."""
        self.client.send_frame(frame)
        self.flush()

    def send_close(self, code: int = 1000) -> None:
        self.client.send_close(code)
        self.flush()

    def flush(self) -> None:
        """Deliver what the client has queued (e.g. its automatic close echo) to the server."""
        assert self.transport.protocol is not None
        for chunk in self.client.data_to_send():
            if chunk:
                self.transport.protocol.data_received(chunk)

    def frames(self) -> list[Frame]:
        """Frames the server wrote since the last call (text, close, ping, ...)."""
        new = bytes(self.transport.wire[self._read:])
        self._read = len(self.transport.wire)
        self.client.receive_data(new)
        return [e for e in self.client.events_received() if isinstance(e, Frame)]

    def texts(self) -> list[str]:
        return [bytes(f.data).decode() for f in self.frames() if f.opcode is Opcode.TEXT]

    @staticmethod
    def close_code(frames: list[Frame]) -> int | None:
        for frame in frames:
            if frame.opcode is Opcode.CLOSE:
                return Close.parse(bytes(frame.data)).code
        return None


class Written(list[bytes]):
    """A write callable for an :class:`~push_server.writer.Outbox` that keeps every frame written."""

    def __call__(self, data: bytes) -> None:
        self.append(data)

    def texts(self) -> list[str]:
        """The text messages written so far (and forget them)."""
        client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN, max_size=None)
        client.receive_data(b"".join(self))
        self.clear()
        return [bytes(e.data).decode() for e in client.events_received()
                if isinstance(e, Frame) and e.opcode is Opcode.TEXT]
