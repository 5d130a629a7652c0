"""The event contract: the fast validator and the published JSON Schema agree."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import orjson
import pytest

from streaming_analytics.events import (
    FEATURE_NAMES,
    MAX_EVENT_BYTES,
    InvalidEvent,
    json_schema,
    parse_event,
)

VALID: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "0b6f8c1e-6f60-4a57-9a4c-3f0f3b3b9c11",
    "event_type": "purchase",
    "event_time_ms": 1_767_225_600_000,
    "user_id": "u00042",
    "session_id": "s-1",
    "item_id": "i000007",
    "category": "books",
    "country": "DE",
    "amount": 19.99,
    "currency": "EUR",
    "features": {"account_age_days": 400, "session_event_index": 3, "seconds_since_last_event": 12.5,
                 "device_risk": 0.02, "ip_country_mismatch": 0, "amount_vs_user_avg": 1.1},
}


def mutated(path: str, value: Any = ..., *, delete: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    target = doc
    for p in parents:
        target = target[p]
    if delete:
        del target[leaf]
    else:
        target[leaf] = value
    return doc


INVALID = [
    ("missing_field", mutated("event_id", delete=True)),
    ("missing_field", mutated("features.device_risk", delete=True)),
    ("bad_type", mutated("amount", "19.99")),
    ("bad_type", mutated("amount", True)),
    ("bad_type", mutated("user_id", 42)),
    ("bad_type", mutated("features", [1, 2])),
    ("bad_value", mutated("amount", -0.01)),
    ("bad_value", mutated("event_type", "teleport")),
    ("bad_value", mutated("country", "de")),
    ("bad_value", mutated("currency", "EURO")),
    ("bad_value", mutated("event_time_ms", 1_767_225_600)),  # seconds, not milliseconds
    ("bad_value", mutated("event_id", "")),
    ("bad_value", mutated("event_id", "x" * 65)),
    ("bad_value", mutated("features.device_risk", 1.5)),
    ("bad_value", mutated("features.ip_country_mismatch", -1)),
    ("unsupported_version", mutated("schema_version", 2)),
    ("unsupported_version", mutated("schema_version", "1")),
]


def test_a_valid_event_round_trips() -> None:
    event = parse_event(orjson.dumps(VALID))
    assert event.event_id == VALID["event_id"]
    assert event.amount == 19.99
    assert event.features == tuple(float(VALID["features"][n]) for n in FEATURE_NAMES)
    assert parse_event(event.to_json()) == event


@pytest.mark.parametrize(("code", "doc"), INVALID, ids=[f"{c}-{i}" for i, (c, _) in enumerate(INVALID)])
def test_invalid_documents_get_their_reason_code(code: str, doc: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(doc))
    assert info.value.code == code
    assert info.value.detail


@pytest.mark.parametrize(("raw", "code"), [
    (b"", "not_json"),
    (b"{\"schema_version\": 1", "not_json"),
    (b"\xff\xfe{}", "not_json"),
    (b"[1, 2]", "not_object"),
    (b"null", "not_object"),
    (b"{" + b" " * MAX_EVENT_BYTES + b"}", "too_large"),
])
def test_unparseable_records_get_their_reason_code(raw: bytes, code: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert info.value.code == code


def test_json_schema_accepts_what_the_validator_accepts() -> None:
    jsonschema.validate(VALID, json_schema())


@pytest.mark.parametrize(("code", "doc"), INVALID, ids=[f"{c}-{i}" for i, (c, _) in enumerate(INVALID)])
def test_json_schema_rejects_what_the_validator_rejects(code: str, doc: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    assert not validator.is_valid(doc), f"JSON Schema accepted a document rejected with {code}"


def test_float_timestamps_are_rejected_even_when_integral() -> None:
    """The one place the validator is stricter than JSON Schema (which calls 1.5e12 an integer):
    a float timestamp means the producer computed it in floating point, which loses precision."""
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(mutated("event_time_ms", 1.5e12)))
    assert info.value.code == "bad_type"
