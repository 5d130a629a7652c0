"""A real round trip through every service of the stack that `make test` started."""

from __future__ import annotations

import time

import psycopg2
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from devstack.kafka_topics import ensure_topics
from devstack.stack.components import flink_overview
from streaming_analytics.settings import Settings


def test_kafka_produce_and_consume_across_partitions(settings: Settings, unique_name: str) -> None:
    assert ensure_topics(settings.kafka_bootstrap, {unique_name: 3}) == [unique_name]
    assert ensure_topics(settings.kafka_bootstrap, {unique_name: 3}) == []  # idempotent
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    sent = {(p, f"m{p}-{i}".encode()) for p in range(3) for i in range(5)}
    for partition, value in sorted(sent):
        producer.send(unique_name, value=value, partition=partition)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(unique_name, p) for p in range(3)])
    consumer.seek_to_beginning()
    received: set[tuple[int, bytes]] = set()
    deadline = time.monotonic() + 30
    while len(received) < len(sent) and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500).items():
            received.update((tp.partition, r.value) for r in records)
    consumer.close()
    assert received == sent


def test_kafka_has_the_platform_topics_with_their_partitions(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        described = {t["name"]: len(t["partitions"])
                     for t in admin.describe_topics([settings.topic_events, settings.topic_dlq])}
    finally:
        admin.close()
    assert described == {settings.topic_events: settings.events_partitions, settings.topic_dlq: 1}


def test_postgres_create_write_read_drop(settings: Settings, unique_name: str) -> None:
    with psycopg2.connect(settings.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {unique_name} (k text PRIMARY KEY, v bigint NOT NULL)")
        cur.execute(f"INSERT INTO {unique_name} VALUES (%s, %s), (%s, %s)", ("a", 1, "b", 2))
        cur.execute(f"INSERT INTO {unique_name} VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = "
                    f"{unique_name}.v + EXCLUDED.v", ("a", 10))
        cur.execute(f"SELECT k, v FROM {unique_name} ORDER BY k")
        rows = cur.fetchall()
        cur.execute(f"DROP TABLE {unique_name}")
    assert rows == [("a", 11), ("b", 2)]


def test_postgres_listens_on_loopback_only(settings: Settings) -> None:
    with psycopg2.connect(settings.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)


def test_redis_stream_xadd_and_xread(settings: Settings, unique_name: str) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        ids = [client.xadd(unique_name, {"n": str(i)}, maxlen=1000, approximate=True) for i in range(5)]
        entries = client.xread({unique_name: "0-0"}, count=10, block=1000)
        [(key, messages)] = entries
        assert key == unique_name.encode()
        assert [m[0] for m in messages] == ids
        assert [m[1][b"n"] for m in messages] == [str(i).encode() for i in range(5)]
        after_second = client.xread({unique_name: ids[1]}, count=10)
        assert [m[0] for m in after_second[0][1]] == ids[2:]
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        client.delete(unique_name)
        client.close()


def test_flink_session_cluster_has_a_taskmanager_with_slots(settings: Settings) -> None:
    overview = flink_overview(settings.flink_rest_url)
    assert overview["taskmanagers"] == 1
    assert overview["slots-total"] == settings.flink_task_slots
    assert str(overview["flink-version"]).startswith("1.19.")
