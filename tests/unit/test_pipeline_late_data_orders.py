"""Late data in every reading order: property tests of build_pipeline on TestStream (DirectRunner).

Each Kafka partition is a TestStream output of its own, with its own watermark; the Flatten in front
of the job makes the job's watermark the minimum over them, as the Kafka source's is. Hypothesis
draws the records (valid, duplicated, malformed) and the reading orders — one partition after
another, interleaved, bursts, idle partitions whose watermark moves, watermark jumps, watermarks one
millisecond either side of a deadline — and every run is checked against a plain-Python model:

* **Kafka-like orders** (each partition's watermark is its highest event time read minus the
  source's bound, records never later than the allowed lateness behind their own partition): no
  event may be refused in any order, and the final panes are the same in every order — the model's.
  (The old rule refused such records when one partition was read ahead of the others.)
* **Arbitrary watermarks**: an event is refused for a kind exactly when the watermark the test had
  advanced to before adding it was past that kind's deadline (the DirectRunner's drop rule, pinned
  in test_transforms_late_data); every valid first delivery is either in that kind's aggregates or
  in a too-late dead letter naming the kind, never both, never neither; the final panes equal the
  model over the admitted events; every malformed record is dead-lettered with its position.

The one thing the rule cannot know, a dedup shard's very first batch (docs/pipeline.md), is kept
out by starting every scenario with one event per shard at the earliest event time, added while the
watermark is still at its start; test_transforms_dedup covers that case on its own.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.analytics_pipeline import AnalyticsOptions, build_pipeline
from tests.unit.test_transforms_support import BASE_S, event_doc
from transforms.aggregates import Aggregate
from transforms.records import KafkaRecord

pytestmark = pytest.mark.unit

FIXED_MS, SLIDING_MS, PERIOD_MS, LATENESS_MS = 10_000, 30_000, 10_000, 5_000
#: The bound of the test's "source": a partition's watermark is its highest event time minus this.
SOURCE_BOUND_MS = 2_000
CATEGORIES = ("books", "toys")
BASE_MS = BASE_S * 1000
#: Event times of the scenarios, relative to BASE_S; watermarks stay below END_MS until the end.
SPAN_MS = 150_000
END_MS = 220_000


def deadline(kind: str, t_ms: int) -> int:
    """When ``kind``'s newest window containing ``t_ms`` (relative ms) closes: its end + lateness."""
    size = FIXED_MS if kind == "fixed" else SLIDING_MS
    return t_ms - t_ms % PERIOD_MS + size + LATENESS_MS


def windows(kind: str, t_ms: int) -> list[int]:
    """Starts of ``kind``'s windows containing ``t_ms``."""
    size = FIXED_MS if kind == "fixed" else SLIDING_MS
    last = t_ms - t_ms % PERIOD_MS
    return [s for s in range(last, t_ms - size, -PERIOD_MS)]


# --- scenarios ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rec:
    """A record of the scenario: a valid event (``t_ms`` relative to BASE_S) or a malformed value."""

    partition: int
    offset: int
    event_id: str | None  # None: malformed
    t_ms: int
    amount: int = 0
    category: str = "books"

    def value(self) -> bytes:
        if self.event_id is None:
            return b'{"event_id": truncated'
        return orjson.dumps(event_doc(self.event_id, self.t_ms / 1000, float(self.amount),
                                      user=self.event_id, category=self.category))


@dataclass(frozen=True)
class Add:
    partition: int
    records: tuple[Rec, ...]


@dataclass(frozen=True)
class Advance:
    tag: str
    to_ms: int


Step = Add | Advance


@dataclass
class Model:
    """What the job must produce for one reading order."""

    refused: dict[str, frozenset[str]] = field(default_factory=dict)  # event id -> kinds
    #: kind -> (category, window start relative ms) -> the events counted there
    windows: dict[str, dict[tuple[str, int], list[Rec]]] = field(
        default_factory=lambda: {k: defaultdict(list) for k in ("fixed", "sliding")})
    malformed: set[tuple[int, int]] = field(default_factory=set)


def model(steps: list[Step], tags: list[str]) -> Model:
    """The plain-Python computation: the watermark before an Add is the minimum over all tags (none
    advanced yet: no watermark); the first delivery of an id is judged there, duplicates dropped.
    A kind refuses it when the watermark was past its newest window's end + lateness (the
    DirectRunner's drop rule); otherwise it counts in every window of that kind it belongs to."""
    marks: dict[str, int | None] = dict.fromkeys(tags)
    m = Model()
    seen: set[str] = set()
    for step in steps:
        if isinstance(step, Advance):
            current = marks[step.tag]
            marks[step.tag] = step.to_ms if current is None else max(current, step.to_ms)
            continue
        known = [w for w in marks.values() if w is not None]
        watermark = min(known) if len(known) == len(marks) else None
        for r in step.records:
            if r.event_id is None:
                m.malformed.add((r.partition, r.offset))
                continue
            if r.event_id in seen:
                continue
            seen.add(r.event_id)
            refused = frozenset(k for k in ("fixed", "sliding")
                                if watermark is not None and watermark > deadline(k, r.t_ms))
            if refused:
                m.refused[r.event_id] = refused
            for kind in ("fixed", "sliding"):
                if kind not in refused:
                    for start in windows(kind, r.t_ms):
                        m.windows[kind][(r.category, start)].append(r)
    return m


def warm_up(shards: int) -> list[str]:
    """One event id per dedup shard (crc32(id) % shards, as the job shards them)."""
    ids: dict[int, str] = {}
    n = 0
    while len(ids) < shards:
        ids.setdefault(zlib.crc32(f"warm{n}".encode()) % shards, f"warm{n}")
        n += 1
    return [ids[s] for s in range(shards)]


# --- running the job ----------------------------------------------------------------------------
def run_job(steps: list[Step], tags: list[str], shards: int, expect: Model) -> None:
    options = AnalyticsOptions(flags=[
        f"--fixed_window_s={FIXED_MS / 1000}", f"--sliding_window_s={SLIDING_MS / 1000}",
        f"--sliding_period_s={PERIOD_MS / 1000}", f"--allowed_lateness_s={LATENESS_MS / 1000}",
        "--late_gate_margin_s=10", "--late_gate_lookahead_s=600", "--dedup_horizon_s=3600",
        "--dimensions=category", f"--dedup_shards={shards}",
    ])
    options.view_as(StandardOptions).streaming = True
    stream = TestStream(output_tags=tags)
    marks: dict[str, int] = {}
    for step in steps:
        if isinstance(step, Advance):
            if step.to_ms > marks.get(step.tag, -1):  # TestStream takes strictly advancing watermarks only
                marks[step.tag] = step.to_ms
                stream = stream.advance_watermark_to(Timestamp(micros=(BASE_MS + step.to_ms) * 1000),
                                                     tag=step.tag)
        else:
            stream = stream.add_elements([_element(r) for r in step.records], tag=f"p{step.partition}")
    for tag in tags:
        stream = stream.advance_watermark_to_infinity(tag=tag)
    p = TestPipeline(options=options)
    outputs = p | stream
    records = [outputs[t] for t in tags] | "Partitions" >> beam.Flatten()
    out = build_pipeline(p, records, options)
    for kind, panes in (("fixed", out.fixed), ("sliding", out.sliding)):
        assert_that(panes, _final_panes_equal(expect.windows[kind]), label=f"{kind}FinalPanes")
    letters = sorted([("too_late", i, ", ".join(sorted(k))) for i, k in expect.refused.items()]
                     + [("malformed", f"{p_}:{o}", "") for p_, o in expect.malformed])
    assert_that(out.dead_letters | "Letters" >> beam.Map(_letter), equal_to(letters), label="DeadLetters")
    p.run().wait_until_finish()


def _element(r: Rec) -> TimestampedValue:
    record = KafkaRecord("events", r.partition, r.offset, None, r.value(), BASE_MS + r.t_ms)
    return TimestampedValue(record, Timestamp(micros=(BASE_MS + r.t_ms) * 1000))


def _letter(d: Any) -> tuple[str, str, str]:
    if d.reason_code == "too_late":
        kinds = d.reason_detail.split(":", 1)[0].removeprefix("too late for ").split(", ")
        return "too_late", orjson.loads(d.raw)["event_id"], ", ".join(sorted(kinds))
    return "malformed", f"{d.partition}:{d.offset}", ""


def _final_panes_equal(counted: dict[tuple[str, int], list[Rec]]) -> Callable[[list[Aggregate]], None]:
    expected = {(category, BASE_MS + start): recs for (category, start), recs in counted.items()}

    def check(actual: list[Aggregate]) -> None:
        panes: dict[tuple[str, int], list[Aggregate]] = defaultdict(list)
        for a in actual:
            panes[(a.key, a.window_start_ms)].append(a)
        assert set(panes) == set(expected), sorted(set(panes) ^ set(expected))
        for key, rows in panes.items():
            assert sorted(a.pane_index for a in rows) == list(range(len(rows))), key
            last = max(rows, key=lambda a: a.pane_index)
            amounts = [r.amount for r in expected[key]]
            got = (last.count, last.sum_amount, last.min_amount, last.max_amount, last.distinct_users)
            assert got == (len(amounts), sum(amounts), min(amounts), max(amounts), len(amounts)), key

    return check


# --- strategies ---------------------------------------------------------------------------------
#: Watermark values: anywhere, or one millisecond either side of a deadline (5 s + k * 10 s).
watermark_values = st.one_of(
    st.integers(0, END_MS),
    st.builds(lambda k, d: 5_000 + k * PERIOD_MS + d, st.integers(0, END_MS // PERIOD_MS - 1),
              st.sampled_from([-1, 0, 1])),
)


def _records(draw: st.DrawFn, partitions: int, shards: int, times: st.SearchStrategy[int],
             same_partition_duplicates: bool) -> dict[int, list[Rec]]:
    """Per-partition record lists: the warm-up first (partition 0, t = 0), then events, duplicates
    and malformed records; amounts are distinct so a final pane's sum names its events."""
    queues: dict[int, list[Rec]] = {p: [] for p in range(partitions)}

    def put(partition: int, event_id: str | None, t_ms: int, amount: int = 0, category: str = "books") -> Rec:
        rec = Rec(partition, len(queues[partition]), event_id, t_ms, amount, category)
        queues[partition].append(rec)
        return rec

    for n, event_id in enumerate(warm_up(shards)):
        put(0, event_id, 0, amount=n + 1)
    amount = 100
    for i, t_ms in enumerate(draw(st.lists(times, min_size=1, max_size=18))):
        partition = draw(st.integers(0, partitions - 1))
        amount += draw(st.integers(1, 9))
        original = put(partition, f"e{i}", t_ms, amount, draw(st.sampled_from(CATEGORIES)))
        if draw(st.integers(0, 5)) == 0:  # a re-delivery, byte for byte
            target = partition if same_partition_duplicates else draw(st.integers(0, partitions - 1))
            put(target, original.event_id, original.t_ms, original.amount, original.category)
        if draw(st.integers(0, 9)) == 0:
            put(draw(st.integers(0, partitions - 1)), None, t_ms)
    return queues


@st.composite
def arbitrary_scenarios(draw: st.DrawFn) -> tuple[list[Step], list[str], int]:
    """Records anywhere in time, any partition; watermarks moved by the test in any order."""
    partitions, shards = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    tags = [f"p{p}" for p in range(partitions)] + (["idle"] if draw(st.booleans()) else [])
    queues = _records(draw, partitions, shards, st.integers(0, SPAN_MS), same_partition_duplicates=False)
    steps: list[Step] = [Add(0, tuple(queues[0][:shards]))]  # the warm-up, before any watermark
    queues[0] = queues[0][shards:]
    for move in draw(st.lists(st.tuples(st.booleans(), st.sampled_from(tags), st.integers(1, 4),
                                        watermark_values), max_size=30)):
        adding, tag, size, to_ms = move
        partition = int(tag[1:]) if tag != "idle" else None
        if adding and partition is not None and queues[partition]:
            steps.append(Add(partition, tuple(queues[partition][:size])))
            queues[partition] = queues[partition][size:]
        elif not adding:
            steps.append(Advance(tag, to_ms))
    steps += [Add(p, tuple(q)) for p, q in queues.items() if q]
    return steps, tags, shards


@st.composite
def kafka_like_scenarios(draw: st.DrawFn) -> tuple[dict[int, list[Rec]], list[str], int]:
    """Per partition, event times that never fall more than the allowed lateness plus the source's
    bound behind that partition's newest (so no reading order can make one too late), duplicates in
    the partition of their original (Kafka partitions by key)."""
    partitions, shards = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    tags = [f"p{p}" for p in range(partitions)] + (["idle"] if draw(st.booleans()) else [])
    queues = _records(draw, partitions, shards, st.integers(0, SPAN_MS), same_partition_duplicates=True)
    for p, q in queues.items():  # re-time each partition's events as its own clock with bounded lateness
        clock, retimed = 0, []
        for rec in q:
            if rec.event_id is None or rec.event_id.startswith("warm"):
                retimed.append(rec)
                continue
            clock += draw(st.integers(0, 8_000))
            first = next((x for x in retimed if x.event_id == rec.event_id), None)
            delay = draw(st.integers(0, LATENESS_MS + SOURCE_BOUND_MS - 1))
            t = first.t_ms if first else max(0, clock - delay)
            retimed.append(Rec(rec.partition, rec.offset, rec.event_id, t, rec.amount, rec.category))
        queues[p] = retimed
    return queues, tags, shards


def kafka_like_order(queues: dict[int, list[Rec]], tags: list[str], chunks: list[tuple[int, int]],
                     idle_moves: list[int]) -> list[Step]:
    """Read ``queues`` in chunks (partition, size) — then whatever is left, one partition after
    another; after each chunk that partition's watermark moves to its newest event time minus the
    source's bound, and the idle partition (if any) jumps to ``idle_moves`` on the way."""
    rest = {p: list(q) for p, q in queues.items()}
    newest: dict[int, int] = {}
    steps: list[Step] = []
    idle = iter(sorted(idle_moves))

    def read(p: int, size: int) -> None:
        chunk, rest[p] = rest[p][:size], rest[p][size:]
        steps.append(Add(p, tuple(chunk)))
        times = [r.t_ms for r in chunk if r.event_id is not None]
        if times:
            newest[p] = max(newest.get(p, 0), *times)
            steps.append(Advance(f"p{p}", max(0, newest[p] - SOURCE_BOUND_MS)))
        if "idle" in tags:
            move = next(idle, None)
            if move is not None:
                steps.append(Advance("idle", move))

    read(0, len(warm_up_ids(queues)))
    for p, size in chunks:
        if rest.get(p):
            read(p, size)
    for p in sorted(rest):
        while rest[p]:
            read(p, 3)
    return steps


def warm_up_ids(queues: dict[int, list[Rec]]) -> list[Rec]:
    return [r for r in queues[0] if r.event_id is not None and r.event_id.startswith("warm")]


# --- the properties -------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kafka_like_scenarios(), st.data())
def test_kafka_like_reading_orders_refuse_nothing_and_agree(
        scenario: tuple[dict[int, list[Rec]], list[str], int], data: st.DataObject) -> None:
    queues, tags, shards = scenario
    partitions = sorted(queues)
    sequential = [(p, len(queues[p])) for p in (partitions if data.draw(st.booleans()) else partitions[::-1])]
    drawn = data.draw(st.lists(st.tuples(st.sampled_from(partitions), st.integers(1, 5)), max_size=20))
    idle_moves = data.draw(st.lists(st.integers(0, END_MS), max_size=4))
    results = []
    for chunks in (sequential, drawn):  # one partition after another, then an interleaving
        steps = kafka_like_order(queues, tags, chunks, idle_moves)
        expect = model(steps, tags)
        assert not expect.refused  # by construction: nothing is too late in any order
        run_job(steps, tags, shards, expect)
        results.append({k: {w: sorted(r.event_id for r in recs) for w, recs in v.items()}
                        for k, v in expect.windows.items()})
    assert results[0] == results[1]  # the same events in every window, so the same final panes


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_scenarios())
def test_refused_exactly_when_the_watermark_had_passed_the_deadline(
        scenario: tuple[list[Step], list[str], int]) -> None:
    steps, tags, shards = scenario
    run_job(steps, tags, shards, model(steps, tags))


def test_a_partition_read_ahead_does_not_make_the_others_late() -> None:
    """The issue's backlog in miniature, fixed: partition 0 holds 100 s of events and is read to
    the end first; partition 1's events from the start come afterwards and are all admitted (the
    old rule refused them: its watermark estimate was a shard's highest event time)."""
    p0 = [Rec(0, o, f"a{o}", o * 5_000, 10 + o) for o in range(20)]
    p1 = [Rec(1, o, f"b{o}", o * 5_000 + 1, 100 + o, "toys") for o in range(20)]
    warm = [Rec(0, 20, w, 0, 1) for w in warm_up(2)]
    tags = ["p0", "p1"]
    steps: list[Step] = [Add(0, tuple(warm)), Add(0, tuple(p0)), Advance("p0", 95_000 - SOURCE_BOUND_MS)]
    for i in range(0, 20, 4):
        steps += [Add(1, tuple(p1[i:i + 4])), Advance("p1", p1[i + 3].t_ms - SOURCE_BOUND_MS)]
    expect = model(steps, tags)
    assert not expect.refused and sum(len(v) for v in expect.windows["fixed"].values()) == 42
    run_job(steps, tags, 2, expect)
