"""What the sinks accept, normalised at their boundary.

The sinks take the pipeline's own records (:class:`transforms.aggregates.Aggregate`,
:class:`transforms.records.DeadLetter`) or plain mappings with the same field names (alerts have no
record type yet; replays and tools hand over dicts). Converting here, once, means each sink deals
with one shape, and a record missing a field fails loudly with its name instead of as a ``KeyError``
deep inside a batch write.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from transforms.aggregates import Aggregate
from transforms.records import DeadLetter

#: Fields of an aggregate record, in the order of :class:`Aggregate`.
AGGREGATE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Aggregate))
#: Fields of an alert record.
ALERT_FIELDS: Final = (
    "alert_id", "event_id", "user_id", "score", "model_version", "event_time_ms", "emitted_at_ms",
)
#: Fields of a dead letter, in the order of :class:`DeadLetter`.
DEAD_LETTER_FIELDS: Final = tuple(f.name for f in dataclasses.fields(DeadLetter))

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: Reason code of a record a sink refused for its content (transforms/sinks/base.py).
SINK_REJECTED: Final = "sink_rejected"
#: Longest reason detail a sink rejection carries (an error message can quote a whole batch).
_MAX_DETAIL_CHARS: Final = 2000


class SinkRecordError(ValueError):
    """A record handed to a sink lacks fields or has the wrong type: a bug upstream, not retried."""


def _pick(record: Mapping[str, Any], fields: tuple[str, ...], what: str) -> dict[str, Any]:
    missing = [name for name in fields if name not in record]
    if missing:
        raise SinkRecordError(f"{what} record lacks {', '.join(missing)}: {dict(record)!r:.300}")
    return {name: record[name] for name in fields}


def aggregate_dict(record: Aggregate | Mapping[str, Any]) -> dict[str, Any]:
    """An aggregate pane as a dict with exactly :data:`AGGREGATE_FIELDS`."""
    if isinstance(record, Aggregate):
        return record.to_dict()
    if isinstance(record, Mapping):
        return _pick(record, AGGREGATE_FIELDS, "aggregate")
    raise SinkRecordError(f"expected an Aggregate or a mapping, got {type(record).__name__}")


def alert_dict(record: Mapping[str, Any] | Any) -> dict[str, Any]:
    """An alert as a dict with exactly :data:`ALERT_FIELDS` (a mapping, or an object with ``to_dict``)."""
    if not isinstance(record, Mapping) and callable(getattr(record, "to_dict", None)):
        record = record.to_dict()
    if isinstance(record, Mapping):
        return _pick(record, ALERT_FIELDS, "alert")
    raise SinkRecordError(f"expected an alert mapping, got {type(record).__name__}")


def dead_letter_of(record: DeadLetter | Mapping[str, Any]) -> DeadLetter:
    """A :class:`DeadLetter` from itself or from a mapping with its field names (``raw`` may be str)."""
    if isinstance(record, DeadLetter):
        return record
    if isinstance(record, Mapping):
        values = _pick(record, DEAD_LETTER_FIELDS, "dead letter")
        if isinstance(values["raw"], str):
            values["raw"] = values["raw"].encode()
        return DeadLetter(**values)
    raise SinkRecordError(f"expected a DeadLetter or a mapping, got {type(record).__name__}")


def dead_letter_key(letter: DeadLetter) -> str:
    """Identity of a dead letter, the same in the DLQ topic (record key) and the table (unique key).

    ``<topic>-<partition>-<offset>`` when the Kafka position is known. Without one (valid events
    refused as too late) the record is identified by reason and payload: ``<reason>:sha256:<hex>``.
    """
    if letter.topic is not None and letter.partition is not None and letter.offset is not None:
        return f"{letter.topic}-{letter.partition}-{letter.offset}"
    digest = hashlib.sha256(letter.raw or b"").hexdigest()
    return f"{letter.reason_code}:sha256:{digest}"


def storable_text(text: str) -> str:
    """``text`` with what no sink can store escaped: NUL as ``\\x00``, unpaired surrogates as
    ``\\udXXX``. For texts we compose ourselves (error messages quoting a value); event text is
    kept clean by the contract instead."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def sink_rejection(record: Any, *, sink: str, error: BaseException, failed_at_ms: int) -> DeadLetter:
    """The dead letter of a record ``sink`` refused with ``error``.

    ``raw`` is ``{"sink": ..., "record": ...}`` as ASCII JSON (bytes as base64; a lone surrogate or a
    NUL as a ``\\u`` escape; a record JSON cannot hold as its ``repr``), so it can be stored and read
    whatever the record held; it names the sink, so two sinks refusing one record leave two letters.
    No source position: the record is the pipeline's own (an aggregate, an alert, a dead letter).
    """
    body = record.to_dict() if callable(getattr(record, "to_dict", None)) else record
    if dataclasses.is_dataclass(body) and not isinstance(body, type):
        body = dataclasses.asdict(body)
    try:
        raw = json.dumps({"sink": sink, "record": body}, ensure_ascii=True, default=_json_default)
    except (TypeError, ValueError, RecursionError):  # e.g. keys that are not strings, a cycle
        raw = json.dumps({"sink": sink, "record_repr": repr(record)}, ensure_ascii=True)
    detail = storable_text(f"{sink} refused the record: {type(error).__name__}: {error}".strip())
    return DeadLetter(raw=raw.encode("ascii"), reason_code=SINK_REJECTED,
                      reason_detail=detail[:_MAX_DETAIL_CHARS], topic=None, partition=None, offset=None,
                      failed_at_ms=failed_at_ms)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return repr(value)


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds → aware UTC datetime, exact (no float rounding on the way)."""
    return _EPOCH + timedelta(milliseconds=int(ms))
