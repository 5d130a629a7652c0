"""The event contract (schema version 1): one e-commerce activity event per Kafka record.

The wire format is a UTF-8 JSON object; ``docs/event-schema.md`` documents it for producers and
``streaming_analytics/schemas/event-v1.schema.json`` states it as JSON Schema. The validator here
is hand-written rather than driven by that JSON Schema because it sits on the pipeline's hot path
(a generic validator costs ~10x more per event); a unit test checks that both accept and reject
the same documents.

Every rejection carries a stable machine-readable ``code`` (what dashboards and the dead-letter
table group by) and a human ``detail``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Final

import orjson

SCHEMA_VERSION: Final = 1

#: Largest accepted record value; anything bigger is rejected before parsing.
MAX_EVENT_BYTES: Final = 16 * 1024

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
# 2000-01-01 .. 2100-01-01: catches seconds-vs-milliseconds mistakes and garbage clocks.
_MIN_TIME_MS: Final = 946_684_800_000
_MAX_TIME_MS: Final = 4_102_444_800_000


class InvalidEvent(ValueError):
    """Raised for a record that does not satisfy the contract."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event. Field meanings are documented in docs/event-schema.md."""

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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = dict(zip(FEATURE_NAMES, self.features, strict=True))
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


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
    return value


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
