"""Shared by the pipeline's end-to-end, late-data and fault tests: the exactness check (the private
job they run in is devstack.sandbox).

The check recomputes every window's aggregates independently, in plain Python, from the records
actually in the topic (first delivery of each event id counts), and compares them with the final
pane of each window in Postgres and the newest pane of each window key in the Redis streams.

Events the job refused as too late are read from its dead letters (one per event, naming the
aggregate kinds that refused it); each must be a valid first delivery whose deadline for those
kinds (newest window end + allowed lateness) lies behind the topic's event-time progress, and it is
then left out of exactly those kinds' windows — every other event counts in every window it belongs
to. So an event both counted and refused, or neither, or refused without cause, fails the check.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import psycopg2
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from devstack.generator import KIND_HEADER
from streaming_analytics.events import Event, InvalidEvent, parse_event
from streaming_analytics.settings import Settings
from streaming_analytics.streams import (
    CHANNEL_ALERTS,
    CHANNEL_FIXED,
    CHANNEL_SLIDING,
    StreamEntry,
    pane_revision,
    stream_key,
)
from transforms.kafka_source import event_time_from_payload

DIMENSIONS = {"event_type_country": ("event_type", "country"), "category": ("category",)}
WindowKey = tuple[str, str, str, int, int]


@dataclass(frozen=True)
class Windows:
    """Window sizes of the job under test, in seconds."""

    fixed_s: int = 60
    sliding_s: int = 300
    period_s: int = 60

    def args(self) -> list[str]:
        return [f"--fixed_window_s={self.fixed_s}", f"--sliding_window_s={self.sliding_s}",
                f"--sliding_period_s={self.period_s}"]

    def of(self, event: Event) -> Iterator[tuple[str, int, int]]:
        t = event.event_time_ms
        start = t - t % (self.fixed_s * 1000)
        yield "fixed", start, start + self.fixed_s * 1000
        last = t - t % (self.period_s * 1000)
        for start in range(last, t - self.sliding_s * 1000, -self.period_s * 1000):
            yield "sliding", start, start + self.sliding_s * 1000

    def deadline(self, kind: str, t_ms: int, lateness_s: float) -> int:
        """When ``kind``'s newest window containing ``t_ms`` stops taking events: end + lateness."""
        size, period = (self.fixed_s, self.fixed_s) if kind == "fixed" else (self.sliding_s, self.period_s)
        return t_ms - t_ms % (period * 1000) + size * 1000 + round(lateness_s * 1000)


@dataclass(frozen=True)
class Lateness:
    """The job's late-data settings, for judging its refusals: ``--allowed_lateness_s`` and the
    source's watermark bound ``--max_out_of_orderness_s``."""

    allowed_s: float = 120.0
    source_bound_s: float = 5.0


@dataclass
class Stats:
    amounts: list[float] = field(default_factory=list)
    users: set[str] = field(default_factory=set)



def consume_all(s: Settings, partitions: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(s.topic_events, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    total = sum(consumer.end_offsets(tps).values())
    records: list = []
    deadline = time.monotonic() + 60
    while len(records) < total and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    assert len(records) == total
    return records


def first_deliveries(records: list) -> tuple[dict[str, Event], set[tuple[int, int]]]:
    """The first delivery of every event id (by partition and offset: the generator's re-deliveries
    are byte-identical, so which copy the job saw first does not matter) and the positions of the
    malformed records."""
    events: dict[str, Event] = {}
    malformed: set[tuple[int, int]] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            event = parse_event(r.value)
        except InvalidEvent:
            malformed.add((r.partition, r.offset))
            continue
        events.setdefault(event.event_id, event)
    return events, malformed


def expected_aggregates(records: list, windows: Windows, refused: dict[str, frozenset[str]] | None = None,
                        ) -> tuple[dict[WindowKey, Stats], set[tuple[int, int]]]:
    """Aggregate the records the plain way, leaving each refused event (id -> kinds) out of those
    kinds' windows; also return the positions of the malformed records."""
    events, malformed = first_deliveries(records)
    out: dict[WindowKey, Stats] = defaultdict(Stats)
    for event in events.values():
        left_out = (refused or {}).get(event.event_id, frozenset())
        for dimension, fields in DIMENSIONS.items():
            key = "|".join(getattr(event, f) for f in fields)
            for kind, start, end in windows.of(event):
                if kind in left_out:
                    continue
                stats = out[(kind, dimension, key, start, end)]
                stats.amounts.append(event.amount)
                stats.users.add(event.user_id)
    return out, malformed


_REFUSED_BY = re.compile(r"^too late for ([a-z]+(?:, [a-z]+)*):")


def refused_events(dead: list[tuple[int | None, int | None, str, bytes | None, str]], records: list,
                   partitions: int, windows: Windows, lateness: Lateness | None) -> dict[str, frozenset[str]]:
    """The too-late dead letters as event id -> refusing kinds, each checked: one letter per event,
    a valid first delivery, refused only by kinds whose deadline for it lies behind the topic's
    event-time progress (the lowest of the partitions' newest event times, minus the source's
    bound: the job's watermark never passed it, short of the idle timeout after everything was read;
    a partition without records holds it back for good), and behind its own partition's progress
    up to the event's delivery (the source's watermark then was at most that, in any reading
    order; this holds where the idle timeout is off, as in the tests that expect refusals)."""
    letters = [(raw, detail) for p, o, code, raw, detail in dead if code == "too_late"]
    if lateness is None:
        assert not letters, f"{len(letters)} events refused as too late"
        return {}
    events, _ = first_deliveries(records)
    newest: dict[int, int] = {}
    # Where each event was delivered, with its partition's newest event time up to there: when the
    # source read it, its watermark was at most that minus the bound, whatever the reading order.
    read_by: dict[str, int] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        t = event_time_from_payload(r.value) or r.timestamp  # as the source reads it
        newest[r.partition] = max(newest.get(r.partition, t), t)
        try:
            event_id = parse_event(r.value).event_id
        except InvalidEvent:
            continue
        read_by[event_id] = max(read_by.get(event_id, newest[r.partition]), newest[r.partition])
    bound_ms = round(lateness.source_bound_s * 1000)
    progress = min(newest.values()) - bound_ms if len(newest) == partitions else None
    refused: dict[str, frozenset[str]] = {}
    for raw, detail in letters:
        assert raw is not None
        event_id = orjson.loads(bytes(raw))["event_id"]
        match = _REFUSED_BY.match(detail)
        assert match, detail
        kinds = frozenset(match[1].split(", "))
        assert event_id not in refused, f"{event_id} dead-lettered twice"
        assert event_id in events, f"{event_id}: refused, but not a first delivery in the topic"
        assert kinds <= {"fixed", "sliding"}, detail
        t = events[event_id].event_time_ms
        for kind in kinds:
            deadline = windows.deadline(kind, t, lateness.allowed_s)
            assert progress is not None and deadline <= progress, (
                f"{event_id} refused by {kind} though its deadline {deadline} was ahead of the topic's "
                f"progress {progress}: {detail}")
            assert deadline <= read_by[event_id] - bound_ms, (
                f"{event_id} refused by {kind} (deadline {deadline}) though its partition had only "
                f"reached {read_by[event_id]} where it was delivered: the watermark cannot have "
                f"passed its deadline when the step judged it: {detail}")
        refused[event_id] = kinds
    return refused


def _exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_results_exact(s: Settings, schema: str, partitions: int, windows: Windows,
                         lateness: Lateness | None = None, *, excused_reasons: frozenset[str] = frozenset(),
                         ) -> int:
    """Postgres and Redis hold exactly the independently computed aggregates; every malformed
    record is dead-lettered once; one alert per anomalous event. Without ``lateness`` no event may
    be refused as too late; with it, refusals are checked and left out (see the module docstring).
    ``excused_reasons``: dead letters a test expects besides the malformed records (e.g. those of a
    faulty release it rolled back), left out of the dead-letter comparison.
    Returns the number of windows checked."""
    return check_results(s, schema, partitions, windows, lateness, excused_reasons=excused_reasons).windows


@dataclass(frozen=True)
class Checked:
    """What :func:`check_results` compared: windows, and events refused as too late by kind."""

    windows: int
    refused: dict[str, frozenset[str]]


def check_results(s: Settings, schema: str, partitions: int, windows: Windows,
                  lateness: Lateness | None = None, *, excused_reasons: frozenset[str] = frozenset(),
                  ) -> Checked:
    """:func:`assert_results_exact`, returning what it compared."""
    records = consume_all(s, partitions)
    anomalous = {parse_event(r.value).event_id for r in records
                 if dict(r.headers).get(KIND_HEADER) == b"anomalous"}
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT kind, dimension, dimension_key, (extract(epoch FROM window_start) * 1000)::bigint,"
            f" (extract(epoch FROM window_end) * 1000)::bigint, count, sum_amount, min_amount, max_amount,"
            f" mean_amount, p50, p95, p99, distinct_users,"
            f" (extract(epoch FROM emitted_at) * 1000)::bigint, pane_index FROM {schema}.aggregates")
        rows = {tuple(r[:5]): r[5:] for r in cur.fetchall()}
        cur.execute(f"SELECT source_partition, source_offset, reason_code, raw, reason_detail"
                    f" FROM {schema}.dead_letters")
        dead = cur.fetchall()
        cur.execute(f"SELECT event_id, model_version FROM {schema}.alerts")
        alerts = cur.fetchall()

    refused = refused_events(dead, records, partitions, windows, lateness)
    expected, malformed = expected_aggregates(records, windows, refused)
    assert set(rows) == set(expected), "windows differ from the independent computation"
    for key, stats in expected.items():
        count, total, low, high, mean, p50, p95, p99, distinct, _emitted, _pane = rows[key]
        assert count == len(stats.amounts), key
        assert total == pytest.approx(sum(stats.amounts), abs=1e-6), key
        assert (low, high) == (min(stats.amounts), max(stats.amounts)), key
        assert mean == pytest.approx(sum(stats.amounts) / len(stats.amounts)), key
        for q, value in ((0.5, p50), (0.95, p95), (0.99, p99)):  # DDSketch: 1 % relative error
            assert value == pytest.approx(_exact_quantile(stats.amounts, q), rel=0.0101), (key, q)
        # HyperLogLog: exact up to 256 users (sparse mode), 1.6 % standard error above; 3 sigma here.
        if len(stats.users) <= 256:
            assert distinct == len(stats.users), key
        else:
            assert distinct == pytest.approx(len(stats.users), rel=0.048), key

    positions = [(p, o) for p, o, code, *_ in dead if code != "too_late" and code not in excused_reasons]
    assert sorted(positions) == sorted(malformed), "dead letters differ from the malformed records"
    # The model separates the generator's anomalies cleanly: one alert per anomalous event, no other.
    assert sorted(e for e, _ in alerts) == sorted(anomalous), "alerts differ from the anomalous events"
    assert {v for _, v in alerts} == {"v1"}

    client = redis.Redis.from_url(s.redis_url)
    try:
        alert_keys = {StreamEntry.from_fields(f).key
                      for _id, f in client.xrange(stream_key(s.redis_stream_prefix, CHANNEL_ALERTS))}
        assert alert_keys == {f"alert|{e}" for e in anomalous}
        for channel, kind in ((CHANNEL_FIXED, "fixed"), (CHANNEL_SLIDING, "sliding")):
            latest: dict[str, StreamEntry] = {}
            for _id, fields in client.xrange(stream_key(s.redis_stream_prefix, channel)):
                entry = StreamEntry.from_fields(fields)
                if entry.key not in latest or entry.pane > latest[entry.key].pane:
                    latest[entry.key] = entry
            assert len(latest) == sum(1 for k in expected if k[0] == kind)
            for entry in latest.values():
                d = entry.data
                key = (kind, d["dimension"], d["key"], d["window_start_ms"], d["window_end_ms"])
                assert d["count"] == len(expected[key].amounts), key
                assert entry.pane == pane_revision(*rows[key][-2:]), "the stream's newest pane is the row's"
    finally:
        client.close()
    return Checked(len(expected), refused)


def wait_for_committed_offsets(s: Settings, partitions: int, timeout_s: float = 60) -> dict[int, int]:
    """Wait until the job's consumer group has committed every partition's end offset (offsets are
    committed when the runner finalizes a bundle's checkpoint); return the committed offsets."""
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=s.consumer_group,
                             enable_auto_commit=False)
    tps = [TopicPartition(s.topic_events, p) for p in range(partitions)]
    try:
        ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {tp.partition: consumer.committed(tp) for tp in tps}
            if committed == ends or time.monotonic() > deadline:
                assert committed == ends, f"committed {committed}, end offsets {ends}"
                return committed
            time.sleep(1)
    finally:
        consumer.close()
