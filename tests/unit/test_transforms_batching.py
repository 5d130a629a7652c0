"""The batched stateful path: the event coders round-trip exactly, BatchByShard keeps order, the
dedup shard's in-memory copy is never trusted across a state it did not write, and slot-based
pre-aggregation equals the per-window path when the window size is not a multiple of the period."""

from __future__ import annotations

from typing import Any

import pytest
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.testing.util import assert_that, equal_to

from tests.unit.test_transforms_aggregates import expected
from tests.unit.test_transforms_support import BASE_S, event, fixed_clock, streaming_pipeline, tv
from transforms.aggregates import Dimension, WindowedAggregates
from transforms.batching import EventBatch, EventBatchCoder, EventCoder, _BatchByShardFn
from transforms.dedup import _DedupShardFn

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
    def set(self, ts: Any) -> None:
        self.ts = ts


def test_dedup_copy_is_rebuilt_when_state_was_restored() -> None:
    fn = _DedupShardFn(horizon_s=600)
    fn.setup()
    meta, ids, timer = _Cell(), _Bag(), _Timer()

    def run(*names: str) -> list[str]:
        batch = [event(n, 1, 1.0) for n in names]
        return [v.value.event_id for v in fn.process((0, batch), meta, ids, timer)]

    assert run("a", "b", "a") == ["a", "b"]
    checkpoint = (meta.value, list(ids.items))
    assert run("c") == ["c"]
    # Restore the state as of the checkpoint: "c" is unknown again, though this instance saw it.
    meta.value, ids.items = checkpoint[0], list(checkpoint[1])
    assert run("c", "a") == ["c"]


@pytest.mark.parametrize("pre_aggregate", [True, False])
def test_sliding_windows_whose_size_is_no_multiple_of_the_period(pre_aggregate: bool) -> None:
    items = [(i * 7, float(i), f"u{i % 3}") for i in range(20)]  # event times 0 .. 133 s
    stream = (
        _TestStream()
        .advance_watermark_to(BASE_S)
        .add_elements([tv(f"e{i}", t, amount, user=user) for i, (t, amount, user) in enumerate(items)])
        .advance_watermark_to_infinity()
    )
    p = streaming_pipeline()
    out = p | stream | WindowedAggregates(
        "sliding", size_s=90, period_s=60, early_firing_delay_s=None,
        dimensions=(Dimension("category", ("category",)),), clock=fixed_clock,
        pre_aggregate=pre_aggregate,
    )
    want = []
    for start in (-60, 0, 60, 120):
        inside = [(amount, user) for t, amount, user in items if start <= t < start + 90]
        want.append(expected("sliding", (start, start + 90), 0, "ON_TIME", inside))
    assert_that(out["aggregates"], equal_to(want))
    p.run().wait_until_finish()
