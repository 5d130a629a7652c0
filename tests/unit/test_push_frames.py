"""The pre-encoded text frames, checked against the ``websockets`` package's own parser."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from push_server.frames import DirectWriter, encode_text, text_frame

SIZES = [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000, 1 << 20]


def parse(data: bytes) -> Frame:
    """Parse one server-to-client frame with websockets' sans-I/O parser; ``data`` must be exact."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    with pytest.raises(StopIteration) as stop:
        next(parser)
    assert reader.at_eof(), "trailing bytes after the frame"
    frame: Frame = stop.value.value
    return frame


@pytest.mark.parametrize("size", SIZES)
def test_encoded_frame_parses_as_one_text_frame(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = parse(encode_text(payload))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)


@pytest.mark.parametrize("size", SIZES)
def test_same_bytes_as_websockets_serialises(size: int) -> None:
    payload = b"x" * size
    assert encode_text(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


@pytest.mark.parametrize("size", [10, 200, 70000])
def test_a_client_protocol_reads_the_message(size: int) -> None:
    text = '{"type":"pub","data":"' + "é€" * (size // 5) + '"}'
    client = ClientProtocol(parse_uri("ws://localhost/ws"), state=State.OPEN, max_size=None)
    client.receive_data(text_frame(text) * 2)
    events = client.events_received()
    assert [(e.opcode, e.data.decode()) for e in events] == [(Opcode.TEXT, text)] * 2  # type: ignore[attr-defined]


# --- DirectWriter ------------------------------------------------------------------------------

class FakeTransport:
    def __init__(self, *, limits: tuple[int, int] = (16384, 65536)) -> None:
        self.limits = limits
        self.buffered = 0
        self.closing = False
        self.written: list[bytes] = []

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.limits

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)


class FakeIo:
    def __init__(self, transport: Any) -> None:
        self.transport = transport


class FakeSanicWs:
    """The attributes of Sanic's WebsocketImplProtocol that DirectWriter reads."""

    def __init__(self, proto: ServerProtocol, transport: Any) -> None:
        self.ws_proto = proto
        self.io_proto = FakeIo(transport)
        self.data_finished_fut: asyncio.Future[None] | None = None


def make(proto: ServerProtocol | None = None) -> tuple[FakeSanicWs, FakeTransport, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    transport = FakeTransport()
    ws = FakeSanicWs(proto or ServerProtocol(state=State.OPEN), transport)
    ws.data_finished_fut = loop.create_future()
    return ws, transport, loop


def test_direct_writer_writes_while_open_and_not_backed_up() -> None:
    ws, transport, loop = make()
    try:
        direct = DirectWriter.attach(ws)
        assert direct is not None
        wire = text_frame("hello")
        assert direct.write(wire)
        assert transport.written == [wire]

        transport.buffered = 16384  # at the low-water mark: ws.send must decide (it may wait)
        assert not direct.write(wire)
        transport.buffered = 0
        transport.closing = True
        assert not direct.write(wire)
        transport.closing = False
        assert ws.data_finished_fut is not None
        ws.data_finished_fut.set_result(None)  # the handler finished: Sanic's send raises
        assert not direct.write(wire)
        assert transport.written == [wire]
    finally:
        loop.close()


def test_direct_writer_stops_once_a_close_frame_was_sent() -> None:
    ws, transport, loop = make()
    try:
        direct = DirectWriter.attach(ws)
        assert direct is not None
        ws.ws_proto.send_close(4001, "slow client")
        assert ws.ws_proto.state is State.CLOSING
        assert not direct.write(text_frame("late"))
        assert transport.written == []
    finally:
        loop.close()


def test_no_direct_writer_for_unusual_connections() -> None:
    compressed = ServerProtocol(state=State.OPEN)
    compressed.extensions = [PerMessageDeflate(False, False, 15, 15)]
    ws, _, loop = make(compressed)
    try:
        assert DirectWriter.attach(ws) is None  # frames would differ per connection
        assert DirectWriter.attach(object()) is None
        ws2, _, loop2 = make()
        ws2.io_proto.transport = None
        assert DirectWriter.attach(ws2) is None
        loop2.close()
    finally:
        loop.close()
