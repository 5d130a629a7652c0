"""EventTimeAggregates (the job's composition: dedup, late-data rule, windows) on the DirectRunner with
TestStream: early, on-time and late panes with exact values per window, for fixed and sliding
windows; out-of-order input; events later than the allowed lateness counted and dead-lettered; an
admitted sliding event counted in every window it belongs to."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow

from streaming_analytics.streams import window_key
from tests.unit.test_transforms_support import (
    BASE_S,
    fixed_clock,
    run_and_count,
    streaming_pipeline,
    tv,
)
from transforms.aggregates import (
    DEFAULT_DIMENSIONS,
    AfterProcessingTimeMs,
    Aggregate,
    Dimension,
    EventTimeAggregates,
    WindowedAggregates,
    parse_dimensions,
)
from transforms.sketches import QuantileSketch

pytestmark = pytest.mark.unit

CATEGORY = (Dimension("category", ("category",)),)
EMITTED_AT_MS = round(fixed_clock() * 1000)


def _quantile(amounts: list[float], q: float) -> float:
    sketch = QuantileSketch()
    for a in amounts:
        sketch.add(a)
    estimate = sketch.quantile(q)
    assert estimate is not None
    return min(max(estimate, min(amounts)), max(amounts))


def expected(kind: str, window_s: tuple[int, int], pane: int, timing: str,
             items: list[tuple[float, str]], *, key: str = "books") -> Aggregate:
    """The aggregate of ``items`` (amount, user) computed independently of the transform (the
    amounts are exact binary fractions, so sums compare exactly; quantiles come from the sketch,
    whose own error bound is tested in test_transforms_sketches)."""
    amounts = [a for a, _ in items]
    start_s, end_s = window_s
    return Aggregate(
        kind=kind, dimension="category", key=key,
        window_start_ms=(BASE_S + start_s) * 1000, window_end_ms=(BASE_S + end_s) * 1000,
        pane_index=pane, timing=timing, is_final=False,
        count=len(items), sum_amount=sum(amounts), mean_amount=sum(amounts) / len(items),
        min_amount=min(amounts), max_amount=max(amounts),
        p50=_quantile(amounts, 0.5), p95=_quantile(amounts, 0.95), p99=_quantile(amounts, 0.99),
        distinct_users=len({u for _, u in items}), emitted_at_ms=EMITTED_AT_MS,
    )


def _window(start_s: int, end_s: int) -> IntervalWindow:
    return IntervalWindow(BASE_S + start_s, BASE_S + end_s)


def _event_time(**kw: Any) -> EventTimeAggregates:
    """The step as the job builds it, on the category dimension, with one dedup shard."""
    return EventTimeAggregates(**{"dimensions": CATEGORY, "dedup_shards": 1, "clock": fixed_clock, **kw})


def test_fixed_windows_early_on_time_and_late_panes() -> None:
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("e2", 2, 20.0, user="u2"), tv("e1", 1, 10.0, user="u1")])  # out of order
        .advance_processing_time(1.1)  # early pane of [0, 60)
        .add_elements([tv("e3", 3, 30.0, user="u1"), tv("e4", 61, 5.0, user="u3")])
        .advance_watermark_to(BASE_S + 60)  # on time: [0, 60)
        .add_elements([tv("e5", 10, 40.0, user="u4")])  # late, within the allowed 30 s
        .advance_watermark_to(BASE_S + 120)  # on time: [60, 120)
        .add_elements([tv("e6", 125, 1.0)])
        .add_elements([tv("e7", 20, 99.0)])  # [0, 60) closed at 90 < 120: too late
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | _event_time(fixed_size_s=60, early_firing_delay_s=1, allowed_lateness_s=30)
    first = [(10.0, "u1"), (20.0, "u2")]
    assert_that(out.fixed, equal_to_per_window({
        _window(0, 60): [
            expected("fixed", (0, 60), 0, "EARLY", first),
            expected("fixed", (0, 60), 1, "ON_TIME", [*first, (30.0, "u1")]),
            expected("fixed", (0, 60), 2, "LATE", [*first, (30.0, "u1"), (40.0, "u4")]),
        ],
        _window(60, 120): [expected("fixed", (60, 120), 0, "ON_TIME", [(5.0, "u3")])],
        _window(120, 180): [expected("fixed", (120, 180), 0, "ON_TIME", [(1.0, "u1")])],
    }))
    # The sliding windows (300 s every 60 s) still take e7: its newest, [0, 300), closes at 330 s.
    assert_that(out.too_late | "Reason" >> _reason(), equal_to([("too_late", "e7", "fixed")]),
                label="TooLate")
    assert run_and_count(p) == {"too_late_events.fixed": 1}


def _reason() -> Any:
    import orjson

    return beam.Map(lambda d: (d.reason_code, orjson.loads(d.raw)["event_id"],
                               d.reason_detail.split(":", 1)[0].removeprefix("too late for ")))


def test_sliding_windows_on_time_and_late_panes() -> None:
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("e1", 10, 10.0), tv("e2", 70, 20.0, user="u2")])
        .advance_processing_time(2)  # early panes of the three windows seen so far
        .advance_watermark_to(BASE_S + 60)  # on time: [-60, 60)
        .advance_watermark_to(BASE_S + 120)  # on time: [0, 120)
        # e3: late; its newest window [0, 120) is open until 150 s, so it counts there and in
        # [-60, 60), though that one alone would have closed at 90 s.
        .add_elements([tv("e3", 50, 30.0, user="u3")])
        .add_elements([tv("e4", 200, 1.0)])
        .advance_watermark_to(BASE_S + 151)  # e5's newest window [0, 120) closed at 150
        .add_elements([tv("e5", 5, 99.0)])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | _event_time(sliding_size_s=120, sliding_period_s=60, early_firing_delay_s=1,
                                   allowed_lateness_s=30)
    e1, e2, e3, e4 = (10.0, "u1"), (20.0, "u2"), (30.0, "u3"), (1.0, "u1")
    assert_that(out.sliding, equal_to_per_window({
        _window(-60, 60): [
            expected("sliding", (-60, 60), 0, "EARLY", [e1]),
            expected("sliding", (-60, 60), 1, "ON_TIME", [e1]),
            expected("sliding", (-60, 60), 2, "LATE", [e1, e3]),
        ],
        _window(0, 120): [
            expected("sliding", (0, 120), 0, "EARLY", [e1, e2]),
            expected("sliding", (0, 120), 1, "ON_TIME", [e1, e2]),
            expected("sliding", (0, 120), 2, "LATE", [e1, e2, e3]),
        ],
        _window(60, 180): [
            expected("sliding", (60, 180), 0, "EARLY", [e2]),
            expected("sliding", (60, 180), 1, "ON_TIME", [e2]),
        ],
        _window(120, 240): [expected("sliding", (120, 240), 0, "ON_TIME", [e4])],
        _window(180, 300): [expected("sliding", (180, 300), 0, "ON_TIME", [e4])],
    }))
    # The fixed windows (60 s) refuse e3 too: [0, 60) closed at 90 s.
    assert_that(out.too_late | "Reason" >> _reason(),
                equal_to([("too_late", "e3", "fixed"), ("too_late", "e5", "fixed, sliding")]),
                label="TooLate")
    assert run_and_count(p) == {"too_late_events.fixed": 2, "too_late_events.sliding": 1}


def test_an_admitted_event_counts_in_every_window_it_belongs_to() -> None:
    """Sliding 30 s every 10 s, 5 s lateness. At watermark 25.001 s an event at 3 s is admitted:
    its newest window [0, 30) closes at 35 s. It counts there and in [-20, 10) and [-10, 20) too,
    whose own end + lateness (15 and 25 s) has passed: the rule decides per event, never leaving
    part of an event out. At 35.001 s another event at 3 s is refused by every sliding window."""
    from apache_beam.utils.timestamp import Timestamp

    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("a", 1, 1.0), tv("b", 21, 2.0)])
        .advance_watermark_to(Timestamp(micros=(BASE_S + 25) * 1_000_000 + 1000))
        .add_elements([tv("late", 3, 4.0)])
        .advance_watermark_to(Timestamp(micros=(BASE_S + 35) * 1_000_000 + 1000))
        .add_elements([tv("too_late", 3, 8.0)])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | _event_time(fixed_size_s=10, sliding_size_s=30, sliding_period_s=10,
                                   early_firing_delay_s=None, allowed_lateness_s=5)
    want = {-20: [1.0, 4.0], -10: [1.0, 4.0], 0: [1.0, 2.0, 4.0], 10: [2.0], 20: [2.0]}

    def final_panes(actual: list[Aggregate]) -> None:
        last = {a.window_start_ms // 1000 - BASE_S: a for a in sorted(actual, key=lambda a: a.pane_index)}
        assert {s: (a.count, a.sum_amount) for s, a in last.items()} == {
            s: (len(v), sum(v)) for s, v in want.items()}

    assert_that(out.sliding, final_panes, label="Panes")
    # The fixed windows (10 s) refuse both: [0, 10) closed at 15 s.
    assert_that(out.too_late | "Reason" >> _reason(),
                equal_to([("too_late", "late", "fixed"), ("too_late", "too_late", "fixed, sliding")]),
                label="TooLate")
    p.run().wait_until_finish()


def test_early_firing_waits_for_the_processing_time_delay() -> None:
    """2 s early delay: nothing after 1.5 s, one early pane (with both events) after 3 s."""
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv("e1", 1, 1.0)])
        .advance_processing_time(1.5)
        .add_elements([tv("e2", 2, 2.0, user="u2")])
        .advance_processing_time(1.5)
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | _event_time(fixed_size_s=60, early_firing_delay_s=2)
    both = [(1.0, "u1"), (2.0, "u2")]
    assert_that(out.fixed, equal_to_per_window({
        _window(0, 60): [
            expected("fixed", (0, 60), 0, "EARLY", both),
            expected("fixed", (0, 60), 1, "ON_TIME", both),
        ],
    }))
    p.run().wait_until_finish()


def test_sub_second_early_delay_reaches_the_runner_in_milliseconds() -> None:
    """What Flink reads is the trigger proto: 0.25 s must arrive as 250 ms. (Beam's own
    AfterProcessingTime fails on a float delay, and the DirectRunner, which re-reads the proto in
    Python, floors it to whole seconds — so sub-second timing itself is only observable on Flink.)"""
    proto = AfterProcessingTimeMs(0.25).to_runner_api(None)
    assert proto.after_processing_time.timestamp_transforms[0].delay.delay_millis == 250


def test_every_dimension_gets_its_own_key() -> None:
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([
            tv("e1", 1, 1.0, event_type="view", country="DE", category="books"),
            tv("e2", 2, 2.0, event_type="purchase", country="DE", category="books"),
            tv("e3", 3, 4.0, event_type="purchase", country="DE", category="toys"),
        ])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | _event_time(dimensions=DEFAULT_DIMENSIONS)
    assert_that(
        out.fixed | "KeyCount" >> _key_count(),
        equal_to([
            ("fixed|event_type_country|view|DE", 1, 1.0),
            ("fixed|event_type_country|purchase|DE", 2, 6.0),
            ("fixed|category|books", 2, 3.0),
            ("fixed|category|toys", 1, 4.0),
        ]),
    )
    p.run().wait_until_finish()


def _key_count() -> Any:
    return beam.Map(lambda a: (a.window_key.rsplit("|", 2)[0], a.count, a.sum_amount))


def test_window_key_matches_the_stream_contract() -> None:
    a = expected("fixed", (0, 60), 0, "EARLY", [(1.0, "u")])
    assert a.window_key == window_key("fixed", "category", "books", a.window_start_ms, a.window_end_ms)
    assert a.to_dict()["p99"] == a.p99


def test_parse_dimensions_and_constructor_validation() -> None:
    assert parse_dimensions("event_type+country, category") == DEFAULT_DIMENSIONS
    with pytest.raises(ValueError, match="fields must be among"):
        parse_dimensions("user_id")
    with pytest.raises(ValueError, match="duplicate"):
        parse_dimensions("category,category")
    with pytest.raises(ValueError, match="kind"):
        WindowedAggregates("session")
    with pytest.raises(ValueError, match="period"):
        WindowedAggregates("sliding", size_s=60, period_s=120)
    sliding = WindowedAggregates("sliding")
    assert (sliding.size_s, sliding.period_s) == (300, 60)
    assert WindowedAggregates("fixed").retention_s == 60 + 120 + 60
    with pytest.raises(ValueError, match="dedup_horizon_s"):
        EventTimeAggregates(dedup_horizon_s=479)  # sliding: 300 + 120 + 60 = 480 s
    with pytest.raises(ValueError, match="lookahead"):
        EventTimeAggregates(late_gate_lookahead_s=-1)
    rule = EventTimeAggregates(allowed_lateness_s=30, late_gate_lookahead_s=90).rule
    assert [(k.kind, k.size_ms, k.period_ms, k.lateness_ms) for k in rule.kinds] == [
        ("fixed", 60_000, 60_000, 30_000), ("sliding", 300_000, 60_000, 30_000)]
    assert rule.lookahead_ms == 90_000


def test_an_empty_pane_is_dropped_and_counted_not_written() -> None:
    """Flink's runner emits a final, empty pane (index 0) when one watermark jump passes a window's
    end and its garbage collection; written, it would replace the window's real pane with zeros."""
    from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

    from transforms.aggregates import AmountStats, _AttachPaneFn

    fn = _AttachPaneFn("fixed", clock=lambda: 1.0)
    win = IntervalWindow(0, 60)
    empty = AmountStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    final_empty = PaneInfo(is_first=True, is_last=True, timing=PaneInfoTiming.ON_TIME, index=0,
                           nonspeculative_index=0)
    assert list(fn.process((("category", "books"), empty), win=win, pane=final_empty)) == []
    one = AmountStats(1, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 1)
    on_time = PaneInfo(is_first=False, is_last=False, timing=PaneInfoTiming.ON_TIME, index=1,
                       nonspeculative_index=0)
    [aggregate] = fn.process((("category", "books"), one), win=win, pane=on_time)
    assert (aggregate.count, aggregate.pane_index, aggregate.timing) == (1, 1, "ON_TIME")
