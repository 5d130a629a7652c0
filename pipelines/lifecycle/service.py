"""The lifecycle actions on-call engineers run — deploy, savepoint, upgrade, rollback, stop — on
either backend, with what every one of them must do the same way: check a savepoint's versions and
the new release's stateful steps *before* anything is submitted, record every savepoint in the
catalogue (release, model, versions, time, Kafka offsets), remember the rollback point of an
upgrade, and leave an audit record of each action, failed ones included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipelines.lifecycle import compat
from pipelines.lifecycle.backend import Backend, LifecycleError
from pipelines.lifecycle.catalogue import Deployment, LifecycleStore
from pipelines.lifecycle.model import JobStatus, Release, SavepointKind, SavepointRecord, Versions, now_ms

_LOG = logging.getLogger(__name__)


class Lifecycle:
    """The actions on one job: ``Lifecycle(backend, store)``. ``versions``: what this build runs
    (a savepoint of other versions is refused)."""

    def __init__(self, backend: Backend, store: LifecycleStore, versions: Versions | None = None) -> None:
        self.backend = backend
        self.store = store
        self.versions = versions or Versions.of_this_build()

    # --- reads ---------------------------------------------------------------------------------
    def status(self) -> JobStatus:
        status = self.backend.status()
        if status.release is None and status.state != "MISSING":
            status = JobStatus(**{**status.__dict__, "release": self.store.deployment().release})
        return status

    def savepoints(self) -> list[SavepointRecord]:
        return self.store.savepoints()

    # --- actions -------------------------------------------------------------------------------
    def deploy(self, release: Release, *, savepoint: str | None = None,
               allow_non_restored_state: bool = False) -> JobStatus:
        """Start ``release`` (from ``savepoint``: a catalogue path, checked first)."""
        with self._audited("deploy", release=release.name, savepoint=savepoint):
            if savepoint is not None:
                self.check_restorable(release, savepoint, allow_non_restored_state)
            status = self.backend.deploy(release, savepoint=savepoint,
                                         allow_non_restored_state=allow_non_restored_state)
            self.store.add_release(release)
            self.store.set_deployment(Deployment(release=release.name, job_id=status.job_id))
            return status

    def savepoint(self, kind: SavepointKind = "manual") -> SavepointRecord:
        """A savepoint of the running job, recorded."""
        with self._audited("savepoint", kind=kind) as audit:
            record = self._take(kind, stop=False)
            audit["savepoint"] = record.path
            return record

    def stop(self) -> SavepointRecord:
        """End the job with a savepoint (no event is processed after it); the next ``deploy
        --savepoint`` of that path resumes exactly there."""
        with self._audited("stop") as audit:
            record = self._take("stop", stop=True)
            audit["savepoint"] = record.path
            self.store.set_deployment(Deployment(previous=record.release, rollback_point=record.path))
            return record

    def upgrade(self, release: Release, *, allow_non_restored_state: bool = False) -> SavepointRecord:
        """Stop the running release with a savepoint and start ``release`` from it; that savepoint
        becomes the rollback point. Refused before anything happens when ``release`` would orphan
        state of the running one (unless ``allow_non_restored_state``)."""
        current = self._current_release()
        with self._audited("upgrade", release=release.name, previous=current.name) as audit:
            problems = compat.orphaned(current.stateful_steps, release.stateful_steps)
            if problems and not allow_non_restored_state:
                raise LifecycleError(
                    f"release {release.name} would orphan state of {current.name}:\n  "
                    + "\n  ".join(problems)
                    + "\nkeep the step labels, or pass --allow-non-restored-state to drop that state")
            offsets = self._offsets()
            path = self.backend.upgrade(release, allow_non_restored_state=allow_non_restored_state)
            record = self._record(path, "upgrade", current, offsets)
            audit["savepoint"] = path
            self.store.add_release(release)
            self.store.set_deployment(Deployment(release=release.name, job_id=self.backend.status().job_id,
                                                 previous=current.name, rollback_point=path))
            return record

    def rollback(self, savepoint: str | None = None, *, reason: str | None = None) -> JobStatus:
        """Start the release that took ``savepoint`` (default: the last upgrade's rollback point)
        from it, ending the job that runs now without a savepoint: its state is what is undone."""
        deployment = self.store.deployment()
        path = savepoint or deployment.rollback_point
        with self._audited("rollback", savepoint=path, reason=reason,
                           rolled_back=deployment.release) as _:
            if path is None:
                raise LifecycleError("no rollback point: no upgrade was recorded; name a savepoint "
                                     "from `savepoints`")
            record = self.store.find(path)
            if record is None:
                raise LifecycleError(f"{path} is not in the savepoint catalogue (`savepoints` lists it)")
            release = self.store.release(record.release)
            if release is None:
                raise LifecycleError(f"release {record.release} that took {path} is not recorded")
            self.check_restorable(release, path, allow_non_restored_state=False)
            status = self.backend.rollback(release, path)
            self.store.set_deployment(Deployment(release=release.name, job_id=status.job_id))
            return status

    # --- checks --------------------------------------------------------------------------------
    def check_restorable(self, release: Release, path: str, allow_non_restored_state: bool) -> None:
        """Refuse (before anything is submitted) a savepoint of other Beam/Flink versions, or one
        whose state ``release`` would orphan."""
        record = self.store.find(path)
        if record is None:
            _LOG.warning("savepoint %s is not in the catalogue: its versions cannot be checked", path)
            return
        differences = self.versions.differences(record.versions)
        if differences:
            raise LifecycleError(
                f"savepoint {path} was taken by other versions ({'; '.join(differences)}, this build "
                f"first): Flink and Beam's runner do not promise to read each other's state. Restore "
                f"it with the release that took it ({record.release}), or start without it")
        taken_by = self.store.release(record.release)
        if taken_by is not None and not allow_non_restored_state:
            problems = compat.orphaned(taken_by.stateful_steps, release.stateful_steps)
            if problems:
                raise LifecycleError(f"release {release.name} would orphan state in {path}:\n  "
                                     + "\n  ".join(problems))

    # --- plumbing ------------------------------------------------------------------------------
    def _current_release(self) -> Release:
        name = self.store.deployment().release
        release = None if name is None else self.store.release(name)
        if release is None:
            raise LifecycleError("no release of ours is recorded as running: deploy one first")
        return release

    def _take(self, kind: SavepointKind, *, stop: bool) -> SavepointRecord:
        current = self._current_release()
        before = self._offsets()
        path = self.backend.savepoint(kind, stop=stop)
        return self._record(path, kind, current, self._offsets_after(before))

    def _offsets(self) -> dict[str, int]:
        """The committed offsets for the record, or none: Kafka out of the CLI's reach must not
        stop a savepoint (the savepoint holds its offsets either way)."""
        try:
            return self.backend.offsets()
        except Exception as exc:  # noqa: BLE001 - any failure to read them only leaves them out
            _LOG.warning("the savepoint record goes without Kafka offsets: %s", exc)
            return {}

    def _offsets_after(self, before: dict[str, int], wait_s: float = 5.0) -> dict[str, int]:
        """The offsets committed once a savepoint completed: the Kafka read commits a completed
        checkpoint's offsets (a savepoint's too) asynchronously, so wait a moment for them to move."""
        deadline = time.monotonic() + wait_s
        while True:
            offsets = self._offsets()
            if (offsets and offsets != before) or time.monotonic() > deadline:
                return offsets or before
            time.sleep(0.25)

    def _record(self, path: str, kind: SavepointKind, release: Release,
                offsets: dict[str, int]) -> SavepointRecord:
        record = SavepointRecord(path=path, release=release.name, versions=self.versions, kind=kind,
                                 taken_at_ms=now_ms(), job_id=self.store.deployment().job_id,
                                 model_version=release.model_version, kafka_offsets=offsets)
        for forgotten in self.store.add_savepoint(record):
            _LOG.info("retention: forgot savepoint %s (%s)", forgotten.path, forgotten.kind)
        return record

    @contextmanager
    def _audited(self, action: str, **detail: Any) -> Iterator[dict[str, Any]]:
        """Audit ``action`` however it ends; the body may add details to the yielded dict."""
        extra: dict[str, Any] = {}
        try:
            yield extra
        except Exception as exc:
            self.store.audit(action, self.backend.name, "failed", error=str(exc), **detail, **extra)
            raise
        self.store.audit(action, self.backend.name, "ok", **detail, **extra)

