"""DeduplicateEvents: drop re-delivered events (same ``event_id``) within an event-time horizon.

Why it exists: producers retry, and Kafka delivery is at-least-once, so the same event can reach us
twice; counted twice it would inflate every aggregate it belongs to.

How: a stateful DoFn keyed by ``event_id`` remembers that an id was seen, and an event-time timer
forgets it once the watermark passes ``event_time + horizon``. Keyed state and event-time timers are
what Flink checkpoints and restores with the job, so the dedup memory survives restarts and scales
out by key. Memory is bounded by the number of distinct ids within one horizon of event time.

How far back: an event is dropped as a duplicate if an event with the same id was seen and the
watermark has not yet passed ``first_event_time + horizon`` (default 10 minutes). A re-delivery after
that is not recognised here — but choose ``horizon >= window size + allowed lateness (+ the late
gate's margin)`` for every windowed aggregate downstream (``build_pipeline`` checks it) and such a
re-delivery is too late for every window it belongs to anyway, so it can never be counted twice.
The first delivery wins; a "duplicate" with the same id but different content is dropped too (and
counted), since an event id is the producer's promise of identity.
"""

# Beam 2.77 ships partial annotations: its transform constructors (ParDo, Map, CombinePerKey,
# triggers, ...) are untyped, so calling them is reported everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.typehints import Tuple
from apache_beam.utils.timestamp import Duration

from streaming_analytics.events import Event
from transforms import metrics

#: Default dedup horizon in seconds of event time (see the module docstring).
DEFAULT_HORIZON_S = 600


_SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
_EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
_SEEN_PARAM = beam.DoFn.StateParam(_SEEN)
_EXPIRY_PARAM = beam.DoFn.TimerParam(_EXPIRY)


class _DedupFn(beam.DoFn):
    """Keyed by event id: pass the first event, drop and count the rest until the timer expires."""

    def __init__(self, horizon_s: float) -> None:
        super().__init__()
        self._horizon = Duration(micros=int(horizon_s * 1_000_000))
        self._duplicates = Metrics.counter(metrics.NAMESPACE, metrics.DUPLICATE_EVENTS)

    def process(
        self,
        element: tuple[str, Event],
        timestamp: Any = beam.DoFn.TimestampParam,
        seen: Any = _SEEN_PARAM,
        expiry: Any = _EXPIRY_PARAM,
    ) -> Iterator[Event]:
        if seen.read():
            self._duplicates.inc()
            return
        seen.write(True)
        # The timer is set from the element's event time (not re-armed by duplicates), so the
        # horizon is measured from the first delivery.
        expiry.set(timestamp + self._horizon)
        yield element[1]

    @on_timer(_EXPIRY)
    def expire(self, seen: Any = _SEEN_PARAM) -> None:
        seen.clear()


def _by_event_id(event: Event) -> tuple[str, Event]:
    return event.event_id, event


class DeduplicateEvents(beam.PTransform[Any, Any]):
    """Drop events whose ``event_id`` was already seen within ``horizon_s`` of event time.

    Input and output: timestamped :class:`Event`\\ s in the global window (apply it before any
    windowing). Counter ``duplicate_events`` in namespace ``streaming_analytics``.
    """

    def __init__(self, horizon_s: float = DEFAULT_HORIZON_S, label: str | None = None) -> None:
        super().__init__(label)
        if horizon_s <= 0:
            raise ValueError(f"horizon_s must be positive, got {horizon_s}")
        self.horizon_s = horizon_s

    def expand(self, events: PCollection[Any]) -> PCollection[Any]:
        deduplicated: PCollection[Any] = (
            events
            | "KeyByEventId" >> beam.Map(_by_event_id).with_output_types(Tuple[str, Any])
            | "DropSeenIds" >> beam.ParDo(_DedupFn(self.horizon_s))
        )
        return deduplicated
