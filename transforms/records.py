"""Record types that cross transform boundaries: what the Kafka source emits, what goes to the DLQ,
and the alerts of the scoring step. (Aggregate panes are :class:`transforms.aggregates.Aggregate`.)

They are plain frozen dataclasses so that the Kafka source (``transforms/kafka_source.py``), the
parse and scoring steps and the sinks agree on one shape without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
    ``too_late`` for valid events whose windows had already been closed, and ``inference_failed``
    for valid events the anomaly model could not score (docs/pipeline.md lists them). The source
    position is ``None`` when it is unknown (bare ``bytes`` input, or a valid event rejected after
    parsing).
    """

    raw: bytes | None
    reason_code: str
    reason_detail: str
    topic: str | None
    partition: int | None
    offset: int | None
    failed_at_ms: int


@dataclass(frozen=True, slots=True)
class Alert:
    """An event whose anomaly score reached the alert threshold (docs/stream-contract.md).

    ``alert_id`` derives from the event id (:func:`transforms.scoring.alert_id`), so a replay
    re-emits the same alert and the sinks keep it once. ``model_version`` (``v<N>``) names the
    model version that scored it.
    """

    alert_id: str
    event_id: str
    user_id: str
    score: float
    model_version: str
    event_time_ms: int
    emitted_at_ms: int

    def to_dict(self) -> dict[str, Any]:
        """The payload as a JSON-ready dict (what the sinks write)."""
        return asdict(self)
