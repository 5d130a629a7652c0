"""The sinks against hostile input, on the stack's real PostgreSQL and Redis (issue 12; sizes in
docs/hostile-input.md).

Two properties. Whatever the event contract admits — arbitrary admitted text in every text field,
numbers from 0 to the largest double — reaches PostgreSQL and the Redis streams as aggregates,
alerts and dead letters and reads back exactly, with nothing refused. And whatever a sink is handed,
however broken (NUL, lone surrogates, integers beyond 64 bits, NaN), no record fails the pipeline:
each is either written or refused as a ``sink_rejected`` dead letter, and the two add up.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import orjson
import psycopg2
import pytest
import redis
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streaming_analytics.db.migrate import migrate
from streaming_analytics.events import Event, validate_event
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_ALERTS, CHANNEL_FIXED, CHANNELS, StreamEntry, stream_key
from tests.integration.sinks_support import counter
from tests.unit.hostile_support import ANY_TEXT, valid_documents
from transforms.aggregates import Aggregate
from transforms.records import DeadLetter
from transforms.sinks.convert import SINK_REJECTED, storable_text
from transforms.sinks.postgres import (
    WriteAggregatesToPostgres,
    WriteAlertsToPostgres,
    WriteDeadLettersToPostgres,
)
from transforms.sinks.redis import WriteToRedisStreams

#: Examples per property, each one pipeline run of 10-30 records (about a second each).
EXAMPLES = 8
_runs = itertools.count()


@pytest.fixture(scope="module")
def target(settings: Settings) -> Iterator[tuple[Settings, str, str]]:
    """(settings, a migrated schema of this module's own, a stream prefix), dropped at the end."""
    name = f"t_hostile_sinks_{uuid.uuid4().hex[:8]}"
    migrate(settings.postgres_dsn, name)
    try:
        yield settings, name, f"{name}:"
    finally:
        with psycopg2.connect(settings.postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        client = redis.Redis.from_url(settings.redis_url)
        client.delete(*[stream_key(f"{name}:", c) for c in CHANNELS])
        client.close()


def aggregate_of(event: Event, dimension: str, window: int) -> Aggregate:
    """A one-event pane in window ``window`` of ``dimension``, keyed by the event's category."""
    start = 946_684_800_000 + window * 60_000
    a = event.amount
    return Aggregate(kind="fixed", dimension=dimension, key=event.category, window_start_ms=start,
                     window_end_ms=start + 60_000, pane_index=0, timing="EARLY", is_final=False, count=1,
                     sum_amount=a, mean_amount=a, min_amount=a, max_amount=a, p50=a, p95=a, p99=a,
                     distinct_users=1, emitted_at_ms=event.event_time_ms)


def alert_of(event: Event, run: str, n: int) -> dict[str, Any]:
    """An alert carrying the event's text (its item id stands in for the model version)."""
    return {"alert_id": f"{run}-{n}", "event_id": event.event_id, "user_id": event.user_id,
            "score": event.features[3], "model_version": event.item_id, "event_time_ms": event.event_time_ms,
            "emitted_at_ms": event.event_time_ms}


def run_sinks(s: Settings, schema: str, prefix: str, *, aggregates: list[Any], alerts: list[Any],
              letters: list[DeadLetter], refusals_allowed: bool) -> PipelineResult:
    """Every Postgres sink and the Redis sinks in one DirectRunner pipeline; without
    ``refusals_allowed`` the sinks must refuse nothing, else every refusal must be a sink's."""
    p = beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"]))
    aggs = p | "Aggregates" >> beam.Create(aggregates)
    # Batches of 7: a refused record shares its batch with good ones, which must still be written.
    refused = [
        aggs | "AggregatesToPostgres" >> WriteAggregatesToPostgres(s.postgres_dsn, schema=schema,
                                                                   batch_size=7),
        aggs | "AggregatesToRedis" >> WriteToRedisStreams(CHANNEL_FIXED, s.redis_url, prefix=prefix,
                                                          maxlen=100_000, batch_size=7),
    ]
    if alerts:
        al = p | "Alerts" >> beam.Create(alerts)
        refused.append(al | "AlertsToPostgres" >> WriteAlertsToPostgres(s.postgres_dsn, schema=schema))
        refused.append(al | "AlertsToRedis" >> WriteToRedisStreams(CHANNEL_ALERTS, s.redis_url, prefix=prefix,
                                                                    maxlen=100_000))
    if letters:
        refused.append(p | "Letters" >> beam.Create(letters)
                       | "LettersToPostgres" >> WriteDeadLettersToPostgres(s.postgres_dsn, schema=schema))
    codes = tuple(refused) | "Refused" >> beam.Flatten() | "Codes" >> beam.Map(lambda d: d.reason_code)
    if refusals_allowed:
        codes = codes | "Distinct" >> beam.Distinct()
    assert_that(codes, (lambda got: set(got) <= {SINK_REJECTED}) if refusals_allowed else equal_to([]))
    result = p.run()
    result.wait_until_finish()
    return result


def query(s: Settings, text: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(text, args)
        return cur.fetchall()


def stream_entries(s: Settings, prefix: str, channel: str) -> list[StreamEntry]:
    client = redis.Redis.from_url(s.redis_url)
    try:
        return [StreamEntry.from_fields(f) for _id, f in client.xrange(stream_key(prefix, channel))]
    finally:
        client.close()


_SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.filter_too_much, HealthCheck.data_too_large])


@_SETTINGS
@given(st.lists(valid_documents(), min_size=10, max_size=30),
       st.lists(st.tuples(st.binary(max_size=200), ANY_TEXT), min_size=3, max_size=10))
def test_whatever_the_contract_admits_is_stored_and_streamed_exactly(
        target: tuple[Settings, str, str], docs: list[dict[str, Any]],
        letters: list[tuple[bytes, str]]) -> None:
    s, schema, prefix = target
    run = f"r{next(_runs)}-{uuid.uuid4().hex[:6]}"
    events = [validate_event(orjson.loads(json.dumps(d))) for d in docs]
    aggregates = [aggregate_of(e, run, i) for i, e in enumerate(events)]
    alerts = [alert_of(e, run, i) for i, e in enumerate(events)]
    dead = [DeadLetter(raw=raw, reason_code="not_json", reason_detail=detail or "-", topic=run, partition=0,
                       offset=i, failed_at_ms=946_684_800_000) for i, (raw, detail) in enumerate(letters)]
    run_sinks(s, schema, prefix, aggregates=aggregates, alerts=alerts, letters=dead, refusals_allowed=False)

    rows = query(s, "SELECT dimension_key, (extract(epoch FROM window_start) * 1000)::bigint, count, "
                    f"sum_amount, p99 FROM {schema}.aggregates WHERE dimension = %s", run)
    assert sorted(rows) == sorted((a.key, a.window_start_ms, 1, a.sum_amount, a.p99) for a in aggregates)
    stored_alerts = query(s, f"SELECT alert_id, event_id, user_id, model_version FROM {schema}.alerts "
                             "WHERE alert_id LIKE %s", f"{run}-%")
    assert sorted(stored_alerts) == sorted((a["alert_id"], a["event_id"], a["user_id"], a["model_version"])
                                           for a in alerts)
    stored_letters = query(s, f"SELECT source_offset, raw, reason_detail FROM {schema}.dead_letters "
                              "WHERE source_topic = %s", run)
    assert sorted((o, bytes(r), d) for o, r, d in stored_letters) == sorted(
        (d.offset, d.raw, storable_text(d.reason_detail)) for d in dead)
    streamed = [e.data for e in stream_entries(s, prefix, CHANNEL_FIXED) if e.data["dimension"] == run]
    assert sorted(orjson.dumps(d) for d in streamed) == sorted(orjson.dumps(a.to_dict()) for a in aggregates)
    alert_entries = [e.data for e in stream_entries(s, prefix, CHANNEL_ALERTS)
                     if str(e.data["alert_id"]).startswith(f"{run}-")]
    assert sorted(orjson.dumps(d) for d in alert_entries) == sorted(orjson.dumps(a) for a in alerts)


#: An event whose aggregate the hostile test then breaks field by field.
_PLAIN = Event("e", "view", 946_684_800_000, "u", "s", "i", "c", "DE", 1.0, "EUR", (0.0,) * 6)
#: Any text a record can carry through a Beam pipeline: Beam's coders write text as strict UTF-8
#: between steps, so a lone surrogate fails the step *before* a sink (no job can hand one to a
#: sink; the contract refuses them at the door, tests/unit/test_hostile_input.py).
_PIPELINE_TEXT = ANY_TEXT.map(lambda t: "".join(c for c in t if not 0xD800 <= ord(c) <= 0xDFFF))
_ANY_NUMBER = (st.integers() | st.floats() | st.sampled_from([2**63, -(2**63) - 1, 2**64, float("nan"),
                                                              float("inf")]))


@_SETTINGS
@given(st.lists(st.tuples(_PIPELINE_TEXT, _ANY_NUMBER, _ANY_NUMBER), min_size=10, max_size=30))
@example(records=[("a\x00b", 2, float("nan")), ("\u202e", 2**64, 1.0),
                  *[(f"k{i}", i, 1.5) for i in range(8)]])
def test_no_record_a_sink_is_handed_fails_the_pipeline(target: tuple[Settings, str, str],
                                                       records: list[tuple[str, Any, Any]]) -> None:
    """Aggregates with any text as their key and any number as their count and sum: each one is
    written, or refused as a dead letter, by each sink — never a failed pipeline."""
    s, schema, prefix = target
    run = f"r{next(_runs)}-{uuid.uuid4().hex[:6]}"
    aggregates = [{**aggregate_of(_PLAIN, run, i).to_dict(), "key": key, "count": count, "sum_amount": total}
                  for i, (key, count, total) in enumerate(records)]
    result = run_sinks(s, schema, prefix, aggregates=aggregates, alerts=[], letters=[], refusals_allowed=True)

    [(stored,)] = query(s, f"SELECT count(*) FROM {schema}.aggregates WHERE dimension = %s", run)
    assert stored + counter(result, "sink_rejected.postgres.aggregates") == len(aggregates)
    streamed = [e for e in stream_entries(s, prefix, CHANNEL_FIXED) if e.data["dimension"] == run]
    assert len(streamed) + counter(result, "sink_rejected.redis.aggregates.fixed") == len(aggregates)

