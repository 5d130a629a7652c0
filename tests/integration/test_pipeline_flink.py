"""The job on the real local Flink 1.19 session cluster (Beam's Flink runner, the worker pool, Java
KafkaIO as a native source): live end to end, stopped with a savepoint and restored — through the
launcher and with the portable job jar and `flink run -s` — and checkpoint state that stays flat.

Each ends with the exactness check of tests/integration/pipeline_support.py: every window's final
pane equals the independent computation over the topic's records, every malformed record is in the
dead letters with its position, one alert per anomalous event — so a restore that lost or replayed
an event into the results fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from devstack.sandbox import private_job
from devstack.stack.components import flink_cli_env
from pipelines.analytics_pipeline import run
from pipelines.flink_job import FlinkJobResult
from pipelines.flink_rest import FlinkRest
from streaming_analytics.db.migrate import migrate
from streaming_analytics.settings import Settings
from tests.integration.live_support import (
    LiveJob,
    LiveProducer,
    job_args,
    live_job,
    start_job,
    wait_until_exact,
)

pytestmark = [pytest.mark.flink, pytest.mark.slow]

PARTITIONS = 3
RATE = 200


def test_live_job_on_flink_is_exact(settings: Settings, unique_name: str, tmp_path: Path) -> None:
    with private_job(settings, unique_name, PARTITIONS) as s, \
            live_job("flink", s, tmp_path / "job.log") as job:
        assert job.flink is not None
        vertices = [v["name"] for v in job.flink.rest.job(job.flink.job_id)["vertices"]]
        # The Kafka read is a native Flink source (Java KafkaIO), not a Python SDF.
        assert any("KafkaUnboundedSource" in v or "ReadEvents" in v for v in vertices[:1]), vertices
        LiveProducer(s, RATE * 12, RATE, seed=31).start().join()
        assert wait_until_exact(job, PARTITIONS) >= 20
        assert job.flink.rest.checkpoints(job.flink.job_id).completed >= 1


def test_savepoint_and_restore_through_the_launcher(settings: Settings, unique_name: str,
                                                    tmp_path: Path) -> None:
    """Savepoint (cancelling the job) mid-stream, events produced while it is down, restore with
    ``--restore_from``: every window exact, nothing lost or counted twice."""
    with private_job(settings, unique_name, PARTITIONS) as s:
        job = start_job("flink", s, tmp_path / "job.log")
        try:
            assert job.flink is not None
            LiveProducer(s, RATE * 8, RATE, seed=37).start().join()
            savepoint = job.flink.savepoint(tmp_path / "savepoints", cancel_job=True)
            assert job.flink.flink_state() == "CANCELED"
            LiveProducer(s, RATE * 4, RATE, seed=41).start().join()  # while the job is down
            job = start_job("flink", s, tmp_path / "job2.log", f"--restore_from={savepoint}")
            LiveProducer(s, RATE * 6, RATE, seed=43).start().join()
            assert wait_until_exact(job, PARTITIONS) >= 20
        finally:
            job.stop()


def test_savepoint_and_restore_with_the_job_jar_and_flink_run(settings: Settings, unique_name: str,
                                                              tmp_path: Path) -> None:
    """What an operator does by hand: the portable job jar run by `flink run -d`, a savepoint with
    `flink cancel -s`, and `flink run -d -s SAVEPOINT` of the same jar."""
    env = {**os.environ, **flink_cli_env(settings.stack_dir, settings.tools_dir)}
    flink = str(settings.tools_dir / "flink" / "bin" / "flink")
    rest = FlinkRest(settings.flink_rest_url)
    with private_job(settings, unique_name, PARTITIONS) as s:
        jar = tmp_path / "job.jar"
        run([*job_args("flink", s), f"--job_jar={jar}"], settings=s)
        with zipfile.ZipFile(jar) as z:  # the pipeline and our main; the runner is in Flink's lib/
            names = set(z.namelist())
            manifest = z.read("META-INF/MANIFEST.MF").decode()
        assert "Main-Class: org.streaminganalytics.flink.JobJarMain" in manifest
        assert {"BEAM-PIPELINE/pipeline-manifest.json", "BEAM-PIPELINE/pipeline/pipeline.json",
                "BEAM-PIPELINE/pipeline/pipeline-options.json"} <= names
        assert not any(n.startswith("org/apache/beam/") for n in names)
        # A job jar never migrates (on Kubernetes the chart's hook Job does); here we do.
        migrate(s.postgres_dsn, schema=s.topic_events)
        job_id = _flink_run(flink, env, jar)
        job = LiveJob(s, "flink", tmp_path / "job.log", flink=FlinkJobResult(rest, job_id))
        try:
            rest.wait_until_tasks_running(job_id, 180)
            LiveProducer(s, RATE * 8, RATE, seed=47).start().join()
            out = _cli(flink, env, "cancel", "-s", (tmp_path / "savepoints").as_uri(), job_id)
            match = re.search(r"Savepoint stored in (\S+?)\.?$", out, re.MULTILINE)
            assert match, out
            savepoint = match[1]
            LiveProducer(s, RATE * 4, RATE, seed=53).start().join()
            job_id = _flink_run(flink, env, jar, "-s", savepoint)
            job = LiveJob(s, "flink", tmp_path / "job.log", flink=FlinkJobResult(rest, job_id))
            rest.wait_until_tasks_running(job_id, 180)
            LiveProducer(s, RATE * 6, RATE, seed=59).start().join()
            assert wait_until_exact(job, PARTITIONS) >= 20
        finally:
            job.stop()


def _cli(flink: str, env: dict[str, str], *args: str) -> str:
    result = subprocess.run([flink, *args], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _flink_run(flink: str, env: dict[str, str], jar: Path, *args: str) -> str:
    out = _cli(flink, env, "run", "-d", *args, str(jar))
    match = re.search(r"JobID ([0-9a-f]{32})", out)
    assert match, out
    return match[1]


#: Small windows, lateness and dedup horizon, so the job reaches its steady state in seconds:
#: afterwards every checkpoint holds the same key set (dimension keys x open windows, dedup ids of
#: one horizon), and only a leak can make it grow.
STEADY_ARGS = ("--fixed_window_s=2", "--sliding_window_s=4", "--sliding_period_s=2", "--allowed_lateness_s=4",
               "--late_gate_margin_s=4", "--dedup_horizon_s=12")


def test_checkpoint_state_does_not_grow_with_the_number_of_checkpoints(
        settings: Settings, unique_name: str, tmp_path: Path) -> None:
    """apache/beam#27648 grows the state of every Python SDF source by ~5.7 KB per checkpoint on
    this runner; the job's Java read must not. At a constant rate over a constant key set, the
    checkpoints of the last third are no larger than those of the middle third (within noise),
    and the source operator's own state does not grow at all beyond one partition offset each."""
    s_args = (*STEADY_ARGS, "--checkpointing_interval=1000")
    with private_job(settings, unique_name, PARTITIONS) as s, \
            live_job("flink", s, tmp_path / "job.log", *s_args) as job:
        assert job.flink is not None
        rest, job_id = job.flink.rest, job.flink.job_id
        producer = LiveProducer(s, RATE * 75, RATE, seed=61).start()
        sizes: dict[int, int] = {}
        source_sizes: dict[int, int] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(sizes) < 60:
            latest = rest.checkpoints(job_id).latest
            if latest is not None and latest.id not in sizes:
                sizes[latest.id] = latest.state_size
                source_sizes[latest.id] = _source_state_size(rest, job_id, latest.id)
            time.sleep(0.5)
        producer.join()
    ids = sorted(sizes)
    assert len(ids) >= 30, f"only {len(ids)} checkpoints"
    steady = ids[len(ids) // 3:]  # the first third warms up (windows and dedup ids fill)
    middle, last = steady[: len(steady) // 2], steady[len(steady) // 2:]
    mean = lambda xs: sum(sizes[i] for i in xs) / len(xs)  # noqa: E731
    assert mean(last) <= mean(middle) * 1.25 + 20_000, [sizes[i] for i in ids]
    source = [source_sizes[i] for i in steady]
    assert max(source) - min(source) <= 2_000, source


def _source_state_size(rest: FlinkRest, job_id: str, checkpoint_id: int) -> int:
    """Checkpointed size of the job's first vertex (the Kafka source operator)."""
    first = rest.job(job_id)["vertices"][0]["id"]
    details = rest.checkpoint_details(job_id, checkpoint_id)
    task = details.get("tasks", {}).get(first, {})
    return int(task.get("checkpointed_size", task.get("state_size", 0)))
