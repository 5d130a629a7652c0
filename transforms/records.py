"""Record types that cross transform boundaries: what the Kafka source emits and what goes to the DLQ.

They are plain frozen dataclasses so that the Kafka source (``transforms/kafka_source.py``), the
parse step and the sinks agree on one shape without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One consumed Kafka record, with its position so that a dead letter can point back at it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the pipeline refused, with enough context to find, fix and replay it.

    ``reason_code`` is stable and machine readable (dashboards and the DLQ table group by it):
    the :class:`streaming_analytics.events.InvalidEvent` codes for records that fail the contract,
    and ``too_late`` for valid events whose windows had already been closed. The source position is
    ``None`` when it is unknown (bare ``bytes`` input, or a valid event rejected after parsing).
    """

    raw: bytes | None
    reason_code: str
    reason_detail: str
    topic: str | None
    partition: int | None
    offset: int | None
    failed_at_ms: int
