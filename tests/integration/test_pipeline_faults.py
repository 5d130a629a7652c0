"""Fault tests on the real stack: while the streaming job runs and events flow, a service restarts
(PostgreSQL, Redis, the Kafka broker) or — on Flink — the TaskManager is killed with SIGKILL or the
Python worker pool dies; the sinks and the source retry, Flink restores the job from its last
checkpoint, and in the end the results are exact: nothing lost, nothing counted twice.

The job runs unbounded on Flink (what `make run` and production use) and, for the service restarts,
also on Prism; short windows (5 s fixed, 10 s sliding every 5 s) make every window get its on-time
pane soon after the producer stops. Events are produced live (event time = now) with duplicates,
malformed and anomalous records.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from devstack.sandbox import private_job
from devstack.stack.manager import Stack
from pipelines.flink_rest import FlinkRest
from streaming_analytics.settings import Settings
from tests.integration.live_support import LiveProducer, live_job, wait_until_exact
from tests.integration.pipeline_support import wait_for_committed_offsets

PARTITIONS = 3
RATE = 250
SECONDS = 16
FAULT_AFTER_S = 6

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("runner", [pytest.param("flink", marks=pytest.mark.flink), "prism"])
@pytest.mark.parametrize("service", ["postgres", "redis", "kafka"])
def test_results_stay_exact_when_a_service_restarts_mid_stream(
        settings: Settings, unique_name: str, tmp_path: Path, service: str, runner: str) -> None:
    stack = Stack.from_settings()
    with private_job(settings, unique_name, PARTITIONS) as s, \
            live_job(runner, s, tmp_path / "job.log") as job:
        producer = LiveProducer(s, RATE * SECONDS, RATE, seed=17).start()
        time.sleep(FAULT_AFTER_S)
        before = [p.pid for p in stack.processes(service)]
        stack.restart(service)
        assert [p.pid for p in stack.processes(service)] != before, f"{service} was not restarted"
        producer.join()
        # Every window closes a few seconds after the last event (idle partitions advance the
        # watermark with the clock); poll until the results settle, then insist they are exact.
        assert wait_until_exact(job, PARTITIONS) >= 20
        # Consumer lag is observable: the group's committed offsets reach the end of every partition.
        wait_for_committed_offsets(s, PARTITIONS, timeout_s=90)


@pytest.mark.flink
@pytest.mark.parametrize(("component", "seed"), [("flink-taskmanager", 23), ("worker-pool", 29)])
def test_results_stay_exact_when_a_flink_process_is_killed(
        settings: Settings, unique_name: str, tmp_path: Path, component: str, seed: int) -> None:
    """SIGKILL mid-stream of the TaskManager, or of the Python worker pool (its workers die with
    it): the tasks fail, and once the stack has brought the process back Flink restores the job
    from its last checkpoint — the source re-reads from the checkpointed offsets, dedup and window
    state come back with it, and the sinks' idempotent upserts absorb what is emitted again."""
    stack = Stack.from_settings()
    with private_job(settings, unique_name, PARTITIONS) as s, \
            live_job("flink", s, tmp_path / "job.log") as job:
        assert job.flink is not None
        producer = LiveProducer(s, RATE * SECONDS, RATE, seed=seed).start()
        _wait_for_checkpoints(job.flink.rest, job.flink.job_id, 2)
        (victim,) = stack.processes(component)
        os.kill(victim.pid, signal.SIGKILL)
        _wait_for_failure(job.flink.rest, job.flink.job_id)  # the JobManager noticed: tasks failed
        stack.up([component], log=False)
        job.flink.rest.wait_until_tasks_running(job.flink.job_id, 180)
        producer.join()
        assert wait_until_exact(job, PARTITIONS, timeout_s=240) >= 20
        wait_for_committed_offsets(s, PARTITIONS, timeout_s=90)
        assert job.flink.rest.checkpoints(job.flink.job_id).completed >= 2


def _wait_for_failure(rest: FlinkRest, job_id: str, timeout_s: float = 90) -> None:
    """Until the job's exception history shows the fault (a task failed and the job restarts)."""
    deadline = time.monotonic() + timeout_s
    while rest.root_exception(job_id) is None:
        assert time.monotonic() < deadline, f"the job did not notice the fault within {timeout_s} s"
        time.sleep(0.5)


def _wait_for_checkpoints(rest: FlinkRest, job_id: str, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while rest.checkpoints(job_id).completed < count:
        assert time.monotonic() < deadline, f"fewer than {count} checkpoints after {timeout_s} s"
        time.sleep(1)
