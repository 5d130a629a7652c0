"""Counter names of the sinks, in namespace :data:`transforms.metrics.NAMESPACE`.

``<what>.<sink>`` where ``sink`` is e.g. ``postgres.aggregates`` or ``redis.aggregates.fixed``, so a
dashboard can sum over all sinks or pick one.
"""

from __future__ import annotations


def rows_written(sink: str) -> str:
    """Records a sink handed to its store (after in-batch deduplication), replays included."""
    return f"sink_rows_written.{sink}"


def rows_applied(sink: str) -> str:
    """Rows that changed the store: inserted, or replaced by a newer pane. ``written - applied`` is
    what idempotency absorbed (replays, stale panes, duplicate dead letters)."""
    return f"sink_rows_applied.{sink}"


def retries(sink: str) -> str:
    """Transient failures a sink retried (each followed by a reconnect and a backoff)."""
    return f"sink_retries.{sink}"


def rejected(sink: str) -> str:
    """Records a sink refused for their content (each one dead-lettered with reason
    ``sink_rejected``, see transforms/sink_base.py); anything above zero is worth a look."""
    return f"sink_rejected.{sink}"
