"""The batched stateful path: the event coders round-trip exactly, batch_by_shard keeps order, the
dedup shard's in-memory copy is never trusted across a state it did not write (and a late-data timer
firing does not invalidate it), and slot-based pre-aggregation equals the per-window path when the
window size is not a multiple of the period."""

from __future__ import annotations

from typing import Any

import pytest
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

from tests.unit.test_transforms_aggregates import expected
from tests.unit.test_transforms_support import BASE_S, event, fixed_clock, streaming_pipeline, tv
from transforms.aggregates import Dimension, EventTimeAggregates
from transforms.batching import EventBatch, EventBatchCoder, EventCoder, _BatchByShardFn
from transforms.dedup import _DedupShardFn
from transforms.late_data import Deadlines, LateDataRule

pytestmark = pytest.mark.unit


def test_event_coders_round_trip_exactly() -> None:
    events = [event(f"e{i}", i * 0.001, i / 7 + 0.1, user=f"u{i}") for i in range(50)]
    events.append(event("zero", 1, 0.0))
    assert EventCoder().decode(EventCoder().encode(events[3])) == events[3]
    decoded = EventBatchCoder().decode(EventBatchCoder().encode(EventBatch(events)))
    assert decoded == events and isinstance(decoded, EventBatch)


def test_batch_by_shard_keeps_arrival_order_and_earliest_timestamp() -> None:
    fn = _BatchByShardFn(1)
    fn.start_bundle()
    for e in (event("b", 5, 1.0), event("a", 2, 1.0), event("c", 9, 1.0)):
        fn.process(e)
    (out,) = list(fn.finish_bundle())
    assert [e.event_id for e in out.value[1]] == ["b", "a", "c"]
    assert out.timestamp.micros == (BASE_S + 2) * 1_000_000


class _Cell:
    def __init__(self, value: Any = None) -> None:
        self.value = value

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value


class _Bag:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def read(self) -> list[Any]:
        return list(self.items)

    def add(self, item: Any) -> None:
        self.items.append(item)

    def clear(self) -> None:
        self.items = []


class _Timer:
    """A timer family: the newest time set per dynamic tag."""

    def __init__(self) -> None:
        self.ts: Any = None
        self.by_tag: dict[str, Any] = {}

    def set(self, ts: Any, dynamic_timer_tag: str = "") -> None:
        self.ts = ts
        self.by_tag[dynamic_timer_tag] = ts


RULE = LateDataRule(kinds=(Deadlines("fixed", size_ms=60_000, period_ms=60_000, lateness_ms=0),),
                    lookahead_ms=0)


def test_dedup_copy_is_rebuilt_when_state_was_restored() -> None:
    fn = _DedupShardFn(horizon_s=600, rule=RULE)
    fn.setup()
    meta, ids, expiry, gate = _Cell(), _Bag(), _Timer(), _Timer()

    def run(*names: str) -> list[str]:
        batch = [event(n, 1, 1.0) for n in names]
        return [v.value.event_id for v in fn.process((0, batch), meta, ids, expiry, gate)
                if hasattr(v, "windows")]  # the main output; the rest are tagged

    assert run("a", "b", "a") == ["a", "b"]
    checkpoint = (meta.value, list(ids.items))
    assert run("c") == ["c"]
    # The late-data timer fires (another instance could run it): the ids are unchanged, so the
    # copy stays valid — and "c" is still known.
    fn.learn(gate.ts, meta, gate)
    assert meta.value[3] == (BASE_S + 60) * 1000  # the watermark passed the 60 s deadline
    assert run("c") == []
    # Restore the state as of the checkpoint: "c" is unknown again, though this instance saw it.
    meta.value, ids.items = checkpoint[0], list(checkpoint[1])
    assert run("c", "a") == ["c"]


def test_sliding_windows_whose_size_is_no_multiple_of_the_period() -> None:
    items = [(i * 7, float(i), f"u{i % 3}") for i in range(20)]  # event times 0 .. 133 s
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv(f"e{i}", t, amount, user=user) for i, (t, amount, user) in enumerate(items)])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | EventTimeAggregates(
        sliding_size_s=90, sliding_period_s=60, early_firing_delay_s=None,
        dimensions=(Dimension("category", ("category",)),), dedup_shards=2, clock=fixed_clock)
    want = []
    for start in (-60, 0, 60, 120):
        inside = [(amount, user) for t, amount, user in items if start <= t < start + 90]
        want.append(expected("sliding", (start, start + 90), 0, "ON_TIME", inside))
    assert_that(out.sliding, equal_to(want))
    p.run().wait_until_finish()
