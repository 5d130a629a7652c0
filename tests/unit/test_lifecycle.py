"""The lifecycle's shared parts without a cluster: the state-compatibility check on real Beam job
graphs, the catalogue's retention and audit trail, the actions' checks and records against a
recording backend, and the SLO watch's decisions on scripted signals. The backends themselves run
against the real local Flink (tests/integration/test_lifecycle_local.py) and a fake Kubernetes API
server (tests/unit/test_lifecycle_kubernetes.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from pipelines.lifecycle import compat
from pipelines.lifecycle.backend import LifecycleError
from pipelines.lifecycle.catalogue import Deployment, LifecycleStore
from pipelines.lifecycle.model import JobStatus, Release, SavepointKind, SavepointRecord, Versions
from pipelines.lifecycle.service import Lifecycle
from pipelines.lifecycle.watch import SloWatch, Thresholds, breaches, job_probe

# --- compat: stateful operators and their Flink UIDs -------------------------------------------------
_COUNT = beam.DoFn.StateParam(ReadModifyWriteStateSpec("count", VarIntCoder()))
_OTHER = beam.DoFn.StateParam(ReadModifyWriteStateSpec("other", VarIntCoder()))


class _Count(beam.DoFn):
    def process(self, kv: Any, count: Any = _COUNT) -> Any:
        yield kv


class _Other(beam.DoFn):
    def process(self, kv: Any, other: Any = _OTHER) -> Any:
        yield kv


def _graph(before: str = "KeyByShard", stateful: str = "CountPerKey", gbk: str = "GroupWindows",
           cells: type[beam.DoFn] = _Count) -> compat.StatefulSteps:
    p = beam.Pipeline()
    keyed = p | "Start" >> beam.Impulse() | before >> beam.Map(lambda x: (len(x), x))
    _ = keyed | stateful >> beam.ParDo(cells())
    _ = keyed | gbk >> beam.GroupByKey()
    return compat.stateful_steps(p.to_runner_api())


def test_stateful_steps_are_keyed_by_the_uids_flink_gives_them() -> None:
    steps = _graph()
    # A GroupByKey's UID is its label; a stateful ParDo's is its stage's: its input PCollection's
    # unique name (Beam Python: len(producer label) + label + "." + tag) and the environment URN.
    assert steps["GroupWindows"] == "GroupWindows"
    pardo = [uid for uid in steps if uid != "GroupWindows"]
    assert len(pardo) == 1 and pardo[0].startswith("10KeyByShard.None/beam:env:"), steps
    assert steps[pardo[0]] == "CountPerKey [count]"


def test_renaming_a_stateful_step_or_the_step_before_it_orphans_state() -> None:
    released = _graph()
    assert compat.orphaned(released, _graph()) == []
    assert compat.orphaned(released, {**_graph(), "NewStep": "NewStep"}) == []  # new state is fine
    renamed_gbk = compat.orphaned(released, _graph(gbk="GroupWindowsV2"))
    assert len(renamed_gbk) == 1 and renamed_gbk[0].startswith("GroupWindows: no operator")
    # The stateful ParDo's UID comes from the step before it, not from its own label.
    assert compat.orphaned(released, _graph(stateful="Renamed")) == []
    assert len(compat.orphaned(released, _graph(before="KeyByShardV2"))) == 1


def test_a_state_cell_that_disappears_is_orphaned_too() -> None:
    problems = compat.orphaned(_graph(), _graph(cells=_Other))
    assert len(problems) == 1 and "state cells count" in problems[0]


def test_the_released_state_lock_matches_the_uid_scheme() -> None:
    """The committed lock names the job's stateful operators as compat computes them (the whole
    check against the job's real graph runs in tests/integration/test_lifecycle_local.py)."""
    lock = compat.load(Path(compat.__file__).with_name("released-state.json"))
    assert any(uid.endswith("/GroupByKey") for uid in lock)
    assert any("DropSeenIdsPerShard" in held and "late_gate" in held for held in lock.values())
    assert any("KafkaUnboundedSource" in uid for uid in lock)


# --- the catalogue --------------------------------------------------------------------------------------
V = Versions(flink="1.19", beam_runner="2.62.0", beam_sdk="2.77.0")


def _record(path: str, release: str = "v1", at: int = 0, kind: SavepointKind = "manual") -> SavepointRecord:
    return SavepointRecord(path=path, release=release, versions=V, kind=kind, taken_at_ms=at)


def test_retention_keeps_the_newest_the_rollback_point_and_the_running_release(tmp_path: Path) -> None:
    store = LifecycleStore(tmp_path / "lc", retain=2)
    dirs = []
    for i in range(4):
        d = tmp_path / f"sp-{i}"
        d.mkdir()
        dirs.append(d)
    store.set_deployment(Deployment(release="v2", rollback_point=dirs[0].as_uri()))
    store.add_savepoint(_record(dirs[0].as_uri(), "v1", 0, "upgrade"))
    store.add_savepoint(_record(dirs[1].as_uri(), "v1", 1))
    store.add_savepoint(_record("s3://bucket/sp-remote", "v1", 2))
    forgotten = store.add_savepoint(_record(dirs[3].as_uri(), "v1", 3))
    assert [r.path for r in forgotten] == [dirs[1].as_uri()]
    assert [r.path for r in store.savepoints()] == ["file://" + str(dirs[3]), "s3://bucket/sp-remote",
                                                    dirs[0].as_uri()]
    assert not dirs[1].exists() and dirs[0].exists()  # a forgotten local savepoint is deleted
    store.add_savepoint(_record(dirs[2].as_uri(), "v2", 4))  # the running release's: pinned
    store.add_savepoint(_record("s3://bucket/a", "v1", 5))
    store.add_savepoint(_record("s3://bucket/b", "v1", 6))
    assert {r.path for r in store.savepoints()} >= {dirs[2].as_uri(), dirs[0].as_uri()}


def test_records_survive_a_round_trip_and_the_audit_is_append_only(tmp_path: Path) -> None:
    store = LifecycleStore(tmp_path)
    record = replace(_record("file:///sp", "v1", 7), kafka_offsets={"0": 12, "1": 3}, model_version="v4")
    store.add_savepoint(record)
    assert LifecycleStore(tmp_path).savepoints() == [record]
    store.audit("deploy", "local", "ok", release="v1")
    store.audit("upgrade", "local", "failed", error="boom")
    trail = LifecycleStore(tmp_path).audit_trail()
    assert [(a["action"], a["outcome"]) for a in trail] == [("deploy", "ok"), ("upgrade", "failed")]
    assert all(a["user"] and a["at_ms"] > 0 for a in trail)


# --- the actions -----------------------------------------------------------------------------------
class RecordingBackend:
    """Keeps one job, remembers every call; what the service decides is what is under test."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.job: tuple[str, str] | None = None  # (job id, release)
        self._n = 0
        self.fail_deploy_of: str | None = None

    def status(self) -> JobStatus:
        if self.job is None:
            return JobStatus(state="MISSING")
        return JobStatus(state="RUNNING", job_id=self.job[0], release=self.job[1])

    def deploy(self, release: Release, *, savepoint: str | None = None,
               allow_non_restored_state: bool = False) -> JobStatus:
        self.calls.append(("deploy", (release.name, savepoint, allow_non_restored_state)))
        if self.job is not None:
            raise LifecycleError("running")
        if release.name == self.fail_deploy_of:
            raise LifecycleError(f"{release.name} did not start")
        self._n += 1
        self.job = (f"job-{self._n}", release.name)
        return self.status()

    def savepoint(self, kind: SavepointKind, *, stop: bool = False) -> str:
        self.calls.append(("savepoint", (kind, stop)))
        if stop:
            self.job = None
        return f"file:///sp/{kind}-{len(self.calls)}"

    def upgrade(self, release: Release, *, allow_non_restored_state: bool = False) -> str:
        path = self.savepoint("upgrade", stop=True)
        self.deploy(release, savepoint=path, allow_non_restored_state=allow_non_restored_state)
        return path

    def rollback(self, release: Release, savepoint: str) -> JobStatus:
        self.cancel()
        return self.deploy(release, savepoint=savepoint)

    def cancel(self) -> None:
        self.calls.append(("cancel", None))
        self.job = None

    def offsets(self) -> dict[str, int]:
        return {"0": 5 * len(self.calls)}


STEPS = {"ReadEvents/Read": "ReadEvents/Read", "Agg/GroupByKey": "Agg/GroupByKey"}


@pytest.fixture
def lifecycle(tmp_path: Path) -> Lifecycle:
    return Lifecycle(RecordingBackend(), LifecycleStore(tmp_path), versions=V)


def test_deploy_upgrade_and_rollback_record_everything(lifecycle: Lifecycle) -> None:
    backend = lifecycle.backend
    assert isinstance(backend, RecordingBackend)
    lifecycle.deploy(Release("v1", stateful_steps=STEPS, model_version="m1"))
    manual = lifecycle.savepoint()
    assert (manual.release, manual.kind, manual.model_version, manual.versions) == ("v1", "manual", "m1", V)
    assert manual.kafka_offsets
    point = lifecycle.upgrade(Release("v2", stateful_steps=STEPS))
    assert (point.release, point.kind) == ("v1", "upgrade")
    assert lifecycle.store.deployment() == Deployment(release="v2", job_id="job-2", previous="v1",
                                                      rollback_point=point.path)
    assert lifecycle.status().release == "v2"
    lifecycle.rollback(reason="test")
    assert backend.job is not None and backend.job[1] == "v1"
    assert backend.calls[-1] == ("deploy", ("v1", point.path, False))
    actions = [(a["action"], a["outcome"]) for a in lifecycle.store.audit_trail()]
    assert actions == [("deploy", "ok"), ("savepoint", "ok"), ("upgrade", "ok"), ("rollback", "ok")]
    assert lifecycle.store.audit_trail()[-1]["reason"] == "test"


def test_an_upgrade_that_would_orphan_state_is_refused_before_anything_happens(lifecycle: Lifecycle) -> None:
    backend = lifecycle.backend
    assert isinstance(backend, RecordingBackend)
    lifecycle.deploy(Release("v1", stateful_steps=STEPS))
    calls = len(backend.calls)
    renamed = {"ReadEvents/Read": "ReadEvents/Read", "Agg2/GroupByKey": "Agg2/GroupByKey"}
    with pytest.raises(LifecycleError, match="would orphan state of v1") as info:
        lifecycle.upgrade(Release("v2", stateful_steps=renamed))
    assert "Agg/GroupByKey" in str(info.value)
    assert len(backend.calls) == calls  # nothing was submitted, nothing stopped
    assert lifecycle.store.audit_trail()[-1]["outcome"] == "failed"
    lifecycle.upgrade(Release("v2", stateful_steps=renamed), allow_non_restored_state=True)


def test_a_savepoint_of_other_versions_is_refused_with_a_clear_message(lifecycle: Lifecycle) -> None:
    backend = lifecycle.backend
    assert isinstance(backend, RecordingBackend)
    lifecycle.deploy(Release("v1", stateful_steps=STEPS))
    old = replace(lifecycle.stop(), path="file:///sp/old",
                  versions=Versions(flink="1.18", beam_runner="2.61.0", beam_sdk="2.77.0"))
    lifecycle.store.add_savepoint(old)
    calls = len(backend.calls)
    with pytest.raises(LifecycleError, match=r"other versions \(flink 1.19 != 1.18; beam runner "):
        lifecycle.deploy(Release("v1b", stateful_steps=STEPS), savepoint="file:///sp/old")
    with pytest.raises(LifecycleError, match="other versions"):
        lifecycle.rollback("file:///sp/old")
    assert len(backend.calls) == calls


def test_rollback_needs_a_rollback_point_and_a_catalogued_savepoint(lifecycle: Lifecycle) -> None:
    lifecycle.deploy(Release("v1", stateful_steps=STEPS))
    with pytest.raises(LifecycleError, match="no rollback point"):
        lifecycle.rollback()
    with pytest.raises(LifecycleError, match="not in the savepoint catalogue"):
        lifecycle.rollback("file:///nowhere")


def test_a_failed_deploy_is_audited_and_the_deployment_unchanged(lifecycle: Lifecycle) -> None:
    backend = lifecycle.backend
    assert isinstance(backend, RecordingBackend)
    backend.fail_deploy_of = "v1"
    with pytest.raises(LifecycleError):
        lifecycle.deploy(Release("v1"))
    assert lifecycle.store.deployment() == Deployment()
    last = lifecycle.store.audit_trail()[-1]
    assert (last["action"], last["outcome"], last["error"]) == ("deploy", "failed", "v1 did not start")


# --- the SLO watch ----------------------------------------------------------------------------------
HEALTHY = {"running": 1.0, "checkpoint_age_s": 5.0, "failed_checkpoints": 0.0, "consumer_lag": 10.0,
           "dead_letter_ratio": 0.03, "pane_age_s": 2.0, "restarts": 0.0, "consumed": 100.0}
T = Thresholds(duration_s=100, interval_s=10, grace_s=20, breaches_to_rollback=2)


@pytest.mark.parametrize(("signal", "value", "expected"), [
    ("running", 0.0, "job not running"),
    ("checkpoint_age_s", 500.0, "checkpoint_age_s 500 > 120"),
    ("failed_checkpoints", 3.0, "failed_checkpoints 3 > 2"),
    ("consumer_lag", 2e5, "consumer_lag 200000 > 100000"),
    ("dead_letter_ratio", 1.0, "dead_letter_ratio 1 > 0.2"),
    ("pane_age_s", 300.0, "pane_age_s 300 > 120"),
    ("restarts", 1.0, "restarts 1 > 0"),
    ("consumer_lag", None, "consumer_lag unknown"),
])
def test_each_signal_breaches_its_threshold(signal: str, value: float | None, expected: str) -> None:
    assert breaches(HEALTHY, T, in_grace=False) == []
    assert breaches({**HEALTHY, signal: value}, T, in_grace=False) == [expected]


def test_the_grace_excuses_everything_but_a_job_that_is_not_running() -> None:
    assert breaches({**HEALTHY, "checkpoint_age_s": None, "dead_letter_ratio": 1.0}, T, in_grace=True) == []
    assert breaches({**HEALTHY, "running": 0.0}, T, in_grace=True) == ["job not running"]
    # No new panes are due while no records arrive.
    assert breaches({**HEALTHY, "consumed": 0.0, "pane_age_s": 999.0}, T, in_grace=False) == []


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _watch(lifecycle: Lifecycle, script: list[dict[str, float | None] | Exception]) -> SloWatch:
    feed = iter(script)

    def scripted() -> dict[str, float | None]:
        item = next(feed)
        if isinstance(item, Exception):
            raise item
        return item

    clock = _Clock()
    return SloWatch(lifecycle, [scripted], T, clock=clock, sleep=clock.sleep)


def _upgraded(lifecycle: Lifecycle) -> SavepointRecord:
    lifecycle.deploy(Release("v1", stateful_steps=STEPS))
    return lifecycle.upgrade(Release("v2", stateful_steps=STEPS))


def test_a_persistent_breach_rolls_back_to_the_pre_upgrade_savepoint(lifecycle: Lifecycle) -> None:
    point = _upgraded(lifecycle)
    bad = {**HEALTHY, "dead_letter_ratio": 1.0}
    verdict = _watch(lifecycle, [HEALTHY, HEALTHY, HEALTHY, bad, bad]).run()
    assert verdict.rolled_back and verdict.rolled_back_to == point.path
    assert verdict.breaches == ["dead_letter_ratio 1 > 0.2"] and verdict.samples == 5
    assert lifecycle.status().release == "v1"
    trail = lifecycle.store.audit_trail()
    assert [a["action"] for a in trail[-2:]] == ["watch", "rollback"]
    assert trail[-1]["reason"] == "SLO breach: dead_letter_ratio 1 > 0.2"
    metrics = (lifecycle.store.root / "lifecycle.prom").read_text()
    assert "sa_lifecycle_slo_rollbacks_total 1.0" in metrics
    assert 'sa_lifecycle_watch_rolled_back{release="v2"} 1.0' in metrics


def test_one_bad_sample_is_noise_and_a_healthy_release_is_kept(lifecycle: Lifecycle) -> None:
    _upgraded(lifecycle)
    bad = {**HEALTHY, "consumer_lag": 1e9}
    verdict = _watch(lifecycle, [HEALTHY, HEALTHY, bad, HEALTHY, bad, *[HEALTHY] * 10]).run()
    assert not verdict.rolled_back and verdict.samples == 11  # 0, 10, ..., 100 s
    assert lifecycle.status().release == "v2"
    assert lifecycle.store.audit_trail()[-1]["outcome"] == "healthy"
    metrics = (lifecycle.store.root / "lifecycle.prom").read_text()
    assert 'sa_lifecycle_watch_rolled_back{release="v2"} 0.0' in metrics


def test_a_probe_that_stops_answering_is_a_breach_after_the_grace(lifecycle: Lifecycle) -> None:
    _upgraded(lifecycle)
    down = ConnectionError("broker unreachable")
    verdict = _watch(lifecycle, [HEALTHY, HEALTHY, HEALTHY, down, down]).run()
    assert verdict.rolled_back
    assert "job state unknown" in verdict.breaches and "consumer_lag unknown" in verdict.breaches


def test_thresholds_come_from_the_command_line() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    Thresholds.add_arguments(parser)
    args = parser.parse_args(["--duration-s", "30", "--max-dead-letter-ratio", "0.5", "--max-restarts", "2"])
    t = Thresholds.from_args(args)
    assert (t.duration_s, t.max_dead_letter_ratio, t.max_restarts, t.grace_s) == (30.0, 0.5, 2, 60.0)
    assert json.dumps(t.__dict__)


@pytest.mark.parametrize(("last_checkpoint_s_ago", "started_s_ago", "expected_age_s"), [
    (5, 3600, 5),        # the newest completed checkpoint decides
    (None, 20, 20),      # none yet (just started or restored): as old as the job
    (None, None, None),  # nothing known: unknown, which counts after the grace
])
def test_the_checkpoint_age_of_a_job_without_a_checkpoint_yet_is_its_own_age(
        last_checkpoint_s_ago: float | None, started_s_ago: float | None,
        expected_age_s: float | None) -> None:
    """A release restored from its savepoint has no checkpoint of its own for a checkpoint interval
    or more; reading that as "unknown" made the watch roll back a healthy upgrade (seen in CI)."""
    import time
    from types import SimpleNamespace

    now_ms = time.time() * 1000

    def ago(s: float | None) -> int | None:
        return None if s is None else int(now_ms - s * 1000)

    status = JobStatus(state="RUNNING", last_checkpoint_ms=ago(last_checkpoint_s_ago),
                       started_ms=ago(started_s_ago))
    probe = job_probe(SimpleNamespace(backend=SimpleNamespace(status=lambda: status)))
    age = probe()["checkpoint_age_s"]
    if expected_age_s is None:
        assert age is None
    else:
        assert age is not None and abs(age - expected_age_s) < 2
