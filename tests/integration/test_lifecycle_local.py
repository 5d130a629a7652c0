"""The job lifecycle on the real local Flink 1.19 (pipelines/lifecycle, local backend): releases built
from this checkout as job jars, deployed, savepointed, upgraded and rolled back — by hand and by the
SLO watch — each ending with the exactness check of tests/integration/pipeline_support.py over
everything produced: nothing lost, nothing counted twice.

Also here, because it builds the real job graph (the Java Kafka read needs the stack's expansion
service): the state-compatibility check CI relies on, against the committed released-state.json.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from devstack.sandbox import private_job
from pipelines.flink_job import FlinkJobResult
from pipelines.flink_rest import FlinkRest
from pipelines.lifecycle.__main__ import build_release
from pipelines.lifecycle.catalogue import LifecycleStore
from pipelines.lifecycle.local import LocalFlinkBackend, committed_offsets
from pipelines.lifecycle.model import Release
from pipelines.lifecycle.service import Lifecycle
from pipelines.lifecycle.watch import SloWatch, Thresholds, default_probes
from streaming_analytics.db.migrate import migrate
from streaming_analytics.events import FEATURE_NAMES
from streaming_analytics.settings import Settings
from tests.integration.live_support import LiveJob, LiveProducer, job_args, wait_until_exact
from transforms.scoring import INFERENCE_FAILED_REASON

PARTITIONS = 3
RATE = 200


def test_this_checkout_keeps_every_state_of_the_last_release(settings: Settings) -> None:
    """What CI checks: the job graph's stateful operators keep the Flink UIDs (and state cells)
    recorded for the last release, or `check-state` fails naming what would be orphaned."""
    result = subprocess.run([sys.executable, "-m", "pipelines.lifecycle", "check-state"],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "keep every state of the last release" in result.stdout


@pytest.fixture
def job(settings: Settings, unique_name: str) -> Iterator[Settings]:
    with private_job(settings, unique_name, PARTITIONS) as s:
        migrate(s.postgres_dsn, schema=s.topic_events)  # a job jar never migrates
        try:
            yield s
        finally:  # whatever the test left running on the shared cluster
            _backend(s, Path("/nonexistent")).cancel()


def _backend(s: Settings, root: Path) -> LocalFlinkBackend:
    return LocalFlinkBackend(
        FlinkRest(s.flink_rest_url), root / "savepoints", job_name=s.topic_events,
        offsets=lambda: committed_offsets(s.kafka_bootstrap, s.consumer_group, s.topic_events))


def _lifecycle(s: Settings, root: Path) -> Lifecycle:
    return Lifecycle(_backend(s, root), LifecycleStore(root / "lifecycle", retain=5))


def _live(lifecycle: Lifecycle, s: Settings, log: Path) -> LiveJob:
    job_id = lifecycle.status().job_id
    assert job_id is not None
    return LiveJob(s, "flink", log, flink=FlinkJobResult(FlinkRest(s.flink_rest_url), job_id))


def _release(lifecycle: Lifecycle, s: Settings, name: str, *extra: str) -> Release:
    # Kafka from the committed offsets: a restored job reads on from its savepoint's offsets anyway.
    return build_release(s, lifecycle.store, name, job_args("flink", s, "--kafka_start=earliest", *extra))


def _until_checkpointed(lifecycle: Lifecycle, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while lifecycle.status().checkpoints_completed < 1:
        assert time.monotonic() < deadline, "no checkpoint completed"
        time.sleep(1)


def _until_committed_beyond(lifecycle: Lifecycle, total: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(lifecycle.backend.offsets().values()) <= total:
        assert time.monotonic() < deadline, f"the job committed no offset beyond {total}"
        time.sleep(1)


def _unscorable_model(directory: Path) -> Path:
    """A model version that cannot score our events (trained for one feature more): what a
    release with the wrong model ships."""
    import keras

    directory.mkdir(parents=True)
    model = keras.Sequential([keras.Input(shape=(len(FEATURE_NAMES) + 1,)),
                              keras.layers.Dense(1, activation="sigmoid")])
    path = directory / "anomaly-v2.keras"
    model.save(path)
    return path


@pytest.mark.flink
@pytest.mark.slow
def test_a_faulty_upgrade_is_rolled_back_by_the_slo_watch_and_nothing_is_lost(
        job: Settings, tmp_path: Path) -> None:
    """v1 runs and aggregates a live stream; `upgrade` to v2, whose model cannot score a single
    event, takes a savepoint first; the watch sees the dead-letter ratio breach and rolls back to
    that savepoint by itself; v1 reprocesses what v2 read. At the end every window equals the
    independent computation over everything produced, and every anomalous event has its alert —
    including the events that arrived while v2 ran. v2's dead letters stay, as the record of what
    it did (reason inference_failed)."""
    s = job
    lifecycle = _lifecycle(s, tmp_path)
    v1 = _release(lifecycle, s, "v1")
    v2 = _release(lifecycle, s, "v2", f"--model_uri={_unscorable_model(tmp_path / 'bad-model')}")
    assert v2.stateful_steps == v1.stateful_steps  # the same graph: a model change keeps all state
    lifecycle.deploy(v1)
    LiveProducer(s, RATE * 6, RATE, seed=61).start().join()
    _until_checkpointed(lifecycle)  # an upgrade of a job that has committed offsets

    point = lifecycle.upgrade(v2)
    assert (point.release, point.kind) == ("v1", "upgrade") and point.kafka_offsets
    during = LiveProducer(s, RATE * 20, RATE, seed=67).start()  # v2 reads these, then v1 again
    thresholds = Thresholds(duration_s=240, interval_s=3, grace_s=10, breaches_to_rollback=2,
                            max_dead_letter_ratio=0.2, max_checkpoint_age_s=600, max_pane_age_s=600,
                            max_restarts=5, max_consumer_lag=10**9)
    verdict = SloWatch(lifecycle, default_probes(lifecycle, s, s.topic_events), thresholds).run()
    during.join()
    assert verdict.rolled_back, verdict
    assert any(b.startswith("dead_letter_ratio") for b in verdict.breaches), verdict.breaches
    assert verdict.rolled_back_to == point.path
    assert lifecycle.status().release == "v1"
    LiveProducer(s, RATE * 4, RATE, seed=71).start().join()

    assert wait_until_exact(_live(lifecycle, s, tmp_path / "job.log"), PARTITIONS,
                            excused_reasons=frozenset({INFERENCE_FAILED_REASON})) >= 20
    with psycopg2.connect(s.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {s.topic_events}.dead_letters WHERE reason_code = %s",
                    (INFERENCE_FAILED_REASON,))
        row = cur.fetchone()
    assert row is not None and row[0] > 0  # v2 did read and fail
    trail = [(a["action"], a["outcome"]) for a in lifecycle.store.audit_trail()]
    assert trail == [("deploy", "ok"), ("upgrade", "ok"), ("watch", "breach"), ("rollback", "ok")]


@pytest.mark.flink
@pytest.mark.slow
def test_a_manual_rollback_to_an_older_savepoint_is_exact(job: Settings, tmp_path: Path) -> None:
    """Two savepoints while v1 runs; `rollback --savepoint` to the older one restarts v1 from it:
    everything after it is read again, and the results are exact."""
    s = job
    lifecycle = _lifecycle(s, tmp_path)
    lifecycle.deploy(_release(lifecycle, s, "v1"))
    LiveProducer(s, RATE * 4, RATE, seed=73).start().join()
    _until_checkpointed(lifecycle)
    older = lifecycle.savepoint()
    LiveProducer(s, RATE * 4, RATE, seed=79).start().join()
    # The catalogue records the group's committed offsets, which the job commits when a checkpoint
    # completes: wait until it has committed some of the second batch before the newer savepoint.
    _until_committed_beyond(lifecycle, sum(older.kafka_offsets.values()))
    newer = lifecycle.savepoint()
    assert [r.path for r in lifecycle.savepoints()] == [newer.path, older.path]
    assert sum(newer.kafka_offsets.values()) > sum(older.kafka_offsets.values()) > 0
    lifecycle.rollback(older.path)
    LiveProducer(s, RATE * 4, RATE, seed=83).start().join()
    assert wait_until_exact(_live(lifecycle, s, tmp_path / "job.log"), PARTITIONS) >= 20
