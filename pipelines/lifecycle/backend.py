"""The one interface both lifecycle backends implement: the local Flink session cluster through its
REST API (pipelines/lifecycle/local.py) and the FlinkDeployment through the Kubernetes API
(pipelines/lifecycle/kubernetes.py). The CLI, the catalogue and the SLO watch only use this.

What a backend does is the part that differs between the two worlds — how a release is started,
how a savepoint is taken, how the job is stopped. What is the same everywhere (recording savepoints
in the catalogue, the version and state checks before a restore, the audit trail, the watch) lives
in pipelines/lifecycle/service.py.
"""

from __future__ import annotations

from typing import Protocol

from pipelines.lifecycle.model import JobStatus, Release, SavepointKind


class LifecycleError(RuntimeError):
    """A lifecycle action was refused or failed; the message says which and what to do."""


class Backend(Protocol):
    """Where the job runs. Every method blocks until its action is done (or raises
    :class:`LifecycleError`)."""

    #: Shown in audit records and messages: ``local`` or ``kubernetes``.
    name: str

    def status(self) -> JobStatus:
        """The job's state, release and checkpoints (``MISSING`` when no job is deployed)."""
        ...

    def deploy(self, release: Release, *, savepoint: str | None = None,
               allow_non_restored_state: bool = False) -> JobStatus:
        """Start ``release`` (from ``savepoint`` when given) and wait until it runs. Refused when a
        job is already running: an upgrade or a rollback stops it first."""
        ...

    def savepoint(self, kind: SavepointKind, *, stop: bool = False) -> str:
        """Take a savepoint of the running job (``stop``: and end the job in the same step, so no
        event is processed after it); returns its path."""
        ...

    def upgrade(self, release: Release, *, allow_non_restored_state: bool = False) -> str:
        """Stop the running release with a savepoint and start ``release`` from it (on Kubernetes:
        one spec patch with ``upgradeMode: savepoint``, the operator takes the savepoint); returns
        the savepoint's path, the rollback point. ``allow_non_restored_state``: let the new release
        drop savepoint state none of its operators claims (a deliberate choice)."""
        ...

    def rollback(self, release: Release, savepoint: str) -> JobStatus:
        """End the running job without a savepoint (its state is what is being undone) and start
        ``release`` from ``savepoint`` (on Kubernetes: ``initialSavepointPath`` and a new
        ``savepointRedeployNonce``); wait until it runs."""
        ...

    def cancel(self) -> None:
        """End the running job without a savepoint (nothing to do when none runs)."""
        ...

    def offsets(self) -> dict[str, int]:
        """The job's committed Kafka offsets (``partition -> next offset``), for the catalogue;
        empty when the backend cannot read them."""
        ...
