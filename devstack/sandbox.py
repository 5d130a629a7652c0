"""A private namespace for one run of the job: its own topics, Postgres schema, stream prefix and
consumer group, so tests and benchmarks can run the real job beside `make run` and each other.

    with private_job(Settings.from_env(), "bench_x", partitions=4) as s:
        run([...], settings=s)
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg2
import redis
from kafka import KafkaAdminClient

from devstack.kafka_topics import ensure_topics
from streaming_analytics.db.migrate import check_schema_name
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNELS, stream_key


def job_environ(s: Settings) -> dict[str, str]:
    """The environment of a job process that must run in ``s``'s private namespace (the variables
    :func:`private_job` changed, plus the model directory): the current one with those set."""
    return {**os.environ, "SA_KAFKA_TOPIC_EVENTS": s.topic_events, "SA_KAFKA_TOPIC_DLQ": s.topic_dlq,
            "SA_REDIS_STREAM_PREFIX": s.redis_stream_prefix, "SA_KAFKA_CONSUMER_GROUP": s.consumer_group,
            "SA_MODEL_DIR": str(s.model_dir)}


def stop_job_process(job: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Stop a job launched in its own session (``start_new_session=True``) and everything it
    started — the launcher runs Prism as a child; SIGTERM first, SIGKILL after ``timeout_s``."""
    with suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGTERM)
    try:
        job.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout_s)


@contextmanager
def private_job(settings: Settings, name: str, partitions: int, *,
                delete_topics: bool = False) -> Iterator[Settings]:
    """Settings pointing the job at ``name``-scoped topics, schema, streams and group.

    The schema (named ``name``) is created empty: ``run()`` migrates it. On exit the schema and
    the streams are dropped, and the topics too with ``delete_topics`` (tests keep them: Kafka
    deletes asynchronously, and unique names never collide).
    """
    check_schema_name(name)
    s = dataclasses.replace(settings, topic_events=name, topic_dlq=f"{name}_dlq",
                            redis_stream_prefix=f"{name}:", consumer_group=f"g-{name}")
    ensure_topics(s.kafka_bootstrap, {s.topic_events: partitions, s.topic_dlq: 1})
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
    try:
        yield s
    finally:
        with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        client = redis.Redis.from_url(s.redis_url)
        client.delete(*[stream_key(s.redis_stream_prefix, c) for c in CHANNELS])
        client.close()
        if delete_topics:
            admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
            admin.delete_topics([s.topic_events, s.topic_dlq])
            admin.close()
