"""Bundle-local batching by key shard: the step in front of every keyed stateful step.

Why: Beam Python's keyed state is priced per key and per access, not per byte. On the FnApiRunner,
Prism and Flink's SDK harness alike, every state cell a bundle touches is loaded (a runner round
trip on Flink), weighed for the SDK's state cache (``objsize`` walks every loaded module's globals:
~0.75 ms per load or commit here) and committed at the end of the bundle. Touching state once per
*event* caps a job at a few hundred events/s. Batching the events of a bundle per shard first
means a stateful step touches each shard's state once per bundle, whatever the bundle's size, and
the keyed shuffle carries one element per shard and bundle instead of one per event.

:func:`batch_by_shard` keeps the events' order within a shard (the order the stateful step would
have seen them one by one), so a batch processed element by element gives the same results.
"""

# Beam's Python API (DoFn, ParDo) is untyped, so calling it is reported everywhere; we disable only
# that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import coders
from apache_beam.typehints import Tuple
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from streaming_analytics.events import Event
from transforms.windowing import GLOBAL_WINDOWS


class EventBatch(list[Event]):
    """A list of events; its own type so that the shuffle encodes it with :class:`EventBatchCoder`."""


def _fields(e: Event) -> tuple[Any, ...]:
    return (e.event_id, e.event_type, e.event_time_ms, e.user_id, e.session_id, e.item_id, e.category,
            e.country, e.amount, e.currency, e.features, e.schema_version)


def _event(f: list[Any]) -> Event:
    return Event(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], tuple(f[10]), f[11])


class EventCoder(coders.Coder):
    """An :class:`Event` as one orjson array (where Beam encodes events one by one, e.g. between
    fused stages); see :class:`EventBatchCoder`."""

    def encode(self, event: Event) -> bytes:
        return orjson.dumps(_fields(event))

    def decode(self, encoded: bytes) -> Event:
        return _event(orjson.loads(encoded))

    def is_deterministic(self) -> bool:
        return False  # never a key

    def to_type_hint(self) -> type:
        return Event


class EventBatchCoder(coders.Coder):
    """One orjson document per batch (pickling each frozen dataclass costs ~5x more).

    Floats round-trip exactly (orjson writes the shortest repr that reads back the same double).
    """

    def encode(self, batch: list[Event]) -> bytes:
        return orjson.dumps([_fields(e) for e in batch])

    def decode(self, encoded: bytes) -> EventBatch:
        return EventBatch(_event(f) for f in orjson.loads(encoded))

    def is_deterministic(self) -> bool:
        return False  # never a key

    def to_type_hint(self) -> type:
        return EventBatch


coders.registry.register_coder(Event, EventCoder)  # type: ignore[attr-defined]
coders.registry.register_coder(EventBatch, EventBatchCoder)  # type: ignore[attr-defined]


class _BatchByShardFn(beam.DoFn):
    """Global-window events → ``(shard, [events])`` once per shard and bundle, in arrival order.

    The batch is timestamped with the earliest event time in it: a valid timestamp for every
    event in it (outputs may move a timestamp forward, never back), and no later than any of them.
    """

    def __init__(self, shards: int) -> None:
        super().__init__()
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self._shards = shards

    def start_bundle(self) -> None:
        self._batches: dict[int, EventBatch] = {}
        self._min_ms: dict[int, int] = {}

    def process(self, event: Event) -> None:
        shard = zlib.crc32(event.event_id.encode()) % self._shards
        batch = self._batches.get(shard)
        t = event.event_time_ms
        if batch is None:
            self._batches[shard] = EventBatch((event,))
            self._min_ms[shard] = t
            return
        batch.append(event)
        self._min_ms[shard] = min(self._min_ms[shard], t)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        batches, self._batches = self._batches, {}
        min_ms, self._min_ms = self._min_ms, {}
        for shard, events in batches.items():
            yield WindowedValue((shard, events), Timestamp(micros=min_ms[shard] * 1000), GLOBAL_WINDOWS)


def batch_by_shard(shards: int) -> Any:
    """The ParDo of :class:`_BatchByShardFn`: timestamped :class:`Event`\\ s in the global window →
    ``(shard, list of events)``, one element per shard (``crc32(event_id) % shards``) per bundle."""
    return beam.ParDo(_BatchByShardFn(shards)).with_output_types(Tuple[int, EventBatch])
