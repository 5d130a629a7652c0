"""DeduplicateEvents: drop re-delivered events (same ``event_id``) within an event-time horizon, and
judge every first delivery against the late-data rule (``transforms/late_data.py``).

Why it exists: producers retry, and Kafka delivery is at-least-once, so the same event can reach us
twice; counted twice it would inflate every aggregate it belongs to. And Beam drops an event whose
windows have closed inside the GroupByKey without a trace; judged here, it is counted and
dead-lettered instead. Both need keyed state, and every keyed stage costs an event latency (0.5 to
1 s on Prism, docs/pipeline.md), so the two share one.

How: events are batched per bundle by a shard of their id (``crc32(event_id) % shards``,
``transforms/batching.py``), and a stateful DoFn keyed by that shard checks a whole batch at once
against the ids its shard has seen. Keyed state and event-time timers are what Flink checkpoints and
restores with the job, so the dedup memory and the late-data knowledge survive restarts and scale out
by shard. Per shard:

* ``ids`` (bag): one entry ``(ids, expiries)`` appended per batch with new ids — an append, so a
  bundle writes only what it adds; ``expiry = event time + horizon``.
* ``meta``: ``(token, forgotten_before_ms, expiry_timer_ms, *knowledge)``. Ids whose expiry is at
  or before ``forgotten_before_ms`` are forgotten, whether or not the bag still holds them;
  ``knowledge`` is the late-data knowledge, the fields of :class:`~transforms.late_data.GateState`.
* the ``expiry`` event-time timer at the earliest pending expiry, rounded up to ``horizon / 20``: it
  compacts the bag (drops expired ids) and advances ``forgotten_before_ms``. The rounding bounds the
  compactions to 20 per horizon of event time; an id is therefore remembered up to 5 % of the
  horizon longer than the horizon (harmless: see below).
* the ``late_gate`` event-time timers, a ladder of lattice points of the late-data rule (one
  dynamic tag per rung): when one fires, the watermark has passed its point (see
  ``transforms/late_data.py``). Each worker also keeps the highest point any shard learnt (the
  *floor*, in memory), for shards that know nothing yet.
* An in-memory copy of the shard's ids (per DoFn instance) makes a batch cost O(batch), not
  O(shard). It is used only while ``token`` in state equals the token this instance wrote last
  with it (a fresh random one per write that changes the ids); after a restore, a rescale, a retried
  bundle or another instance's write the tokens differ and the copy is rebuilt from the bag. So the
  copy can never outlive the state it mirrors.

Memory is bounded by the number of distinct ids within one horizon (+5 %) of event time, once in
state and once in the worker's copy.

How far back: an event is dropped as a duplicate if an event with the same id was seen and the
watermark has not yet passed ``first_event_time + horizon`` (default 10 minutes; the forgetting
happens at the next multiple of ``horizon / 20``, see above). A re-delivery after that is not
recognised here — but choose ``horizon >= window size + allowed lateness + the late gate's margin``
for every windowed aggregate downstream (``EventTimeAggregates`` checks it) and such a re-delivery
is too late for every window it belongs to anyway, so it can never be counted twice.
The first delivery wins; a "duplicate" with the same id but different content is dropped too (and
counted), since an event id is the producer's promise of identity.
"""

# Beam 2.77 ships partial annotations: its transform constructors (ParDo, Map, CombinePerKey,
# triggers, ...) are untyped, so calling them is reported everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple
from typing import Any, Final

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils import windowed_value
from apache_beam.utils.timestamp import Timestamp

from streaming_analytics.events import Event
from transforms import metrics
from transforms.batching import EventBatch, batch_by_shard
from transforms.late_data import GateState, LateDataRule
from transforms.windowing import GLOBAL_WINDOWS

#: Default dedup horizon in seconds of event time (see the module docstring).
DEFAULT_HORIZON_S = 600
#: Default number of key shards of the dedup state (its parallelism on Flink). Each shard's state is
#: loaded and committed once per bundle, at a fixed cost in the Python SDK (see transforms/batching.py),
#: so more shards than the job's parallelism only add per-bundle overhead.
DEFAULT_SHARDS = 16
#: Compactions per horizon: the expiry timer is rounded up to ``horizon / this``.
_COMPACTIONS_PER_HORIZON = 20

_IDS = BagStateSpec("ids", FastPrimitivesCoder())
_META = ReadModifyWriteStateSpec("meta", FastPrimitivesCoder())
_EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
_LATE_GATE = TimerSpec("late_gate", TimeDomain.WATERMARK)
_IDS_PARAM = beam.DoFn.StateParam(_IDS)
_META_PARAM = beam.DoFn.StateParam(_META)
_EXPIRY_PARAM = beam.DoFn.TimerParam(_EXPIRY)
_LATE_GATE_PARAM = beam.DoFn.TimerParam(_LATE_GATE)

#: ``meta`` of a shard that has seen nothing yet: no token, nothing forgotten, no timer, no knowledge.
_EMPTY_META: Final = (0, None, None, *astuple(GateState()))

#: Output tags of :class:`DeduplicateEvents`: every first delivery (main), the first deliveries each
#: aggregate kind admitted (:func:`admitted_tag`), and the dead letters of refused ones.
EVENTS: Final = "events"
TOO_LATE: Final = "too_late"


def admitted_tag(kind: str) -> str:
    """Output of the event batches that aggregate ``kind`` admitted."""
    return f"admitted_{kind}"


def timer_time(point_ms: int) -> Timestamp:
    """The timer timestamp that fires exactly when the GroupByKey starts dropping an element whose
    deadline is ``point_ms``.

    Measured (tests/unit/test_transforms_late_data.py pins it): the DirectRunner fires a timer once
    the watermark is at or past its timestamp and drops an element once the watermark is *past*
    window end + lateness; Prism fires once at or past and drops once at or past, in milliseconds.
    One microsecond after the deadline serves both (it reaches Prism and Flink as the millisecond
    ``point_ms``). On Flink (Beam's Java rule: drop at or past, fire once past) the gate then
    admits at the very millisecond the watermark equals the deadline; the GroupByKey's margin
    keeps that event.
    """
    return Timestamp(micros=point_ms * 1000 + 1)


def _set_ladder(late_gate: Any, rungs: tuple[int, ...]) -> None:
    """Set the rule's ladder: rung ``i`` is the ``late_gate`` timer tagged ``i``. Rungs of an older,
    longer ladder stay set: when they fire they still tell the truth (the watermark passed them)."""
    for i, point in enumerate(rungs):
        late_gate.set(timer_time(point), dynamic_timer_tag=str(i))


def _new_token() -> int:
    return random.getrandbits(62) + 1  # never 0, the token of an empty shard


class _ShardMirror:
    """The ids of one shard (id → expiry ms) as of the state write that carried ``token``."""

    __slots__ = ("ids", "token")

    def __init__(self, token: int, ids: dict[str, int]) -> None:
        self.token = token
        self.ids = ids


class _DedupShardFn(beam.DoFn):
    """Keyed by id shard, one batch of events per element: pass the first delivery of each id,
    drop and count the rest until the id expires, and judge the first deliveries by the late-data
    rule (see the module docstring).

    ``global_windows``: the input is in the global window (as always in this pipeline; see
    :meth:`DeduplicateEvents.expand`), so each passed event leaves with its window and timestamp
    attached, without a ``Timestamp`` object or a window assignment per event.
    """

    def __init__(self, horizon_s: float, rule: LateDataRule, global_windows: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._global_windows = global_windows
        self._rule = rule
        self._clock = clock
        self._horizon_ms = round(horizon_s * 1000)
        self._granularity_ms = max(1, self._horizon_ms // _COMPACTIONS_PER_HORIZON)
        self._duplicates = Metrics.counter(metrics.NAMESPACE, metrics.DUPLICATE_EVENTS)
        self._too_late = {k.kind: Metrics.counter(metrics.NAMESPACE, metrics.too_late_events(k.kind))
                          for k in rule.kinds}
        self._admitted_tags = [admitted_tag(k.kind) for k in rule.kinds]

    def setup(self) -> None:
        self._mirrors: dict[Any, _ShardMirror] = {}
        self._bundle = _new_token()
        # What any shard of this worker learnt (the step's watermark is every key's), with the
        # same bundle rule as a shard's own knowledge.
        self._floor = GateState()

    def start_bundle(self) -> None:
        # Tells the late-data rule which knowledge was learnt in this bundle (transforms/late_data.py).
        self._bundle = _new_token()

    def _round_up(self, ms: int) -> int:
        g = self._granularity_ms
        return -(-ms // g) * g

    def _mirror(self, shard: Any, token: int, ids_state: Any) -> _ShardMirror:
        mirror = self._mirrors.get(shard)
        if mirror is None or mirror.token != token:
            ids: dict[str, int] = {}
            for batch_ids, expiries in ids_state.read():
                ids.update(zip(batch_ids, expiries, strict=True))
            mirror = _ShardMirror(token, ids)
            self._mirrors[shard] = mirror
        return mirror

    def process(
        self,
        element: tuple[int, list[Event]],
        meta: Any = _META_PARAM,
        ids_state: Any = _IDS_PARAM,
        expiry: Any = _EXPIRY_PARAM,
        late_gate: Any = _LATE_GATE_PARAM,
    ) -> Iterator[Any]:
        shard, events = element
        token, forgotten_before, timer_at, *knowledge = meta.read() or _EMPTY_META
        mirror = self._mirror(shard, token, ids_state)
        seen = mirror.ids
        mirror.token = -1  # invalid until the write below is queued (an exception leaves it invalid)
        horizon = self._horizon_ms
        new_ids: list[str] = []
        new_expiries: list[int] = []
        passed: list[Event] = []
        for event in events:
            known = seen.get(event.event_id)
            if known is not None and (forgotten_before is None or known > forgotten_before):
                continue
            # The expiry is measured from the first delivery (duplicates do not extend it).
            until = event.event_time_ms + horizon
            seen[event.event_id] = until
            new_ids.append(event.event_id)
            new_expiries.append(until)
            passed.append(event)
        if new_ids:
            ids_state.add((new_ids, new_expiries))
            due = self._round_up(min(new_expiries))
            if timer_at is None or due < timer_at:
                expiry.set(Timestamp(micros=due * 1000))
                timer_at = due
            gate = GateState(*knowledge)
            oldest = min(e.event_time_ms for e in passed)
            rule = self._rule
            floor = rule.usable(self._floor, self._bundle)
            bounds = [k for k in (rule.usable(gate, self._bundle), floor) if k is not None]
            yield from self._judge(passed, oldest, max(bounds) if bounds else None)
            step = rule.judged(gate, oldest, max(e.event_time_ms for e in passed), floor)
            _set_ladder(late_gate, step.rungs)
            token = _new_token()
            meta.write((token, forgotten_before, timer_at, *astuple(step.state)))
        mirror.token = token
        if len(passed) < len(events):
            self._duplicates.inc(len(events) - len(passed))
        if self._global_windows:
            for event in passed:
                yield windowed_value.create(event, event.event_time_ms * 1000, GLOBAL_WINDOWS)
        else:
            for event in passed:
                yield TimestampedValue(event, Timestamp(micros=event.event_time_ms * 1000))

    def _judge(self, passed: list[Event], oldest_ms: int, known_ms: int | None) -> Iterator[Any]:
        """Judge the first deliveries of a batch (``oldest_ms``: the earliest event time among
        them; ``known_ms``: the deadline the watermark is known to have passed): yield each kind's
        admitted events as one :class:`EventBatch` on its own output, and one dead letter per
        refused event."""
        rule = self._rule
        if known_ms is None or min(k.of(oldest_ms) for k in rule.kinds) > known_ms:
            # The common case: even the oldest event's earliest deadline is ahead of what the
            # watermark is known to have passed, so every kind admits every event.
            for tag in self._admitted_tags:
                yield TaggedOutput(tag, EventBatch(passed))
            return
        admitted = {k.kind: EventBatch() for k in rule.kinds}
        now_ms: int | None = None
        for event in passed:
            refusing = rule.refusing(event.event_time_ms, known_ms)
            if not refusing:
                for batch in admitted.values():
                    batch.append(event)
                continue
            for k in rule.kinds:
                if k in refusing:
                    self._too_late[k.kind].inc()
                else:
                    admitted[k.kind].append(event)
            if now_ms is None:
                now_ms = int(self._clock() * 1000)
            yield TaggedOutput(TOO_LATE, rule.dead_letter(event, refusing, known_ms, now_ms))
        for kind, batch in admitted.items():
            if batch:
                yield TaggedOutput(admitted_tag(kind), batch)

    @on_timer(_LATE_GATE)
    def learn(
        self,
        fired_at: Any = beam.DoFn.TimestampParam,
        meta: Any = _META_PARAM,
        late_gate: Any = _LATE_GATE_PARAM,
    ) -> None:
        """The watermark has passed the armed deadline: remember it, arm the next one. The ids are
        unchanged, so the token (and every instance's copy of them) stays valid."""
        token, forgotten_before, timer_at, *knowledge = meta.read() or _EMPTY_META
        point = fired_at.micros // 1000
        self._floor = self._rule.raised(self._floor, point, self._bundle)
        step = self._rule.fired(GateState(*knowledge), point, self._bundle)
        _set_ladder(late_gate, step.rungs)
        meta.write((token, forgotten_before, timer_at, *astuple(step.state)))

    @on_timer(_EXPIRY)
    def expire(
        self,
        key: Any = beam.DoFn.KeyParam,
        fired_at: Any = beam.DoFn.TimestampParam,
        meta: Any = _META_PARAM,
        ids_state: Any = _IDS_PARAM,
        expiry: Any = _EXPIRY_PARAM,
    ) -> None:
        now_ms = int(fired_at.micros // 1000)  # the watermark has passed this
        knowledge = (meta.read() or _EMPTY_META)[3:]  # the late-data knowledge carries over
        keep_ids: list[str] = []
        keep_expiries: list[int] = []
        for batch_ids, expiries in ids_state.read():
            for event_id, until in zip(batch_ids, expiries, strict=True):
                if until > now_ms:
                    keep_ids.append(event_id)
                    keep_expiries.append(until)
        ids_state.clear()
        timer_at = None
        if keep_ids:
            ids_state.add((keep_ids, keep_expiries))
            timer_at = self._round_up(min(keep_expiries))
            expiry.set(Timestamp(micros=timer_at * 1000))
        token = _new_token()
        meta.write((token, now_ms, timer_at, *knowledge))
        self._mirrors[key] = _ShardMirror(token, dict(zip(keep_ids, keep_expiries, strict=True)))


class DeduplicateEvents(beam.PTransform[Any, Any]):
    """Drop events whose ``event_id`` was already seen within ``horizon_s`` of event time, and judge
    the first deliveries by the late-data ``rule`` (one decision per aggregate kind).

    Input: timestamped :class:`Event`\\ s in the global window (apply it before any windowing; an
    event's timestamp is its event time, as ``ParseEvents`` sets it). ``shards``: key shards of the
    state (its parallelism). ``clock`` stamps the dead letters' ``failed_at_ms``.

    Output (tagged): ``events`` (main: every first delivery, for scoring), ``admitted_<kind>`` per
    kind of ``rule`` (:class:`EventBatch`\\ es of the first deliveries that kind's windows still take)
    and ``too_late`` (one :class:`~transforms.records.DeadLetter` per event refused by at least one
    kind). Counters ``duplicate_events`` and ``too_late_events.<kind>`` in namespace
    ``streaming_analytics``.
    """

    def __init__(self, horizon_s: float = DEFAULT_HORIZON_S, label: str | None = None, *,
                 rule: LateDataRule, shards: int = DEFAULT_SHARDS,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(label)
        if horizon_s <= 0:
            raise ValueError(f"horizon_s must be positive, got {horizon_s}")
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self.horizon_s = horizon_s
        self.shards = shards
        self.rule = rule
        self.clock = clock

    def expand(self, events: PCollection[Any]) -> Any:
        # As in ParseEvents: a TimestampedValue per event would cost a Timestamp object and a
        # WindowFn.assign() each; in the global window the DoFn attaches both itself.
        global_windows = isinstance(events.windowing.windowfn, GlobalWindows)
        drop = beam.ParDo(_DedupShardFn(self.horizon_s, self.rule, global_windows, self.clock))
        tags = [admitted_tag(k.kind) for k in self.rule.kinds]
        outputs = (
            events
            | "BatchByIdShard" >> batch_by_shard(self.shards)
            | "DropSeenIdsPerShard" >> drop.with_outputs(*tags, TOO_LATE, main=EVENTS)
        )
        outputs[EVENTS].element_type = Event
        for tag in tags:
            # One orjson document per batch where a batch crosses a stage boundary (EventBatchCoder).
            outputs[tag].element_type = EventBatch
        return outputs
