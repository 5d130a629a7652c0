"""Shared by the pipeline's end-to-end and fault tests: the exactness check (the private job they
run in is streaming_analytics.sandbox).

The check recomputes every window's aggregates independently, in plain Python, from the records
actually in the topic (first delivery of each event id counts), and compares them with the final
pane of each window in Postgres and the newest pane of each window key in the Redis streams.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg2
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from streaming_analytics.events import Event, InvalidEvent, parse_event
from streaming_analytics.generator import KIND_HEADER
from streaming_analytics.settings import Settings
from streaming_analytics.streams import (
    CHANNEL_ALERTS,
    CHANNEL_FIXED,
    CHANNEL_SLIDING,
    StreamEntry,
    stream_key,
)

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


def expected_aggregates(records: list,
                        windows: Windows) -> tuple[dict[WindowKey, Stats], set[tuple[int, int]]]:
    """Aggregate the records the plain way; also return the positions of the malformed ones."""
    seen: set[str] = set()
    malformed: set[tuple[int, int]] = set()
    out: dict[WindowKey, Stats] = defaultdict(Stats)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            event = parse_event(r.value)
        except InvalidEvent:
            malformed.add((r.partition, r.offset))
            continue
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        for dimension, fields in DIMENSIONS.items():
            key = "|".join(getattr(event, f) for f in fields)
            for kind, start, end in windows.of(event):
                stats = out[(kind, dimension, key, start, end)]
                stats.amounts.append(event.amount)
                stats.users.add(event.user_id)
    return out, malformed


def _exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_results_exact(s: Settings, schema: str, partitions: int, windows: Windows) -> int:
    """Postgres and Redis hold exactly the independently computed aggregates; every malformed
    record is dead-lettered once. Returns the number of windows checked."""
    records = consume_all(s, partitions)
    expected, malformed = expected_aggregates(records, windows)
    anomalous = {parse_event(r.value).event_id for r in records
                 if dict(r.headers).get(KIND_HEADER) == b"anomalous"}
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT kind, dimension, dimension_key, (extract(epoch FROM window_start) * 1000)::bigint,"
            f" (extract(epoch FROM window_end) * 1000)::bigint, count, sum_amount, min_amount, max_amount,"
            f" mean_amount, p50, p95, p99, distinct_users, pane_index FROM {schema}.aggregates")
        rows = {tuple(r[:5]): r[5:] for r in cur.fetchall()}
        cur.execute(f"SELECT source_partition, source_offset, reason_code FROM {schema}.dead_letters")
        dead = cur.fetchall()
        cur.execute(f"SELECT event_id, model_version FROM {schema}.alerts")
        alerts = cur.fetchall()

    assert set(rows) == set(expected), "windows differ from the independent computation"
    for key, stats in expected.items():
        count, total, low, high, mean, p50, p95, p99, distinct, _pane = rows[key]
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

    positions = [(p, o) for p, o, _ in dead]
    assert sorted(positions) == sorted(malformed), "dead letters differ from the malformed records"
    assert all(code != "too_late" for *_, code in dead)
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
                assert entry.pane == rows[key][-1], "the stream's newest pane is the row's pane"
    finally:
        client.close()
    return len(expected)


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
