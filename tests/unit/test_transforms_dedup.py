"""DeduplicateEvents: the first delivery of an event id wins, later ones are dropped and counted, and
an id is forgotten once the watermark passes first event time + horizon."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.pvalue import PCollection
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

from tests.unit.test_transforms_support import BASE_S, event, run_and_count, streaming_pipeline, tv
from transforms.aggregates import LateGate
from transforms.dedup import EVENTS, DeduplicateEvents, admitted_tag, too_late_tag

pytestmark = pytest.mark.unit


def test_duplicates_dropped_in_and_across_bundles_and_out_of_order() -> None:
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("a", 5, 1.0), tv("b", 2, 2.0), tv("a", 5, 1.0)])  # dup in one bundle
        .advance_watermark_to(BASE_S + 10)
        .add_elements([tv("c", 1, 3.0), tv("b", 2, 2.0)])  # out of order; dup across bundles
        .advance_processing_time(5)
        .add_elements([tv("a", 5, 99.0)])  # same id, different content: the first delivery wins
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | DeduplicateEvents(horizon_s=60)
    assert_that(out, equal_to([event("a", 5, 1.0), event("b", 2, 2.0), event("c", 1, 3.0)]))
    assert run_and_count(p) == {"duplicate_events": 3}


def test_ids_are_forgotten_after_the_horizon() -> None:
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("a", 0, 1.0)])
        .advance_watermark_to(BASE_S + 59)
        .add_elements([tv("a", 0, 1.0)])  # within the horizon: dropped
        .advance_watermark_to(BASE_S + 61)
        .add_elements([tv("a", 0, 1.0)])  # horizon passed: let through (windows closed by then)
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | DeduplicateEvents(horizon_s=60)
    assert_that(out, equal_to([event("a", 0, 1.0)] * 2))
    assert run_and_count(p) == {"duplicate_events": 1}


def test_horizon_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        DeduplicateEvents(horizon_s=0)


def test_gates_in_the_dedup_step_judge_first_deliveries_per_aggregate_kind() -> None:
    """With gates, the step also refuses events too late for a kind's windows (the shard's highest
    event time minus the out-of-orderness bound is the watermark estimate), kind by kind."""
    fixed = LateGate(kind="fixed", size_ms=10_000, period_ms=10_000, lateness_ms=5_000, ooo_ms=0)
    sliding = LateGate(kind="sliding", size_ms=20_000, period_ms=10_000, lateness_ms=5_000, ooo_ms=0)
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        # estimate after b: 40 s. c (t=2): fixed closes 15, sliding 25 -> too late for both;
        # d (t=30): open for both; e (t=24): fixed closed at 35, sliding open until 45.
        .add_elements([tv("a", 1, 1.0), tv("b", 40, 2.0), tv("c", 2, 3.0), tv("d", 30, 4.0),
                       tv("a", 1, 1.0), tv("e", 24, 5.0)])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | DeduplicateEvents(horizon_s=600, shards=1, gates=(fixed, sliding))

    def ids(batches: PCollection, label: str) -> PCollection:
        return batches | label >> beam.FlatMap(lambda batch: [e.event_id for e in batch])

    assert_that(out[EVENTS] | "EventIds" >> beam.Map(lambda e: e.event_id), equal_to(list("abcde")),
                label="AllFirstDeliveries")
    assert_that(ids(out[admitted_tag("fixed")], "Fixed"), equal_to(list("abd")), label="AdmittedFixed")
    assert_that(ids(out[admitted_tag("sliding")], "Sliding"), equal_to(list("abde")),
                label="AdmittedSliding")
    late_fixed = out[too_late_tag("fixed")] | "LateFixed" >> beam.Map(lambda d: (d.reason_code, d.raw))
    assert_that(late_fixed, equal_to([("too_late", event(i, t, a).to_json())
                                      for i, t, a in (("c", 2, 3.0), ("e", 24, 5.0))]), label="TooLateFixed")
    assert_that(out[too_late_tag("sliding")] | "LateSliding" >> beam.Map(lambda d: d.reason_code),
                equal_to(["too_late"]), label="TooLateSliding")
    assert run_and_count(p) == {"duplicate_events": 1, "too_late_events.fixed": 2,
                                "too_late_events.sliding": 1}


def test_one_gate_per_kind() -> None:
    gate = LateGate(kind="fixed", size_ms=10_000, period_ms=10_000, lateness_ms=0, ooo_ms=0)
    with pytest.raises(ValueError, match="one gate per"):
        DeduplicateEvents(gates=(gate, gate))
