"""DeduplicateEvents: the first delivery of an event id wins, later ones are dropped and counted, and
an id is forgotten once the watermark passes first event time + horizon. The same step judges the
first deliveries by the late-data rule: it refuses, per aggregate kind, exactly the events whose
deadline the watermark had passed (learnt from event-time timers), and what it cannot know yet it
admits — the cases docs/pipeline.md lists."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.pvalue import PCollection
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

from tests.unit.test_transforms_support import BASE_S, event, run_and_count, streaming_pipeline, tv
from transforms.dedup import EVENTS, TOO_LATE, DeduplicateEvents, admitted_tag
from transforms.late_data import Deadlines, LateDataRule

pytestmark = pytest.mark.unit

#: Fixed 10 s and sliding 20 s every 10 s windows with 5 s of lateness: an event at t has the
#: deadlines floor(t / 10) * 10 + 15 (fixed) and + 25 (sliding); the lattice is 5, 15, 25, ... s.
FIXED = Deadlines("fixed", size_ms=10_000, period_ms=10_000, lateness_ms=5_000)
SLIDING = Deadlines("sliding", size_ms=20_000, period_ms=10_000, lateness_ms=5_000)
RULE = LateDataRule(kinds=(FIXED, SLIDING), lookahead_ms=30_000)


def _dedup(**kw: Any) -> DeduplicateEvents:
    return DeduplicateEvents(rule=RULE, **{"horizon_s": 600, "shards": 1, **kw})


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
    out = p | stream | _dedup(horizon_s=60, shards=4)
    assert_that(out[EVENTS], equal_to([event("a", 5, 1.0), event("b", 2, 2.0), event("c", 1, 3.0)]))
    assert run_and_count(p) == {"duplicate_events": 3}


def test_ids_are_forgotten_after_the_horizon() -> None:
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("a", 0, 1.0)])
        .advance_watermark_to(BASE_S + 59)
        .add_elements([tv("a", 0, 1.0)])  # within the horizon: dropped
        .advance_watermark_to(BASE_S + 61)
        .add_elements([tv("a", 0, 1.0)])  # horizon passed: let through (and too late for both kinds)
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | _dedup(horizon_s=60)
    assert_that(out[EVENTS], equal_to([event("a", 0, 1.0)] * 2))
    assert_that(out[TOO_LATE] | beam.Map(_refused), equal_to([("a", "fixed, sliding")]), label="TooLate")
    assert run_and_count(p) == {"duplicate_events": 1, "too_late_events.fixed": 1,
                                "too_late_events.sliding": 1}


def test_horizon_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        _dedup(horizon_s=0)


def _ids(batches: PCollection[Any], label: str) -> PCollection[Any]:
    return batches | label >> beam.FlatMap(lambda batch: [e.event_id for e in batch])


def _refused(letter: Any) -> tuple[str, str]:
    """(event id, refusing kinds) of a too-late dead letter."""
    assert letter.reason_code == "too_late"
    return orjson.loads(letter.raw)["event_id"], letter.reason_detail.split(":", 1)[0][len("too late for "):]


def test_refuses_per_kind_exactly_what_the_watermark_has_passed() -> None:
    """The watermark moves without events; the shard learns it from its timer: at 24.999 s it
    knows the 15 s deadline passed (refusing fixed windows of [0, 10)), at 35 s the 25 s one."""
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("a", 1, 1.0)])  # arms the shard's timer at 15 s
        .advance_watermark_to(BASE_S + 24.999)
        # b (t=2): fixed 15 s passed, sliding 25 s not yet; c (t=12): open for both; a dup of a.
        .add_elements([tv("b", 2, 2.0), tv("c", 12, 3.0), tv("a", 1, 1.0)])
        .advance_watermark_to(BASE_S + 35)
        # d (t=3): 15 and 25 s passed -> both; e (t=14): fixed 25 s passed, sliding 35 s not (the
        # DirectRunner drops only past the deadline, see test_transforms_late_data).
        .add_elements([tv("d", 3, 4.0), tv("e", 14, 5.0)])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | _dedup()
    assert_that(out[EVENTS] | "EventIds" >> beam.Map(lambda e: e.event_id), equal_to(list("abcde")),
                label="AllFirstDeliveries")
    assert_that(_ids(out[admitted_tag("fixed")], "Fixed"), equal_to(list("ac")), label="AdmittedFixed")
    assert_that(_ids(out[admitted_tag("sliding")], "Sliding"), equal_to(list("abce")),
                label="AdmittedSliding")
    assert_that(out[TOO_LATE] | "Refused" >> beam.Map(_refused),
                equal_to([("b", "fixed"), ("d", "fixed, sliding"), ("e", "fixed")]), label="TooLate")
    assert run_and_count(p) == {"duplicate_events": 1, "too_late_events.fixed": 3,
                                "too_late_events.sliding": 1}


def test_every_shard_judges_alone_and_a_shard_with_no_knowledge_admits() -> None:
    """The documented limit: a shard's first batch is judged before it could learn anything. With
    4 shards, "late" lands on a shard that has seen nothing yet, "old2" on one that has."""
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv(i, 0, 1.0) for i in ("w0", "w1")])  # shards 2 and 0 learn from here
        .advance_watermark_to(BASE_S + 100)
        .add_elements([tv("old2", 1, 2.0), tv("late", 1, 3.0)])  # shard 2; shard 1 (nothing seen)
        .advance_watermark_to_infinity()
    )
    assert [_shard(i, 4) for i in ("w0", "w1", "old2", "late")] == [2, 0, 2, 1]
    p = streaming_pipeline()
    out = p | stream | _dedup(shards=4)
    assert_that(out[TOO_LATE] | beam.Map(_refused), equal_to([("old2", "fixed, sliding")]))
    assert_that(_ids(out[admitted_tag("fixed")], "Fixed"), equal_to(["w0", "w1", "late"]),
                label="AdmittedFixed")
    p.run().wait_until_finish()


def test_learning_stops_beyond_the_lookahead_and_a_watermark_at_infinity_ends() -> None:
    """Newest event at 1 s: the shard learns up to its last deadline (25 s) + lookahead (30 s) = 55 s.
    An event older than the shard's newest is refused after any jump; a newer one past what the
    shard learnt is the other documented limit (admitted; the GroupByKey's margin decides)."""
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("a", 1, 1.0)])
        .advance_watermark_to(BASE_S + 500)  # the shard follows up to 55 s, then stops
        .add_elements([tv("older", 0.5, 2.0), tv("newer", 100, 3.0)])
        .advance_watermark_to_infinity()  # and the pipeline ends: learning does not run forever
    )
    p = streaming_pipeline()
    out = p | stream | _dedup()
    assert_that(out[TOO_LATE] | beam.Map(_refused), equal_to([("older", "fixed, sliding")]))
    assert_that(_ids(out[admitted_tag("sliding")], "Sliding"), equal_to(["a", "newer"]),
                label="AdmittedSliding")
    p.run().wait_until_finish()


def _shard(event_id: str, shards: int) -> int:
    import zlib

    return zlib.crc32(event_id.encode()) % shards
