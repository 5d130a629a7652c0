"""The lifecycle backend of the local Flink session cluster: its REST API (pipelines/flink_rest.py)
and the portable job jar of each release (pipelines/job_jar.py, ``make job-jar``).

The job is found on the cluster by its name (the release jar's ``--job_name``), or as the one job
that is not finished when no name is given. Savepoints are canonical and go to ``savepoint_dir``;
"stop" is a savepoint that cancels the job atomically (Flink's ``stop`` would drain a final
watermark through Beam's source wrapper and fire every open window early: pipelines/flink_rest.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pipelines.flink_job import deploy_jar
from pipelines.flink_rest import TERMINAL_STATES, FlinkError, FlinkRest
from pipelines.lifecycle.backend import LifecycleError
from pipelines.lifecycle.model import JobStatus, Release, SavepointKind
from pipelines.lifecycle.offsets import read_group_offsets

_LOG = logging.getLogger(__name__)


class LocalFlinkBackend:
    """``LocalFlinkBackend(FlinkRest(url), savepoint_dir)``; ``offsets`` reads the consumer group's
    committed offsets (see :func:`committed_offsets`), ``timeout_s`` bounds each wait."""

    name = "local"

    def __init__(self, rest: FlinkRest, savepoint_dir: Path, *, job_name: str | None = None,
                 offsets: Callable[[], dict[str, int]] | None = None, timeout_s: float = 300.0) -> None:
        self.rest = rest
        self.savepoint_dir = savepoint_dir.resolve()
        self.job_name = job_name
        self._offsets = offsets
        self.timeout_s = timeout_s
        self._released: dict[str, str] = {}  # job id -> release, for jobs this backend started

    def _job(self) -> dict[str, str] | None:
        """The job of ours that is not finished, or ``None``."""
        try:
            jobs = self.rest.jobs()
        except FlinkError as exc:
            raise LifecycleError(f"cannot reach Flink at {self.rest.url}: {exc}") from exc
        live = [j for j in jobs if j.get("state") not in TERMINAL_STATES
                and (self.job_name is None or j.get("name") == self.job_name)]
        if len(live) > 1:
            names = ", ".join(f"{j['jid']} ({j.get('name')})" for j in live)
            raise LifecycleError(f"several jobs run on {self.rest.url}: {names}; pass --job-name")
        return live[0] if live else None

    def _running_job_id(self) -> str:
        job = self._job()
        if job is None:
            raise LifecycleError(f"no job{f' named {self.job_name}' if self.job_name else ''} runs on "
                                 f"{self.rest.url}: deploy one first")
        return str(job["jid"])

    def status(self) -> JobStatus:
        job = self._job()
        if job is None:
            return JobStatus(state="MISSING")
        job_id = str(job["jid"])
        counts = self.rest.checkpoints(job_id)
        state = str(job["state"])
        detail = self.rest.root_exception(job_id) if state in {"FAILING", "RESTARTING"} else None
        return JobStatus(state=state, job_id=job_id, release=self._released.get(job_id),
                         checkpoints_completed=counts.completed, checkpoints_failed=counts.failed,
                         last_checkpoint_ms=counts.latest.end_ms if counts.latest else None,
                         started_ms=int(job["start-time"]) if job.get("start-time") else None,
                         restarts=self.rest.restarts(job_id), detail=detail)

    def deploy(self, release: Release, *, savepoint: str | None = None,
               allow_non_restored_state: bool = False) -> JobStatus:
        if release.jar is None or not Path(release.jar).is_file():
            raise LifecycleError(f"release {release.name} has no job jar ({release.jar}): build one "
                                 "with `make job-jar` or `python -m pipelines.lifecycle build`")
        running = self._job()
        if running is not None:
            raise LifecycleError(f"job {running['jid']} is {running['state']}: upgrade, roll back or "
                                 "stop it first")
        try:
            result = deploy_jar(self.rest, Path(release.jar), savepoint=savepoint,
                                allow_non_restored_state=allow_non_restored_state,
                                timeout_s=self.timeout_s)
        except FlinkError as exc:
            raise LifecycleError(f"release {release.name} did not start: {exc}") from exc
        self._released[result.job_id] = release.name
        return self.status()

    def savepoint(self, kind: SavepointKind, *, stop: bool = False) -> str:
        job_id = self._running_job_id()
        target = (self.savepoint_dir / kind).as_uri()
        try:
            path = self.rest.savepoint(job_id, target, cancel_job=stop, timeout_s=self.timeout_s)
        except FlinkError as exc:
            raise LifecycleError(f"the {kind} savepoint of job {job_id} failed: {exc}") from exc
        _LOG.info("%s savepoint of job %s: %s", kind, job_id, path)
        return path

    def upgrade(self, release: Release, *, allow_non_restored_state: bool = False) -> str:
        path = self.savepoint("upgrade", stop=True)
        self.deploy(release, savepoint=path, allow_non_restored_state=allow_non_restored_state)
        return path

    def rollback(self, release: Release, savepoint: str) -> JobStatus:
        self.cancel()
        return self.deploy(release, savepoint=savepoint)

    def cancel(self) -> None:
        job = self._job()
        if job is None:
            return
        job_id = str(job["jid"])
        self.rest.cancel(job_id)
        self.rest.wait_for_state(job_id, {"CANCELED", "FAILED", "FINISHED"}, self.timeout_s,
                                 fail_on=frozenset())

    def offsets(self) -> dict[str, int]:
        return self._offsets() if self._offsets is not None else {}


def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[str, int]:
    """The consumer group's committed offsets of ``topic`` (``partition -> next offset``): where a
    job restored from a savepoint taken now would go on reading (the Java Kafka read commits on
    every completed checkpoint, savepoints included)."""
    committed = read_group_offsets(bootstrap, group_id, topic).committed
    return {str(p): offset for p, offset in committed.items()}
