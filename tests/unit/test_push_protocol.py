"""The push protocol's strict command parser and message builders (no sockets)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from push_server import disconnect, protocol
from push_server.protocol import KeyFilter, ProtocolError, parse_command
from streaming_analytics.streams import StreamEntry

pytestmark = pytest.mark.unit

MAX = 4096


def parse(doc: object) -> protocol.Command:
    return parse_command(orjson.dumps(doc).decode(), max_bytes=MAX)


def test_parses_every_command_type() -> None:
    assert parse({"type": "connect", "id": 1, "token": "t", "v": 1}) == protocol.Connect(1, "t", 1)
    assert parse({"type": "subscribe", "id": 2, "channel": "alerts", "keys": ["alert|e1", "alert|e1"],
                  "since": "1700000000000-3"}) == protocol.Subscribe(
        2, "alerts", KeyFilter(("alert|e1",)), "1700000000000-3")
    assert parse({"type": "unsubscribe", "channel": "alerts"}) == protocol.Unsubscribe(None, "alerts")
    assert parse({"type": "refresh", "id": 3, "token": "x"}) == protocol.Refresh(3, "x")
    assert parse({"type": "ping", "id": 4}) == protocol.Ping(4)
    assert parse({"type": "pong"}) == protocol.Pong()


def test_connect_defaults_to_the_current_version() -> None:
    assert parse({"type": "connect", "token": "t"}) == protocol.Connect(None, "t", protocol.PROTOCOL_VERSION)


@pytest.mark.parametrize(("raw", "close"), [
    ("not json", disconnect.MALFORMED),
    ("[1, 2]", disconnect.MALFORMED),
    ('"ping"', disconnect.MALFORMED),
    ("{}", disconnect.MALFORMED),
    ('{"type": 5}', disconnect.MALFORMED),
    ('{"type": "publish", "channel": "alerts"}', disconnect.UNKNOWN_COMMAND),
    ('{"type": "ping", "extra": 1}', disconnect.MALFORMED),
    ('{"type": "ping", "id": -1}', disconnect.MALFORMED),
    ('{"type": "ping", "id": true}', disconnect.MALFORMED),
    ('{"type": "ping", "id": 1.5}', disconnect.MALFORMED),
    ('{"type": "ping", "id": 9007199254740992}', disconnect.MALFORMED),
    ('{"type": "connect"}', disconnect.MALFORMED),
    ('{"type": "connect", "token": ""}', disconnect.MALFORMED),
    ('{"type": "connect", "token": "t", "v": 2}', disconnect.UNSUPPORTED_VERSION),
    ('{"type": "connect", "token": "t", "v": "1"}', disconnect.MALFORMED),
    ('{"type": "subscribe"}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": ""}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "keys": []}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "keys": "alert|1"}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "keys": [""]}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "keys": ["|"]}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "keys": [1]}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "since": "$"}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "since": "12"}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "since": 12}', disconnect.MALFORMED),
    ('{"type": "subscribe", "channel": "alerts", "since": "18446744073709551616-0"}', disconnect.MALFORMED),
    ('{"type": "refresh"}', disconnect.MALFORMED),
])
def test_rejects_bad_commands_with_their_close_code(raw: str, close: disconnect.Disconnect) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(raw, max_bytes=MAX)
    assert info.value.close is close


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_command(b'{"type": "ping"}', max_bytes=MAX)
    assert info.value.close is disconnect.BINARY_FRAME


def test_size_limit_counts_utf8_bytes_not_characters() -> None:
    ok = '{"type":"ping"}' + " " * (MAX - 15)
    assert parse_command(ok, max_bytes=MAX) == protocol.Ping(None)
    # 1100 four-byte characters: under the limit in characters, over it in bytes.
    wide = '{"type":"connect","token":"' + "\U0001f600" * 1100 + '"}'
    with pytest.raises(ProtocolError) as info:
        parse_command(wide, max_bytes=MAX)
    assert info.value.close is disconnect.MESSAGE_TOO_LARGE


def test_key_filter_matches_whole_segments() -> None:
    keys = parse({"type": "subscribe", "channel": "aggregates.fixed",
                  "keys": ["fixed|category|book|", "fixed|country|DE|1000|2000"]})
    assert isinstance(keys, protocol.Subscribe) and keys.keys is not None
    matches = keys.keys.matches
    assert matches("fixed|category|book|1000|2000")
    assert not matches("fixed|category|books|1000|2000")
    assert matches("fixed|country|DE|1000|2000")
    assert not matches("fixed|country|DE|1000|20000")


def test_offsets_compare_in_stream_order() -> None:
    assert protocol.parse_offset("10-2") < protocol.parse_offset("10-10") < protocol.parse_offset("11-0")
    assert protocol.format_offset(protocol.parse_offset("1700000000000-7")) == "1700000000000-7"
    for bad in ("", "1", "-1-0", "1-", "a-b", "1-0-0", " 1-0"):
        with pytest.raises(ValueError, match="offset"):
            protocol.parse_offset(bad)


def test_query_version_parameter() -> None:
    assert protocol.parse_version(None) == protocol.parse_version("") == protocol.parse_version("1") == 1
    with pytest.raises(ProtocolError) as info:
        protocol.parse_version("2")
    assert info.value.close is disconnect.UNSUPPORTED_VERSION
    with pytest.raises(ProtocolError) as info:
        protocol.parse_version("one")
    assert info.value.close is disconnect.MALFORMED


def test_publication_frame_carries_channel_offset_and_payload() -> None:
    entry = StreamEntry(key="alert|e1", pane=0, timing="ON_TIME", final=True,
                        data={"alert_id": "a1", "score": 0.97})
    frame = orjson.loads(protocol.publication_frame("alerts", "5-1", entry))
    assert frame == {"type": "pub", "channel": "alerts", "offset": "5-1", "key": "alert|e1", "pane": 0,
                     "timing": "ON_TIME", "final": True, "data": {"alert_id": "a1", "score": 0.97}}


def test_replies_echo_the_command_id_only_when_given() -> None:
    assert orjson.loads(protocol.pong(7)) == {"type": "pong", "id": 7}
    assert orjson.loads(protocol.pong(None)) == {"type": "pong"}
    assert orjson.loads(protocol.subscribed(1, channel="alerts", offset="0-0", recovered=False)) == {
        "type": "subscribed", "id": 1, "channel": "alerts", "offset": "0-0", "recovered": False}


# --- property-based ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
command_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["connect", "subscribe", "unsubscribe", "refresh", "ping", "pong", "x"])},
    optional={"id": json_values, "token": json_values, "channel": json_values, "keys": json_values,
              "since": json_values, "v": json_values, "other": json_values},
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=50), json_values.map(json.dumps),
                 command_like.map(json.dumps)))
def test_parser_only_ever_returns_a_command_or_a_typed_error(raw: str | bytes) -> None:
    try:
        command = parse_command(raw, max_bytes=MAX)
    except ProtocolError as exc:
        # Bad input is always the client's fault: a terminal code, never "reconnect and retry".
        assert exc.close in disconnect.ALL
        assert not exc.close.reconnect
        if isinstance(raw, bytes):
            assert exc.close is disconnect.BINARY_FRAME
    else:
        assert isinstance(raw, str)
        assert isinstance(command, protocol.Connect | protocol.Subscribe | protocol.Unsubscribe
                          | protocol.Refresh | protocol.Ping | protocol.Pong)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, protocol.MAX_COMMAND_ID) | st.none(),
       st.sampled_from(["aggregates.fixed", "aggregates.sliding", "alerts"]),
       st.lists(st.from_regex(r"[a-z0-9]{1,8}(\|[a-z0-9]{1,8}){0,3}", fullmatch=True), min_size=1,
                max_size=5) | st.none(),
       st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)) | st.none())
def test_valid_subscribes_round_trip(cmd_id: int | None, channel: str, keys: list[str] | None,
                                     since: tuple[int, int] | None) -> None:
    doc: dict[str, object] = {"type": "subscribe", "channel": channel}
    if cmd_id is not None:
        doc["id"] = cmd_id
    if keys is not None:
        doc["keys"] = keys
    if since is not None:
        doc["since"] = protocol.format_offset(since)
    command = parse(doc)
    assert isinstance(command, protocol.Subscribe)
    assert (command.id, command.channel) == (cmd_id, channel)
    assert command.since == doc.get("since")
    assert (command.keys is None) == (keys is None)
    if keys is not None and command.keys is not None:
        assert all(command.keys.matches(k) for k in keys)
