"""Postgres sinks: aggregate panes (upsert, newest pane wins), alerts and dead letters (insert once).

Why these writes are exact under retries, restarts and savepoint restores: every statement is
idempotent, so the sinks can be at-least-once (a failed bundle, a restored checkpoint or a retried
batch writes rows again) and the table still ends up as if each record had been written once.

* ``aggregates``: ``INSERT … ON CONFLICT (kind, dimension, dimension_key, window_start, window_end)
  DO UPDATE … WHERE`` the stored pane's revision is lower than the new one's
  (``streaming_analytics.streams.pane_revision``: emitted time, then pane index — the order that
  survives a restore from a savepoint or checkpoint, whose panes start again from the restored
  index). A repeated pane and an older pane arriving after a newer one both change nothing. ON
  CONFLICT cannot touch one row twice in a statement, so a batch first keeps only the newest pane
  per window.
* ``alerts`` and ``dead_letters``: ``ON CONFLICT DO NOTHING`` on the alert id / the record's Kafka
  position (or, without a position, reason + payload hash).

Each DoFn instance opens one connection in ``setup()`` and reuses it across bundles; records are
batched within a bundle and written with ``execute_values`` when the batch is full and in
``finish_bundle()`` — so a bundle (and, on Flink, a checkpoint) completes only after its rows are
committed. Transient errors (connection loss, server restart, serialization failures) reconnect and
retry the batch per :class:`transforms.retry.RetryPolicy`. Errors about a row's content
(:func:`is_record_error`: a value PostgreSQL or psycopg2 refuses, a constraint) refuse that row
(transforms/sinks/base.py: dead-lettered with reason ``sink_rejected``, the job carries on); anything
else (an outage that outlasted the retries, a missing table, a wrong password) fails the bundle.

The tables come from ``python -m streaming_analytics.db.migrate``; the sinks never create them.
"""

# Beam's Python API (DoFn, ParDo, Metrics counters) is untyped, so calling it is reported
# everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import apache_beam as beam
import psycopg2
import psycopg2.errors
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection
from psycopg2 import sql
from psycopg2.extensions import connection as pg_connection
from psycopg2.extras import execute_values

from streaming_analytics.db.migrate import check_schema_name
from streaming_analytics.settings import worker_value
from streaming_analytics.streams import PANE_INDEX_CAP
from transforms import metrics
from transforms.records import DeadLetter
from transforms.retry import RetryPolicy, call_with_retry
from transforms.sinks.base import BatchingWriteFn, write_refusing
from transforms.sinks.convert import (
    aggregate_dict,
    alert_dict,
    dead_letter_of,
    ms_to_datetime,
    storable_text,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE: Final = 500
DEFAULT_APPLICATION_NAME: Final = "streaming-analytics-sink"
DEFAULT_CONNECT_TIMEOUT_S: Final = 5

#: SQLSTATE classes worth a retry: connection exception, transaction rollback (serialization
#: failure, deadlock), insufficient resources, operator intervention (admin shutdown, cannot
#: connect now, query cancelled).
_TRANSIENT_SQLSTATE_CLASSES: Final = frozenset({"08", "40", "53", "57"})
#: Connection failures libpq reports without a SQLSTATE that no retry will fix.
_PERMANENT_CONNECT_MESSAGES: Final = ("authentication failed", "does not exist", "no pg_hba.conf entry")

Row = tuple[Any, ...]


def is_transient(exc: Exception) -> bool:
    """Whether a psycopg2 error is worth a reconnect and a retry."""
    if isinstance(exc, psycopg2.InterfaceError):
        return True  # "connection already closed": the server or the network dropped us
    if isinstance(exc, psycopg2.OperationalError):
        if exc.pgcode is None:
            return not any(text in str(exc) for text in _PERMANENT_CONNECT_MESSAGES)
        return exc.pgcode[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return False


def is_record_error(exc: Exception) -> bool:
    """Whether a failed write failed for the content of a row, so that the row, not the job, must go.

    Server side: SQLSTATE classes 22 (data exception: a value out of a column's range, text the
    encoding cannot hold) and 23 (integrity: a check or not-null constraint). Client side, before
    anything is sent: psycopg2 refusing a value (``ValueError``: a NUL in a string, a surrogate it
    cannot encode; ``can't adapt type``). Connection, permission and schema errors are not: they
    concern every row.
    """
    if isinstance(exc, psycopg2.DataError | psycopg2.IntegrityError):
        return True
    if isinstance(exc, psycopg2.ProgrammingError):
        return exc.pgcode is None and "can't adapt" in str(exc)
    return isinstance(exc, ValueError | TypeError) and not isinstance(exc, psycopg2.Error)


class _PostgresWriteFn(BatchingWriteFn[Row]):
    """Write each batch of rows in one transaction, retrying transient errors.

    Subclasses say which table, how a record becomes a row and how a batch is deduplicated.
    """

    TABLE: ClassVar[str]
    COLUMNS: ClassVar[tuple[str, ...]]
    #: SQL after ``INSERT INTO <schema>.<table> AS t (<columns>) VALUES %s``.
    ON_CONFLICT: ClassVar[str]

    def __init__(self, *, dsn: str, schema: str, batch_size: int, retry_policy: RetryPolicy,
                 application_name: str, connect_timeout_s: int) -> None:
        super().__init__(batch_size=batch_size, sink=f"postgres.{self.TABLE}")
        self._dsn = dsn
        self._schema = check_schema_name(schema)
        self._policy = retry_policy
        self._application_name = application_name
        self._connect_timeout_s = connect_timeout_s
        self._written = Metrics.counter(metrics.NAMESPACE, metrics.sink_rows_written(self._sink))
        self._applied = Metrics.counter(metrics.NAMESPACE, metrics.sink_rows_applied(self._sink))
        self._retries = Metrics.counter(metrics.NAMESPACE, metrics.sink_retries(self._sink))
        self._conn: pg_connection | None = None

    # -- subclass hooks (and BatchingWriteFn.convert: a record as a row) ------------------------

    def dedupe(self, rows: list[Row]) -> list[Row]:
        """Rows of one statement; by default all of them (``DO NOTHING`` tolerates duplicates)."""
        return rows

    # -- DoFn lifecycle ---------------------------------------------------------------------------

    def setup(self) -> None:
        self._statement = self._build_statement()
        self._template = "(" + ", ".join(["%s"] * len(self.COLUMNS)) + ")"
        # Connect now so a wrong DSN fails the job at start, not at the first record.
        self._retrying(self._connection)

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- writing ----------------------------------------------------------------------------------

    def _build_statement(self) -> sql.Composed:
        return sql.SQL("INSERT INTO {table} AS t ({columns}) VALUES %s {on_conflict} RETURNING 1").format(
            table=sql.Identifier(self._schema, self.TABLE),
            columns=sql.SQL(", ").join(sql.Identifier(c) for c in self.COLUMNS),
            on_conflict=sql.SQL(self.ON_CONFLICT),
        )

    def _connection(self) -> pg_connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(
                worker_value(self._dsn), connect_timeout=self._connect_timeout_s,
                application_name=self._application_name,
            )
        return self._conn

    def _drop_connection(self, exc: Exception) -> None:
        """After a transient error the connection's state is unknown: discard it and reconnect."""
        self._retries.inc()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _retrying(self, action: Any) -> Any:
        return call_with_retry(action, name=self._sink, policy=self._policy, is_transient=is_transient,
                               on_retry=self._drop_connection)

    def write_batch(self, batch: list[Row]) -> None:
        rows = self.dedupe(batch)
        try:
            applied = self._retrying(lambda: self._write(rows))
        except psycopg2.errors.UndefinedTable as exc:
            raise RuntimeError(
                f"{self._sink}: table {self._schema}.{self.TABLE} does not exist; run "
                f"`python -m streaming_analytics.db.migrate --schema {self._schema}` first"
            ) from exc
        self._written.inc(len(rows))
        self._applied.inc(applied)

    def is_record_error(self, exc: Exception) -> bool:
        return is_record_error(exc)

    def _write(self, rows: Sequence[Row]) -> int:
        """Write one batch in one transaction; return how many rows changed."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                changed = execute_values(cur, self._statement.as_string(cur), rows,
                                         template=self._template, page_size=len(rows), fetch=True)
            conn.commit()
        except Exception:  # also psycopg2's client-side ValueError: the transaction may be open
            self._rollback()
            raise
        return len(changed)

    def _rollback(self) -> None:
        """Leave the connection usable for the next bundle after a failed statement (if it still is)."""
        if self._conn is None or self._conn.closed:
            return
        try:
            self._conn.rollback()
        except psycopg2.Error:
            self._conn.close()
            self._conn = None


class _AggregateUpsertFn(_PostgresWriteFn):
    TABLE = "aggregates"
    COLUMNS = ("kind", "dimension", "dimension_key", "window_start", "window_end", "pane_index", "timing",
               "is_final", "count", "sum_amount", "mean_amount", "min_amount", "max_amount", "p50", "p95",
               "p99", "distinct_users", "emitted_at")
    _KEY_LEN: ClassVar[int] = 5
    _PANE: ClassVar[int] = 5
    ON_CONFLICT = (
        "ON CONFLICT (kind, dimension, dimension_key, window_start, window_end) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[_PANE:])
        + f", updated_at = now() WHERE (t.emitted_at, LEAST(t.pane_index, {PANE_INDEX_CAP}))"
        f" < (EXCLUDED.emitted_at, LEAST(EXCLUDED.pane_index, {PANE_INDEX_CAP}))"
    )

    def convert(self, element: Any) -> Row:
        a = aggregate_dict(element)
        return (a["kind"], a["dimension"], a["key"], ms_to_datetime(a["window_start_ms"]),
                ms_to_datetime(a["window_end_ms"]), a["pane_index"], a["timing"], a["is_final"], a["count"],
                a["sum_amount"], a["mean_amount"], a["min_amount"], a["max_amount"], a["p50"], a["p95"],
                a["p99"], a["distinct_users"], ms_to_datetime(a["emitted_at_ms"]))

    def dedupe(self, rows: list[Row]) -> list[Row]:
        """Keep the newest pane per window by revision (the last one on a tie: a repeated pane)."""
        newest: dict[Row, Row] = {}
        for row in rows:
            key = row[: self._KEY_LEN]
            kept = newest.get(key)
            if kept is None or self._revision(row) >= self._revision(kept):
                newest[key] = row
        return list(newest.values())

    def _revision(self, row: Row) -> tuple[Any, int]:
        # The SQL guard's order: (emitted_at, index capped as in pane_revision).
        return row[-1], min(row[self._PANE], PANE_INDEX_CAP)


class _AlertInsertFn(_PostgresWriteFn):
    TABLE = "alerts"
    COLUMNS = ("alert_id", "event_id", "user_id", "score", "model_version", "event_time", "emitted_at")
    ON_CONFLICT = "ON CONFLICT (alert_id) DO NOTHING"

    def convert(self, element: Any) -> Row:
        a = alert_dict(element)
        return (a["alert_id"], a["event_id"], a["user_id"], a["score"], a["model_version"],
                ms_to_datetime(a["event_time_ms"]), ms_to_datetime(a["emitted_at_ms"]))


class _DeadLetterInsertFn(_PostgresWriteFn):
    TABLE = "dead_letters"
    COLUMNS = ("raw", "reason_code", "reason_detail", "source_topic", "source_partition", "source_offset",
               "failed_at")
    # No conflict target: both the source-position constraint and the position-less (reason, payload
    # hash) index are arbiters.
    ON_CONFLICT = "ON CONFLICT DO NOTHING"

    def convert(self, element: Any) -> Row:
        d: DeadLetter = dead_letter_of(element)
        raw = None if d.raw is None else psycopg2.Binary(d.raw)
        # The detail is our own text, but it may quote what a record held: escaped, never refused.
        return (raw, d.reason_code, storable_text(d.reason_detail), d.topic, d.partition, d.offset,
                ms_to_datetime(d.failed_at_ms))


class _WriteToPostgres(beam.PTransform[PCollection[Any], PCollection[DeadLetter]]):
    """Common constructor of the three Postgres sinks; the output is the records the sink refused,
    as dead letters in the global window (transforms/sinks/base.py)."""

    _FN: ClassVar[type[_PostgresWriteFn]]
    _STEP: ClassVar[str]

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_policy: RetryPolicy | None = None,
        application_name: str = DEFAULT_APPLICATION_NAME,
        connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self._fn = self._FN(dsn=dsn, schema=schema, batch_size=batch_size,
                            retry_policy=retry_policy or RetryPolicy(), application_name=application_name,
                            connect_timeout_s=connect_timeout_s)

    def expand(self, records: PCollection[Any]) -> PCollection[DeadLetter]:
        return write_refusing(records, self._STEP, self._fn)


class WriteAggregatesToPostgres(_WriteToPostgres):
    """Upsert aggregate panes (:class:`~transforms.aggregates.Aggregate` or dicts) into ``aggregates``;
    a row only ever moves to a higher pane, so replays and out-of-order panes are harmless.

    Tunables: ``dsn``, ``schema``, ``batch_size`` (rows per statement and transaction),
    ``retry_policy`` (backoff and total budget for transient errors), ``application_name`` (shows in
    ``pg_stat_activity``), ``connect_timeout_s``. Counters: ``sink_rows_written``,
    ``sink_rows_applied``, ``sink_retries`` and ``sink_rejected`` ``.postgres.aggregates``. Output: the
    panes it refused for their content, as ``sink_rejected`` dead letters.
    """

    _FN = _AggregateUpsertFn
    _STEP = "UpsertAggregates"


class WriteAlertsToPostgres(_WriteToPostgres):
    """Insert alert dicts into ``alerts`` once per ``alert_id`` (tunables as
    :class:`WriteAggregatesToPostgres`)."""

    _FN = _AlertInsertFn
    _STEP = "InsertAlerts"


class WriteDeadLettersToPostgres(_WriteToPostgres):
    """Insert :class:`~transforms.records.DeadLetter`\\ s into ``dead_letters`` once per source position
    (or, without one, per reason and payload); tunables as :class:`WriteAggregatesToPostgres`."""

    _FN = _DeadLetterInsertFn
    _STEP = "InsertDeadLetters"
