"""ParseEvents: raw Kafka record values -> validated, event-timestamped events plus dead letters.

Why a tagged output and not a filter: a record that fails the contract is data we owe someone an
answer about (a producer bug, a schema drift). It goes, with its raw bytes, the reason and its Kafka
position, to the ``dead_letter`` output that the sinks write to the DLQ topic and table, and it is
counted per reason code, so a spike of one kind of failure shows on a dashboard before anyone reads
the DLQ.
"""

# Beam 2.77 ships partial annotations: its transform constructors (ParDo, Map, CombinePerKey,
# triggers, ...) are untyped, so calling them is reported everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils import windowed_value
from apache_beam.utils.timestamp import Timestamp

from streaming_analytics.events import Event, InvalidEvent, parse_event
from transforms import metrics
from transforms.records import DeadLetter, KafkaRecord
from transforms.windowing import GLOBAL_WINDOWS

#: Tag of the main output (valid events).
EVENTS: Final = "events"
#: Tag of the dead-letter output.
DEAD_LETTER: Final = "dead_letter"

#: What the step accepts: a bare record value, or a record with its Kafka position.
RawRecord = bytes | str | KafkaRecord | None


def event_timestamp(event: Event) -> Timestamp:
    """The Beam timestamp of an event: its event time, exact to the millisecond."""
    return Timestamp(micros=event.event_time_ms * 1000)


def parse_record(record: RawRecord, now_ms: int) -> Event | DeadLetter:
    """Parse one record; return the event or the dead letter describing why it was refused.

    Plain Python so that it can be tested (and fuzzed) without Beam. Only the contract's own
    :class:`InvalidEvent` is caught: any other exception is a bug in our code, and hiding it in the
    DLQ would turn a crash we would fix into silent data loss.
    """
    value = record.value if isinstance(record, KafkaRecord) else record
    try:
        return parse_event(value)  # type: ignore[arg-type]  # None is part of the contract ("empty")
    except InvalidEvent as exc:
        return dead_letter_of(record, exc, now_ms)


def dead_letter_of(record: RawRecord, exc: InvalidEvent, now_ms: int) -> DeadLetter:
    """The dead letter of a record the contract refused with ``exc``: raw bytes, reason, position."""
    value: bytes | str | None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    if isinstance(record, KafkaRecord):
        value, topic, partition, offset = record.value, record.topic, record.partition, record.offset
    else:
        value = record
    raw = value.encode() if isinstance(value, str) else value
    return DeadLetter(
        raw=raw,
        reason_code=exc.code,
        reason_detail=exc.detail,
        topic=topic,
        partition=partition,
        offset=offset,
        failed_at_ms=now_ms,
    )


class _ParseFn(beam.DoFn):
    """Parse a record; emit the timestamped event or a tagged dead letter, counting both kinds.

    The clock is read for dead letters only (``failed_at_ms``): a valid event does not need it.
    With ``global_windows`` (see :meth:`ParseEvents.expand`) an event leaves with its window and
    timestamp attached, in microseconds: no ``Timestamp`` object and no window assignment per event.
    """

    def __init__(self, clock: Callable[[], float], global_windows: bool) -> None:
        super().__init__()
        self._clock = clock
        self._global_windows = global_windows
        self._parsed = Metrics.counter(metrics.NAMESPACE, metrics.EVENTS_PARSED)
        self._invalid = Metrics.counter(metrics.NAMESPACE, metrics.INVALID_EVENTS)
        self._invalid_by_code: dict[str, Any] = {}

    def process(self, record: RawRecord) -> Iterator[Any]:
        value = record.value if isinstance(record, KafkaRecord) else record
        try:
            event = parse_event(value)  # type: ignore[arg-type]  # None is part of the contract
        except InvalidEvent as exc:
            yield self._refuse(record, exc)
            return
        self._parsed.inc()
        if self._global_windows:
            yield windowed_value.create(event, event.event_time_ms * 1000, GLOBAL_WINDOWS)
        else:
            yield TimestampedValue(event, event_timestamp(event))

    def _refuse(self, record: RawRecord, exc: InvalidEvent) -> TaggedOutput[str, DeadLetter]:
        letter = dead_letter_of(record, exc, int(self._clock() * 1000))
        self._invalid.inc()
        counter = self._invalid_by_code.get(letter.reason_code)
        if counter is None:
            counter = Metrics.counter(metrics.NAMESPACE, metrics.invalid_events(letter.reason_code))
            self._invalid_by_code[letter.reason_code] = counter
        counter.inc()
        # The dead letter keeps the record's own timestamp: it is not event-time data.
        return TaggedOutput(DEAD_LETTER, letter)


class ParseEvents(beam.PTransform[Any, Any]):
    """Validate raw records against the event contract (``streaming_analytics.events``).

    Input: ``bytes``/``str`` record values or :class:`KafkaRecord`\\ s. Output: a
    ``DoOutputsTuple`` with ``events`` (valid :class:`Event`\\ s, each timestamped with its
    ``event_time_ms`` so that every later window is in event time) and ``dead_letter``
    (:class:`DeadLetter`\\ s). Counters: ``events_parsed``, ``invalid_events`` and
    ``invalid_events.<code>`` in namespace ``streaming_analytics``.

    ``clock`` (seconds since the epoch) stamps ``failed_at_ms``; tests inject a fixed one.
    """

    def __init__(self, clock: Callable[[], float] = time.time, label: str | None = None) -> None:
        super().__init__(label)
        self._clock = clock

    def expand(self, records: PCollection[Any]) -> Any:
        # In the global window (the Kafka source, every test) the DoFn emits each event as a
        # finished WindowedValue: for a TimestampedValue, Beam would build a Timestamp object and
        # run the WindowFn's assign() per event, which for the global window constructs the same
        # window anew each time (~3 µs of the step's cost per event together). Any other windowing
        # keeps TimestampedValue, so its WindowFn still assigns the windows.
        global_windows = isinstance(records.windowing.windowfn, GlobalWindows)
        return records | "Parse" >> beam.ParDo(_ParseFn(self._clock, global_windows)).with_outputs(
            DEAD_LETTER, main=EVENTS
        )
