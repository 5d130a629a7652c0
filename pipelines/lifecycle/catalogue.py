"""The lifecycle's records, in one directory (``SA_LIFECYCLE_DIR``): the savepoint catalogue, the
releases deployed, which release runs now and which savepoint rolls it back, and the audit trail.

Plain JSON files, each replaced atomically (written beside, then renamed), so an interrupted
command never leaves half a catalogue; the audit trail is append-only JSON lines. For Kubernetes,
point ``SA_LIFECYCLE_DIR`` at storage the on-call engineers share (docs/operations.md).

Retention: the catalogue keeps the newest ``retain`` savepoints, and always the current rollback
point and every savepoint of the release that runs now; a forgotten local savepoint (``file:``) is
deleted with its files, a remote one (``s3://...``) only forgotten (its bucket's lifecycle rules
own it).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.lifecycle.model import Release, SavepointRecord, now_ms

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    """What runs now, and how to undo the last upgrade: ``rollback_point`` is the savepoint taken
    before it (``previous``: the release that took it)."""

    release: str | None = None
    job_id: str | None = None
    previous: str | None = None
    rollback_point: str | None = None


class LifecycleStore:
    """The files of one job's lifecycle under ``root``."""

    def __init__(self, root: Path, retain: int = 20) -> None:
        if retain < 1:
            raise ValueError("retain at least one savepoint")
        self.root = root
        self.retain = retain
        root.mkdir(parents=True, exist_ok=True)

    # --- savepoints ------------------------------------------------------------------------------
    def savepoints(self) -> list[SavepointRecord]:
        """Every savepoint in the catalogue, newest first."""
        data = self._read("savepoints.json", [])
        records = [SavepointRecord.from_json(d) for d in data]
        return sorted(records, key=lambda r: r.taken_at_ms, reverse=True)

    def find(self, path: str) -> SavepointRecord | None:
        return next((r for r in self.savepoints() if r.path == path), None)

    def add_savepoint(self, record: SavepointRecord) -> list[SavepointRecord]:
        """Record ``record`` and apply the retention; returns the records forgotten."""
        records = [r for r in self.savepoints() if r.path != record.path]
        records.insert(0, record)
        deployment = self.deployment()
        keep: list[SavepointRecord] = []
        forgotten: list[SavepointRecord] = []
        for r in records:
            pinned = r.path == deployment.rollback_point or r.release == deployment.release
            (keep if len(keep) < self.retain or pinned else forgotten).append(r)
        self._write("savepoints.json", [r.to_json() for r in keep])
        for r in forgotten:
            _dispose(r.path)
        return forgotten

    # --- releases and the deployment ----------------------------------------------------------------
    def releases(self) -> dict[str, Release]:
        return {name: Release.from_json(d) for name, d in self._read("releases.json", {}).items()}

    def release(self, name: str) -> Release | None:
        return self.releases().get(name)

    def add_release(self, release: Release) -> None:
        data = self._read("releases.json", {})
        data[release.name] = release.to_json()
        self._write("releases.json", data)

    def deployment(self) -> Deployment:
        return Deployment(**self._read("deployment.json", {}))

    def set_deployment(self, deployment: Deployment) -> None:
        self._write("deployment.json", deployment.__dict__)

    # --- audit -----------------------------------------------------------------------------------
    def audit(self, action: str, backend: str, outcome: str, **detail: Any) -> dict[str, Any]:
        """Append one audit record (who, when, what, on which backend, how it ended)."""
        record = {"at_ms": now_ms(), "user": _user(), "action": action, "backend": backend,
                  "outcome": outcome, **detail}
        with (self.root / "audit.jsonl").open("a") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")
        return record

    def audit_trail(self) -> list[dict[str, Any]]:
        path = self.root / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # --- plumbing ------------------------------------------------------------------------------
    def _read(self, name: str, default: Any) -> Any:
        path = self.root / name
        return json.loads(path.read_text()) if path.exists() else default

    def _write(self, name: str, data: Any) -> None:
        path = self.root / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _dispose(path: str) -> None:
    if not path.startswith("file:") and not path.startswith("/"):
        _LOG.info("savepoint %s left out of the catalogue (remote: its storage's rules keep it or not)",
                  path)
        return
    local = Path(path.removeprefix("file:").removeprefix("//"))
    if local.exists():
        shutil.rmtree(local, ignore_errors=True)
    _LOG.info("savepoint %s deleted (retention)", path)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
