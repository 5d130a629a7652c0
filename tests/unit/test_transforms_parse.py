"""ParseEvents: valid records become event-timestamped events; every malformed kind is dead-lettered
with its reason code, its Kafka position and a per-code counter."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.transforms.window import GlobalWindow
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_analytics.events import Event
from tests.unit.test_transforms_support import (
    BASE_S,
    event_doc,
    fixed_clock,
    raw,
    run_and_count,
    streaming_pipeline,
)
from transforms.parse import ParseEvents, parse_record
from transforms.records import DeadLetter, KafkaRecord

pytestmark = pytest.mark.unit


def _doc_with(**changes: Any) -> bytes:
    doc = event_doc("e-bad", 1, 1.0)
    for key, value in changes.items():
        if value is _DROP:
            del doc[key]
        else:
            doc[key] = value
    return orjson.dumps(doc)


_DROP = object()

#: One record per malformed kind, with the reason code it must be dead-lettered with.
MALFORMED: list[tuple[bytes | None, str]] = [
    (None, "empty"),
    (b"x" * 20_000, "too_large"),
    (b"{not json", "not_json"),
    (b"\xff\xfe\x00garbage", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (_doc_with(schema_version=2), "unsupported_version"),
    (_doc_with(user_id=_DROP), "missing_field"),
    (_doc_with(event_time_ms="yesterday"), "bad_type"),
    (_doc_with(event_type="teleport"), "bad_value"),
    (_doc_with(amount=-1), "bad_value"),
]


@pytest.mark.parametrize(("value", "code"), MALFORMED)
def test_parse_record_dead_letters_each_malformed_kind(value: bytes | None, code: str) -> None:
    record = KafkaRecord("events", 3, 42, b"k", value, 1_700_000_000_000)
    result = parse_record(record, now_ms=123)
    assert isinstance(result, DeadLetter)
    assert (result.reason_code, result.raw, result.topic, result.partition) == (code, value, "events", 3)
    assert (result.offset, result.failed_at_ms) == (42, 123)
    assert result.reason_detail


def test_parse_record_accepts_bare_values_and_str() -> None:
    ok = parse_record(raw("e1", 1, 2.5), now_ms=0)
    assert isinstance(ok, Event) and ok.event_id == "e1" and ok.amount == 2.5
    bad = parse_record("nope", now_ms=7)
    assert bad == DeadLetter(b"nope", "not_json", bad.reason_detail, None, None, None, 7)  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=10),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
).map(orjson.dumps)))
def test_parse_record_never_raises_on_arbitrary_input(value: bytes) -> None:
    """Whatever arrives, the step routes it; an exception would crash-loop the streaming job."""
    assert isinstance(parse_record(value, now_ms=0), Event | DeadLetter)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(event_doc("x", 0, 1.0))), st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=70),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
))
def test_parse_record_never_raises_on_corrupted_fields(field: str, value: Any) -> None:
    doc = event_doc("x", 0, 1.0)
    doc[field] = value
    assert isinstance(parse_record(orjson.dumps(doc), now_ms=0), Event | DeadLetter)


def test_parse_events_routes_and_counts_on_the_direct_runner() -> None:
    good = [raw("e1", 1, 10.0), raw("e2", 65, 20.0)]
    records = [KafkaRecord("events", 0, i, None, v, None) for i, (v, _) in enumerate(MALFORMED)]
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([good[0], *records[:5]])
        .advance_watermark_to(BASE_S + 30)
        .add_elements([good[1], *records[5:]])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    parsed = p | stream | ParseEvents(clock=fixed_clock)

    class _WithTimestamp(beam.DoFn):  # type: ignore[misc]
        def process(self, e: Event, ts: Any = beam.DoFn.TimestampParam) -> Any:
            yield e.event_id, ts.micros // 1000, e.event_time_ms

    assert_that(
        parsed.events | beam.ParDo(_WithTimestamp()),
        equal_to([("e1", (BASE_S + 1) * 1000, (BASE_S + 1) * 1000), ("e2", (BASE_S + 65) * 1000,
                                                                      (BASE_S + 65) * 1000)]),
        label="EventsTimestampedWithEventTime",
    )
    assert_that(
        parsed.dead_letter | beam.Map(lambda d: (d.reason_code, d.offset, d.raw, d.failed_at_ms)),
        equal_to([(code, i, value, 1_700_000_100_000) for i, (value, code) in enumerate(MALFORMED)]),
        label="DeadLetters",
    )
    counters = run_and_count(p)
    expected = {"events_parsed": 2, "invalid_events": len(MALFORMED)}
    for _, code in MALFORMED:
        expected[f"invalid_events.{code}"] = expected.get(f"invalid_events.{code}", 0) + 1
    assert counters == expected


class _WithWindow(beam.DoFn):  # type: ignore[misc]
    def process(self, e: Event, ts: Any = beam.DoFn.TimestampParam,
                win: Any = beam.DoFn.WindowParam) -> Any:
        yield e.event_id, ts.micros // 1000, str(win)


@pytest.mark.parametrize("windowed", [False, True], ids=["global", "fixed-60s"])
def test_events_get_the_windows_of_their_input_windowing(windowed: bool) -> None:
    """In the global window ParseEvents attaches window and timestamp itself; under any other
    windowing the input's WindowFn assigns the event's windows from its event time, as before."""
    p = beam.Pipeline()
    records = p | beam.Create([raw("e1", 1, 1.0), raw("e2", 65, 2.0)])
    if windowed:
        records = records | beam.WindowInto(window.FixedWindows(60))
    out = (records | ParseEvents(clock=fixed_clock)).events | beam.ParDo(_WithWindow())

    def expected_window(t_s: int) -> str:
        if not windowed:
            return str(GlobalWindow())
        start = (BASE_S + t_s) // 60 * 60
        return str(window.IntervalWindow(start, start + 60))

    assert_that(out, equal_to([
        ("e1", (BASE_S + 1) * 1000, expected_window(1)),
        ("e2", (BASE_S + 65) * 1000, expected_window(65)),
    ]))
    p.run().wait_until_finish()
