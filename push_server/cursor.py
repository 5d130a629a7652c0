"""Opaque keyset cursors for the REST history: where the next page starts, bound to its query.

A cursor is ``base64url(JSON [version, query fingerprint, position...])`` without padding. Clients
must treat it as opaque; the server checks its shape strictly and that it was issued for the same
filters (a cursor of another query is a 400, not a silently wrong page). It is not signed: it only
says where to continue inside data the token may read anyway, and every value is passed to
Postgres as a query parameter.

Positions hold ints (timestamps as microseconds since the epoch, exact for ``timestamptz``) and
strings, as listed by the caller's ``shape``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson

CURSOR_VERSION: Final = 1
MAX_CURSOR_CHARS: Final = 2048
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_INT: Final = 2**62

Position = tuple[int | str, ...]


class CursorError(ValueError):
    """The cursor is malformed or belongs to another query."""


def fingerprint(*parts: object) -> str:
    """A short digest of a query's filters (not its page size: a client may change that)."""
    return hashlib.sha256(orjson.dumps(list(parts))).hexdigest()[:16]


def encode(query_fingerprint: str, position: Sequence[int | str]) -> str:
    """The cursor for the page after ``position`` of the query with ``query_fingerprint``."""
    raw = orjson.dumps([CURSOR_VERSION, query_fingerprint, *position])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(text: str, query_fingerprint: str, shape: Sequence[type]) -> Position:
    """Inverse of :func:`encode`; raises :class:`CursorError` for anything unexpected."""
    if not text or len(text) > MAX_CURSOR_CHARS or not text.isascii():
        raise CursorError("malformed cursor")
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        raise CursorError("malformed cursor") from None
    if not isinstance(doc, list) or len(doc) != 2 + len(shape) or doc[0] != CURSOR_VERSION:
        raise CursorError("malformed cursor")
    if doc[1] != query_fingerprint:
        raise CursorError("cursor belongs to another query")
    position = doc[2:]
    for value, kind in zip(position, shape, strict=True):
        if type(value) is not kind or (isinstance(value, int) and not -_MAX_INT <= value <= _MAX_INT):
            raise CursorError("malformed cursor")
    return tuple(position)


def micros(moment: datetime) -> int:
    """An aware datetime as exact microseconds since the epoch."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """Inverse of :func:`micros`."""
    return _EPOCH + timedelta(microseconds=value)
