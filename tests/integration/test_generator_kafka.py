"""The generator CLI against the real broker: what lands in Kafka is exactly what was asked for,
and a topic that does not exist is named at once (or created when asked)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

from kafka import KafkaConsumer, TopicPartition

from devstack.generator import KIND_HEADER
from devstack.kafka_topics import ensure_topics, missing_topics
from devstack.stack.process import free_port
from streaming_analytics.events import InvalidEvent, parse_event
from streaming_analytics.settings import Settings

COUNT = 5_000


def test_generator_writes_exact_fractions_to_kafka(settings: Settings, unique_name: str) -> None:
    ensure_topics(settings.kafka_bootstrap, {unique_name: 4})
    out = subprocess.run(
        [sys.executable, "-m", "devstack.generator", "--count", str(COUNT), "--seed", "11",
         "--topic", unique_name, "--bootstrap", settings.kafka_bootstrap, "--start-ms", "1767225600000",
         "--malformed", "0.03", "--duplicate", "0.02", "--late", "0.01", "--too-late", "0.004",
         "--out-of-order", "0.1", "--anomalous", "0.006"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {"malformed": 150, "duplicate": 100, "late": 50, "too_late": 20, "out_of_order": 500,
                "anomalous": 30, "normal": 4150}
    assert summary == {"sent": COUNT, "kinds": expected}

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(unique_name, p) for p in range(4)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    records = []
    deadline = time.monotonic() + 60
    while len(records) < COUNT and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    assert len(records) == COUNT
    assert len({r.partition for r in records}) == 4, "events should spread over every partition"

    by_header = Counter(dict(r.headers)[KIND_HEADER].decode() for r in records)
    assert by_header == expected

    # Independently of the header: malformed records fail validation, duplicates repeat an id.
    invalid = 0
    ids: Counter[str] = Counter()
    for r in records:
        try:
            ids[parse_event(r.value).event_id] += 1
        except InvalidEvent:
            invalid += 1
    assert invalid == expected["malformed"]
    assert sum(n - 1 for n in ids.values()) == expected["duplicate"]


def _generate(settings: Settings, topic: str, *extra: str) -> subprocess.CompletedProcess[str]:
    # The timeout is far below the producer's 60-s metadata wait that a missing topic used to cost.
    return subprocess.run(
        [sys.executable, "-m", "devstack.generator", "--count", "20", "--seed", "3",
         "--topic", topic, "--bootstrap", settings.kafka_bootstrap, *extra],
        capture_output=True, text=True, timeout=30, check=False,
    )


def test_a_missing_topic_is_named_with_the_way_to_create_it(settings: Settings, unique_name: str) -> None:
    out = _generate(settings, unique_name)
    assert out.returncode == 2, out
    assert f"Kafka topic '{unique_name}' does not exist on {settings.kafka_bootstrap}" in out.stderr
    assert "--create-topic" in out.stderr and "KafkaTimeoutError" not in out.stderr
    assert out.stdout == ""
    assert missing_topics(settings.kafka_bootstrap, [unique_name]) == [unique_name]  # nothing created


def test_create_topic_creates_a_missing_topic_and_sends(settings: Settings, unique_name: str) -> None:
    out = _generate(settings, unique_name, "--create-topic")
    assert out.returncode == 0, out
    assert f"created topic '{unique_name}' with {settings.events_partitions} partitions" in out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["sent"] == 20
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(unique_name)
        assert partitions is not None and len(partitions) == settings.events_partitions
        consumer.assign([TopicPartition(unique_name, p) for p in partitions])
        consumer.seek_to_beginning()
        records = []
        deadline = time.monotonic() + 60
        while len(records) < 20 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    assert len(records) == 20
    # Run again: the topic exists now, so nothing is created and the records are added.
    again = _generate(settings, unique_name, "--create-topic")
    assert again.returncode == 0 and "created topic" not in again.stderr, again


def test_no_broker_is_named_with_the_way_to_start_one(settings: Settings, unique_name: str) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    out = subprocess.run(
        [sys.executable, "-m", "devstack.generator", "--count", "1", "--topic", unique_name,
         "--bootstrap", nowhere], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2, out
    assert f"no Kafka broker answers at {nowhere}" in out.stderr and "stack up kafka" in out.stderr
