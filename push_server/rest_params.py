"""Query parameters of the REST history endpoints: strict parsing into typed queries, no I/O.

Strict for the same reason as the WebSocket parser: an unknown or repeated parameter is a 400
rather than silently ignored (``?dimesion=country`` must not return every dimension). Times are
epoch milliseconds or ISO-8601 with a zone; ranges are half-open ``[from, to)``. Each query has a
fingerprint of its filters that its cursors are bound to (see :mod:`push_server.cursor`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from push_server import cursor
from push_server.cursor import CursorError
from streaming_analytics.streams import CHANNEL_ALERTS

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_TEXT_CHARS: Final = 256
KINDS: Final = ("fixed", "sliding")
_MAX_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant Postgres/Python share

Args = Mapping[str, Sequence[str]]


class BadParamError(ValueError):
    """A query parameter the endpoint refuses; becomes a 400 with a JSON error naming ``param``."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    """``GET /api/v1/history/aggregates``: windows of one kind, newest window start first."""

    kind: str
    dimension: str | None
    key: str | None
    start: datetime | None  # window_start >= start
    end: datetime | None  # window_start < end
    limit: int
    after: tuple[datetime, str, str, datetime] | None  # keyset: (window_start, dimension, key, window_end)

    @property
    def channel(self) -> str:
        return f"aggregates.{self.kind}"

    @property
    def fingerprint(self) -> str:
        return aggregate_fingerprint(self.kind, self.dimension, self.key, self.start, self.end)


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """``GET /api/v1/history/alerts``: alerts, newest event time first."""

    user_id: str | None
    min_score: float | None
    start: datetime | None  # event_time >= start
    end: datetime | None  # event_time < end
    limit: int
    after: tuple[datetime, str] | None  # keyset: (event_time, alert_id)

    @property
    def channel(self) -> str:
        return CHANNEL_ALERTS

    @property
    def fingerprint(self) -> str:
        return alert_fingerprint(self.user_id, self.min_score, self.start, self.end)


def aggregate_fingerprint(kind: str, dimension: str | None, key: str | None, start: datetime | None,
                          end: datetime | None) -> str:
    return cursor.fingerprint("aggregates", kind, dimension, key, _iso(start), _iso(end))


def alert_fingerprint(user_id: str | None, min_score: float | None, start: datetime | None,
                      end: datetime | None) -> str:
    return cursor.fingerprint("alerts", user_id, min_score, _iso(start), _iso(end))


_AGGREGATE_PARAMS: Final = frozenset({"kind", "dimension", "key", "from", "to", "limit", "cursor"})
_ALERT_PARAMS: Final = frozenset({"user_id", "min_score", "from", "to", "limit", "cursor"})


def parse_aggregate_query(args: Args, *, max_limit: int = MAX_LIMIT) -> AggregateQuery:
    """Validate the parameters of the aggregates endpoint; raises :class:`BadParamError`."""
    values = _single_values(args, _AGGREGATE_PARAMS)
    kind = values.get("kind")
    if kind is None:
        raise BadParamError("kind", f"required: one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise BadParamError("kind", f"must be one of {', '.join(KINDS)}")
    dimension = _text(values, "dimension")
    key = _text(values, "key")
    if key is not None and dimension is None:
        raise BadParamError("key", "needs 'dimension' (a key is a value of one dimension)")
    start, end = _range(values)
    fp = aggregate_fingerprint(kind, dimension, key, start, end)
    after = None
    if "cursor" in values:
        ws, dim, dkey, we = _cursor(values["cursor"], fp, (int, str, str, int))
        after = (_from_micros(ws), str(dim), str(dkey), _from_micros(we))
    return AggregateQuery(kind=kind, dimension=dimension, key=key, start=start, end=end,
                          limit=_limit(values, max_limit), after=after)


def parse_alert_query(args: Args, *, max_limit: int = MAX_LIMIT) -> AlertQuery:
    """Validate the parameters of the alerts endpoint; raises :class:`BadParamError`."""
    values = _single_values(args, _ALERT_PARAMS)
    user_id = _text(values, "user_id")
    min_score = None
    if "min_score" in values:
        try:
            min_score = float(values["min_score"])
        except ValueError:
            raise BadParamError("min_score", "must be a number in [0, 1]") from None
        if not math.isfinite(min_score) or not 0.0 <= min_score <= 1.0:
            raise BadParamError("min_score", "must be a number in [0, 1]")
    start, end = _range(values)
    fp = alert_fingerprint(user_id, min_score, start, end)
    after = None
    if "cursor" in values:
        at, alert_id = _cursor(values["cursor"], fp, (int, str))
        after = (_from_micros(at), str(alert_id))
    return AlertQuery(user_id=user_id, min_score=min_score, start=start, end=end,
                      limit=_limit(values, max_limit), after=after)


# --- helpers -------------------------------------------------------------------------------------

def _single_values(args: Args, allowed: frozenset[str]) -> dict[str, str]:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise BadParamError(unknown[0][:40], f"unknown parameter; allowed: {', '.join(sorted(allowed))}")
    out: dict[str, str] = {}
    for name, given in args.items():
        if len(given) != 1:
            raise BadParamError(name, "given more than once")
        out[name] = given[0]
    return out


def _text(values: Mapping[str, str], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not value or len(value) > MAX_TEXT_CHARS or not value.isprintable():
        raise BadParamError(name, f"must be 1..{MAX_TEXT_CHARS} printable characters")
    return value


def _limit(values: Mapping[str, str], max_limit: int) -> int:
    raw = values.get("limit")
    if raw is None:
        return min(DEFAULT_LIMIT, max_limit)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6 or not 1 <= int(raw) <= max_limit:
        raise BadParamError("limit", f"must be an integer in [1, {max_limit}]")
    return int(raw)


def parse_time(raw: str, param: str) -> datetime:
    """Epoch milliseconds (``1767225600000``) or ISO-8601 with a zone (``2026-01-01T00:00:00Z``)."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 15:
        ms = int(raw)
        if ms > _MAX_MS:
            raise BadParamError(param, "time out of range")
        return _from_micros(ms * 1000)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadParamError(param, "must be epoch milliseconds or ISO-8601 with a time zone") from None
    if moment.tzinfo is None:
        raise BadParamError(param, "ISO-8601 time needs a zone (e.g. 'Z' or '+01:00')")
    return moment.astimezone(UTC)


def _range(values: Mapping[str, str]) -> tuple[datetime | None, datetime | None]:
    start = parse_time(values["from"], "from") if "from" in values else None
    end = parse_time(values["to"], "to") if "to" in values else None
    if start is not None and end is not None and start >= end:
        raise BadParamError("from", "must be before 'to' (the range is [from, to))")
    return start, end


def _cursor(raw: str, fp: str, shape: tuple[type, ...]) -> cursor.Position:
    try:
        return cursor.decode(raw, fp, shape)
    except CursorError as exc:
        raise BadParamError("cursor", str(exc)) from None


def _from_micros(value: int | str) -> datetime:
    if not isinstance(value, int) or not 0 <= value <= _MAX_MS * 1000 + 999:
        raise BadParamError("cursor", "malformed cursor")
    return cursor.from_micros(value)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
