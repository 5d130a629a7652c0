"""The anomaly model is replaced while the streaming job runs: publishing anomaly-v2.keras into
the model directory makes the job score with it — no restart — and no anomalous event is missed
or alerted twice across the switch.

The job runs unbounded on Prism (the runner of `make run`), watching its model directory every
2 s (models/handler.py: each worker checks for a newer version and swaps it in).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from devstack.generator import KIND_HEADER, EventGenerator, Fractions, GeneratorConfig, produce
from devstack.sandbox import job_environ, private_job, stop_job_process
from models.anomaly import latest_model, model_path
from models.train import train
from pipelines.runners import runner_args
from streaming_analytics.events import parse_event
from streaming_analytics.settings import Settings
from tests.integration.pipeline_support import consume_all

PARTITIONS = 2
FRACTIONS = Fractions(out_of_order=0, late=0, too_late=0, duplicate=0, malformed=0, anomalous=0.1)


@pytest.fixture
def job(settings: Settings, unique_name: str, model_dir: Path,
        tmp_path: Path) -> Iterator[tuple[Settings, subprocess.Popen[bytes], Path]]:
    own_models = tmp_path / "models"
    own_models.mkdir()
    v1 = latest_model(model_dir)
    assert v1 is not None
    shutil.copy(v1, own_models / v1.name)
    with private_job(settings, unique_name, PARTITIONS) as s:
        own = dataclasses.replace(s, model_dir=own_models)
        argv = [sys.executable, "-m", "pipelines.analytics_pipeline", *runner_args("prism", own),
                f"--postgres_schema={own.topic_events}", "--kafka_start=earliest",
                "--model_refresh_interval_s=2", "--kafka_idle_timeout_s=3"]
        log = tmp_path / "job.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=job_environ(own), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            yield own, proc, log
        finally:
            stop_job_process(proc)


def alerts(s: Settings) -> list[tuple[str, str]]:
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{s.topic_events}.alerts",))
        row = cur.fetchone()
        if not (row and row[0]):
            return []
        cur.execute(f"SELECT event_id, model_version FROM {s.topic_events}.alerts")
        return [(e, v) for e, v in cur.fetchall()]


def wait_for(condition: str, check: object, proc: subprocess.Popen[bytes], log: Path,
             timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert proc.poll() is None, "the job died: " + log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(1)


@pytest.mark.slow
def test_a_new_model_version_is_used_without_restart(
        job: tuple[Settings, subprocess.Popen[bytes], Path]) -> None:
    s, proc, log = job
    generator = EventGenerator(GeneratorConfig(seed=31, fractions=FRACTIONS))

    def send(count: int) -> None:
        produce(generator, bootstrap=s.kafka_bootstrap, topic=s.topic_events, count=count, rate=200,
                realtime=True)

    send(200)  # 20 anomalous events, scored by v1
    wait_for("alerts of v1", lambda: len(alerts(s)) >= 20, proc, log)
    assert {v for _, v in alerts(s)} == {"v1"}

    train(s.model_dir, version=2, events=4000, epochs=4, seed=11)
    assert model_path(s.model_dir, 2).exists()
    # Keep events coming until the job scores with v2 (the watcher polls every 2 s; the side
    # input reaches the workers with the next bundles).
    deadline = time.monotonic() + 120
    while "v2" not in {v for _, v in alerts(s)}:
        assert time.monotonic() < deadline, "the job never switched to v2"
        assert proc.poll() is None, "the job died: " + log.read_text(errors="replace")[-3000:]
        send(50)
    send(100)  # after the switch: everything from here on is v2's

    records = consume_all(s, PARTITIONS)
    anomalous = {parse_event(r.value).event_id for r in records
                 if dict(r.headers).get(KIND_HEADER) == b"anomalous"}
    wait_for("every anomalous event alerted", lambda: len(alerts(s)) >= len(anomalous), proc, log)
    got = alerts(s)
    assert sorted(e for e, _ in got) == sorted(anomalous)  # none missed, none twice
    assert {v for _, v in got} == {"v1", "v2"}
    last_ten = {parse_event(r.value).event_id for r in records[-100:]
                if dict(r.headers).get(KIND_HEADER) == b"anomalous"}
    assert {v for e, v in got if e in last_ten} == {"v2"}
    assert proc.poll() is None  # the same job process throughout
