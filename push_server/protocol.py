"""Wire format of the push protocol (version 1): client commands and server messages, no I/O.

Every WebSocket message is one UTF-8 JSON object in a *text* frame. The parser is strict on
purpose: unknown fields, wrong types and out-of-range values are rejected with a typed
:class:`ProtocolError` carrying the close code, because a lenient parser is how a relay ends up
accepting input its authors never reasoned about. docs/push-protocol.md is the human version.

Publications are serialised once per stream entry (:func:`publication_frame`) and the same ``str``
is handed to every subscriber, so fan-out cost does not grow with JSON encoding per client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from push_server import disconnect
from push_server.disconnect import Disconnect
from streaming_analytics.streams import StreamEntry

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({1})

MAX_COMMAND_ID: Final = 2**53 - 1  # largest integer a JavaScript client represents exactly
MAX_TOKEN_CHARS: Final = 8192
MAX_CHANNEL_CHARS: Final = 128
MAX_KEY_FILTERS: Final = 100
MAX_KEY_FILTER_CHARS: Final = 256
_U64_MAX: Final = 2**64 - 1
_OFFSET_RE: Final = re.compile(r"(\d{1,20})-(\d{1,20})")

Offset = tuple[int, int]


class ProtocolError(Exception):
    """A client message the server will not process; ``disconnect`` says how the server closes."""

    def __init__(self, close: Disconnect, detail: str) -> None:
        super().__init__(f"{close.code} {detail}")
        self.close = close
        self.detail = detail


# --- offsets ---------------------------------------------------------------------------------

def parse_offset(text: str) -> Offset:
    """Parse a Redis entry id ``<ms>-<seq>`` into a tuple that compares in stream order.

    Raises ValueError for anything else, including ids Redis itself could not hold (> 2**64-1).
    """
    match = _OFFSET_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a stream offset: {text[:40]!r}")
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > _U64_MAX or seq > _U64_MAX:
        raise ValueError("stream offset out of range")
    return ms, seq


def format_offset(offset: Offset) -> str:
    """Inverse of :func:`parse_offset`."""
    return f"{offset[0]}-{offset[1]}"


# --- client commands -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KeyFilter:
    """Which entries of a channel a subscription wants, by the contract's entry ``key``.

    A pattern matches a key equal to it or starting with it followed by ``|`` — whole ``|``
    segments, so ``fixed|category|book`` does not match ``fixed|category|books|...``. Matching
    works on the flat ``key`` field and never needs the payload decoded.
    """

    patterns: tuple[str, ...]

    def matches(self, key: str) -> bool:
        for pattern in self.patterns:
            if key == pattern or (key.startswith(pattern) and key[len(pattern)] == "|"):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Connect:
    """Authenticate the connection (when the token did not come in the URL)."""

    id: int | None
    token: str
    version: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start receiving a channel; with ``since``, first replay every entry after that offset."""

    id: int | None
    channel: str
    keys: KeyFilter | None
    since: str | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop receiving a channel."""

    id: int | None
    channel: str


@dataclass(frozen=True, slots=True)
class Refresh:
    """Replace the connection's token before it expires, without reconnecting."""

    id: int | None
    token: str


@dataclass(frozen=True, slots=True)
class Ping:
    """Application-level heartbeat; browsers cannot see WebSocket protocol pings."""

    id: int | None


@dataclass(frozen=True, slots=True)
class Pong:
    """Accepted and ignored, so a client may answer server pings without being disconnected."""


Command = Connect | Subscribe | Unsubscribe | Refresh | Ping | Pong

_FIELDS: Final[dict[str, frozenset[str]]] = {
    "connect": frozenset({"type", "id", "token", "v"}),
    "subscribe": frozenset({"type", "id", "channel", "keys", "since"}),
    "unsubscribe": frozenset({"type", "id", "channel"}),
    "refresh": frozenset({"type", "id", "token"}),
    "ping": frozenset({"type", "id"}),
    "pong": frozenset({"type"}),
}


def parse_command(raw: str | bytes, *, max_bytes: int) -> Command:
    """Parse one client frame. ``bytes`` means a binary frame, which the protocol does not use.

    Raises :class:`ProtocolError`; never anything else for any input.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        raise ProtocolError(disconnect.BINARY_FRAME, "binary frame")
    # len(str) <= its UTF-8 length <= 4 * len(str): encode only when the cheap bounds disagree.
    if len(raw) > max_bytes or (4 * len(raw) > max_bytes and len(raw.encode("utf-8", "replace")) > max_bytes):
        raise ProtocolError(disconnect.MESSAGE_TOO_LARGE, f"frame larger than {max_bytes} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError(disconnect.MALFORMED, "not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError(disconnect.MALFORMED, "a command must be a JSON object")
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(disconnect.MALFORMED, "missing string field 'type'")
    allowed = _FIELDS.get(kind)
    if allowed is None:
        raise ProtocolError(disconnect.UNKNOWN_COMMAND, f"unknown command type {kind[:40]!r}")
    extra = doc.keys() - allowed
    if extra:
        raise ProtocolError(disconnect.MALFORMED, f"unknown field(s) {sorted(extra)[:5]} in {kind}")
    if kind == "pong":
        return Pong()
    cmd_id = _command_id(doc)
    if kind == "connect":
        return Connect(id=cmd_id, token=_token(doc), version=_version(doc))
    if kind == "subscribe":
        return Subscribe(id=cmd_id, channel=_channel(doc), keys=_keys(doc), since=_since(doc))
    if kind == "unsubscribe":
        return Unsubscribe(id=cmd_id, channel=_channel(doc))
    if kind == "refresh":
        return Refresh(id=cmd_id, token=_token(doc))
    return Ping(id=cmd_id)


def _command_id(doc: Mapping[str, Any]) -> int | None:
    value = doc.get("id")
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_COMMAND_ID:
        raise ProtocolError(disconnect.MALFORMED, "'id' must be an integer in [0, 2**53-1]")
    return value


def _token(doc: Mapping[str, Any]) -> str:
    value = doc.get("token")
    if not isinstance(value, str) or not value or len(value) > MAX_TOKEN_CHARS:
        raise ProtocolError(disconnect.MALFORMED, f"'token' must be a non-empty string <= {MAX_TOKEN_CHARS}")
    return value


def _version(doc: Mapping[str, Any]) -> int:
    value = doc.get("v", PROTOCOL_VERSION)
    if type(value) is not int:
        raise ProtocolError(disconnect.MALFORMED, "'v' must be an integer")
    if value not in SUPPORTED_VERSIONS:
        raise ProtocolError(disconnect.UNSUPPORTED_VERSION, f"protocol version {value} not supported")
    return value


def parse_version(text: str | None) -> int:
    """Version from the ``v`` query parameter (absent: the current version)."""
    if text is None or text == "":
        return PROTOCOL_VERSION
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise ProtocolError(disconnect.MALFORMED, "query parameter 'v' must be an integer")
    if int(text) not in SUPPORTED_VERSIONS:
        raise ProtocolError(disconnect.UNSUPPORTED_VERSION, f"protocol version {text} not supported")
    return int(text)


def _channel(doc: Mapping[str, Any]) -> str:
    value = doc.get("channel")
    if not isinstance(value, str) or not value or len(value) > MAX_CHANNEL_CHARS:
        raise ProtocolError(disconnect.MALFORMED, "'channel' must be a non-empty string")
    return value


def _keys(doc: Mapping[str, Any]) -> KeyFilter | None:
    value = doc.get("keys")
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_KEY_FILTERS:
        raise ProtocolError(disconnect.MALFORMED, f"'keys' must be a list of 1..{MAX_KEY_FILTERS} strings")
    patterns: list[str] = []
    for pattern in value:
        if not isinstance(pattern, str) or len(pattern) > MAX_KEY_FILTER_CHARS or not pattern.rstrip("|"):
            raise ProtocolError(disconnect.MALFORMED, "each key filter must be a non-empty short string")
        # "a|b|" and "a|b" mean the same whole-segment prefix.
        patterns.append(pattern.rstrip("|"))
    return KeyFilter(patterns=tuple(dict.fromkeys(patterns)))


def _since(doc: Mapping[str, Any]) -> str | None:
    value = doc.get("since")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(disconnect.MALFORMED, "'since' must be a stream offset string '<ms>-<seq>'")
    try:
        parse_offset(value)
    except ValueError:
        raise ProtocolError(disconnect.MALFORMED, "'since' must be a stream offset '<ms>-<seq>'") from None
    return value


# --- server messages -------------------------------------------------------------------------

def _dump(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def _with_id(doc: dict[str, Any], cmd_id: int | None) -> dict[str, Any]:
    if cmd_id is not None:
        doc["id"] = cmd_id
    return doc


def connected(cmd_id: int | None, *, client: str, user: str, expires_at: int,
              channels: tuple[str, ...]) -> str:
    """Reply to a successful connect (sent unprompted when the token came in the URL)."""
    return _dump(_with_id({"type": "connected", "v": PROTOCOL_VERSION, "client": client, "user": user,
                           "expires_at": expires_at, "channels": list(channels)}, cmd_id))


SOURCE_REDIS: Final = "redis"
SOURCE_POSTGRES: Final = "postgres"
SOURCE_POSTGRES_REDIS: Final = "postgres+redis"


def subscribed(cmd_id: int | None, *, channel: str, offset: str | None,
               recovered: bool | None = None, source: str | None = None) -> str:
    """Reply to subscribe. ``offset``: where live delivery starts (no ``since``) or the ``since``.

    ``recovered`` and ``source`` are only present for a subscribe with ``since``: ``recovered`` is
    ``true`` when nothing after ``since`` is missing from what follows, ``false`` when some entries
    were trimmed and no other history could fill the gap. ``source`` says where the replay comes
    from: ``redis`` (the stream) or ``postgres+redis`` (the gap from Postgres, then the stream).
    """
    doc: dict[str, Any] = {"type": "subscribed", "channel": channel, "offset": offset}
    if recovered is not None:
        doc["recovered"] = recovered
    if source is not None:
        doc["source"] = source
    return _dump(_with_id(doc, cmd_id))


def unsubscribed(cmd_id: int | None, *, channel: str) -> str:
    """Reply to unsubscribe."""
    return _dump(_with_id({"type": "unsubscribed", "channel": channel}, cmd_id))


def refreshed(cmd_id: int | None, *, expires_at: int) -> str:
    """Reply to refresh with the new expiry."""
    return _dump(_with_id({"type": "refreshed", "expires_at": expires_at}, cmd_id))


def pong(cmd_id: int | None) -> str:
    """Reply to ping."""
    return _dump(_with_id({"type": "pong"}, cmd_id))


def error(cmd_id: int | None, *, code: str, message: str) -> str:
    """A non-fatal command error: the command had no effect and the connection stays open."""
    return _dump(_with_id({"type": "error", "code": code, "message": message}, cmd_id))


def publication_frame(channel: str, offset: str, entry: StreamEntry, *, source: str | None = None) -> str:
    """One stream entry as pushed to clients; built once and shared by all of its subscribers.

    ``source`` is set only for rows replayed from Postgres (``"postgres"``); their ``offset`` is
    the subscribe's ``since``, because a table row has no stream position of its own.
    """
    doc: dict[str, Any] = {
        "type": "pub",
        "channel": channel,
        "offset": offset,
        "key": entry.key,
        "pane": entry.pane,
        "timing": entry.timing,
        "final": entry.final,
        "data": entry.data,
    }
    if source is not None:
        doc["source"] = source
    return _dump(doc)
