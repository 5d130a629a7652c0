"""Shared by the tests that run the streaming job live (fault, Flink and savepoint tests): the job
on a private namespace on either streaming runner, a paced producer, and waiting until the results
are exact.

On ``prism`` the job runs in a launcher process of its own (the Python workers live in it); on
``flink`` the launcher writes the job jar, submits it through the REST API and returns, and the job
runs on the local session cluster with the stack's worker pool.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from devstack.generator import EventGenerator, Fractions, GeneratorConfig, produce
from devstack.sandbox import job_environ, stop_job_process
from pipelines.analytics_pipeline import run
from pipelines.flink_job import FlinkJobResult
from pipelines.runners import runner_args
from streaming_analytics.settings import Settings
from tests.integration.pipeline_support import Windows, assert_results_exact

#: Short windows so that every window gets its on-time pane soon after the producer stops.
WINDOWS = Windows(fixed_s=5, sliding_s=10, period_s=5)
#: Covers an outage: events the producer could only deliver after a restart arrive late (an idle,
#: caught-up partition advances its watermark with the clock meanwhile) but within lateness.
ALLOWED_LATENESS_S = 60
#: Normal traffic with duplicates, malformed and anomalous records, nothing late by design.
FRACTIONS = Fractions(out_of_order=0.05, late=0, too_late=0, duplicate=0.02, malformed=0.02, anomalous=0.01)


def job_args(runner: str, s: Settings, *extra: str) -> list[str]:
    """The live job's options on ``runner`` in ``s``'s private namespace; ``extra`` options replace
    defaults of the same name."""
    defaults = [*runner_args(runner, s), *WINDOWS.args(), f"--allowed_lateness_s={ALLOWED_LATENESS_S}",
                "--early_firing_delay_s=0.5", f"--postgres_schema={s.topic_events}",
                "--kafka_start=earliest", "--kafka_idle_timeout_s=3", f"--job_name={s.topic_events}"]
    overridden = {arg.split("=", 1)[0] for arg in extra}
    return [*(arg for arg in defaults if arg.split("=", 1)[0] not in overridden), *extra]


@dataclass
class LiveJob:
    """The job under test: a launcher process (prism) or a job on the Flink cluster."""

    settings: Settings
    runner: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    flink: FlinkJobResult | None = None

    def assert_alive(self) -> None:
        if self.process is not None:
            assert self.process.poll() is None, "the job died: " + self.log_tail()
        if self.flink is not None:
            state = self.flink.flink_state()
            assert state not in {"FAILED", "CANCELED", "FINISHED"}, \
                f"the job is {state}: {self.flink.rest.root_exception(self.flink.job_id)}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        if self.process is not None:
            stop_job_process(self.process)
        if self.flink is not None:
            self.flink.cancel()


@contextmanager
def live_job(runner: str, s: Settings, log: Path, *extra: str) -> Iterator[LiveJob]:
    """Start the job live on ``runner``; cancel it on exit."""
    job = start_job(runner, s, log, *extra)
    try:
        yield job
    finally:
        job.stop()


def start_job(runner: str, s: Settings, log: Path, *extra: str) -> LiveJob:
    args = job_args(runner, s, *extra)
    if runner == "flink":
        result = run(args, settings=s, wait=False)
        assert isinstance(result, FlinkJobResult)
        return LiveJob(s, runner, log, flink=result)
    with log.open("wb") as out:
        # Its own process group: the launcher starts Prism as a child, and both must go.
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.analytics_pipeline", *args],
                                env=job_environ(s), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    job = LiveJob(s, runner, log, process=proc)
    _wait_for_migrations(job)
    return job


def _wait_for_migrations(job: LiveJob) -> None:
    schema = job.settings.topic_events
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job.assert_alive()
        with psycopg2.connect(job.settings.postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.schema_migrations",))
            row = cur.fetchone()
            if row and row[0]:
                return
        time.sleep(0.5)
    raise TimeoutError("the job did not start: " + job.log_tail())


@dataclass
class LiveProducer:
    """Produces ``count`` records at ``rate``/s with event time = now, in a thread."""

    s: Settings
    count: int
    rate: float
    seed: int
    fractions: Fractions = FRACTIONS
    sent: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._produce, name="producer", daemon=True)

    def _produce(self) -> None:
        self.sent.update(produce(EventGenerator(GeneratorConfig(seed=self.seed, fractions=self.fractions)),
                                 bootstrap=self.s.kafka_bootstrap, topic=self.s.topic_events,
                                 count=self.count, rate=self.rate, realtime=True))

    def start(self) -> LiveProducer:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(timeout=self.count / self.rate + 180)
        assert not self._thread.is_alive(), "the producer did not finish"
        assert sum(self.sent.values()) == self.count


def wait_until_exact(job: LiveJob, partitions: int, timeout_s: float = 180,
                     alive: Callable[[], None] | None = None,
                     excused_reasons: frozenset[str] = frozenset()) -> int:
    """Poll until Postgres and Redis hold exactly the independent computation (every window's final
    pane, every dead letter, one alert per anomalous event); returns the number of windows.
    ``excused_reasons``: see :func:`assert_results_exact`."""
    deadline = time.monotonic() + timeout_s
    while True:
        (alive or job.assert_alive)()
        try:
            return assert_results_exact(job.settings, job.settings.topic_events, partitions, WINDOWS,
                                        excused_reasons=excused_reasons)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)
