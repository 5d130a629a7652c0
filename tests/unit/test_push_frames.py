"""The pre-encoded text frames, checked against the ``websockets`` package's own parser."""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from push_server.frames import encode_text, text_frame

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
