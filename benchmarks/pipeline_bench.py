"""Pipeline benchmarks: throughput of the whole job, and end-to-end latency of early panes.

    python -m benchmarks.pipeline_bench throughput --events 50000
    python -m benchmarks.pipeline_bench latency --seconds 60 --rate 500

Both run the real job (``pipelines.analytics_pipeline.run``) against the real Kafka, Postgres and
Redis of the local stack, in a private topic, Postgres schema and stream prefix that are removed
afterwards.

*throughput*: N generated records (the generator's default mix: duplicates, malformed, late and
too-late ones) are put in the topic first; then the job runs bounded (it stops at the end offsets)
on each runner, and two rates are reported over the wall time of the run: records read per second,
and events that reached the aggregates per second — counted afterwards from the job's own output
(the final fixed-window panes of one dimension hold every aggregated event exactly once), so a run
that refuses or loses work cannot look fast. The baseline, measured in the same run on the same
records, is a plain single-threaded Python loop doing the same work (parse, validate, dedupe,
fixed + sliding aggregates per dimension) without Beam: the ratio says what the engine costs,
independent of how fast this machine happens to be today.

*latency*: the job runs unbounded on Prism with a short early-firing delay while a producer sends
live events at ``--rate``. Once a second it also sends a *probe*: an event of a category no other
event has (``probe-<n>``). The probe's latency is the time from its produce call to the first
entry for its category window in the Redis stream (its Redis entry id is the server's append
time), so it spans Kafka, the source, parsing, dedup, windowing, the early trigger and the sink.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg2
import redis
from kafka import KafkaProducer
from psycopg2 import sql

from devstack import sandbox
from devstack.generator import EventGenerator, GeneratorConfig
from models.anomaly import latest_model, model_input
from models.train import ensure_model
from pipelines.analytics_pipeline import run
from pipelines.runners import runner_args
from streaming_analytics.events import InvalidEvent, parse_event
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_FIXED, StreamEntry, stream_key

T0 = 1_767_225_600_000
PARTITIONS = 4
WARMUP_S = 10.0  # live traffic before the latency probes count (see latency())
SCORE_BATCH = 512  # as the job's RunInference batches (transforms/scoring.py)


@contextlib.contextmanager
def private_job(name: str) -> Iterator[Settings]:
    """A throwaway namespace for one benchmark run, topics included (see devstack.sandbox)."""
    settings = Settings.from_env()
    ensure_model(settings.model_dir)  # the job scores with the newest model (trains v1 if none)
    with sandbox.private_job(settings, name, PARTITIONS, delete_topics=True) as s:
        yield s


# --- throughput -------------------------------------------------------------------------------------
def plain_python_baseline(values: list[bytes], model_file: Path) -> tuple[float, int]:
    """The job's work as one Python loop (no Beam), model scoring in batches included: records/s,
    and the number of events it aggregated (every first delivery of a valid event)."""
    import keras
    import numpy as np

    from transforms.sketches import HyperLogLog, QuantileSketch

    model = keras.models.load_model(model_file)
    t0 = time.perf_counter()
    rows: list[Any] = []
    seen: set[str] = set()
    windows: dict[tuple[str, str, str, int], list[Any]] = defaultdict(
        lambda: [0, 0.0, float("inf"), float("-inf"), QuantileSketch(), HyperLogLog()])
    for value in values:
        try:
            e = parse_event(value)
        except InvalidEvent:
            continue
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        rows.append(model_input(e.features))
        if len(rows) == SCORE_BATCH:
            model(np.stack(rows))
            rows.clear()
        t = e.event_time_ms
        last = t - t % 60_000
        starts = [("fixed", last)] + [("sliding", s) for s in range(last, t - 300_000, -60_000)]
        for dim, key in (("event_type_country", f"{e.event_type}|{e.country}"), ("category", e.category)):
            for kind, start in starts:
                w = windows[(kind, dim, key, start)]
                w[0] += 1
                w[1] += e.amount
                w[2] = min(w[2], e.amount)
                w[3] = max(w[3], e.amount)
                w[4].add(e.amount)
                w[5].add(e.user_id)
    if rows:
        model(np.stack(rows))
    return len(values) / (time.perf_counter() - t0), len(seen)


def produce_events(s: Settings, count: int, seed: int = 3) -> list[bytes]:
    generator = EventGenerator(GeneratorConfig(seed=seed))
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=20,
                             batch_size=262144)
    values = []
    for record in generator.records(count, T0, interval_ms=1.0):
        producer.send(s.topic_events, key=record.key, value=record.value)
        values.append(record.value)
    producer.flush()
    producer.close()
    return values


def aggregated_events(dsn: str, schema: str) -> tuple[int, dict[str, int]]:
    """Events that reached the aggregates (each counts once in the fixed windows of the ``category``
    dimension: the sum of their final panes' counts), and the job's dead letters by reason."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT coalesce(sum(count), 0) FROM {}.aggregates"
                            " WHERE kind = 'fixed' AND dimension = 'category'")
                    .format(sql.Identifier(schema)))
        row = cur.fetchone()
        cur.execute(sql.SQL("SELECT reason_code, count(*) FROM {}.dead_letters GROUP BY reason_code")
                    .format(sql.Identifier(schema)))
        dead = {code: int(n) for code, n in cur.fetchall()}
    return int(row[0]) if row else 0, dead


def throughput(events: int, runners: list[str]) -> dict[str, Any]:
    name = f"bench_tp_{int(time.time())}"
    results: dict[str, Any] = {"events": events}
    with private_job(name) as s:
        values = produce_events(s, events)
        results["events"] = len(values)
        model_file = latest_model(s.model_dir)
        assert model_file is not None
        rate, aggregated = plain_python_baseline(values, model_file)
        results["baseline_python_events_per_s"] = rate
        results["baseline_events_aggregated"] = aggregated
        for runner in runners:
            schema = f"{name}_{runner}"
            with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
                cur.execute(f"CREATE SCHEMA {schema}")
            try:
                t0 = time.perf_counter()
                run([*runner_args(runner, s), "--bounded", f"--postgres_schema={schema}",
                     "--kafka_start=earliest"], settings=s)
                elapsed = time.perf_counter() - t0
                aggregated, dead = aggregated_events(s.postgres_dsn, schema)
            finally:
                with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
                    cur.execute(f"DROP SCHEMA {schema} CASCADE")
            results[f"{runner}_seconds"] = elapsed
            results[f"{runner}_events_per_s"] = len(values) / elapsed  # records read
            results[f"{runner}_events_aggregated"] = aggregated
            results[f"{runner}_aggregated_events_per_s"] = aggregated / elapsed
            results[f"{runner}_dead_letters"] = dead
            results[f"{runner}_vs_baseline"] = results[f"{runner}_events_per_s"] / results[
                "baseline_python_events_per_s"]
    return results


# --- latency ----------------------------------------------------------------------------------------
def latency(seconds: float, rate: float, early_delay_s: float) -> dict[str, Any]:
    name = f"bench_lat_{int(time.time())}"
    with private_job(name) as s:
        job = subprocess.Popen(  # the job in its own process, as under `make run`
            [sys.executable, "-m", "pipelines.analytics_pipeline", *runner_args("prism", s),
             f"--postgres_schema={name}", "--kafka_start=latest", f"--early_firing_delay_s={early_delay_s}",
             "--kafka_max_read_time_s=0.2"],
            env={**sandbox.job_environ(s)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # Its own process group: Beam starts Prism as a child of the job, and a SIGTERM to the
            # job alone skips Beam's clean-up and leaves that Prism running (and burning CPU in
            # the next measurement); stopping the group stops both.
            start_new_session=True)
        try:
            _wait_for_job(s, name)
            # Warm-up, not measured: the first events through each stage pay one-time costs
            # (the SDK worker importing TensorFlow and loading the model for ScoreEvents, ~2-3 s)
            # that would otherwise land on the first probes as a steady-state tail.
            _send_live(s, WARMUP_S, rate, probe_prefix="warmup", seed=8)
            probes = _send_live(s, seconds, rate)
            time.sleep(3 + early_delay_s)
            latencies = _probe_latencies(s, probes)
        finally:
            sandbox.stop_job_process(job)
    lat = sorted(latencies)
    return {
        "probes": len(probes), "seen": len(lat), "rate": rate, "early_firing_delay_s": early_delay_s,
        "warmup_s": WARMUP_S,
        "p50_ms": _pct(lat, 0.50), "p95_ms": _pct(lat, 0.95), "p99_ms": _pct(lat, 0.99),
        "mean_ms": statistics.fmean(lat) if lat else None,
    }


def _wait_for_job(s: Settings, schema: str, timeout_s: float = 60) -> None:
    """The job is live once its migration ran and its readers are assigned (give them a moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.schema_migrations",))
            row = cur.fetchone()
            if row and row[0]:
                time.sleep(8)  # Prism starts its workers and the source positions at "latest"
                return
        time.sleep(0.5)
    raise TimeoutError("the job did not start")


def _send_live(s: Settings, seconds: float, rate: float, *, probe_prefix: str = "probe",
               seed: int = 9) -> dict[str, float]:
    """Live events at ``rate`` for ``seconds``, with one probe per second: a valid event whose
    category ``<probe_prefix>-<n>`` is its own, so its first aggregate is recognisable. Returns each
    probe's category and produce time. Calls into one job need their own prefix *and* seed: the
    latency of a probe is measured to the first entry of its category, and the same seed repeats the
    same event ids, which the job drops as duplicates (measured probes of a warm-up with the same
    seed never reached the aggregates)."""
    generator = EventGenerator(GeneratorConfig(seed=seed, fractions=dataclasses.replace(
        GeneratorConfig().fractions, late=0, too_late=0, out_of_order=0)))
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks=1, linger_ms=0)
    probes: dict[str, float] = {}
    start = time.monotonic()
    sent = 0
    next_probe = start
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        if now >= next_probe:
            category = f"{probe_prefix}-{len(probes)}"
            event = _valid_event(generator, category)
            probes[category] = time.time()
            producer.send(s.topic_events, key=b"probe", value=event)
            next_probe += 1.0
        due = start + sent / rate
        if time.monotonic() < due:
            time.sleep(max(0.0, min(due - time.monotonic(), 0.01)))
            continue
        record = generator.next_record(int(time.time() * 1000))
        producer.send(s.topic_events, key=record.key, value=record.value)
        sent += 1
    producer.flush()
    producer.close()
    return probes


def _valid_event(generator: EventGenerator, category: str) -> bytes:
    while True:
        record = generator.next_record(int(time.time() * 1000))
        if record.kind in ("normal", "anomalous"):
            doc = orjson.loads(record.value)
            doc["category"] = category
            doc["event_time_ms"] = int(time.time() * 1000)
            return orjson.dumps(doc)


def _probe_latencies(s: Settings, probes: dict[str, float]) -> list[float]:
    client = redis.Redis.from_url(s.redis_url)
    first_seen: dict[str, float] = {}
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
        stream_key(s.redis_stream_prefix, CHANNEL_FIXED))  # redis-py's stubs allow str or None here
    for entry_id, fields in entries:
        entry = StreamEntry.from_fields(fields)
        key = entry.data.get("key")
        if entry.data.get("dimension") == "category" and key in probes and key not in first_seen:
            # The entry id is the Redis server's append time in milliseconds.
            first_seen[key] = int(entry_id.split(b"-")[0]) / 1000
    client.close()
    return [(first_seen[k] - probes[k]) * 1000 for k in probes if k in first_seen]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--events", type=int, default=50_000)
    tp.add_argument("--runners", default="direct,prism")
    lat = sub.add_parser("latency")
    lat.add_argument("--seconds", type=float, default=60)
    lat.add_argument("--rate", type=float, default=500)
    lat.add_argument("--early-delay-s", type=float, default=0.1)
    args = p.parse_args(argv)
    if args.what == "throughput":
        result = throughput(args.events, args.runners.split(","))
    else:
        result = latency(args.seconds, args.rate, args.early_delay_s)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

