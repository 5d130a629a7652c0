"""The two Kafka reads deliver the same records for the same topic: the Python source
(transforms/kafka_source.py; DirectRunner, Prism) and Java KafkaIO through our expansion service
(transforms/kafka_java_source.py; the job on Flink). Same topic, partition, offset, key, value and
Kafka timestamp for every record, and the same element timestamp (event time scanned from the
payload, else the Kafka timestamp) — including payloads built to trip the scan: floats, strings,
negative and over-long numbers, nesting, binary noise, empty values and tombstones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
import redis
from apache_beam.options.pipeline_options import PipelineOptions
from kafka import KafkaProducer

from devstack.generator import EventGenerator, GeneratorConfig
from devstack.kafka_topics import ensure_topics
from pipelines.flink_job import deploy_jar
from pipelines.flink_rest import FlinkRest
from pipelines.job_jar import JobJarRunner
from pipelines.runners import flink_job_base_jar, runner_args
from streaming_analytics.settings import Settings
from transforms.kafka_java_source import ReadFromKafkaJava
from transforms.kafka_source import ReadFromKafka, event_time_from_payload
from transforms.records import KafkaRecord

pytestmark = [pytest.mark.flink, pytest.mark.slow]

T0 = 1_767_225_600_000
#: Payloads whose event time the scan must find (or must not), both sources alike.
TRICKY: list[bytes | None] = [
    b'{"event_time_ms": 1767225600123, "x": 1}',
    b'{"event_time_ms":1.5}',
    b'{"event_time_ms": "1767225600000"}',
    b'{"a": {"event_time_ms": 42}}',
    b'{"event_time_ms": 1234567890123456}',
    b'{"event_time_ms" : \n 99e3}',
    b'{"event_time_ms":\t-5}',
    b'{"event_time_ms": 1767225600999}{"event_time_ms": 7}',
    b'\xff\xfe\x00 binary "event_time_ms":77 tail',
    b'"event_time_ms"',
    b'',
    None,
    b'{"event_time_ms": 99999999999999}',
]


class _PushToRedis(beam.DoFn):  # type: ignore[misc]
    """Each record with its element timestamp, as one JSON line in a Redis list."""

    def __init__(self, url: str, key: str) -> None:
        self._url, self._key = url, key

    def setup(self) -> None:
        self._client = redis.Redis.from_url(self._url)

    def process(self, r: KafkaRecord, ts: Any = beam.DoFn.TimestampParam) -> None:
        self._client.rpush(self._key, json.dumps(_row(r, int(ts.micros // 1000))))

    def teardown(self) -> None:
        self._client.close()


def _row(r: KafkaRecord, ts_ms: int) -> list[Any]:
    return [r.topic, r.partition, r.offset, None if r.key is None else r.key.hex(),
            None if r.value is None else r.value.hex(), r.timestamp_ms, ts_ms]


def _produce(s: Settings, topic: str) -> int:
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all")
    count = 0
    generator = EventGenerator(GeneratorConfig(seed=3))
    for i in range(600):  # realistic records: valid, late, malformed, duplicates
        value = generator.next_record(T0 + i * 10).value
        producer.send(topic, value=value, key=str(i).encode(), partition=i % 3, timestamp_ms=T0 + i)
        count += 1
    for i, value in enumerate(TRICKY):
        # A tombstone (None) needs a key; the other payloads alternate keyed and key-less.
        key = b"k" if value is None or i % 2 == 0 else None
        producer.send(topic, value=value, key=key, partition=i % 3, timestamp_ms=T0 - 1000 + i)
        count += 1
    producer.flush()
    producer.close()
    return count


def test_python_and_java_kafka_reads_deliver_the_same_records(settings: Settings, unique_name: str,
                                                               tmp_path: Path) -> None:
    topic = unique_name
    ensure_topics(settings.kafka_bootstrap, {topic: 3})
    total = _produce(settings, topic)
    client = redis.Redis.from_url(settings.redis_url)
    key_py, key_java = f"{unique_name}:python", f"{unique_name}:java"
    try:
        # The Python source, bounded, on the DirectRunner.
        with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
            _ = (p | ReadFromKafka(bootstrap=settings.kafka_bootstrap, topic=topic, start="earliest",
                                   bounded=True)
                 | beam.ParDo(_PushToRedis(settings.redis_url, key_py)))
        # The Java read, on Flink, until it has delivered every record.
        jar = tmp_path / "job.jar"
        options = PipelineOptions([*runner_args("flink", settings), f"--job_name={unique_name}"])
        p = beam.Pipeline(runner=JobJarRunner(jar, flink_job_base_jar(settings)), options=options)
        _ = (p | ReadFromKafkaJava(expansion_service=settings.beam_expansion_service,
                                   bootstrap=settings.kafka_bootstrap, topic=topic,
                                   group_id=f"g-{unique_name}", start="earliest")
             | beam.ParDo(_PushToRedis(settings.redis_url, key_java)))
        p.run().wait_until_finish()
        job = deploy_jar(FlinkRest(settings.flink_rest_url), jar)
        try:
            deadline = time.monotonic() + 180
            while client.llen(key_java) < total:
                assert time.monotonic() < deadline, f"{client.llen(key_java)} of {total} records"
                assert job.flink_state() == "RUNNING", job.rest.root_exception(job.job_id)
                time.sleep(1)
            time.sleep(2)  # nothing beyond the records produced may arrive
        finally:
            job.cancel()
        python_rows = sorted(json.loads(x) for x in client.lrange(key_py, 0, -1))
        java_rows = sorted(json.loads(x) for x in client.lrange(key_java, 0, -1))
    finally:
        client.delete(key_py, key_java)
        client.close()
    assert len(python_rows) == total
    assert java_rows == python_rows
    # And the shared rule itself: the element timestamp is the scanned event time, else Kafka's.
    for _topic, _p, _o, _k, value, kafka_ts, ts in python_rows:
        scanned = event_time_from_payload(None if value is None else bytes.fromhex(value))
        assert ts == (scanned if scanned is not None else kafka_ts)
