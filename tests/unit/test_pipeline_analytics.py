"""build_pipeline end to end on a TestStream: raw records (with duplicates, malformed, late and
too-late events) in; the last pane of every window equals the aggregate computed independently from
the same events, panes are numbered without gaps, and every refused record is in the dead letters."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline as _TestPipeline
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

from pipelines.analytics_pipeline import AnalyticsOptions, build_pipeline
from tests.unit.test_transforms_support import BASE_S, event_doc, raw, run_and_count
from transforms.aggregates import Aggregate, parse_dimensions
from transforms.records import KafkaRecord
from transforms.sketches import HyperLogLog, QuantileSketch

pytestmark = pytest.mark.unit

FLAGS = [
    "--allowed_lateness_s=30", "--dedup_shards=2", "--late_gate_margin_s=60", "--early_firing_delay_s=1",
    "--dedup_horizon_s=600", "--late_gate_lookahead_s=600",
]
#: Batch step -> event time (s) of a late event sent after that batch: the watermark is at
#: step * 50 + 45, so [120, 180) and [180, 240) are closed but within their 30 s of allowed lateness.
LATE_AT = {3: 175, 4: 230}
WINDOWS = {"fixed": (60, 60), "sliding": (300, 60)}  # size, period (the defaults)


def _options(flags: list[str]) -> AnalyticsOptions:
    options = AnalyticsOptions(flags=flags)
    options.view_as(StandardOptions).streaming = True
    return options


def _windows(kind: str, t_ms: int) -> list[tuple[int, int]]:
    size, period = (s * 1000 for s in WINDOWS[kind])
    last = t_ms - t_ms % period
    return [(start, start + size) for start in range(last, t_ms - size, -period)]


def _scenario() -> tuple[_TestStream, list[dict[str, Any]], list[str]]:
    """The stream, the events that must be aggregated, and the reason codes of refused records."""
    r = random.Random(42)
    accepted: list[dict[str, Any]] = []
    stream = _TestStream().advance_watermark_to(BASE_S)
    offset = 0

    def record(value: bytes | None) -> KafkaRecord:
        nonlocal offset
        offset += 1
        return KafkaRecord("events", 0, offset, None, value, None)

    n = 0
    for step in range(8):  # 8 batches of 50 s of event time, in shuffled order within a batch
        docs = []
        for _ in range(25):
            n += 1
            doc = event_doc(f"e{n}", step * 50 + r.uniform(0, 50), r.randrange(0, 2000) / 4,
                            user=f"u{r.randrange(30)}", event_type=r.choice(["view", "purchase"]),
                            country=r.choice(["DE", "FR"]), category=r.choice(["books", "toys", "games"]))
            docs.append(doc)
        r.shuffle(docs)
        accepted.extend(docs)
        batch = [record(raw_doc(d)) for d in docs]
        batch.append(record(raw_doc(docs[0])))  # a re-delivery
        stream = stream.add_elements(batch).advance_processing_time(1.5)
        stream = stream.advance_watermark_to(BASE_S + step * 50 + 45)
        if step in LATE_AT:  # its fixed window closed before the watermark, within the lateness
            n += 1
            late = event_doc(f"late{n}", LATE_AT[step], 7.5, user="u-late")
            accepted.append(late)
            stream = stream.add_elements([record(raw_doc(late))])
    # Too late: the fixed window [0, 60) closed at 90 s and every sliding window of t=5 at 330 s,
    # and the watermark is at 395 s: one dead letter, refused by both kinds.
    too_late = record(raw("tl", 5, 1.0))
    malformed = [record(b"{"), record(None), record(raw("x", 1, -5.0))]
    stream = stream.add_elements([too_late, *malformed]).advance_watermark_to_infinity()
    refused = ["too_late", "not_json", "empty", "bad_value"]
    return stream, accepted, refused


def raw_doc(doc: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(doc)


def _expected(kind: str, accepted: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for dimension in parse_dimensions("event_type+country,category"):
        for doc in accepted:
            key = "|".join(doc[f] for f in dimension.fields)
            for start, end in _windows(kind, doc["event_time_ms"]):
                by_key[f"{kind}|{dimension.name}|{key}|{start}|{end}"].append(doc)
    return by_key


def _check(kind: str, accepted: list[dict[str, Any]]) -> Any:
    expected = _expected(kind, accepted)

    def check(actual: list[Aggregate]) -> None:
        panes: dict[str, list[Aggregate]] = defaultdict(list)
        for a in actual:
            panes[a.window_key].append(a)
        assert set(panes) == set(expected), set(panes) ^ set(expected)
        assert {a.timing for a in actual} == {"EARLY", "ON_TIME", "LATE"}
        for key, rows in panes.items():
            assert sorted(a.pane_index for a in rows) == list(range(len(rows))), key
            last = max(rows, key=lambda a: a.pane_index)
            docs = expected[key]
            amounts = sorted(d["amount"] for d in docs)
            assert (last.count, last.min_amount, last.max_amount) == (len(docs), amounts[0], amounts[-1]), key
            assert last.sum_amount == pytest.approx(sum(amounts), abs=1e-6)
            users = len({d["user_id"] for d in docs})
            assert abs(last.distinct_users - users) <= 3 * HyperLogLog.STANDARD_ERROR * users, key
            for q, value in ((0.5, last.p50), (0.95, last.p95), (0.99, last.p99)):
                x = amounts[math.floor(q * (len(amounts) - 1))]
                assert abs(value - x) <= QuantileSketch.RELATIVE_ACCURACY * x + 1e-9, (key, q)
            assert all(later.count >= earlier.count for earlier, later in
                       zip(sorted(rows, key=lambda a: a.pane_index),
                           sorted(rows, key=lambda a: a.pane_index)[1:], strict=False)), key

    return check


def test_build_pipeline_end_to_end_on_a_test_stream() -> None:
    stream, accepted, refused = _scenario()
    p = _TestPipeline(options=_options(FLAGS))
    out = build_pipeline(p, p | stream, p.options)
    assert_that(out.fixed, _check("fixed", accepted), label="FixedFinalPanes")
    assert_that(out.sliding, _check("sliding", accepted), label="SlidingFinalPanes")
    assert_that(out.dead_letters | "Codes" >> _codes(), equal_to(refused), label="DeadLetterCodes")
    counters = run_and_count(p)
    assert counters["duplicate_events"] == 8
    assert counters["too_late_events.fixed"] == counters["too_late_events.sliding"] == 1
    assert counters["invalid_events"] == 3
    assert counters["events_parsed"] == len(accepted) + 8 + 1


def _codes() -> Any:
    import apache_beam as beam

    return beam.Map(lambda d: d.reason_code)


def test_options_defaults_and_horizon_check() -> None:
    options = AnalyticsOptions(flags=[])
    assert (options.fixed_window_s, options.sliding_window_s, options.sliding_period_s) == (60, 300, 60)
    assert (options.early_firing_delay_s, options.allowed_lateness_s) == (1, 120)
    assert options.dedup_horizon_s == 600
    assert (options.late_gate_margin_s, options.late_gate_lookahead_s, options.max_out_of_orderness_s) == (
        60, 3600, 5)
    assert options.dimensions == "event_type+country,category" and options.bounded is False
    p = _TestPipeline(options=_options(["--dedup_horizon_s=100"]))
    with pytest.raises(ValueError, match="dedup_horizon_s"):
        build_pipeline(p, p | _TestStream().advance_watermark_to_infinity(), p.options)
