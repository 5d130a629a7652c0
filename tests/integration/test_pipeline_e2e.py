"""The whole job on real Kafka, Postgres and Redis: final panes equal aggregates computed
independently from the very records in the topic; every malformed record is dead-lettered.

Runs the job bounded (stop at the end offsets seen at start) on the DirectRunner (batch) and on
Prism (streaming). The generated workload spans a few seconds of event time with out-of-order,
late, duplicate and malformed records. (The job on Flink, which has no bounded read, is tested
live in test_pipeline_flink.py; reading orders and too-late records in
test_pipeline_late_data.py and the TestStream property tests.)
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from devstack.sandbox import private_job
from pipelines.analytics_pipeline import run
from pipelines.runners import runner_args
from streaming_analytics.db.migrate import migrate
from streaming_analytics.settings import Settings
from tests.integration.pipeline_support import Windows, assert_results_exact

T0 = 1_767_225_600_000
COUNT = 3_000
PARTITIONS = 4


@pytest.fixture
def job(settings: Settings, unique_name: str) -> Iterator[Settings]:
    with private_job(settings, unique_name, PARTITIONS) as s:
        subprocess.run(
            [sys.executable, "-m", "devstack.generator", "--count", str(COUNT), "--seed", "5",
             "--topic", s.topic_events, "--bootstrap", s.kafka_bootstrap, "--start-ms", str(T0),
             "--rate", "1000", "--too-late", "0", "--late", "0.01", "--duplicate", "0.02",
             "--malformed", "0.02", "--out-of-order", "0.1"],
            check=True, capture_output=True, timeout=120,
        )
        yield s


@pytest.mark.parametrize("runner", ["direct", "prism"])
def test_final_panes_equal_independent_aggregates(job: Settings, runner: str) -> None:
    schema = job.topic_events
    run([*runner_args(runner, job), "--bounded", f"--postgres_schema={schema}", "--kafka_start=earliest"],
        settings=job)
    assert assert_results_exact(job, schema, PARTITIONS, Windows()) > 100


def test_workers_read_endpoints_from_their_own_environment(job: Settings) -> None:
    """--endpoints=workers: the launcher's endpoint settings are never used (here they point
    nowhere); the workers connect where their SA_* environment says, and the results are exact."""
    schema = job.topic_events
    migrate(job.postgres_dsn, schema=schema)
    nowhere = dataclasses.replace(job, kafka_bootstrap="127.0.0.1:9", postgres_dsn="postgresql://nobody@127.0.0.1:9/x",
                                  redis_url="redis://127.0.0.1:9/0", model_dir=Path("/nonexistent"))
    env = {"SA_KAFKA_BOOTSTRAP": job.kafka_bootstrap, "SA_POSTGRES_DSN": job.postgres_dsn,
           "SA_REDIS_URL": job.redis_url, "SA_MODEL_DIR": str(job.model_dir)}
    with mock.patch.dict(os.environ, env):
        run([*runner_args("direct", nowhere), "--bounded", f"--postgres_schema={schema}",
             "--kafka_start=earliest", "--endpoints=workers", "--skip_migrations"], settings=nowhere)
    assert assert_results_exact(job, schema, PARTITIONS, Windows()) > 100
