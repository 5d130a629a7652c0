"""WindowedAggregates: per-dimension statistics of ``amount`` over fixed or sliding event-time windows.

One instance per aggregate kind (``fixed``, ``sliding``); each is a chain of small, stably labelled
steps (Flink savepoints bind state to these labels — never rename them):

``BatchByShard`` → ``GateTooLateBatches`` → ``PreAggregateWindows`` → ``Window`` → ``KeepOwnWindow``
→ ``Combine`` → ``AttachPane`` (with ``pre_aggregate=False``: ``Unbatch`` → ``KeyByDimension`` →
``Window`` → ``Combine`` → ``AttachPane``). Keyed steps take one batch per shard and bundle
(``transforms/batching.py``: Beam Python's keyed state costs per key touched, not per byte).
In the job the gate runs upstream instead, inside ``DeduplicateEvents`` (``gated=True`` here, the
rule is :class:`LateGate`): one keyed stage less between an event and its early pane.

* **Window**: event-time windows with the trigger written out in full::

      AfterWatermark(early=AfterProcessingTime(early_firing_delay_s),  # speculative panes
                     late=AfterCount(1))                                 # one pane per late batch

  ACCUMULATING panes (every pane carries the whole window so far, so a reader keeps the newest and
  drops the rest), allowed lateness as configured.
* **PreAggregateWindows / Window / KeepOwnWindow / Combine**: a bundle-local partial aggregate per
  (dimension key, window), computed before windowing and timestamped inside its window; ``Window``
  assigns the standard windows, ``KeepOwnWindow`` keeps the partial's own, and a CombinePerKey
  merges partials. Beam's own combiner lifting does not apply here: the portable
  runner skips it in streaming mode and the DirectRunner only lifts default windowing, so we do it
  ourselves. Every part of the accumulator merges exactly (integer micro-unit sum, min/max,
  histogram bucket counts, HyperLogLog registers), so the result does not depend on bundling.
* **AttachPane**: turns each firing into an :class:`Aggregate` with the window bounds and the pane
  (index, EARLY/ON_TIME/LATE, final flag) read from ``WindowParam``/``PaneInfoParam``.

Late data beyond the allowed lateness (``GateTooLate``): Beam drops such data inside the GroupByKey
without a trace, and Beam Python cannot read the watermark in a DoFn. So the gate estimates it: a
stateful DoFn keyed by a shard of the event id keeps the maximum event time seen by its shard and
takes ``max event time - max_out_of_orderness`` as the watermark estimate — the same bounded
out-of-orderness rule the Kafka source uses to emit the real watermark. An event whose *newest*
window closed (``window end + allowed lateness < estimate``) is refused: counted in
``too_late_events.<kind>`` and sent to the ``too_late`` output as a :class:`DeadLetter`. The
GroupByKey itself keeps windows for ``allowed_lateness + late_gate_margin`` so that it does not drop
what the gate let in, as long as the real watermark runs at most ``late_gate_margin`` ahead of a
shard's estimate. With traffic spread over all shards the estimate tracks the source's watermark
closely (it is the max over one shard, the source's is a min over partitions, so it is usually
*ahead*); the residual risk is a watermark advanced without events (an idle-source timeout),
followed by events for windows closed more than the margin ago: those are dropped by the
GroupByKey, uncounted. We chose this over the alternatives because it is exact in the common case,
keyed (it scales out and its state is checkpointed by Flink), costs one small state read per batch,
and gives the DLQ the event itself, not just a number.
"""

# Beam 2.77 ships partial annotations: its transform constructors (ParDo, Map, CombinePerKey,
# triggers, ...) are untyped, so calling them is reported everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from streaming_analytics.events import Event
from streaming_analytics.streams import window_key
from transforms import metrics
from transforms.batching import EventBatch, batch_by_shard
from transforms.records import DeadLetter
from transforms.sketches import HyperLogLog, QuantileSketch

FIXED: Final = "fixed"
SLIDING: Final = "sliding"
KINDS: Final = (FIXED, SLIDING)

#: Tags of the two outputs of :class:`WindowedAggregates`.
AGGREGATES: Final = "aggregates"
TOO_LATE: Final = "too_late"

#: Reason code of events refused by the late-data gate.
TOO_LATE_REASON: Final = "too_late"

DEFAULT_FIXED_SIZE_S: Final = 60.0
DEFAULT_SLIDING_SIZE_S: Final = 300.0
DEFAULT_SLIDING_PERIOD_S: Final = 60.0
DEFAULT_EARLY_FIRING_DELAY_S: Final = 1.0
DEFAULT_ALLOWED_LATENESS_S: Final = 120.0
DEFAULT_MAX_OUT_OF_ORDERNESS_S: Final = 5.0
DEFAULT_LATE_GATE_MARGIN_S: Final = 60.0
DEFAULT_LATE_GATE_SHARDS: Final = 16

_GLOBAL_WINDOWS: Final = (GlobalWindow(),)

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
    """Like :class:`EventStatsFn`, but its inputs are partial accumulators (from ``PreAggregate``)."""

    def add_input(  # type: ignore[override]
        self, accumulator: AggregateAccumulator, partial: AggregateAccumulator
    ) -> AggregateAccumulator:
        accumulator.merge(partial)
        return accumulator


def stats_of(acc: AggregateAccumulator) -> AmountStats:
    """Final statistics of an accumulator (all zero for an empty one, which Beam never emits)."""
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
    lateness + the late gate's margin. Within a window, a higher ``pane_index`` always supersedes.
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
        """The payload as a JSON-ready dict."""
        return asdict(self)


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


@dataclass(frozen=True)
class LateGate:
    """The too-late rule of one aggregate kind (module docstring, "Late data"), free of Beam.

    With ``seen`` the highest event time a shard has seen so far (this event included), an event
    at ``t`` is refused when ``seen - max_out_of_orderness`` (the watermark estimate) is past the
    end of the newest window containing ``t`` plus the allowed lateness. Applied by
    ``GateTooLateBatches`` here, or upstream by ``DeduplicateEvents`` when the pipeline lets that
    stateful step gate too (one keyed stage less between an event and its early pane).
    """

    kind: str
    size_ms: int
    period_ms: int
    lateness_ms: int
    ooo_ms: int

    def closes_at(self, t: int) -> int:
        """When the newest window containing ``t`` stops taking events (sliding windows start
        every period; fixed: period = size)."""
        return t - t % self.period_ms + self.size_ms + self.lateness_ms

    def refuses(self, t: int, seen: int) -> bool:
        return seen - self.ooo_ms > self.closes_at(t)

    def dead_letter(self, event: Event, seen: int, failed_at_ms: int) -> DeadLetter:
        t = event.event_time_ms
        return DeadLetter(
            raw=event.to_json(),
            reason_code=TOO_LATE_REASON,
            reason_detail=(
                f"{self.kind} windows of event time {t} closed at {self.closes_at(t)} "
                f"(window end + allowed lateness); watermark estimate {seen - self.ooo_ms}"
            ),
            topic=None,
            partition=None,
            offset=None,
            failed_at_ms=failed_at_ms,
        )


_MAX_EVENT_MS = ReadModifyWriteStateSpec("max_event_ms", VarIntCoder())
_MAX_EVENT_MS_PARAM = beam.DoFn.StateParam(_MAX_EVENT_MS)


class _LateGateFn(beam.DoFn):
    """Keyed by shard, one batch of events per element: refuse events whose newest window closed
    by the shard's watermark estimate; emit the admitted ones as one batch.

    The batch is judged event by event in its order, the estimate moving with each event, exactly
    as if the events came one by one; the state is read and written once per batch.
    """

    def __init__(self, gate: LateGate, clock: Callable[[], float]) -> None:
        super().__init__()
        self._gate = gate
        self._clock = clock
        self._too_late = Metrics.counter(metrics.NAMESPACE, metrics.too_late_events(gate.kind))

    def process(
        self,
        element: tuple[int, list[Event]],
        max_event_ms: Any = _MAX_EVENT_MS_PARAM,
    ) -> Iterator[Any]:
        events = element[1]
        stored = max_event_ms.read()
        seen = stored
        gate = self._gate
        admitted = EventBatch()
        refused: list[DeadLetter] = []
        for event in events:
            t = event.event_time_ms
            if seen is None or t > seen:
                seen = t
            if gate.refuses(t, seen):
                refused.append(gate.dead_letter(event, seen, int(self._clock() * 1000)))
            else:
                admitted.append(event)
        if seen is not None and seen != stored:
            max_event_ms.write(seen)
        if admitted:
            yield admitted
        if refused:
            self._too_late.inc(len(refused))
            for letter in refused:
                yield TaggedOutput(TOO_LATE, letter)


class _PreAggregateFn(beam.DoFn):
    """Batches of events (global window) → one partial aggregate per (dimension key, window start)
    per bundle, emitted at the end of the bundle, still in the global window.

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
            yield WindowedValue(((name, key), (start, acc)), Timestamp(micros=t * 1000), _GLOBAL_WINDOWS)


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


def _unbatch(events: list[Event]) -> Iterator[TimestampedValue[Event]]:
    for event in events:
        yield TimestampedValue(event, Timestamp(micros=event.event_time_ms * 1000))


class _AttachPaneFn(beam.DoFn):
    """Combine output + window + pane info → :class:`Aggregate`."""

    def __init__(self, kind: str, clock: Callable[[], float]) -> None:
        super().__init__()
        self._kind = kind
        self._clock = clock

    def process(
        self,
        element: tuple[tuple[str, str], AmountStats],
        win: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[Aggregate]:
        (dimension, key), s = element
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


_Keyed = tuple[tuple[str, str], Event]


def _by_dimension(dimensions: Sequence[Dimension]) -> Callable[[Event], Iterator[_Keyed]]:
    def fan_out(event: Event) -> Iterator[_Keyed]:
        for d in dimensions:
            yield (d.name, d.key_of(event)), event

    return fan_out


class WindowedAggregates(beam.PTransform[Any, Any]):
    """Per-dimension window aggregates of timestamped, deduplicated events (see the module docstring).

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
        max_out_of_orderness_s: the late gate's bound (keep it equal to the source's), default 5 s.
        late_gate_margin_s: extra time the GroupByKey keeps a window beyond the allowed lateness.
        late_gate_shards: parallelism of the late gate.
        pre_aggregate: combine per bundle before the shuffle (exact; off only to compare in tests).
        gated: the input is already gated — :class:`EventBatch`\\ es that :attr:`late_gate` admitted
            upstream (``DeduplicateEvents(gates=...)``) — so this transform has no gate of its own.
        clock: wall clock (seconds) for ``emitted_at_ms`` and ``failed_at_ms``; tests inject one.

    Output: dict with ``aggregates`` (:class:`Aggregate` per key, window and pane) and, unless
    ``gated``, ``too_late`` (:class:`DeadLetter`\\ s). Counter ``too_late_events.<kind>``.
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
        max_out_of_orderness_s: float = DEFAULT_MAX_OUT_OF_ORDERNESS_S,
        late_gate_margin_s: float = DEFAULT_LATE_GATE_MARGIN_S,
        late_gate_shards: int = DEFAULT_LATE_GATE_SHARDS,
        pre_aggregate: bool = True,
        gated: bool = False,
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
        if size_s * 1000 % 1 or period_s * 1000 % 1:
            raise ValueError("window size and period must be whole milliseconds")
        if (early_firing_delay_s or 0) < 0 or allowed_lateness_s < 0 or max_out_of_orderness_s < 0:
            raise ValueError("delays, lateness and out-of-orderness must be >= 0")
        if late_gate_margin_s < 0 or late_gate_shards < 1:
            raise ValueError("late_gate_margin_s must be >= 0 and late_gate_shards >= 1")
        if not dimensions:
            raise ValueError("at least one dimension is required")
        self.kind = kind
        self.size_s = size_s
        self.period_s = period_s
        self.early_firing_delay_s = early_firing_delay_s
        self.allowed_lateness_s = allowed_lateness_s
        self.dimensions = tuple(dimensions)
        self.max_out_of_orderness_s = max_out_of_orderness_s
        self.late_gate_margin_s = late_gate_margin_s
        self.late_gate_shards = late_gate_shards
        self.pre_aggregate = pre_aggregate
        self.gated = gated
        self.clock = clock

    @property
    def late_gate(self) -> LateGate:
        """The too-late rule of these windows (for a gate upstream, see ``gated``)."""
        return LateGate(kind=self.kind, size_ms=round(self.size_s * 1000),
                        period_ms=round(self.period_s * 1000),
                        lateness_ms=round(self.allowed_lateness_s * 1000),
                        ooo_ms=round(self.max_out_of_orderness_s * 1000))

    @property
    def retention_s(self) -> float:
        """How long after a window's start the GroupByKey may still update it (for dedup sizing)."""
        return self.size_s + self.allowed_lateness_s + self.late_gate_margin_s

    def _window_fn(self) -> window.WindowFn:
        if self.kind == FIXED:
            return window.FixedWindows(self.size_s)
        return window.SlidingWindows(self.size_s, self.period_s)

    def expand(self, events: PCollection[Any]) -> dict[str, PCollection[Any]]:
        size_ms, period_ms = round(self.size_s * 1000), round(self.period_s * 1000)
        too_late: PCollection[Any] | None = None
        if self.gated:
            admitted: PCollection[Any] = events
        else:
            gate = (
                events
                | "BatchByShard" >> batch_by_shard(self.late_gate_shards)
                | "GateTooLateBatches"
                >> beam.ParDo(_LateGateFn(self.late_gate, self.clock))
                # An EventBatch, so that where the batch crosses a stage boundary it is one orjson
                # document (EventBatchCoder) instead of a list pickled event by event.
                .with_output_types(EventBatch)
                .with_outputs(TOO_LATE, main="events")
            )
            admitted, too_late = gate.events, gate[TOO_LATE]
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
            # The gate enforces allowed_lateness; the margin keeps the GroupByKey from dropping
            # what the gate let in (see the module docstring).
            allowed_lateness=self.allowed_lateness_s + self.late_gate_margin_s,
        )
        if self.pre_aggregate:
            combined = (
                admitted
                | "PreAggregateWindows" >> beam.ParDo(_PreAggregateFn(size_ms, period_ms, self.dimensions))
                | "Window" >> window_into
                | "KeepOwnWindow" >> beam.ParDo(_KeepOwnWindowFn())
                | "Combine" >> beam.CombinePerKey(MergePartialsFn())
            )
        else:
            combined = (
                admitted
                | "Unbatch" >> beam.FlatMap(_unbatch)
                | "KeyByDimension" >> beam.FlatMap(_by_dimension(self.dimensions))
                | "Window" >> window_into
                | "Combine" >> beam.CombinePerKey(EventStatsFn())
            )
        aggregates = combined | "AttachPane" >> beam.ParDo(_AttachPaneFn(self.kind, self.clock))
        if too_late is None:
            return {AGGREGATES: aggregates}
        return {AGGREGATES: aggregates, TOO_LATE: too_late}
