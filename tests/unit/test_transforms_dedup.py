"""DeduplicateEvents: the first delivery of an event id wins, later ones are dropped and counted, and
an id is forgotten once the watermark passes first event time + horizon."""

from __future__ import annotations

import pytest
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

from tests.unit.test_transforms_support import BASE_S, event, run_and_count, streaming_pipeline, tv
from transforms.dedup import DeduplicateEvents

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
