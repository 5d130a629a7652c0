"""The whole job on real Kafka, Postgres and Redis: final panes equal aggregates computed here,
independently, from the very records in the topic; every malformed record is dead-lettered.

Runs the job bounded (stop at the end offsets seen at start) on the DirectRunner (batch) and on
Prism (streaming, the runner of `make run`). The generated workload spans a few seconds of event
time with out-of-order, late, duplicate and malformed records; too-late records are left out
here because whether a record is beyond the allowed lateness during a replay depends on how the
runner interleaves partitions (the TestStream tests pin that behaviour down exactly).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg2
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from pipelines.analytics_pipeline import run
from pipelines.runners import runner_args
from streaming_analytics.events import Event, InvalidEvent, parse_event
from streaming_analytics.kafka_topics import ensure_topics
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_FIXED, CHANNEL_SLIDING, StreamEntry, stream_key

T0 = 1_767_225_600_000
COUNT = 3_000
PARTITIONS = 4
DIMENSIONS = {"event_type_country": ("event_type", "country"), "category": ("category",)}
FIXED_S, SLIDING_S, PERIOD_S = 60, 300, 60


@dataclass
class Stats:
    amounts: list[float] = field(default_factory=list)
    users: set[str] = field(default_factory=set)


@pytest.fixture
def job(settings: Settings, unique_name: str) -> Iterator[Settings]:
    """Settings pointing the job at a private topic, DLQ topic, Postgres schema and stream prefix."""
    s = dataclasses.replace(settings, topic_events=unique_name, topic_dlq=f"{unique_name}_dlq",
                            redis_stream_prefix=f"{unique_name}:", consumer_group=f"g-{unique_name}")
    ensure_topics(s.kafka_bootstrap, {s.topic_events: PARTITIONS, s.topic_dlq: 1})
    subprocess.run(
        [sys.executable, "-m", "streaming_analytics.generator", "--count", str(COUNT), "--seed", "5",
         "--topic", s.topic_events, "--bootstrap", s.kafka_bootstrap, "--start-ms", str(T0),
         "--rate", "1000", "--too-late", "0", "--late", "0.01", "--duplicate", "0.02",
         "--malformed", "0.02", "--out-of-order", "0.1"],
        check=True, capture_output=True, timeout=120,
    )
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {unique_name}")
    yield s
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA {unique_name} CASCADE")
    client = redis.Redis.from_url(s.redis_url)
    client.delete(*[stream_key(s.redis_stream_prefix, c) for c in (CHANNEL_FIXED, CHANNEL_SLIDING)])
    client.close()


def consume_all(s: Settings, topic: str, partitions: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(tps)
    records = []
    deadline = time.monotonic() + 60
    while sum(1 for _ in records) < sum(ends.values()) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    assert len(records) == sum(ends.values())
    return records


WindowKey = tuple[str, str, str, int, int]


def expected_aggregates(records: list) -> tuple[dict[WindowKey, Stats], set[tuple[int, int]]]:
    """Aggregate the topic's records the plain way: first occurrence of each event id counts."""
    seen: set[str] = set()
    malformed: set[tuple[int, int]] = set()
    windows: dict[WindowKey, Stats] = defaultdict(Stats)
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
            for kind, start, end in _windows(event):
                stats = windows[(kind, dimension, key, start, end)]
                stats.amounts.append(event.amount)
                stats.users.add(event.user_id)
    return windows, malformed


def _windows(event: Event) -> Iterator[tuple[str, int, int]]:
    t = event.event_time_ms
    start = t - t % (FIXED_S * 1000)
    yield "fixed", start, start + FIXED_S * 1000
    last = t - t % (PERIOD_S * 1000)
    for start in range(last, t - SLIDING_S * 1000, -PERIOD_S * 1000):
        yield "sliding", start, start + SLIDING_S * 1000


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


@pytest.mark.parametrize("runner", ["direct", "prism"])
def test_final_panes_equal_independent_aggregates(job: Settings, runner: str) -> None:
    schema = job.topic_events
    run([*runner_args(runner, job), "--bounded", f"--postgres_schema={schema}", "--kafka_start=earliest"],
        settings=job)

    expected, malformed = expected_aggregates(consume_all(job, job.topic_events, PARTITIONS))
    with psycopg2.connect(job.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT kind, dimension, dimension_key, (extract(epoch FROM window_start) * 1000)::bigint,"
            f" (extract(epoch FROM window_end) * 1000)::bigint, count, sum_amount, min_amount, max_amount,"
            f" mean_amount, p50, p95, p99, distinct_users, pane_index FROM {schema}.aggregates")
        rows = {tuple(r[:5]): r[5:] for r in cur.fetchall()}
        cur.execute(f"SELECT source_partition, source_offset, reason_code FROM {schema}.dead_letters")
        dead = cur.fetchall()

    assert set(rows) == set(expected), "windows differ from the independent computation"
    for key, stats in expected.items():
        count, total, low, high, mean, p50, p95, p99, distinct, _pane = rows[key]
        assert count == len(stats.amounts), key
        assert total == pytest.approx(sum(stats.amounts), abs=1e-6), key
        assert (low, high) == (min(stats.amounts), max(stats.amounts)), key
        assert mean == pytest.approx(sum(stats.amounts) / len(stats.amounts)), key
        for q, value in ((0.5, p50), (0.95, p95), (0.99, p99)):  # DDSketch: 1 % relative error
            assert value == pytest.approx(exact_quantile(stats.amounts, q), rel=0.0101), (key, q)
        # HyperLogLog: exact up to 256 users (sparse mode), 1.6 % standard error above; 3 sigma here.
        if len(stats.users) <= 256:
            assert distinct == len(stats.users), key
        else:
            assert distinct == pytest.approx(len(stats.users), rel=0.048), key

    assert {(p, o) for p, o, _ in dead} == malformed
    assert all(code != "too_late" for *_, code in dead)

    client = redis.Redis.from_url(job.redis_url)
    for channel, kind in ((CHANNEL_FIXED, "fixed"), (CHANNEL_SLIDING, "sliding")):
        latest: dict[str, StreamEntry] = {}
        for _id, fields in client.xrange(stream_key(job.redis_stream_prefix, channel)):
            entry = StreamEntry.from_fields(fields)
            if entry.key not in latest or entry.pane > latest[entry.key].pane:
                latest[entry.key] = entry
        want = {k for k in expected if k[0] == kind}
        assert len(latest) == len(want)
        for entry in latest.values():
            d = entry.data
            key = (kind, d["dimension"], d["key"], d["window_start_ms"], d["window_end_ms"])
            assert d["count"] == len(expected[key].amounts)
            assert entry.pane == rows[key][-1], "the stream's newest pane is the row's pane"
    client.close()
