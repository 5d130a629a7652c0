"""DeduplicateEvents: drop re-delivered events (same ``event_id``) within an event-time horizon.

Why it exists: producers retry, and Kafka delivery is at-least-once, so the same event can reach us
twice; counted twice it would inflate every aggregate it belongs to.

How: events are batched per bundle by a shard of their id (``crc32(event_id) % shards``,
``transforms/batching.py``), and a stateful DoFn keyed by that shard checks a whole batch at once
against the ids its shard has seen. Keyed state and event-time timers are what Flink checkpoints and
restores with the job, so the dedup memory survives restarts and scales out by shard. Per shard:

* ``ids`` (bag): one entry ``(ids, expiries)`` appended per batch with new ids — an append, so a
  bundle writes only what it adds; ``expiry = event time + horizon``.
* ``meta``: ``(token, forgotten_before_ms, timer_at_ms)``. Ids whose expiry is at or before
  ``forgotten_before_ms`` are forgotten, whether or not the bag still holds them.
* one event-time timer at the earliest pending expiry, rounded up to ``horizon / 20``: it compacts
  the bag (drops expired ids) and advances ``forgotten_before_ms``. The rounding bounds the
  compactions to 20 per horizon of event time; an id is therefore remembered up to 5 % of the
  horizon longer than the horizon (harmless: see below).
* An in-memory copy of the shard's ids (per DoFn instance) makes a batch cost O(batch), not
  O(shard). It is used only while ``token`` in state equals the token this instance wrote last
  with it (a fresh random one per write); after a restore, a rescale, a retried bundle or another
  instance's write the tokens differ and the copy is rebuilt from the bag. So the copy can never
  outlive the state it mirrors.

Memory is bounded by the number of distinct ids within one horizon (+5 %) of event time, once in
state and once in the worker's copy.

How far back: an event is dropped as a duplicate if an event with the same id was seen and the
watermark has not yet passed ``first_event_time + horizon`` (default 10 minutes; the forgetting
happens at the next multiple of ``horizon / 20``, see above). A re-delivery after that is not
recognised here — but choose ``horizon >= window size + allowed lateness (+ the late gate's
margin)`` for every windowed aggregate downstream (``build_pipeline`` checks it) and such a
re-delivery is too late for every window it belongs to anyway, so it can never be counted twice.
The first delivery wins; a "duplicate" with the same id but different content is dropped too (and
counted), since an event id is the producer's promise of identity.
"""

# Beam 2.77 ships partial annotations: its transform constructors (ParDo, Map, CombinePerKey,
# triggers, ...) are untyped, so calling them is reported everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

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
from apache_beam.transforms.window import GlobalWindow, GlobalWindows, TimestampedValue
from apache_beam.utils import windowed_value
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from streaming_analytics.events import Event
from transforms import metrics
from transforms.aggregates import LateGate
from transforms.batching import EventBatch, batch_by_shard
from transforms.records import DeadLetter

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
_IDS_PARAM = beam.DoFn.StateParam(_IDS)
_META_PARAM = beam.DoFn.StateParam(_META)
_EXPIRY_PARAM = beam.DoFn.TimerParam(_EXPIRY)

#: ``meta`` of a shard that has seen nothing yet: no token, nothing forgotten, no timer, no event.
_EMPTY_META = (0, None, None, None)
#: Main output tag of :class:`DeduplicateEvents` when it gates too (see ``gates``).
EVENTS = "events"


def admitted_tag(kind: str) -> str:
    """Output of the event batches a gate of aggregate ``kind`` admitted."""
    return f"admitted_{kind}"


def too_late_tag(kind: str) -> str:
    """Output of the dead letters a gate of aggregate ``kind`` refused."""
    return f"too_late_{kind}"
_GLOBAL_WINDOWS = (GlobalWindow(),)


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
    drop and count the rest until the id expires (see the module docstring).

    ``global_windows``: the input is in the global window (as always in this pipeline; see
    :meth:`DeduplicateEvents.expand`), so each passed event leaves with its window and timestamp
    attached, without a ``Timestamp`` object or a window assignment per event.
    """

    def __init__(self, horizon_s: float, global_windows: bool = True, gates: tuple[LateGate, ...] = (),
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._global_windows = global_windows
        self._gates = gates
        self._clock = clock
        self._too_late = [Metrics.counter(metrics.NAMESPACE, metrics.too_late_events(g.kind)) for g in gates]
        self._horizon_ms = round(horizon_s * 1000)
        self._granularity_ms = max(1, self._horizon_ms // _COMPACTIONS_PER_HORIZON)
        self._duplicates = Metrics.counter(metrics.NAMESPACE, metrics.DUPLICATE_EVENTS)

    def setup(self) -> None:
        self._mirrors: dict[Any, _ShardMirror] = {}

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
    ) -> Iterator[WindowedValue | TimestampedValue[Event]]:
        shard, events = element
        token, forgotten_before, timer_at, seen_max = meta.read() or _EMPTY_META
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
        if self._gates and passed:
            seen_max = yield from self._gate(passed, seen_max)
        if new_ids:
            token = _new_token()
            meta.write((token, forgotten_before, timer_at, seen_max))
        mirror.token = token
        if len(passed) < len(events):
            self._duplicates.inc(len(events) - len(passed))
        if self._global_windows:
            for event in passed:
                yield windowed_value.create(event, event.event_time_ms * 1000, _GLOBAL_WINDOWS)
        else:
            for event in passed:
                yield TimestampedValue(event, Timestamp(micros=event.event_time_ms * 1000))

    def _gate(self, passed: list[Event], seen: int | None) -> Generator[Any, None, int | None]:
        """Judge the first deliveries of this batch by every gate, in their order, the shard's
        highest event time moving with each (exactly as ``GateTooLateBatches`` would); returns it.

        Yields each gate's admitted events as one :class:`EventBatch` and its refusals as dead
        letters, on the gate's own outputs.
        """
        gates = self._gates
        admitted = [EventBatch() for _ in gates]
        refused: list[list[DeadLetter]] = [[] for _ in gates]
        now_ms: int | None = None
        for event in passed:
            t = event.event_time_ms
            if seen is None or t > seen:
                seen = t
            for i, gate in enumerate(gates):
                if gate.refuses(t, seen):
                    if now_ms is None:
                        now_ms = int(self._clock() * 1000)
                    refused[i].append(gate.dead_letter(event, seen, now_ms))
                else:
                    admitted[i].append(event)
        for i, gate in enumerate(gates):
            if admitted[i]:
                yield TaggedOutput(admitted_tag(gate.kind), admitted[i])
            if refused[i]:
                self._too_late[i].inc(len(refused[i]))
                for letter in refused[i]:
                    yield TaggedOutput(too_late_tag(gate.kind), letter)
        return seen

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
        seen_max = (meta.read() or _EMPTY_META)[3]  # the gates' highest event time carries over
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
        meta.write((token, now_ms, timer_at, seen_max))
        self._mirrors[key] = _ShardMirror(token, dict(zip(keep_ids, keep_expiries, strict=True)))


class DeduplicateEvents(beam.PTransform[Any, Any]):
    """Drop events whose ``event_id`` was already seen within ``horizon_s`` of event time.

    Input and output: timestamped :class:`Event`\\ s in the global window (apply it before any
    windowing; an event's timestamp is its event time, as ``ParseEvents`` sets it). ``shards``:
    key shards of the dedup state (its parallelism). Counter ``duplicate_events`` in namespace
    ``streaming_analytics``.

    ``gates``: late-data gates (:class:`~transforms.aggregates.LateGate`, one per aggregate kind)
    applied here to the first deliveries, with the shard's highest event time kept in the same
    state cell as the dedup bookkeeping. The output is then a tuple of PCollections: ``events``
    (main), and per kind ``admitted_<kind>`` (:class:`EventBatch`\\ es for
    ``WindowedAggregates(gated=True)``) and ``too_late_<kind>`` (dead letters, counted in
    ``too_late_events.<kind>``). Why here: the gate needs keyed state, and on Prism every keyed
    stage costs an event 0.5 to 1 s of early-pane latency; the dedup stage is keyed by the same
    shards already. ``clock`` stamps the dead letters' ``failed_at_ms``.
    """

    def __init__(self, horizon_s: float = DEFAULT_HORIZON_S, label: str | None = None, *,
                 shards: int = DEFAULT_SHARDS, gates: Sequence[LateGate] = (),
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(label)
        if horizon_s <= 0:
            raise ValueError(f"horizon_s must be positive, got {horizon_s}")
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        if len({g.kind for g in gates}) != len(gates):
            raise ValueError("one gate per aggregate kind")
        self.horizon_s = horizon_s
        self.shards = shards
        self.gates = tuple(gates)
        self.clock = clock

    def expand(self, events: PCollection[Any]) -> Any:
        # As in ParseEvents: a TimestampedValue per event would cost a Timestamp object and a
        # WindowFn.assign() each; in the global window the DoFn attaches both itself.
        global_windows = isinstance(events.windowing.windowfn, GlobalWindows)
        drop = beam.ParDo(_DedupShardFn(self.horizon_s, global_windows, self.gates, self.clock))
        batched = events | "BatchByIdShard" >> batch_by_shard(self.shards)
        if not self.gates:
            deduplicated: PCollection[Any] = batched | "DropSeenIdsPerShard" >> drop.with_output_types(Event)
            return deduplicated
        tags = [t for g in self.gates for t in (admitted_tag(g.kind), too_late_tag(g.kind))]
        outputs = batched | "DropSeenIdsPerShard" >> drop.with_outputs(*tags, main=EVENTS)
        outputs[EVENTS].element_type = Event
        for gate in self.gates:
            # One orjson document per batch where a batch crosses a stage boundary (EventBatchCoder).
            outputs[admitted_tag(gate.kind)].element_type = EventBatch
        return outputs
