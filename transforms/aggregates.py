"""Event-time aggregates: per-dimension statistics of ``amount`` over fixed and sliding windows.

:class:`EventTimeAggregates` is the step the job runs, one chain::

    DeduplicateEvents (dedup + the late-data rule) ─┬─ admitted (fixed)   ─ FixedAggregates
                                                    ├─ admitted (sliding) ─ SlidingAggregates
                                                    ├─ events (every first delivery, for scoring)
                                                    └─ too_late (dead letters)

The rule that decides "too late" lives in ``transforms/late_data.py`` and is applied once, by
``DeduplicateEvents`` (``transforms/dedup.py``), which learns the watermark from event-time timers;
the windows below only ever see what it admitted. Flink savepoints bind state to the step labels
(docs/pipeline.md lists them) — never rename one.

:class:`WindowedAggregates` (one per kind) is a chain of small, stably labelled steps:
``PreAggregateWindows`` → ``Window`` → ``KeepOwnWindow`` → ``Combine`` → ``AttachPane``.

* **Window**: event-time windows with the trigger written out in full::

      AfterWatermark(early=AfterProcessingTime(early_firing_delay_s),  # speculative panes
                     late=AfterCount(1))                                 # one pane per late batch

  ACCUMULATING panes (every pane carries the whole window so far, so a reader keeps the newest and
  drops the rest). The late-data rule decides per event: an event whose newest window is still
  open (its end + allowed lateness not passed) counts in *every* window it belongs to; a refused
  one in none. So the GroupByKey keeps a window for the allowed lateness, plus ``size - period``
  (a sliding window's oldest events have newer windows that close that much later), plus
  ``late_gate_margin`` for what the rule admitted while its knowledge of the watermark lagged
  (docs/pipeline.md, "Late data").
* **PreAggregateWindows / Window / KeepOwnWindow / Combine**: a bundle-local partial aggregate per
  (dimension key, window), computed before windowing and timestamped inside its window; ``Window``
  assigns the standard windows, ``KeepOwnWindow`` keeps the partial's own, and a CombinePerKey
  merges partials. Beam's own combiner lifting does not apply here: the portable
  runner skips it in streaming mode and the DirectRunner only lifts default windowing, so we do it
  ourselves. Every part of the accumulator merges exactly (integer micro-unit sum, min/max,
  histogram bucket counts, HyperLogLog registers), so the result does not depend on bundling.
* **AttachPane**: turns each firing into an :class:`Aggregate` with the window bounds and the pane
  (index, EARLY/ON_TIME/LATE, final flag) read from ``WindowParam``/``PaneInfoParam``.
"""

# Beam 2.77 ships partial annotations: its transform constructors (ParDo, Map, CombinePerKey,
# triggers, ...) are untyped, so calling them is reported everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.pvalue import PCollection
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from streaming_analytics.events import Event
from streaming_analytics.streams import window_key
from transforms import metrics
from transforms.dedup import (
    DEFAULT_HORIZON_S,
    DEFAULT_SHARDS,
    EVENTS,
    TOO_LATE,
    DeduplicateEvents,
    admitted_tag,
)
from transforms.late_data import Deadlines, LateDataRule
from transforms.sketches import HyperLogLog, QuantileSketch
from transforms.windowing import GLOBAL_WINDOWS

FIXED: Final = "fixed"
SLIDING: Final = "sliding"
KINDS: Final = (FIXED, SLIDING)

#: Stable step labels inside :class:`EventTimeAggregates` (Flink savepoints bind state to them).
DEDUP_LABEL: Final = "DeduplicateEvents"
FIXED_LABEL: Final = "FixedAggregates"
SLIDING_LABEL: Final = "SlidingAggregates"

DEFAULT_FIXED_SIZE_S: Final = 60.0
DEFAULT_SLIDING_SIZE_S: Final = 300.0
DEFAULT_SLIDING_PERIOD_S: Final = 60.0
DEFAULT_EARLY_FIRING_DELAY_S: Final = 1.0
DEFAULT_ALLOWED_LATENESS_S: Final = 120.0
DEFAULT_LATE_GATE_MARGIN_S: Final = 60.0
DEFAULT_LATE_GATE_LOOKAHEAD_S: Final = 3600.0

_STRING_FIELDS: Final = frozenset({"event_type", "country", "category", "currency", "item_id"})


# --------------------------------------------------------------------------------------------------
# Dimensions


@dataclass(frozen=True, slots=True)
class Dimension:
    """A grouping of events: ``name`` as stored with each row, ``fields`` whose values form the key.

    The key is the field values joined with ``|``, e.g. ``event_type_country`` → ``purchase|DE``.
    """

    name: str
    fields: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [f for f in self.fields if f not in _STRING_FIELDS]
        if not self.fields or unknown:
            raise ValueError(
                f"dimension {self.name!r}: fields must be among {sorted(_STRING_FIELDS)}, got {self.fields}"
            )

    def key_of(self, event: Event) -> str:
        """The dimension key of an event."""
        return "|".join(getattr(event, f) for f in self.fields)


DEFAULT_DIMENSIONS: Final = (
    Dimension("event_type_country", ("event_type", "country")),
    Dimension("category", ("category",)),
)


def parse_dimensions(spec: str) -> tuple[Dimension, ...]:
    """Parse ``"event_type+country,category"``: comma-separated dimensions, ``+`` joining fields.

    The dimension's name is its fields joined with ``_`` (``event_type_country``).
    """
    dimensions = []
    for part in spec.split(","):
        fields = tuple(f.strip() for f in part.split("+") if f.strip())
        if fields:
            dimensions.append(Dimension("_".join(fields), fields))
    if not dimensions:
        raise ValueError(f"no dimension in {spec!r}")
    names = [d.name for d in dimensions]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate dimension in {spec!r}")
    return tuple(dimensions)


# --------------------------------------------------------------------------------------------------
# The combine function


class AggregateAccumulator:
    """Partial statistics of a set of events; every field merges exactly (see the module docstring).

    ``sum_micros`` is the sum of ``round(amount * 1e6)``: an integer, so the sum is the same for any
    grouping and order of partials (a float sum is not), exact to 1e-6 per event.
    """

    __slots__ = ("count", "max", "min", "quantiles", "sum_micros", "users")

    def __init__(self) -> None:
        self.count = 0
        self.sum_micros = 0
        self.min = float("inf")
        self.max = float("-inf")
        self.quantiles = QuantileSketch()
        self.users = HyperLogLog()

    def add(self, event: Event) -> None:
        amount = event.amount
        self.count += 1
        self.sum_micros += round(amount * 1_000_000)
        self.min = min(self.min, amount)
        self.max = max(self.max, amount)
        self.quantiles.add(amount)
        self.users.add(event.user_id)

    def add_prepared(self, amount: float, micros: int, bucket: int | None, user_hash: int) -> None:
        """:meth:`add` with the per-event work (micro-units, histogram bucket, user hash) done once
        by the caller, for an event that goes into several accumulators (dimensions, windows)."""
        self.count += 1
        self.sum_micros += micros
        self.min = min(self.min, amount)
        self.max = max(self.max, amount)
        self.quantiles.add_bucket(bucket)
        self.users.add_hash(user_hash)

    def merge(self, other: AggregateAccumulator) -> None:
        self.count += other.count
        self.sum_micros += other.sum_micros
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.quantiles.merge(other.quantiles)
        self.users.merge(other.users)


@dataclass(frozen=True, slots=True)
class AmountStats:
    """What the combine step outputs per key and pane; :class:`Aggregate` adds window and pane."""

    count: int
    sum_amount: float
    mean_amount: float
    min_amount: float
    max_amount: float
    p50: float
    p95: float
    p99: float
    distinct_users: int


class EventStatsFn(beam.CombineFn):
    """Events → :class:`AmountStats`: exact count/sum/mean/min/max, approximate p50/p95/p99
    (relative error ≤ 1 %, :class:`QuantileSketch`) and distinct users (≈1.6 % standard error,
    :class:`HyperLogLog`)."""

    def create_accumulator(self) -> AggregateAccumulator:
        return AggregateAccumulator()

    def add_input(self, accumulator: AggregateAccumulator, event: Event) -> AggregateAccumulator:
        accumulator.add(event)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[AggregateAccumulator]) -> AggregateAccumulator:
        it = iter(accumulators)
        result = next(it, None) or AggregateAccumulator()
        for other in it:
            result.merge(other)
        return result

    def extract_output(self, accumulator: AggregateAccumulator) -> AmountStats:
        return stats_of(accumulator)


class MergePartialsFn(EventStatsFn):
    """Like :class:`EventStatsFn`, but its inputs are partial accumulators (from ``PreAggregateWindows``)."""

    def add_input(  # type: ignore[override]
        self, accumulator: AggregateAccumulator, partial: AggregateAccumulator
    ) -> AggregateAccumulator:
        accumulator.merge(partial)
        return accumulator


def stats_of(acc: AggregateAccumulator) -> AmountStats:
    """Final statistics of an accumulator (all zero for an empty one: see :class:`_AttachPaneFn`)."""
    if acc.count == 0:
        return AmountStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    total = acc.sum_micros / 1_000_000

    def q(p: float) -> float:
        value = acc.quantiles.quantile(p)
        assert value is not None
        # Clamping to the exact extremes never moves the estimate away from the true order statistic.
        return min(max(value, acc.min), acc.max)

    return AmountStats(
        count=acc.count,
        sum_amount=total,
        mean_amount=total / acc.count,
        min_amount=acc.min,
        max_amount=acc.max,
        p50=q(0.50),
        p95=q(0.95),
        p99=q(0.99),
        distinct_users=acc.users.estimate(),
    )


# --------------------------------------------------------------------------------------------------
# The output record


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One pane of one window of one dimension key: the aggregate payload of the sinks and streams.

    ``is_final`` is Beam's ``PaneInfo.is_last``. Beam Python cannot ask for a closing pane
    (Java's ``ClosingBehavior.FIRE_ALWAYS``), so a window usually ends without a pane marked
    final: a consumer knows a window is complete once the watermark has passed its end + allowed
    lateness + the late gate's margin (+ size - period for sliding windows, see the module
    docstring). Within a window a newer pane supersedes: by revision (``emitted_at_ms``, then
    ``pane_index``; ``streaming_analytics.streams.pane_revision``), which stays ordered across a
    restore of the job, where Beam's index starts again from its restored value.
    """

    kind: str
    dimension: str
    key: str
    window_start_ms: int
    window_end_ms: int
    pane_index: int
    timing: str
    is_final: bool
    count: int
    sum_amount: float
    mean_amount: float
    min_amount: float
    max_amount: float
    p50: float
    p95: float
    p99: float
    distinct_users: int
    emitted_at_ms: int

    @property
    def window_key(self) -> str:
        """Identity of the window (Postgres primary key, stream entry ``key``)."""
        return window_key(self.kind, self.dimension, self.key, self.window_start_ms, self.window_end_ms)

    def to_dict(self) -> dict[str, Any]:
        """The payload as a JSON-ready dict: what ``dataclasses.asdict`` returns (every field is an
        immutable scalar) without its recursive deep copy, which cost ~25 µs per pane, more than ten
        times this — and every pane is converted once per sink."""
        return {name: getattr(self, name) for name in _AGGREGATE_FIELDS}


#: :class:`Aggregate`'s field names, in order (:meth:`Aggregate.to_dict`).
_AGGREGATE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Aggregate))


# --------------------------------------------------------------------------------------------------
# Triggers


class AfterProcessingTimeMs(trigger.AfterProcessingTime):
    """``AfterProcessingTime`` whose delay may be sub-second on a portable runner (Flink).

    Beam 2.77's ``AfterProcessingTime.to_runner_api`` writes ``delay * 1000`` into an int64 proto
    field, which fails for a float delay; this writes whole milliseconds. (Its ``from_runner_api``
    still floors to whole seconds, which only matters where Python re-reads the proto.)
    """

    def to_runner_api(self, context: Any) -> Any:
        delay_proto = beam_runner_api_pb2.TimestampTransform(
            delay=beam_runner_api_pb2.TimestampTransform.Delay(delay_millis=round(self.delay * 1000))
        )
        return beam_runner_api_pb2.Trigger(
            after_processing_time=beam_runner_api_pb2.Trigger.AfterProcessingTime(
                timestamp_transforms=[delay_proto]
            )
        )


# --------------------------------------------------------------------------------------------------
# The steps


def _ms(ts: Timestamp) -> int:
    return int(ts.micros // 1000)


class _PreAggregateFn(beam.DoFn):
    """Admitted event batches (global window) → one partial aggregate per (dimension key, window
    start) per bundle, emitted at the end of the bundle, still in the global window.

    It computes each event's windows itself (integer arithmetic, the same rule as Beam's
    ``FixedWindows``/``SlidingWindows`` with offset 0) and does the per-event work (micro-units,
    histogram bucket, user hash) once for all its dimensions and windows. The shuffle then carries
    one element per key and window per bundle instead of one per event, dimension and window.
    Each partial is timestamped with the earliest event time among its events — a timestamp inside
    its window — so that ``Window`` assigns it that window (among others, for sliding windows;
    ``KeepOwnWindow`` drops the others) and the GroupByKey's lateness decision is the one it would
    have made for that event.
    """

    def __init__(self, size_ms: int, period_ms: int, dimensions: Sequence[Dimension]) -> None:
        super().__init__()
        self._size_ms = size_ms
        self._period_ms = period_ms
        self._dimensions = tuple((d.name, d.fields) for d in dimensions)

    def start_bundle(self) -> None:
        # (dimension name, key, slot start ms) -> [accumulator, earliest event time ms]
        self._partials: dict[tuple[str, str, int], list[Any]] = {}

    def process(self, events: list[Event]) -> None:
        partials = self._partials
        # When the size is a multiple of the period (always for fixed windows), an event is added
        # once per dimension to the partial of its period-long slot, and finish_bundle merges each
        # slot into the size/period windows that contain it; otherwise it goes to every window.
        period, size = self._period_ms, self._size_ms
        sliced = size % period == 0
        bucket_of, hash_item = QuantileSketch.bucket_of, HyperLogLog.hash_item
        for event in events:
            t = event.event_time_ms
            amount = event.amount
            micros = round(amount * 1_000_000)
            bucket = bucket_of(amount)
            user_hash = hash_item(event.user_id)
            last = t - t % period
            starts = (last,) if sliced else range(last, t - size, -period)
            for name, fields in self._dimensions:
                key = getattr(event, fields[0]) if len(fields) == 1 else "|".join(
                    [getattr(event, f) for f in fields])
                for start in starts:
                    slot = partials.get((name, key, start))
                    if slot is None:
                        slot = [AggregateAccumulator(), t]
                        partials[(name, key, start)] = slot
                    elif t < slot[1]:
                        slot[1] = t
                    slot[0].add_prepared(amount, micros, bucket, user_hash)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        partials, self._partials = self._partials, {}
        size, period = self._size_ms, self._period_ms
        if size % period == 0 and size != period:
            windows: dict[tuple[str, str, int], list[Any]] = {}
            for (name, key, slot_start), (acc, t) in partials.items():
                for start in range(slot_start, slot_start - size, -period):
                    window = windows.get((name, key, start))
                    if window is None:
                        window = [AggregateAccumulator(), t]
                        windows[(name, key, start)] = window
                    elif t < window[1]:
                        window[1] = t
                    window[0].merge(acc)
            partials = windows
        for (name, key, start), (acc, t) in partials.items():
            yield WindowedValue(((name, key), (start, acc)), Timestamp(micros=t * 1000), GLOBAL_WINDOWS)


class _KeepOwnWindowFn(beam.DoFn):
    """A partial of window ``start`` was assigned every window containing its timestamp: keep it
    in its own window only."""

    def process(
        self,
        element: tuple[tuple[str, str], tuple[int, AggregateAccumulator]],
        win: Any = beam.DoFn.WindowParam,
    ) -> Iterator[tuple[tuple[str, str], AggregateAccumulator]]:
        key, (start_ms, acc) = element
        if win.start.micros == start_ms * 1000:
            yield key, acc


class _AttachPaneFn(beam.DoFn):
    """Combine output + window + pane info → :class:`Aggregate`; empty panes are dropped.

    Every partial the GroupByKey receives counts at least one event, so a pane with nothing in it
    carries nothing — but Flink's runner emits one: when one watermark jump passes both a window's
    end and its garbage-collection time, the window fires its ON_TIME pane and, after its state is
    cleared, a *final* pane with pane index 0 and an empty accumulator (seen on Flink 1.19 with
    Beam 2.62). Written, it would replace the window's real pane (a later emission is newer:
    ``streams.pane_revision``) with zeros. Counted in ``empty_panes_dropped``.
    """

    def __init__(self, kind: str, clock: Callable[[], float]) -> None:
        super().__init__()
        self._kind = kind
        self._clock = clock
        self._empty = Metrics.counter(metrics.NAMESPACE, metrics.EMPTY_PANES_DROPPED)

    def process(
        self,
        element: tuple[tuple[str, str], AmountStats],
        win: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[Aggregate]:
        (dimension, key), s = element
        if s.count == 0:
            self._empty.inc()
            return
        yield Aggregate(
            kind=self._kind,
            dimension=dimension,
            key=key,
            window_start_ms=_ms(win.start),
            window_end_ms=_ms(win.end),
            pane_index=pane.index,
            timing=PaneInfoTiming.to_string(pane.timing),
            is_final=pane.is_last,
            count=s.count,
            sum_amount=s.sum_amount,
            mean_amount=s.mean_amount,
            min_amount=s.min_amount,
            max_amount=s.max_amount,
            p50=s.p50,
            p95=s.p95,
            p99=s.p99,
            distinct_users=s.distinct_users,
            emitted_at_ms=int(self._clock() * 1000),
        )


class WindowedAggregates(beam.PTransform[Any, Any]):
    """Per-dimension window aggregates of one kind (see the module docstring), over the event batches
    that :class:`~transforms.dedup.DeduplicateEvents` admitted for this kind.

    Args:
        kind: ``"fixed"`` or ``"sliding"``.
        size_s: window size (default 60 s fixed, 300 s sliding).
        period_s: sliding period (default 60 s; must be None or equal to size for fixed windows).
        early_firing_delay_s: processing-time delay after the first element of a pane before an
            EARLY pane fires (default 1 s; sub-second allowed); None: no early panes (batch runs,
            which have no processing-time clock).
        allowed_lateness_s: how long after the watermark passes a window's end late events still
            update it, each in a LATE pane (default 120 s).
        dimensions: the groupings (default: event type x country, category).
        late_gate_margin_s: extra time the GroupByKey keeps a window beyond what the rule needs
            (see the module docstring).
        clock: wall clock (seconds) for ``emitted_at_ms``; tests inject one.

    Output: :class:`Aggregate`\\ s, one per key, window and pane.
    """

    def __init__(
        self,
        kind: str = FIXED,
        *,
        size_s: float | None = None,
        period_s: float | None = None,
        early_firing_delay_s: float | None = DEFAULT_EARLY_FIRING_DELAY_S,
        allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S,
        dimensions: Sequence[Dimension] = DEFAULT_DIMENSIONS,
        late_gate_margin_s: float = DEFAULT_LATE_GATE_MARGIN_S,
        clock: Callable[[], float] = time.time,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if size_s is None:
            size_s = DEFAULT_FIXED_SIZE_S if kind == FIXED else DEFAULT_SLIDING_SIZE_S
        if period_s is None:
            period_s = size_s if kind == FIXED else DEFAULT_SLIDING_PERIOD_S
        if kind == FIXED and period_s != size_s:
            raise ValueError("fixed windows have no period distinct from their size")
        if not 0 < period_s <= size_s:
            raise ValueError(f"need 0 < period_s <= size_s, got period {period_s}, size {size_s}")
        if (size_s * 1000 % 1 or period_s * 1000 % 1 or allowed_lateness_s * 1000 % 1
                or late_gate_margin_s * 1000 % 1):
            raise ValueError("window size, period, lateness and margin must be whole milliseconds")
        if (early_firing_delay_s or 0) < 0 or allowed_lateness_s < 0 or late_gate_margin_s < 0:
            raise ValueError("delays, lateness and margin must be >= 0")
        if not dimensions:
            raise ValueError("at least one dimension is required")
        self.kind = kind
        self.size_s = size_s
        self.period_s = period_s
        self.early_firing_delay_s = early_firing_delay_s
        self.allowed_lateness_s = allowed_lateness_s
        self.dimensions = tuple(dimensions)
        self.late_gate_margin_s = late_gate_margin_s
        self.clock = clock

    @property
    def deadlines(self) -> Deadlines:
        """When these windows stop taking an event (the late-data rule's view of them)."""
        return Deadlines(kind=self.kind, size_ms=round(self.size_s * 1000),
                         period_ms=round(self.period_s * 1000),
                         lateness_ms=round(self.allowed_lateness_s * 1000))

    @property
    def retention_s(self) -> float:
        """How long after its newest window starts an event may still be admitted, plus the margin:
        what the dedup horizon must cover, so that a re-delivery the dedup step has forgotten is
        refused by the late-data rule instead of counted twice."""
        return self.size_s + self.allowed_lateness_s + self.late_gate_margin_s

    @property
    def window_retention_s(self) -> float:
        """How long after its start the GroupByKey keeps a window (see the module docstring)."""
        return 2 * self.size_s - self.period_s + self.allowed_lateness_s + self.late_gate_margin_s

    def _window_fn(self) -> window.WindowFn:
        if self.kind == FIXED:
            return window.FixedWindows(self.size_s)
        return window.SlidingWindows(self.size_s, self.period_s)

    def expand(self, admitted: PCollection[Any]) -> PCollection[Any]:
        size_ms, period_ms = round(self.size_s * 1000), round(self.period_s * 1000)
        window_into = beam.WindowInto(
            self._window_fn(),
            # Early: a speculative pane `early_firing_delay_s` of processing time after the first
            # element of the pane; on time: when the watermark passes the window end; late: one
            # pane per late element (batch) until the allowed lateness is over.
            # A batch run has no processing time: early_firing_delay_s=None leaves early panes out.
            trigger=trigger.AfterWatermark(
                early=(None if self.early_firing_delay_s is None
                       else AfterProcessingTimeMs(self.early_firing_delay_s)),
                late=trigger.AfterCount(1),
            ),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=self.window_retention_s - self.size_s,  # see the module docstring
        )
        combined = (
            admitted
            | "PreAggregateWindows" >> beam.ParDo(_PreAggregateFn(size_ms, period_ms, self.dimensions))
            | "Window" >> window_into
            | "KeepOwnWindow" >> beam.ParDo(_KeepOwnWindowFn())
            | "Combine" >> beam.CombinePerKey(MergePartialsFn())
        )
        aggregates: PCollection[Any] = combined | "AttachPane" >> beam.ParDo(
            _AttachPaneFn(self.kind, self.clock))
        return aggregates


class EventTimeOutputs(NamedTuple):
    """What :class:`EventTimeAggregates` returns."""

    events: PCollection[Any]  # Event: every first delivery (for scoring), too-late ones included
    fixed: PCollection[Any]  # Aggregate, kind "fixed"
    sliding: PCollection[Any]  # Aggregate, kind "sliding"
    too_late: PCollection[Any]  # DeadLetter, reason too_late: one per refused event


class EventTimeAggregates(beam.PTransform[Any, Any]):
    """Deduplicated, late-data-judged events → fixed and sliding aggregates: the job's event-time
    step, the one place where the dedup step, the late-data rule and the windows are put together.

    Input: timestamped :class:`Event`\\ s in the global window (``ParseEvents`` output). The windows,
    lateness, margin, lookahead and dimensions are the tunables of docs/pipeline.md; ``clock`` stamps
    ``emitted_at_ms`` and the dead letters' ``failed_at_ms`` (tests inject one).

    Raises ``ValueError`` if the dedup horizon is shorter than the time a window can still be
    updated: a re-delivery the dedup step had forgotten could then be counted twice.
    """

    def __init__(
        self,
        *,
        fixed_size_s: float = DEFAULT_FIXED_SIZE_S,
        sliding_size_s: float = DEFAULT_SLIDING_SIZE_S,
        sliding_period_s: float = DEFAULT_SLIDING_PERIOD_S,
        early_firing_delay_s: float | None = DEFAULT_EARLY_FIRING_DELAY_S,
        allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S,
        late_gate_margin_s: float = DEFAULT_LATE_GATE_MARGIN_S,
        late_gate_lookahead_s: float = DEFAULT_LATE_GATE_LOOKAHEAD_S,
        dimensions: Sequence[Dimension] = DEFAULT_DIMENSIONS,
        dedup_horizon_s: float = DEFAULT_HORIZON_S,
        dedup_shards: int = DEFAULT_SHARDS,
        clock: Callable[[], float] = time.time,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        common: dict[str, Any] = {
            "early_firing_delay_s": early_firing_delay_s, "allowed_lateness_s": allowed_lateness_s,
            "dimensions": dimensions, "late_gate_margin_s": late_gate_margin_s, "clock": clock,
        }
        self.fixed = WindowedAggregates(FIXED, size_s=fixed_size_s, **common)
        self.sliding = WindowedAggregates(SLIDING, size_s=sliding_size_s, period_s=sliding_period_s,
                                          **common)
        needed = max(self.fixed.retention_s, self.sliding.retention_s)
        if dedup_horizon_s < needed:
            raise ValueError(
                f"dedup_horizon_s={dedup_horizon_s} is shorter than window size + allowed lateness + "
                f"late gate margin ({needed} s): late re-deliveries could be double counted")
        if late_gate_lookahead_s < 0 or late_gate_lookahead_s * 1000 % 1:
            raise ValueError("late_gate_lookahead_s must be >= 0 and whole milliseconds")
        self.rule = LateDataRule(kinds=(self.fixed.deadlines, self.sliding.deadlines),
                                 lookahead_ms=round(late_gate_lookahead_s * 1000))
        self.dedup = DeduplicateEvents(dedup_horizon_s, shards=dedup_shards, rule=self.rule, clock=clock)

    def expand(self, events: PCollection[Any]) -> EventTimeOutputs:
        judged = events | DEDUP_LABEL >> self.dedup
        return EventTimeOutputs(
            events=judged[EVENTS],
            fixed=judged[admitted_tag(FIXED)] | FIXED_LABEL >> self.fixed,
            sliding=judged[admitted_tag(SLIDING)] | SLIDING_LABEL >> self.sliding,
            too_late=judged[TOO_LATE],
        )
