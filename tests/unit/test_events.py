"""The event contract: the fast validator and the published JSON Schema agree, and the validator's
fast tier never decides otherwise than its checked tier."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import pickle
import unicodedata
from collections.abc import Callable
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.generator import EventGenerator, Fractions, GeneratorConfig
from streaming_analytics.events import (
    FEATURE_NAMES,
    MAX_EVENT_BYTES,
    TEXT_FORBIDDEN_PATTERN,
    Event,
    InvalidEvent,
    _accept_fast,
    _validate_checked,
    json_schema,
    parse_event,
    validate_event,
)
from tests.unit.hostile_support import ANY_TEXT

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
    ("bad_value", mutated("amount", 1e12 + 1)),  # its micro-units would leave 64 bits
    ("bad_value", mutated("amount", 1e303)),  # amount * 1e6 is infinite: the job could not sum it
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
    # The text rule (docs/event-schema.md): what PostgreSQL, Redis, JSON or the dashboard cannot carry.
    ("bad_string", mutated("category", "bo\u0000oks")),  # issue 12: PostgreSQL refuses NUL
    ("bad_string", mutated("user_id", "u\t1")),
    ("bad_string", mutated("item_id", "i\n1")),
    ("bad_string", mutated("session_id", "s\x7f")),
    ("bad_string", mutated("event_id", "e\x85")),  # C1 (NEL)
    ("bad_string", mutated("category", "\x1b[31mred")),  # a terminal escape sequence
    ("bad_string", mutated("category", "books\u202egnp.exe")),  # right-to-left override
    ("bad_string", mutated("user_id", "u\u2066x\u2069")),
    ("bad_string", mutated("item_id", "a\u2028b")),
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


def test_the_text_rule_is_stated_once_for_the_schema_and_the_validator() -> None:
    assert json_schema()["$defs"]["text"]["not"]["pattern"] == TEXT_FORBIDDEN_PATTERN


def test_the_nul_category_of_issue_12_is_refused_with_a_storable_detail() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(mutated("category", "bo\u0000oks")))
    assert info.value.code == "bad_string"
    assert info.value.detail.startswith("category contains U+0000 (the NUL character) at character 2")
    assert info.value.detail.isprintable()


def test_unpaired_surrogates_are_refused_as_json_and_as_documents() -> None:
    """orjson refuses an escaped lone surrogate while parsing (``not_json``); a document built in
    Python (validate_event's other callers) is refused by the text rule."""
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(VALID).replace(b'"books"', b'"bo\\ud800oks"'))
    assert info.value.code == "not_json"
    with pytest.raises(InvalidEvent) as info:
        validate_event(mutated("category", "bo\ud800oks"))
    assert info.value.code == "bad_string"
    assert info.value.detail.startswith("category contains U+D800 (an unpaired surrogate, not encodable")


def test_non_nfc_text_is_refused_by_the_validator_only() -> None:
    """The other place the validator is stricter than JSON Schema, which cannot state a
    normalization form: "é" as e + combining acute is refused; its NFC form is accepted."""
    decomposed = mutated("category", "caf\u0065\u0301")
    with pytest.raises(InvalidEvent) as info:
        validate_event(decomposed)
    assert info.value.code == "bad_string"
    assert "NFC" in info.value.detail
    assert jsonschema.Draft202012Validator(json_schema()).is_valid(decomposed)
    composed = unicodedata.normalize("NFC", "caf\u0065\u0301")
    assert validate_event(mutated("category", composed)).category == "café"


def test_float_timestamps_are_rejected_even_when_integral() -> None:
    """The one place the validator is stricter than JSON Schema (which calls 1.5e12 an integer):
    a float timestamp means the producer computed it in floating point, which loses precision."""
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(mutated("event_time_ms", 1.5e12)))
    assert info.value.code == "bad_type"


# --- the two tiers of the validator (streaming_analytics/events.py) ---------------------------------
def _outcome(validate: Callable[[Any], Event], doc: Any) -> tuple[str, ...]:
    """What a validator makes of ``doc``: the event (by repr, so 1 and 1.0 differ), the refusal
    with its code and detail, or the exception it raised."""
    try:
        return ("event", repr(validate(doc)))
    except InvalidEvent as exc:
        return ("refused", exc.code, exc.detail)
    except Exception as exc:  # noqa: BLE001 - an unexpected exception must be the same one too
        return ("raised", type(exc).__name__)


def _assert_validate_event_is_the_checked_validator(doc: Any) -> None:
    assert _outcome(validate_event, doc) == _outcome(_validate_checked, doc)
    fast = _accept_fast(doc) if type(doc) is dict else None
    if fast is not None:
        assert repr(fast) == repr(_validate_checked(doc))


def test_the_fast_tier_accepts_every_valid_generated_event_and_nothing_else() -> None:
    """For JSON documents the fast tier's verdict is the checked validator's (so valid events
    really take the fast path), and where it accepts, it builds the very same event."""
    generator = EventGenerator(GeneratorConfig(seed=11, fractions=Fractions(malformed=0.2)))
    accepted = 0
    for record in generator.records(5_000, 1_767_225_600_000, interval_ms=10):
        try:
            doc = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        checked = _outcome(_validate_checked, doc)
        fast = _accept_fast(doc) if type(doc) is dict else None
        assert (fast is not None) == (checked[0] == "event"), checked
        if fast is not None:
            assert ("event", repr(fast)) == checked
            accepted += 1
        _assert_validate_event_is_the_checked_validator(doc)
    assert accepted > 3_500


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=70),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(VALID)), _JSON_VALUES, st.booleans())
def test_both_tiers_agree_on_a_corrupted_top_level_field(field: str, value: Any, delete: bool) -> None:
    doc = mutated(field, delete=True) if delete else mutated(field, value)
    _assert_validate_event_is_the_checked_validator(orjson.loads(orjson.dumps(doc)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FEATURE_NAMES), _JSON_VALUES, st.booleans())
def test_both_tiers_agree_on_a_corrupted_feature(name: str, value: Any, delete: bool) -> None:
    doc = mutated(f"features.{name}", delete=True) if delete else mutated(f"features.{name}", value)
    _assert_validate_event_is_the_checked_validator(orjson.loads(orjson.dumps(doc)))


_EDGES = (-1e-9, -0.0, 0, 0.0, 1, 1.0, 1 + 1e-9, 2, 1e308, -1e308, math.inf, -math.inf, math.nan,
          True, False, 10**400, "1", None, [1], {"x": 1}, 1e12, 10**12, 10**12 + 1, 1e12 * (1 + 1e-15))


@pytest.mark.parametrize("field", ["amount", *[f"features.{name}" for name in FEATURE_NAMES]])
@pytest.mark.parametrize("value", _EDGES, ids=repr)
def test_both_tiers_agree_at_every_numeric_bound(field: str, value: Any) -> None:
    """Each number just inside and just outside its bounds, non-finite values and non-numbers
    (passed as Python values: JSON cannot carry all of them, validate_event can be given them)."""
    _assert_validate_event_is_the_checked_validator(mutated(field, value))


_BOUNDARY_DOCS = [
    *[mutated(name, value) for name in ("event_id", "user_id", "session_id", "item_id", "category")
      for value in ("", "x", "x" * 64, "x" * 65)],
    *[mutated("country", value) for value in ("D", "DE", "DEU", "de", "D1", "", "ÄB")],
    *[mutated("currency", value) for value in ("EU", "EUR", "EURO", "eur", "E1R", "", "ÉUR")],
    *[mutated("event_time_ms", value) for value in (946_684_799_999, 946_684_800_000,
                                                     4_102_444_799_999, 4_102_444_800_000, -1)],
    *[mutated("event_type", value) for value in ("view", "refund", "View", "", "teleport")],
    *[mutated("schema_version", value) for value in (0, 1, 2, -1)],
    # Text: printable ASCII takes the fast path; everything else the checked one, which must agree.
    *[mutated(name, value) for name in ("event_id", "category")
      for value in (" ", "~", "a b", "\x1f", "\x20", "\x7e", "\x7f", "\x9f", "\xa0", "\u061b", "\u061c",
                    "\u200d", "\u200e", "\u2027", "\u2028", "\u2029", "\u202a", "\u202f", "\u2065",
                    "\u2066", "\u2069", "\u206a", "\ud7ff", "\ud800", "\udfff", "\ue000", "\ufeff",
                    "\uffff", "\U0010ffff", "Bücher", "u\u0308", "\U0001f600" * 64, "\U0001f600" * 65,
                    "\u00e9" * 64, "e\u0301")],
]


@pytest.mark.parametrize("doc", _BOUNDARY_DOCS)
def test_both_tiers_agree_at_every_string_and_time_bound(doc: dict[str, Any]) -> None:
    _assert_validate_event_is_the_checked_validator(doc)


_TEXT_FIELDS = ("event_id", "user_id", "session_id", "item_id", "category")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_TEXT_FIELDS), ANY_TEXT)
def test_arbitrary_text_in_a_text_field_gets_one_verdict(field: str, text: str) -> None:
    """Both tiers of the validator agree on any text (surrogates and every edge included); the
    JSON Schema agrees too, except that it cannot see the normalization form; and what is accepted
    is storable. Through JSON as well, where orjson refuses lone surrogates itself."""
    doc = mutated(field, text)
    _assert_validate_event_is_the_checked_validator(doc)
    try:
        validate_event(doc)
        refusal = None
    except InvalidEvent as exc:
        refusal = exc
    not_nfc = refusal is not None and "normalization form NFC" in refusal.detail
    schema_accepts = jsonschema.Draft202012Validator(json_schema()).is_valid(doc)
    assert schema_accepts == (refusal is None or not_nfc), (field, text, refusal)
    try:
        raw = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # a lone surrogate: no JSON producer can send it either
        assert refusal is not None
        return
    assert _outcome(parse_event, raw)[0] == ("event" if refusal is None else "refused")


class _Str(str):
    __slots__ = ()


class _Dict(dict[str, Any]):
    pass


@pytest.mark.parametrize("doc", [
    _Dict(VALID),
    mutated("event_id", _Str("e1")),
    mutated("country", _Str("DE")),
    mutated("event_type", _Str("view")),
    mutated("features", _Dict(VALID["features"])),
    mutated("event_time_ms", 2**70),
    mutated("event_time_ms", True),
    mutated("schema_version", True),
    mutated("schema_version", 1.0),
    mutated("country", "DÉ"),
    mutated("currency", "E1R"),
    mutated("session_id", "s" * 64),
], ids=lambda d: type(d).__name__)
def test_both_tiers_agree_on_documents_json_never_produces(doc: dict[str, Any]) -> None:
    _assert_validate_event_is_the_checked_validator(doc)


def test_event_init_is_the_dataclass_signature_and_sets_every_field() -> None:
    """Event has a hand-written __init__ for speed: same parameters, order and default as the one
    the dataclass would generate, and every field lands where it belongs."""
    params = list(inspect.signature(Event.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == [
        (f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(Event)
    ]
    values = ["e", "view", 1_767_225_600_000, "u", "s", "i", "books", "DE", 2.5, "EUR", (0.5,) * 6, 1]
    event = Event(*values)
    assert [getattr(event, f.name) for f in dataclasses.fields(Event)] == values
    assert Event(**{f.name: v for f, v in zip(dataclasses.fields(Event), values, strict=True)}) == event
    assert dataclasses.replace(event, amount=3.0).amount == 3.0
    assert pickle.loads(pickle.dumps(event)) == event  # noqa: S301 - our own bytes
    assert hash(event) == hash(Event(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.amount = 1.0  # type: ignore[misc]
