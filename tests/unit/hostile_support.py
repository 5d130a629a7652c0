"""Hostile input for the hostile-input suite (docs/hostile-input.md): hypothesis strategies for the
unit and sink property tests, and a seeded generator of a whole hostile topic for the job's test.

Everything here is built around the event contract's edges (streaming_analytics/events.py): the text
rule's forbidden ranges and their neighbours, the numeric bounds, the size limit, and what JSON
parsers disagree on. A strategy for *valid* events builds only documents the contract admits, with
arbitrary admitted text and numbers in every field, so a sink test can demand that every one of
them is stored.
"""

from __future__ import annotations

import copy
import random
import re
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson
from hypothesis import strategies as st

from streaming_analytics.events import (
    EVENT_TYPES,
    FEATURE_BOUNDS,
    FEATURE_NAMES,
    MAX_AMOUNT,
    MAX_EVENT_BYTES,
    TEXT_FORBIDDEN_PATTERN,
    InvalidEvent,
    check_text,
)

#: Characters at and next to every edge of the text rule, plus some that are allowed but tricky
#: (NBSP, zero-width joiner, BOM, private use, noncharacters, the last code point, combining marks).
TEXT_EDGES: Final = (
    "\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", " ", "~", "\x7f", "\x80", "\x85", "\x9f", "\xa0",
    "\u0301", "\u061b", "\u061c", "\u200b", "\u200d", "\u200e", "\u200f", "\u2027", "\u2028", "\u2029",
    "\u202a", "\u202e", "\u202f", "\u2065", "\u2066", "\u2069", "\u206a", "\ud7ff", "\ud800", "\udbff",
    "\udc00", "\udfff", "\ue000", "\ufeff", "\ufffd", "\ufffe", "\uffff", "\U0001f600", "\U0010ffff",
    "'", '"', "\\", "|", "%", "_", "é", "ß", "ﬁ", "Å",
)

#: Any text: every Unicode category (surrogates included) and the edges above, 0-80 characters.
ANY_TEXT: Final = st.text(st.characters(exclude_categories=()) | st.sampled_from(TEXT_EDGES), max_size=80)


def _admitted(text: str) -> bool:
    try:
        check_text("text", text)
    except InvalidEvent:
        return False
    return 0 < len(text) <= 64


_FORBIDDEN: Final = re.compile(TEXT_FORBIDDEN_PATTERN)
#: Text the contract admits: any character the text rule allows (the allowed edges above included),
#: 1-64 of them, put in NFC; built rather than filtered, so that nearly every draw is one.
VALID_TEXT: Final = st.text(
    (st.characters(exclude_categories=("Cc", "Cs")) | st.sampled_from(TEXT_EDGES)).filter(
        lambda ch: _FORBIDDEN.match(ch) is None),
    min_size=1, max_size=64,
).map(lambda t: unicodedata.normalize("NFC", t)).filter(_admitted)


def _no_surrogate(text: str) -> bool:
    return not any("\ud800" <= ch <= "\udfff" for ch in text)


#: Numbers at and around the contract's bounds and JSON's: zero, the smallest subnormal, integers
#: beyond 2**53 and 2**64, the largest double.
def _numbers(low: float, high: float | None) -> st.SearchStrategy[float | int]:
    top = sys.float_info.max if high is None else high
    return (st.floats(min_value=low, max_value=top, allow_nan=False, allow_infinity=False)
            | st.integers(min_value=int(low), max_value=int(top) if high is not None else 2**70)
            | st.sampled_from([v for v in (0, 0.0, 5e-324, 1.0, 2**53 + 1, 2**64, top) if low <= v <= top]))


#: JSON values of every kind, nested a little.
_JSON_TEXT: Final = ANY_TEXT.filter(_no_surrogate)
JSON_VALUES: Final = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _JSON_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_JSON_TEXT, children, max_size=4),
    max_leaves=10,
)


@st.composite
def valid_documents(draw: st.DrawFn, *, time_ms: st.SearchStrategy[int] | None = None) -> dict[str, Any]:
    """A document the contract admits, with arbitrary admitted text and numbers in every field."""
    letters = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=1, max_size=1)
    return {
        "schema_version": 1,
        "event_id": draw(VALID_TEXT),
        "event_type": draw(st.sampled_from(EVENT_TYPES)),
        "event_time_ms": draw(time_ms or st.integers(946_684_800_000, 4_102_444_799_999)),
        "user_id": draw(VALID_TEXT),
        "session_id": draw(VALID_TEXT),
        "item_id": draw(VALID_TEXT),
        "category": draw(VALID_TEXT),
        "country": draw(letters) + draw(letters),
        "amount": draw(_numbers(0.0, MAX_AMOUNT)),
        "currency": draw(letters) + draw(letters) + draw(letters),
        "features": {name: draw(_numbers(*FEATURE_BOUNDS[name])) for name in FEATURE_NAMES},
    }


# --- a hostile topic for the job's integration test ---------------------------------------------------

#: What :func:`hostile_topic` writes, by kind: (kind, share of the records).
HOSTILE_MIX: Final = (
    ("valid", 0.55), ("valid_unicode", 0.15), ("bad_text", 0.10), ("not_json", 0.06), ("wrong_shape", 0.06),
    ("bad_number", 0.04), ("bad_time", 0.02), ("oversized", 0.01), ("tombstone", 0.01),
)

_BAD_TEXT: Final = ("\x00", "\t", "\n", "\x1b[2J", "\x7f", "\x85", "\u202e", "\u2066", "\u2028", "e\u0301")
_UNICODE_TEXT: Final = ("Bücher", "книги", "本", "كتب", "📚", "\U0001f600" * 64, "é" * 64, "a b", "x'y\"z\\",
                        "\ufeffbom", "\u200dzwj", "\ue000pua", "|pipe|", "%_like")


@dataclass(frozen=True)
class HostileRecord:
    """One record of a hostile topic: its key, value (None: a tombstone) and what it is."""

    kind: str
    key: bytes | None
    value: bytes | None


def hostile_topic(base: list[dict[str, Any]], seed: int) -> Iterator[HostileRecord]:
    """One hostile record per valid ``base`` document, by :data:`HOSTILE_MIX`, deterministic for
    ``seed``. Valid records keep the base's time and features (the anomaly model only reads
    features, so a valid record is anomalous exactly when its base was) and may get other text in
    their text fields and another amount; the rest break the contract in the ways listed in
    docs/hostile-input.md."""
    rng = random.Random(seed)
    kinds, weights = zip(*HOSTILE_MIX, strict=True)
    for doc in base:
        kind = rng.choices(kinds, weights)[0]
        key = str(doc["user_id"]).encode()
        yield HostileRecord(kind, key, _hostile_value(kind, copy.deepcopy(doc), rng))


def _hostile_value(kind: str, doc: dict[str, Any], rng: random.Random) -> bytes | None:
    return None if kind == "tombstone" else _BUILDERS[kind](doc, rng)


def _text_field(rng: random.Random) -> str:
    return rng.choice(("event_id", "user_id", "session_id", "item_id", "category"))


def _valid(doc: dict[str, Any], rng: random.Random) -> bytes:
    # Large amounts are sums of powers of two: a window's sum is then exact in any order, as the
    # exactness check's absolute tolerance (1e-6) needs; zero and tiny ones test the sketches' edges.
    # (The job sums in micro-units: more decimals than six are rounded there, not here.)
    doc["amount"] = rng.choice((0, 0.01, 1, 19.99, 65536.0, 123456.75, round(rng.uniform(0, 1000), 6)))
    return orjson.dumps(doc)


def _valid_unicode(doc: dict[str, Any], rng: random.Random) -> bytes:
    field, value = _text_field(rng), rng.choice(_UNICODE_TEXT)
    # The event id keeps a unique prefix: the job deduplicates by it.
    doc[field] = value if field != "event_id" else f"{doc['event_id'][:20]}-{value}"[:64]
    return orjson.dumps(doc)


def _bad_text(doc: dict[str, Any], rng: random.Random) -> bytes:
    field = _text_field(rng)
    doc[field] = f"{str(doc[field])[:30]}{rng.choice(_BAD_TEXT)}x"
    return orjson.dumps(doc)


def _not_json(doc: dict[str, Any], rng: random.Random) -> bytes:
    good = orjson.dumps(doc)
    return rng.choice((
        good[: rng.randrange(1, len(good))],  # truncated
        bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))),  # binary noise
        good.replace(b'"category":"', b'"category":"\xff\xfe'),  # invalid UTF-8
        good.replace(b'"category":"', b'"category":"\\ud800'),  # an escaped lone surrogate
        b"[" * 20_000 + b"]" * 20_000,  # deeper than any parser's recursion limit
        good.replace(b'"amount":', b'"amount":NaN,"x":'),
        good.replace(b'"amount":', b'"amount":Infinity,"x":'),
        b"\xef\xbb\xbf" + good,  # a UTF-8 byte order mark
        b"",
    ))


def _wrong_shape(doc: dict[str, Any], rng: random.Random) -> bytes:
    field = rng.choice(sorted(doc))
    shapes = (
        lambda: orjson.dumps({k: v for k, v in doc.items() if k != field}),  # a field missing
        lambda: orjson.dumps({**doc, field: rng.choice((None, True, [], {}, "1", [doc[field]]))}),
        lambda: orjson.dumps([doc]),
        lambda: rng.choice((b"null", b"42", b'"event"', b"true")),
        lambda: b'{"category":"bo\\u0000oks",' + orjson.dumps(doc)[1:],  # a duplicate key
        lambda: orjson.dumps({**doc, "schema_version": rng.choice((2, "1", 1.0, 0))}),
    )
    return rng.choice(shapes)()


def _bad_number(doc: dict[str, Any], rng: random.Random) -> bytes:
    # Invalid for every target (a valid feature change could make the model raise an alert).
    target = rng.choice(("amount", *FEATURE_NAMES))
    too_big = (b"1e13", b"1e303") if target == "amount" else ()
    literal = rng.choice((b"-1", b"-1e-9", b"1e400", b"-0.5", *too_big))
    placeholder = -123456.0
    if target == "amount":
        doc["amount"] = placeholder
    else:
        doc["features"][target] = placeholder
    return orjson.dumps(doc).replace(b"-123456.0", literal, 1)


def _bad_time(doc: dict[str, Any], rng: random.Random) -> bytes:
    doc["event_time_ms"] = rng.choice((-1, 0, 946_684_799_999, 4_102_444_800_000, 2**63, 1_767_225_600.5,
                                       doc["event_time_ms"] // 1000))
    return orjson.dumps(doc)


def _oversized(doc: dict[str, Any], rng: random.Random) -> bytes:
    doc["padding"] = "x" * (MAX_EVENT_BYTES + rng.randrange(1, 1000))
    return orjson.dumps(doc)


_BUILDERS: Final = {"valid": _valid, "valid_unicode": _valid_unicode, "bad_text": _bad_text,
                    "not_json": _not_json, "wrong_shape": _wrong_shape, "bad_number": _bad_number,
                    "bad_time": _bad_time, "oversized": _oversized}
