"""The parse step against hostile input (issue 12; sizes in docs/hostile-input.md): whatever bytes
or JSON arrive, ``parse_record`` returns an event or a dead letter — never raises — and both are
storable by every sink: an event's text is UTF-8 without NUL, at most 256 bytes per field, JSON
encodable; a dead letter keeps the exact bytes and a reason detail any sink can store."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import jsonschema
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming_analytics.events import Event, json_schema
from tests.unit.hostile_support import JSON_VALUES, valid_documents
from transforms.parse import parse_record
from transforms.records import DeadLetter, KafkaRecord

TEXT_FIELDS = ("event_id", "user_id", "session_id", "item_id", "category")
NOW_MS = 1_767_225_600_000
SCHEMA = jsonschema.Draft202012Validator(json_schema())


def assert_storable(outcome: Event | DeadLetter, raw: bytes | None) -> None:
    """What every sink needs of the parse step's outputs (docs/event-schema.md, "Text")."""
    if isinstance(outcome, Event):
        for name in TEXT_FIELDS:
            value = getattr(outcome, name)
            encoded = value.encode("utf-8")  # no surrogate
            assert b"\x00" not in encoded and 0 < len(encoded) <= 256, (name, value)
            assert value.isprintable() or unicodedata.is_normalized("NFC", value)
        orjson.dumps(outcome.to_dict())  # the streams' and the push protocol's encoder
        return
    assert outcome.raw == raw
    assert outcome.reason_code in {"empty", "too_large", "not_json", "not_object", "unsupported_version",
                                   "missing_field", "bad_type", "bad_value", "bad_string"}
    detail = outcome.reason_detail.encode("utf-8")  # no surrogate
    assert b"\x00" not in detail and outcome.reason_detail


def as_json(doc: Any) -> bytes:
    """``doc`` as JSON, integers of any size included (orjson stops at 64 bits; producers need not)."""
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def parse(raw: bytes | None) -> Event | DeadLetter:
    record = KafkaRecord(topic="events", partition=0, offset=7, key=None, value=raw, timestamp_ms=None)
    outcome = parse_record(record, NOW_MS)
    assert_storable(outcome, raw)
    return outcome


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_to_an_event_or_a_storable_dead_letter(raw: bytes) -> None:
    parse(raw)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_parses_to_an_event_or_a_storable_dead_letter(doc: Any) -> None:
    parse(as_json(doc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                   HealthCheck.too_slow])
@given(valid_documents())
def test_every_valid_event_with_arbitrary_text_and_numbers_is_accepted(doc: dict[str, Any]) -> None:
    """The strategy builds only what the contract admits (text at every edge the rule allows, numbers
    from 0 to the largest double and integers beyond 64 bits), so each one must become a storable
    event equal to the document."""
    raw = as_json(doc)
    event = parse(raw)
    assert isinstance(event, Event), event
    assert event.to_dict() == {**doc, "amount": float(doc["amount"]),
                               "features": {k: float(v) for k, v in doc["features"].items()}}
    assert SCHEMA.is_valid(doc)
