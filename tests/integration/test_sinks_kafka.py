"""Dead-letter sink on the stack's real Kafka: records arrive acknowledged, keyed by their source
position, with the raw payload intact (any bytes, or none); a letter that cannot be sent is counted,
not fatal; an unreachable broker is retried, then reported."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Iterator

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from devstack.kafka_topics import ensure_topics
from streaming_analytics.settings import Settings
from tests.integration.sinks_support import T0_MS, closed_port, counter, run_sink
from transforms.records import DeadLetter
from transforms.retry import RetryPolicy
from transforms.sinks.convert import dead_letter_key
from transforms.sinks.kafka import WriteDeadLettersToKafka

Received = tuple[bytes, dict[str, object], dict[str, bytes]]


def consume_all(bootstrap: str, topic: str, expected: int) -> list[Received]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    out: list[Received] = []
    deadline = time.monotonic() + 30
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((r.key, orjson.loads(r.value), dict(r.headers)) for r in records)
    finally:
        consumer.close()
    return out


@pytest.fixture
def dlq_topic(settings: Settings, unique_name: str) -> Iterator[str]:
    """A one-partition topic of this test's own, deleted afterwards."""
    ensure_topics(settings.kafka_bootstrap, {unique_name: 1})
    yield unique_name
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.delete_topics([unique_name])
    finally:
        admin.close()


def test_dead_letters_arrive_with_their_payload_intact(settings: Settings, dlq_topic: str) -> None:
    unique_name = dlq_topic
    letters = [
        DeadLetter(raw=bytes(range(256)), reason_code="not_json", reason_detail="binary garbage",
                   topic="events", partition=3, offset=41, failed_at_ms=T0_MS),
        DeadLetter(raw=None, reason_code="empty", reason_detail="record has no value",
                   topic="events", partition=0, offset=7, failed_at_ms=T0_MS + 1),
        DeadLetter(raw='{"event_id": "é"}'.encode(), reason_code="too_late",
                   reason_detail="fixed windows closed", topic=None, partition=None, offset=None,
                   failed_at_ms=T0_MS + 2),
    ]
    result = run_sink(letters, WriteDeadLettersToKafka(settings.kafka_bootstrap, unique_name))
    received = consume_all(settings.kafka_bootstrap, unique_name, len(letters))

    by_key = {key: (value, headers) for key, value, headers in received}
    assert len(received) == len(letters)
    assert set(by_key) == {b"events-3-41", b"events-0-7", dead_letter_key(letters[2]).encode()}
    for letter in letters:
        value, headers = by_key[dead_letter_key(letter).encode()]
        raw_b64 = value["raw_b64"]
        assert (None if raw_b64 is None else base64.b64decode(str(raw_b64))) == letter.raw
        assert value == {
            "v": 1, "raw_b64": raw_b64, "reason_code": letter.reason_code,
            "reason_detail": letter.reason_detail, "failed_at_ms": letter.failed_at_ms,
            "source": {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
        }
        assert headers == {"reason_code": letter.reason_code.encode()}
    assert counter(result, "sink_rows_written.kafka.dead_letters") == len(letters)


def test_an_unreachable_broker_is_retried_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="transforms.retry")
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, max_elapsed_s=4)
    letter = {"raw": b"x", "reason_code": "not_json", "reason_detail": "", "topic": "events", "partition": 0,
              "offset": 1, "failed_at_ms": T0_MS}
    with pytest.raises(Exception, match=r"kafka\.dead_letters: gave up after \d+ attempts") as raised:
        run_sink([letter], WriteDeadLettersToKafka(f"127.0.0.1:{closed_port()}", "dlq", retry_policy=policy,
                                                   connect_timeout_s=0.5))
    match = re.search(r"gave up after (\d+) attempts", str(raised.value))
    assert match is not None and int(match.group(1)) >= 2
    retried = [r for r in caplog.records if "kafka.dead_letters: transient failure" in r.getMessage()]
    assert len(retried) == int(match.group(1)) - 1


def test_a_letter_that_cannot_be_sent_is_counted_and_the_others_arrive(
        settings: Settings, dlq_topic: str, caplog: pytest.LogCaptureFixture) -> None:
    """The DLQ topic is the last dead-letter path: a letter it cannot encode (a detail holding a lone
    surrogate, a mapping lacking fields) is logged and counted, never a failed job."""
    good = DeadLetter(raw=b"x", reason_code="not_json", reason_detail="bad", topic="events", partition=0,
                      offset=1, failed_at_ms=T0_MS)
    surrogate = DeadLetter(raw=b"y", reason_code="sink_rejected", reason_detail="bo\ud800oks", topic=None,
                           partition=None, offset=None, failed_at_ms=T0_MS)
    lacking = {"raw": b"z", "reason_code": "not_json"}
    caplog.set_level(logging.ERROR, logger="transforms.sinks.kafka")
    sink = WriteDeadLettersToKafka(settings.kafka_bootstrap, dlq_topic)
    result = run_sink([surrogate, good, lacking], sink)
    received = consume_all(settings.kafka_bootstrap, dlq_topic, 1)
    assert [key for key, _, _ in received] == [b"events-0-1"]
    assert counter(result, "sink_rejected.kafka.dead_letters") == 2
    assert counter(result, "sink_rows_written.kafka.dead_letters") == 1
    assert len([r for r in caplog.records if "cannot send a dead letter" in r.getMessage()]) == 2
