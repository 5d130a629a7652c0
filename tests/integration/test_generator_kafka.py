"""The generator CLI against the real broker: what lands in Kafka is exactly what was asked for."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

from kafka import KafkaConsumer, TopicPartition

from streaming_analytics.events import InvalidEvent, parse_event
from streaming_analytics.generator import KIND_HEADER
from streaming_analytics.kafka_topics import ensure_topics
from streaming_analytics.settings import Settings

COUNT = 5_000


def test_generator_writes_exact_fractions_to_kafka(settings: Settings, unique_name: str) -> None:
    ensure_topics(settings.kafka_bootstrap, {unique_name: 4})
    out = subprocess.run(
        [sys.executable, "-m", "streaming_analytics.generator", "--count", str(COUNT), "--seed", "11",
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
