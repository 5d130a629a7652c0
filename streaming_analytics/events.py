"""The event contract (schema version 1): one e-commerce activity event per Kafka record.

The wire format is a UTF-8 JSON object; ``docs/event-schema.md`` documents it for producers and
``streaming_analytics/schemas/event-v1.schema.json`` states it as JSON Schema. The validator here
is hand-written rather than driven by that JSON Schema because it sits on the pipeline's hot path
(a generic validator costs ~10x more per event); a unit test checks that both accept and reject
the same documents.

It runs in two tiers. :func:`_accept_fast` is one pass of inline checks, no helper calls and no
exceptions, that builds the :class:`Event` of a document satisfying every rule and returns None
for anything else — including anything it is unsure about. Only then does the checked validator
run: it tests the rules one by one in a fixed order and raises on the first one broken, which is
what fixes each rejection's reason. So the common, valid event costs one pass, and every
rejection's code and detail come from the same code as before. Unit tests hold the two tiers to
the same verdict and the same event on generated, corrupted and random documents.

Every rejection carries a stable machine-readable ``code`` (what dashboards and the dead-letter
table group by) and a human ``detail``.

Text rule: the free-text fields (the ids and ``category``) end up as PostgreSQL ``text`` and primary
keys, Redis stream entries, push-protocol JSON and dashboard labels. Whatever the contract admits
must be storable and displayable by all of them, so a text field may not hold control characters
(PostgreSQL refuses NUL; the others corrupt logs, terminals and CSV), surrogates (not encodable in
UTF-8), bidirectional controls (they reorder what an operator reads) or line/paragraph separators,
and must be in Unicode NFC (two spellings of one name would otherwise be two keys that look alike).
Those refusals carry the code ``bad_string``.
"""

from __future__ import annotations

import math
import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import Any, Final

import orjson

SCHEMA_VERSION: Final = 1

#: Largest accepted record value; anything bigger is rejected before parsing.
MAX_EVENT_BYTES: Final = 16 * 1024

#: Largest accepted ``amount``. The aggregates sum amounts exactly in integer micro-units
#: (transforms/aggregates.py), and ``amount * 1e6`` must stay finite for that (above ~1.8e302 it is
#: infinite and the job could not count the event); 1e12 keeps one amount's micro-units within 64
#: bits, for any consumer that stores them so, and is beyond any real payment.
MAX_AMOUNT: Final = 1e12

EVENT_TYPES: Final = (
    "view",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "refund",
)

#: Numeric model features, in the order the fraud/anomaly model consumes them.
FEATURE_NAMES: Final = (
    "account_age_days",
    "session_event_index",
    "seconds_since_last_event",
    "device_risk",
    "ip_country_mismatch",
    "amount_vs_user_avg",
)

#: Bounds of each feature (inclusive); ``None`` is unbounded.
FEATURE_BOUNDS: Final[dict[str, tuple[float, float | None]]] = {
    "account_age_days": (0.0, None),
    "session_event_index": (0.0, None),
    "seconds_since_last_event": (0.0, None),
    "device_risk": (0.0, 1.0),
    "ip_country_mismatch": (0.0, 1.0),
    "amount_vs_user_avg": (0.0, None),
}

_ID_FIELDS: Final = ("event_id", "user_id", "session_id", "item_id", "category")
_MAX_ID_LEN: Final = 64
#: What a text field must never contain (see the module docstring), as a regular expression that
#: Python's ``re`` and ECMA-262 read alike; the JSON Schema carries the very same pattern (a unit test
#: checks it). C0 and C1 controls with DEL; surrogates; the bidirectional marks, embeddings,
#: overrides and isolates (U+061C, U+200E/F, U+202A-E, U+2066-9); line and paragraph separators.
TEXT_FORBIDDEN_PATTERN: Final = (
    r"[\u0000-\u001F\u007F-\u009F\uD800-\uDFFF\u061C\u200E\u200F\u2028-\u202E\u2066-\u2069]"
)
_TEXT_FORBIDDEN: Final = re.compile(TEXT_FORBIDDEN_PATTERN)
# 2000-01-01 .. 2100-01-01: catches seconds-vs-milliseconds mistakes and garbage clocks.
_MIN_TIME_MS: Final = 946_684_800_000
_MAX_TIME_MS: Final = 4_102_444_800_000


class InvalidEvent(ValueError):
    """Raised for a record that does not satisfy the contract."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True, init=False)
class Event:
    """A validated event. Field meanings are documented in docs/event-schema.md.

    A frozen dataclass with its own ``__init__`` (the same parameters as the generated one, which
    a unit test checks): an event is built several times on its way through the pipeline (parsed,
    then decoded after each shuffle), and the generated ``__init__`` of a frozen dataclass calls
    ``object.__setattr__`` once per field, which makes up half of the cost of constructing an
    event. This one stores each field through its slot's descriptor instead. Everything else
    (immutability, equality, hashing, pickling, ``dataclasses.replace``) is the dataclass's own.
    """

    event_id: str
    event_type: str
    event_time_ms: int
    user_id: str
    session_id: str
    item_id: str
    category: str
    country: str
    amount: float
    currency: str
    features: tuple[float, ...]  # in FEATURE_NAMES order
    schema_version: int = SCHEMA_VERSION

    def __init__(  # noqa: PLR0917 - the generated __init__'s signature, positional included
        self, event_id: str, event_type: str, event_time_ms: int, user_id: str, session_id: str,
        item_id: str, category: str, country: str, amount: float, currency: str,
        features: tuple[float, ...], schema_version: int = SCHEMA_VERSION,
    ) -> None:
        _set_event_id(self, event_id)
        _set_event_type(self, event_type)
        _set_event_time_ms(self, event_time_ms)
        _set_user_id(self, user_id)
        _set_session_id(self, session_id)
        _set_item_id(self, item_id)
        _set_category(self, category)
        _set_country(self, country)
        _set_amount(self, amount)
        _set_currency(self, currency)
        _set_features(self, features)
        _set_schema_version(self, schema_version)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = dict(zip(FEATURE_NAMES, self.features, strict=True))
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _slot_setters(cls: type, names: list[str]) -> list[Callable[[Any, Any], None]]:
    """The ``__set__`` of each named slot of ``cls``, in order."""
    return [vars(cls)[name].__set__ for name in names]


# The slot descriptors of the final (slotted) class, which Event.__init__ stores through; a frozen
# dataclass only blocks assignment through ``Event.__setattr__``, not through the descriptors.
(_set_event_id, _set_event_type, _set_event_time_ms, _set_user_id, _set_session_id, _set_item_id,
 _set_category, _set_country, _set_amount, _set_currency, _set_features, _set_schema_version) = (
    _slot_setters(Event, [f.name for f in fields(Event)]))


def parse_event(raw: bytes | str) -> Event:
    """Parse and validate one record value; raise :class:`InvalidEvent` with the reason."""
    if raw is None:
        raise InvalidEvent("empty", "record has no value")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("too_large", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("not_json", str(exc)) from None
    return validate_event(doc)


def validate_event(doc: Any) -> Event:
    """Validate an already-decoded JSON document against schema version 1."""
    if type(doc) is dict:
        event = _accept_fast(doc)
        if event is not None:
            return event
    return _validate_checked(doc)


def _validate_checked(doc: Any) -> Event:
    """The reference validator: the rules in order, raising :class:`InvalidEvent` for the first
    one broken. Its order and messages are part of the contract (dashboards group by the code)."""
    if not isinstance(doc, dict):
        raise InvalidEvent("not_object", f"expected a JSON object, got {type(doc).__name__}")
    version = _require(doc, "schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise InvalidEvent("unsupported_version", f"schema_version={version!r}, expected {SCHEMA_VERSION}")
    ids = [_identifier(doc, name) for name in _ID_FIELDS]
    event_type = _require(doc, "event_type")
    if event_type not in EVENT_TYPES:
        raise InvalidEvent("bad_value", f"event_type={event_type!r} is not one of {', '.join(EVENT_TYPES)}")
    time_ms = _require(doc, "event_time_ms")
    if type(time_ms) is not int:
        raise InvalidEvent("bad_type", "event_time_ms must be an integer (milliseconds since epoch)")
    if not _MIN_TIME_MS <= time_ms < _MAX_TIME_MS:
        raise InvalidEvent("bad_value", f"event_time_ms={time_ms} is outside years 2000..2099")
    country = _code(doc, "country", 2)
    currency = _code(doc, "currency", 3)
    amount = _number(doc, "amount")
    if amount < 0:
        raise InvalidEvent("bad_value", f"amount={amount} is negative")
    if amount > MAX_AMOUNT:
        raise InvalidEvent("bad_value", f"amount={amount} exceeds {MAX_AMOUNT:.0e}")
    features_doc = _require(doc, "features")
    if not isinstance(features_doc, dict):
        raise InvalidEvent("bad_type", "features must be an object")
    features = []
    for name in FEATURE_NAMES:
        value = _number(features_doc, name, prefix="features.")
        low, high = FEATURE_BOUNDS[name]
        if value < low or (high is not None and value > high):
            raise InvalidEvent("bad_value", f"features.{name}={value} is outside [{low}, {high}]")
        features.append(value)
    return Event(
        event_id=ids[0],
        event_type=event_type,
        event_time_ms=time_ms,
        user_id=ids[1],
        session_id=ids[2],
        item_id=ids[3],
        category=ids[4],
        country=country,
        amount=amount,
        currency=currency,
        features=tuple(features),
    )


_EVENT_TYPE_SET: Final = frozenset(EVENT_TYPES)
_NUMBER_TYPES: Final = (int, float)
#: Upper bound of the unbounded numbers in :func:`_accept_fast`: the largest finite float, so that
#: one chained comparison ``0.0 <= x <= _MAX_FLOAT`` also refuses NaN and the infinities.
_MAX_FLOAT: Final = sys.float_info.max


def _accept_fast(doc: dict[str, Any]) -> Event | None:
    """The event of a document that satisfies every rule; None for any other document.

    Why: most records are valid, and for them the checked validator's per-field helper calls cost
    more than the checks themselves. This pass makes the same checks inline and gives up (None) at
    the first doubt, so it can never accept what :func:`_validate_checked` refuses or build another
    event; a refusal and its reason always come from the checked validator. Exact types
    (``type(x) is str``, not ``isinstance``): a subclass, which JSON parsing never produces, takes
    the checked path. The six features are spelled out in ``FEATURE_NAMES`` order with the bounds of
    ``FEATURE_BOUNDS`` (a loop over that table costs a third more); the unit tests that hold both
    tiers to the same verdict push every feature past each of its bounds.
    """
    try:
        version = doc["schema_version"]
        event_id = doc["event_id"]
        user_id = doc["user_id"]
        session_id = doc["session_id"]
        item_id = doc["item_id"]
        category = doc["category"]
        event_type = doc["event_type"]
        time_ms = doc["event_time_ms"]
        country = doc["country"]
        currency = doc["currency"]
        amount = doc["amount"]
        features = doc["features"]
        if type(features) is not dict:
            return None
        f0 = features["account_age_days"]
        f1 = features["session_event_index"]
        f2 = features["seconds_since_last_event"]
        f3 = features["device_risk"]
        f4 = features["ip_country_mismatch"]
        f5 = features["amount_vs_user_avg"]
    except KeyError:
        return None
    numbers = _NUMBER_TYPES
    if not (
        type(version) is int and version == SCHEMA_VERSION
        and type(event_id) is str and 0 < len(event_id) <= _MAX_ID_LEN and event_id.isascii()
        and event_id.isprintable()
        and type(user_id) is str and 0 < len(user_id) <= _MAX_ID_LEN and user_id.isascii()
        and user_id.isprintable()
        and type(session_id) is str and 0 < len(session_id) <= _MAX_ID_LEN and session_id.isascii()
        and session_id.isprintable()
        and type(item_id) is str and 0 < len(item_id) <= _MAX_ID_LEN and item_id.isascii()
        and item_id.isprintable()
        and type(category) is str and 0 < len(category) <= _MAX_ID_LEN and category.isascii()
        and category.isprintable()
        and type(event_type) is str and event_type in _EVENT_TYPE_SET
        and type(time_ms) is int and _MIN_TIME_MS <= time_ms < _MAX_TIME_MS
        and type(country) is str and len(country) == 2
        and country.isascii() and country.isupper() and country.isalpha()
        and type(currency) is str and len(currency) == 3
        and currency.isascii() and currency.isupper() and currency.isalpha()
        and type(amount) in numbers and type(f0) in numbers and type(f1) in numbers
        and type(f2) in numbers and type(f3) in numbers and type(f4) in numbers
        and type(f5) in numbers
    ):
        return None
    try:
        amount, f0, f1, f2 = float(amount), float(f0), float(f1), float(f2)
        f3, f4, f5 = float(f3), float(f4), float(f5)
    except OverflowError:  # an int beyond the double range; the checked path reports it in order
        return None
    top = _MAX_FLOAT
    if not (
        0.0 <= amount <= MAX_AMOUNT and 0.0 <= f0 <= top and 0.0 <= f1 <= top and 0.0 <= f2 <= top
        and 0.0 <= f3 <= 1.0 and 0.0 <= f4 <= 1.0 and 0.0 <= f5 <= top
    ):
        return None
    return Event(event_id, event_type, time_ms, user_id, session_id, item_id, category, country, amount,
                 currency, (f0, f1, f2, f3, f4, f5))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of version 1, as shipped in the package."""
    text = resources.files("streaming_analytics").joinpath("schemas/event-v1.schema.json").read_bytes()
    result: dict[str, Any] = orjson.loads(text)
    return result


def _require(doc: dict[str, Any], name: str, prefix: str = "") -> Any:
    try:
        return doc[name]
    except KeyError:
        raise InvalidEvent("missing_field", f"{prefix}{name} is required") from None


def _identifier(doc: dict[str, Any], name: str) -> str:
    value = _require(doc, name)
    if not isinstance(value, str):
        raise InvalidEvent("bad_type", f"{name} must be a string")
    if not 0 < len(value) <= _MAX_ID_LEN:
        raise InvalidEvent("bad_value", f"{name} must be 1..{_MAX_ID_LEN} characters")
    check_text(name, value)
    return value


def check_text(name: str, value: str) -> None:
    """Raise ``bad_string`` unless ``value`` satisfies the text rule (module docstring).

    The detail names the code point as ``U+XXXX`` and never repeats the offending character, so the
    detail itself is always storable (a dead letter's ``reason_detail`` is PostgreSQL text).
    """
    bad = _TEXT_FORBIDDEN.search(value)
    if bad is not None:
        char = bad.group()
        raise InvalidEvent("bad_string", f"{name} contains U+{ord(char):04X} ({_forbidden_kind(char)}) at "
                                         f"character {bad.start()}; text fields may not hold control "
                                         "characters, surrogates, bidirectional controls or line separators")
    if not unicodedata.is_normalized("NFC", value):
        raise InvalidEvent("bad_string", f"{name} is not in Unicode normalization form NFC (normalize it "
                                         "before sending: unicodedata.normalize('NFC', text))")


def _forbidden_kind(char: str) -> str:
    """What kind of forbidden character ``char`` is, in words, for a rejection's detail."""
    category = unicodedata.category(char)
    if category == "Cc":
        return "the NUL character" if char == "\x00" else "a control character"
    if category == "Cs":
        return "an unpaired surrogate, not encodable in UTF-8"
    if category == "Cf":
        return "a bidirectional control"
    return "a line or paragraph separator"


def _code(doc: dict[str, Any], name: str, length: int) -> str:
    value = _require(doc, name)
    if not (isinstance(value, str) and len(value) == length and value.isascii() and value.isupper()
            and value.isalpha()):
        raise InvalidEvent("bad_value", f"{name}={value!r} must be {length} upper-case letters")
    return value


def _number(doc: dict[str, Any], name: str, prefix: str = "") -> float:
    value = _require(doc, name, prefix)
    # bool is an int subclass in Python but not a number in JSON Schema.
    if type(value) not in (int, float):
        raise InvalidEvent("bad_type", f"{prefix}{name} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidEvent("bad_value", f"{prefix}{name} must be finite")
    return number
