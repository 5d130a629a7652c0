"""Postgres sinks on the stack's real Postgres, each module in its own migrated schema: the newest pane
wins whatever the arrival order, replays change nothing, dead letters are unique on their source,
transient failures are retried, outages that outlast the retries and deployment faults fail the
pipeline, and a record the database refuses is dead-lettered while the rest is written."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import orjson
import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from streaming_analytics.db.migrate import MigrationError, load_migrations, migrate, status
from streaming_analytics.settings import Settings
from tests.integration.sinks_support import T0_MS, aggregate, closed_port, counter, run_sink
from transforms.records import DeadLetter
from transforms.retry import RetryPolicy
from transforms.sinks.postgres import (
    WriteAggregatesToPostgres,
    WriteAlertsToPostgres,
    WriteDeadLettersToPostgres,
)

AGG_COLUMNS = ("dimension_key", "window_start", "pane_index", "timing", "is_final", "count", "sum_amount",
               "distinct_users", "emitted_at", "updated_at")


def _drop_schema(dsn: str, schema: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    finally:
        conn.close()


ALL_MIGRATIONS = [f"{m.version:04d}_{m.name}" for m in load_migrations()]


@pytest.fixture(scope="module")
def schema(settings: Settings) -> Iterator[str]:
    """A schema of this module's own, migrated, dropped at the end (also when migrating failed)."""
    name = f"t_sinks_pg_{uuid.uuid4().hex[:8]}"
    try:
        assert migrate(settings.postgres_dsn, name) == ALL_MIGRATIONS
        yield name
    finally:
        _drop_schema(settings.postgres_dsn, name)


def query(settings: Settings, text: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(settings.postgres_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(text, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def aggregate_rows(settings: Settings, schema: str, key_prefix: str) -> list[tuple[Any, ...]]:
    return query(settings, f"SELECT {', '.join(AGG_COLUMNS)} FROM {schema}.aggregates "
                           "WHERE dimension_key LIKE %s ORDER BY dimension_key, window_start",
                 key_prefix + "%")


def fast_retries(budget_s: float) -> RetryPolicy:
    return RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, max_elapsed_s=budget_s)


# -- migrations ------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_creates_the_tables(settings: Settings, schema: str) -> None:
    assert migrate(settings.postgres_dsn, schema) == []
    assert status(settings.postgres_dsn, schema) == [(m, True) for m in ALL_MIGRATIONS]
    assert ALL_MIGRATIONS[0] == "0001_init"
    tables = query(settings, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                             "ORDER BY table_name", schema)
    assert [t for (t,) in tables] == ["aggregates", "alerts", "dead_letters", "schema_migrations"]
    indexes = {i for (i,) in query(settings, "SELECT indexname FROM pg_indexes WHERE schemaname = %s",
                                   schema)}
    assert {"aggregates_pkey", "aggregates_kind_dimension_window_idx", "alerts_event_time_idx",
            "dead_letters_source_key", "dead_letters_positionless_key"} <= indexes


def test_migrate_refuses_a_database_whose_applied_migration_changed(settings: Settings,
                                                                     unique_name: str) -> None:
    try:
        assert status(settings.postgres_dsn, unique_name) == [(m, False) for m in ALL_MIGRATIONS]
        assert migrate(settings.postgres_dsn, unique_name) == ALL_MIGRATIONS
        query(settings, f"UPDATE {unique_name}.schema_migrations SET checksum = 'edited'")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(settings.postgres_dsn, unique_name)
    finally:
        _drop_schema(settings.postgres_dsn, unique_name)


# -- aggregates ------------------------------------------------------------------------------------


def test_an_older_pane_never_overwrites_a_newer_one(settings: Settings, schema: str,
                                                     unique_name: str) -> None:
    sink = WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema)
    run_sink([aggregate(unique_name, 2, count=20, timing="ON_TIME")], sink)
    run_sink([aggregate(unique_name, 1, count=10)], sink)  # arrives late: must change nothing
    [row] = aggregate_rows(settings, schema, unique_name)
    assert row[2:8] == (2, "ON_TIME", False, 20, 50.0, 10)

    run_sink([aggregate(unique_name, 3, count=25, timing="LATE", final=True)], sink)
    [row] = aggregate_rows(settings, schema, unique_name)
    assert row[2:8] == (3, "LATE", True, 25, 62.5, 12)


def test_a_pane_emitted_after_a_restore_supersedes_a_higher_index(settings: Settings, schema: str,
                                                                  unique_name: str) -> None:
    """A job restored from a savepoint (a rollback) numbers a window's panes again from the index
    it had then: the newer emission wins though its index is lower — alone and within a batch."""
    sink = WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema)
    before = aggregate(unique_name, 7, count=20)
    restored = replace(aggregate(unique_name, 3, count=30), emitted_at_ms=before.emitted_at_ms + 60_000)
    run_sink([before], sink)
    run_sink([restored], sink)
    [row] = aggregate_rows(settings, schema, unique_name)
    assert (row[2], row[5]) == (3, 30)
    run_sink([before], sink)  # the pre-restore pane again (a retried write): older, changes nothing
    assert [(r[2], r[5]) for r in aggregate_rows(settings, schema, unique_name)] == [(3, 30)]
    run_sink([replace(restored, key=f"{unique_name}_b"), replace(before, key=f"{unique_name}_b")],
             WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema, batch_size=10))
    assert [(r[2], r[5]) for r in aggregate_rows(settings, schema, f"{unique_name}_b")] == [(3, 30)]


def test_a_batch_keeps_the_highest_pane_of_each_window(settings: Settings, schema: str,
                                                       unique_name: str) -> None:
    panes = [aggregate(f"{unique_name}_a", p, count=c) for p, c in ((0, 5), (2, 9), (1, 7))]
    panes += [aggregate(f"{unique_name}_b", p, count=c) for p, c in ((1, 4), (0, 3))]
    result = run_sink(panes, WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema, batch_size=100))
    rows = aggregate_rows(settings, schema, unique_name)
    assert [(r[0], r[2], r[5]) for r in rows] == [(f"{unique_name}_a", 2, 9), (f"{unique_name}_b", 1, 4)]
    assert counter(result, "sink_rows_written.postgres.aggregates") == 2
    assert counter(result, "sink_rows_applied.postgres.aggregates") == 2


def test_replaying_the_same_panes_changes_nothing(settings: Settings, schema: str, unique_name: str) -> None:
    panes = [aggregate(unique_name, pane=w % 3, count=w + 1, window=w) for w in range(25)]
    sink = WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema, batch_size=7)
    first = run_sink(panes, sink)
    before = aggregate_rows(settings, schema, unique_name)
    replay = run_sink(panes + panes, sink)
    after = aggregate_rows(settings, schema, unique_name)

    assert len(before) == 25
    assert [r[5] for r in before] == list(range(1, 26))
    assert after == before  # updated_at included: the replay did not even touch a row
    assert counter(first, "sink_rows_applied.postgres.aggregates") == 25
    assert counter(replay, "sink_rows_written.postgres.aggregates") >= 25
    assert counter(replay, "sink_rows_applied.postgres.aggregates") == 0


def test_stored_times_are_exact_milliseconds(settings: Settings, schema: str, unique_name: str) -> None:
    pane = dataclasses.replace(aggregate(unique_name, 0, count=1), window_start_ms=T0_MS + 1,
                               window_end_ms=T0_MS + 60_001, emitted_at_ms=T0_MS + 61_999)
    run_sink([pane], WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema))
    [(start, end, emitted)] = query(
        settings, f"SELECT (extract(epoch FROM window_start) * 1000)::bigint, "
                  f"(extract(epoch FROM window_end) * 1000)::bigint, "
                  f"(extract(epoch FROM emitted_at) * 1000)::bigint FROM {schema}.aggregates "
                  "WHERE dimension_key = %s", unique_name)
    assert (start, end, emitted) == (T0_MS + 1, T0_MS + 60_001, T0_MS + 61_999)


def refused_exactly(sink: str, records: list[dict[str, Any]],
                    error: str) -> Callable[[list[DeadLetter]], None]:
    """A ``run_sink(refused=...)`` check: ``sink`` refused exactly ``records``, each with a
    ``sink_rejected`` dead letter whose raw names the sink and the record and whose detail matches
    ``error``."""
    def check(letters: list[DeadLetter]) -> None:
        assert len(letters) == len(records), letters
        for letter in letters:
            assert (letter.reason_code, letter.topic, letter.offset) == ("sink_rejected", None, None)
            assert re.search(error, letter.reason_detail), letter.reason_detail
            assert letter.reason_detail.startswith(f"{sink} refused the record: ")
        raws = sorted(orjson.loads(letter.raw or b"null")["record"]["key"] for letter in letters)
        assert raws == sorted(r["key"] for r in records)
    return check


def test_plain_dicts_are_accepted_and_one_missing_fields_is_refused(settings: Settings, schema: str,
                                                                    unique_name: str) -> None:
    record = aggregate(unique_name, 4, count=8).to_dict()
    run_sink([record], WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema))
    [row] = aggregate_rows(settings, schema, unique_name)
    assert (row[2], row[5]) == (4, 8)

    broken = {**aggregate(f"{unique_name}-broken", 5, count=9).to_dict()}
    del broken["p99"]
    newer = aggregate(unique_name, 5, count=9).to_dict()
    result = run_sink([broken, newer], WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema),
                      refused=refused_exactly("postgres.aggregates", [broken], "aggregate record lacks p99"))
    assert counter(result, "sink_rejected.postgres.aggregates") == 1
    rows = aggregate_rows(settings, schema, unique_name)
    assert [(r[0], r[2], r[5]) for r in rows] == [(unique_name, 5, 9)]


def test_a_record_the_database_refuses_is_dead_lettered_at_once_and_its_batch_is_written(
        settings: Settings, schema: str, unique_name: str, caplog: pytest.LogCaptureFixture) -> None:
    """A constraint (timing), a NUL (psycopg2 refuses it before sending) and a value beyond bigint
    (the server refuses it) in one batch with good panes: no retry, each bad one refused with its
    error, every good one written, the job carries on."""
    bad = [aggregate(f"{unique_name}-timing", 0, count=1, timing="SOMETIME").to_dict(),
           aggregate(f"{unique_name}-nul\x00", 0, count=1).to_dict(),
           {**aggregate(f"{unique_name}-big", 0, count=1).to_dict(), "count": 2**70}]
    good = [aggregate(f"{unique_name}-ok{i}", 0, count=i + 1).to_dict() for i in range(5)]
    caplog.set_level(logging.WARNING, logger="transforms.retry")
    sink = WriteAggregatesToPostgres(settings.postgres_dsn, schema=schema)
    result = run_sink([*good[:2], *bad, *good[2:]], sink,
                      refused=refused_exactly("postgres.aggregates", bad,
                                              "aggregates_timing_check|NUL|out of range"))
    assert not [r for r in caplog.records if "transient failure" in r.getMessage()]
    assert counter(result, "sink_rejected.postgres.aggregates") == len(bad)
    assert [r[0] for r in aggregate_rows(settings, schema, unique_name)] == sorted(a["key"] for a in good)


def test_a_missing_table_names_the_migration_to_run(settings: Settings, unique_name: str) -> None:
    query(settings, f"CREATE SCHEMA {unique_name}")
    try:
        with pytest.raises(Exception, match=r"streaming_analytics\.db\.migrate --schema " + unique_name):
            run_sink([aggregate(unique_name, 0, count=1)],
                     WriteAggregatesToPostgres(settings.postgres_dsn, schema=unique_name))
    finally:
        _drop_schema(settings.postgres_dsn, unique_name)


# -- transient failures ----------------------------------------------------------------------------


def test_an_unreachable_server_is_retried_then_reported(settings: Settings, schema: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    dsn = make_dsn(settings.postgres_dsn, port=closed_port())
    caplog.set_level(logging.WARNING, logger="transforms.retry")
    started = time.monotonic()
    with pytest.raises(Exception, match=r"postgres\.aggregates: gave up after \d+ attempts") as raised:
        run_sink([aggregate("x", 0, count=1)],
                 WriteAggregatesToPostgres(dsn, schema=schema, retry_policy=fast_retries(1.5)))
    elapsed = time.monotonic() - started
    attempts = int(re.search(r"gave up after (\d+) attempts", str(raised.value)).group(1))  # type: ignore[union-attr]
    assert attempts >= 3
    retried = [r for r in caplog.records if "postgres.aggregates: transient failure" in r.getMessage()]
    assert len(retried) == attempts - 1
    assert elapsed < 30  # the budget, not a hang, ended it


def _terminate_sink_backends(dsn: str, application_name: str) -> None:
    """Kill the sink's server process from outside, as a Postgres restart or a network cut would."""
    conn = psycopg2.connect(dsn, application_name="sink-test-killer")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (application_name,))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # pg_terminate_backend only signals; wait for the exit
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,))
                row = cur.fetchone()
                if row is not None and row[0] == 0:
                    return
                time.sleep(0.02)
    finally:
        conn.close()


def test_a_killed_connection_is_reopened_and_nothing_is_lost(settings: Settings, schema: str,
                                                             unique_name: str) -> None:
    dsn, app = settings.postgres_dsn, f"sink-{unique_name}"[:60]
    panes = [aggregate(unique_name, pane=1, count=w + 1, window=w) for w in range(40)]

    def kill_at_some_windows(pane: Any) -> Any:
        if pane.window_start_ms in (T0_MS + 10 * 60_000, T0_MS + 30 * 60_000):
            _terminate_sink_backends(dsn, app)
        return pane

    result = run_sink(panes, WriteAggregatesToPostgres(dsn, schema=schema, batch_size=5, application_name=app,
                                                       retry_policy=fast_retries(30)),
                      before=kill_at_some_windows)
    rows = aggregate_rows(settings, schema, unique_name)
    assert [r[5] for r in rows] == list(range(1, 41))
    assert counter(result, "sink_retries.postgres.aggregates") >= 1


# -- alerts and dead letters -----------------------------------------------------------------------


def test_alerts_are_written_once(settings: Settings, schema: str, unique_name: str) -> None:
    alerts = [{"alert_id": f"{unique_name}-{i}", "event_id": f"e{i}", "user_id": f"u{i % 3}",
               "score": 0.9 + i / 100, "model_version": "m-1", "event_time_ms": T0_MS + i,
               "emitted_at_ms": T0_MS + 1000 + i} for i in range(10)]
    sink = WriteAlertsToPostgres(settings.postgres_dsn, schema=schema, batch_size=4)
    run_sink(alerts + alerts[:3], sink)
    replay = run_sink(alerts, sink)
    rows = query(settings, "SELECT alert_id, user_id, score, "
                           "(extract(epoch FROM event_time) * 1000)::bigint "
                           f"FROM {schema}.alerts WHERE alert_id LIKE %s ORDER BY event_time",
                 unique_name + "%")
    assert rows == [(a["alert_id"], a["user_id"], a["score"], a["event_time_ms"]) for a in alerts]
    assert counter(replay, "sink_rows_applied.postgres.alerts") == 0


def test_dead_letters_are_unique_on_their_source_position(settings: Settings, schema: str,
                                                          unique_name: str) -> None:
    topic = unique_name
    positioned = [DeadLetter(raw=b"\xff\x00not json" + bytes([i]), reason_code="not_json",
                             reason_detail="bad", topic=topic, partition=i % 2, offset=100 + i,
                             failed_at_ms=T0_MS + i)
                  for i in range(6)]
    empty = DeadLetter(raw=None, reason_code="empty", reason_detail="record has no value", topic=topic,
                       partition=0, offset=999, failed_at_ms=T0_MS)
    too_late = f'{{"event_id": "{unique_name}"}}'.encode()
    positionless = [DeadLetter(raw=too_late, reason_code="too_late", reason_detail=f"{kind} windows closed",
                               topic=None, partition=None, offset=None, failed_at_ms=T0_MS)
                    for kind in ("fixed", "sliding")]
    as_dict = dataclasses.asdict(positioned[0])  # a dict of the same record: a duplicate
    sink = WriteDeadLettersToPostgres(settings.postgres_dsn, schema=schema, batch_size=3)
    run_sink([*positioned, empty, *positionless, positioned[1], as_dict], sink)
    replay = run_sink([*positioned, empty, *positionless], sink)

    rows = query(settings, "SELECT source_partition, source_offset, reason_code, raw "
                           f"FROM {schema}.dead_letters "
                           "WHERE source_topic = %s OR raw = %s ORDER BY source_offset NULLS LAST",
                 topic, too_late)
    expected = [(d.partition, d.offset, d.reason_code, d.raw) for d in [*positioned, empty]]
    assert [(p, o, c, None if r is None else bytes(r)) for p, o, c, r in rows] == [
        *expected, (None, None, "too_late", too_late)]
    assert counter(replay, "sink_rows_applied.postgres.dead_letters") == 0
