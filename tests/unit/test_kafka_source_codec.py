"""Pure parts of the Kafka source: event-time extraction and the coders."""

from __future__ import annotations

import orjson
import pytest

from transforms.kafka_source import (
    KafkaCheckpointMark,
    KafkaCheckpointMarkCoder,
    KafkaRecordCoder,
    KafkaSourceConfig,
    event_time_from_payload,
)
from transforms.records import KafkaRecord


@pytest.mark.parametrize(("payload", "expected"), [
    (orjson.dumps({"a": 1, "event_time_ms": 1767225600123}), 1767225600123),
    (b'{"event_time_ms" :  1767225600123, "x": 2}', 1767225600123),
    (b'{"event_time_ms":1767225600123}', 1767225600123),
    (b'{"event_time_ms": 1.7e12}', None),
    (b'{"event_time_ms": "1767225600123"}', None),
    (b'{"event_time_ms": 17672256001230000000}', None),
    (b'{"other": 1}', None),
    (b"", None),
    (None, None),
    # The edges of the scan: 15 digits at most, no float continuation, only the first occurrence.
    (b'{"event_time_ms":999999999999999}', 999999999999999),
    (b'{"event_time_ms":1000000000000000}', None),
    (b'{"event_time_ms":1767225600123e0}', None),
    (b'{"event_time_ms":1767225600123E0}', None),
    (b'{"event_time_ms":-1767225600123}', None),
    (b'{"event_time_ms":\n\t:1767225600123}', 1767225600123),
    (b'{"event_time_ms":}', None),
    (b'{"event_time_ms":"x","event_time_ms":1767225600123}', None),
    (b'{"event_time_ms":1767225600123,"event_time_ms":5}', 1767225600123),
    (b'{"event_time_ms":\xd9\xa1}', None),
])
def test_event_time_is_read_from_the_payload_without_a_full_parse(payload: bytes | None,
                                                                   expected: int | None) -> None:
    assert event_time_from_payload(payload) == expected


@pytest.mark.parametrize("record", [
    KafkaRecord("events", 3, 123456789012, b"u1", b'{"x": 1}', 1767225600000),
    KafkaRecord("t", 0, 0, None, None, None),
    KafkaRecord("t\u00e9", 7, 5, b"", b"", 0),
])
def test_kafka_record_coder_round_trips(record: KafkaRecord) -> None:
    coder = KafkaRecordCoder()
    assert coder.decode(coder.encode(record)) == record
    assert coder.is_deterministic()


def test_checkpoint_mark_coder_round_trips_position_and_commit_target() -> None:
    mark = KafkaCheckpointMark(42, 1767225600000, "127.0.0.1:9092", "events", 3, "group-a")
    decoded = KafkaCheckpointMarkCoder().decode(KafkaCheckpointMarkCoder().encode(mark))
    assert decoded == mark
    assert (decoded.bootstrap, decoded.topic, decoded.partition, decoded.group_id) == (
        "127.0.0.1:9092", "events", 3, "group-a")
    no_group = KafkaCheckpointMark(0, -1, "b", "t", 0, None)
    assert KafkaCheckpointMarkCoder().decode(KafkaCheckpointMarkCoder().encode(no_group)).group_id is None


def test_config_rejects_unknown_start_positions() -> None:
    with pytest.raises(ValueError, match="start="):
        KafkaSourceConfig(bootstrap="b", topic="t", group_id=None, start="newest")
