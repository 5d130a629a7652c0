"""Names of the pipeline's metrics, in one place so that dashboards, alerts and tests agree."""

from __future__ import annotations

from typing import Final

#: Namespace of every counter the pipeline's transforms report.
NAMESPACE: Final = "streaming_analytics"

#: Valid events parsed.
EVENTS_PARSED: Final = "events_parsed"
#: Records that failed the event contract, all reasons together.
INVALID_EVENTS: Final = "invalid_events"
#: Records that failed the event contract, per reason code: ``invalid_events.<code>``.
INVALID_EVENTS_PREFIX: Final = "invalid_events."
#: Events dropped because their event id was already seen within the dedup horizon.
DUPLICATE_EVENTS: Final = "duplicate_events"
#: Events refused because every window they belong to had closed, per aggregate kind:
#: ``too_late_events.<kind>``.
TOO_LATE_EVENTS_PREFIX: Final = "too_late_events."
#: Empty panes a runner emitted (Flink, at a window's garbage collection), dropped before the sinks.
EMPTY_PANES_DROPPED: Final = "empty_panes_dropped"


def invalid_events(code: str) -> str:
    """Counter name of the records rejected with ``code``."""
    return f"{INVALID_EVENTS_PREFIX}{code}"


def too_late_events(kind: str) -> str:
    """Counter name of the events too late for every window of aggregate ``kind``."""
    return f"{TOO_LATE_EVENTS_PREFIX}{kind}"


#: Records the Kafka source read, over all partitions.
KAFKA_RECORDS_READ: Final = "kafka_records_read"
#: Records whose payload had no usable event time (the Kafka timestamp was used instead).
KAFKA_RECORDS_WITHOUT_EVENT_TIME: Final = "kafka_records_without_event_time"
#: Offset commits to the consumer group after finalized checkpoints.
KAFKA_OFFSET_COMMITS: Final = "kafka_offset_commits"

#: Events the anomaly model scored.
EVENTS_SCORED: Final = "events_scored"
#: Alerts emitted (scores at or above the alert threshold).
ALERTS: Final = "alerts"
#: Events the anomaly model could not score, dead-lettered with reason ``inference_failed``.
INFERENCE_FAILED_EVENTS: Final = "inference_failed_events"


# --- sinks ---------------------------------------------------------------------------------------
# ``<what>.<sink>`` where ``sink`` is e.g. ``postgres.aggregates`` or ``redis.aggregates.fixed``, so a
# dashboard can sum over all sinks or pick one.


def sink_rows_written(sink: str) -> str:
    """Records a sink handed to its store (after in-batch deduplication), replays included."""
    return f"sink_rows_written.{sink}"


def sink_rows_applied(sink: str) -> str:
    """Rows that changed the store: inserted, or replaced by a newer pane. ``written - applied`` is
    what idempotency absorbed (replays, stale panes, duplicate dead letters)."""
    return f"sink_rows_applied.{sink}"


def sink_retries(sink: str) -> str:
    """Transient failures a sink retried (each followed by a reconnect and a backoff)."""
    return f"sink_retries.{sink}"


def sink_rejected(sink: str) -> str:
    """Records a sink refused for their content (each one dead-lettered with reason
    ``sink_rejected``, see transforms/sinks/base.py); anything above zero is worth a look."""
    return f"sink_rejected.{sink}"
