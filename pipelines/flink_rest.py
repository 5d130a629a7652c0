"""A small client of Flink's REST API (the JobManager's, 1.19): jars, jobs, checkpoints, savepoints.

What the local stack, the tests and the lifecycle tooling need to run the portable job jar on a
session cluster and to move it between releases without losing state: upload and run a jar (from a
savepoint, with an explicit ``allowNonRestoredState`` choice), job state and exceptions, checkpoint
statistics, savepoints (trigger and poll, optionally cancelling the job atomically).

Why "savepoint, then cancel" rather than ``stop``: with Beam's legacy ``UnboundedSourceWrapper``
(the Kafka read), ``stop`` emits a final ``Long.MAX_VALUE`` watermark, so every open window fires
early and its remainder arrives as a second ON_TIME pane after the restore. A savepoint taken with
``cancel-job: true`` leaves the windows open in the savepoint (measured, ../shared/STACK-NOTES.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import requests

#: Job states after which a job will not run again by itself.
TERMINAL_STATES: Final = frozenset({"FINISHED", "CANCELED", "FAILED"})


class FlinkError(RuntimeError):
    """Flink refused a request or a job or savepoint ended badly; the message says which and why."""


@dataclass(frozen=True)
class Checkpoint:
    """The newest completed checkpoint (or savepoint) of a job, as Flink reports it."""

    id: int
    path: str
    end_ms: int
    state_size: int
    is_savepoint: bool


@dataclass(frozen=True)
class CheckpointCounts:
    completed: int
    failed: int
    in_progress: int
    latest: Checkpoint | None


class FlinkRest:
    """``FlinkRest("http://127.0.0.1:8081")``; every call raises :class:`FlinkError` on a non-2xx."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._http = requests.Session()

    # --- plumbing ------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout_s)
        try:
            response = self._http.request(method, f"{self.url}/v1{path}", **kwargs)
        except requests.RequestException as exc:
            raise FlinkError(f"{method} {path}: Flink at {self.url} is unreachable: {exc}") from exc
        if not response.ok:
            raise FlinkError(f"{method} {path}: HTTP {response.status_code}: {_errors(response)}")
        return response.json() if response.content else None

    # --- cluster -------------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/overview")
        return result

    def flink_version(self) -> str:
        return str(self._call("GET", "/config")["flink-version"])

    # --- jars ----------------------------------------------------------------------------------
    def upload_jar(self, jar: Path) -> str:
        """Upload a job jar; returns its id on the cluster."""
        with jar.open("rb") as f:
            result = self._call("POST", "/jars/upload", timeout=max(self._timeout_s, 300),
                                files={"jarfile": (jar.name, f, "application/x-java-archive")})
        return str(result["filename"]).rsplit("/", 1)[-1]

    def run_jar(self, jar_id: str, *, entry_class: str | None = None, savepoint: str | None = None,
                allow_non_restored_state: bool = False, parallelism: int | None = None) -> str:
        """Run an uploaded jar (from ``savepoint`` when given); returns the job id."""
        body: dict[str, Any] = {"allowNonRestoredState": allow_non_restored_state}
        if entry_class:
            body["entryClass"] = entry_class
        if savepoint:
            body["savepointPath"] = savepoint
        if parallelism:
            body["parallelism"] = parallelism
        result = self._call("POST", f"/jars/{jar_id}/run", json=body, timeout=max(self._timeout_s, 300))
        return str(result["jobid"])

    def delete_jar(self, jar_id: str) -> None:
        self._call("DELETE", f"/jars/{jar_id}")

    # --- jobs ----------------------------------------------------------------------------------
    def jobs(self) -> list[dict[str, Any]]:
        """Every job the cluster knows: ``[{"jid", "name", "state", ...}]``, newest first."""
        result = self._call("GET", "/jobs/overview")["jobs"]
        return sorted(result, key=lambda j: -int(j.get("start-time", 0)))

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/jobs/{job_id}")
        return result

    def job_state(self, job_id: str) -> str:
        return str(self.job(job_id)["state"])

    def root_exception(self, job_id: str) -> str | None:
        """The newest exception of a job (failure or restart cause), or None."""
        result = self._call("GET", f"/jobs/{job_id}/exceptions", params={"maxExceptions": 1})
        entries = result.get("exceptionHistory", {}).get("entries") or []
        if entries:
            return str(entries[0].get("stacktrace") or entries[0].get("exceptionName"))
        root = result.get("root-exception")
        return None if root is None else str(root)

    def restarts(self, job_id: str) -> int:
        """How often the job restarted (Flink's ``numRestarts`` metric)."""
        result = self._call("GET", f"/jobs/{job_id}/metrics", params={"get": "numRestarts"})
        return int(next((m["value"] for m in result if m.get("id") == "numRestarts"), 0))

    def cancel(self, job_id: str) -> None:
        self._call("PATCH", f"/jobs/{job_id}", params={"mode": "cancel"})

    def wait_for_state(self, job_id: str, states: set[str], timeout_s: float,
                       fail_on: frozenset[str] = TERMINAL_STATES) -> str:
        """Poll until the job is in one of ``states``; a state in ``fail_on`` outside them raises."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.job_state(job_id)
            if state in states:
                return state
            if state in fail_on:
                raise FlinkError(f"job {job_id} is {state}: {self.root_exception(job_id)}")
            if time.monotonic() > deadline:
                raise FlinkError(f"job {job_id} still {state} after {timeout_s:.0f} s (wanted {states})")
            time.sleep(0.5)

    def wait_until_tasks_running(self, job_id: str, timeout_s: float) -> None:
        """Until every task of the job runs (a job is RUNNING before its tasks are deployed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in TERMINAL_STATES:
                raise FlinkError(f"job {job_id} is {job['state']}: {self.root_exception(job_id)}")
            vertices = job.get("vertices") or []
            if vertices and all(v.get("status") == "RUNNING" for v in vertices):
                return
            if time.monotonic() > deadline:
                raise FlinkError(f"job {job_id}: tasks not all running after {timeout_s:.0f} s")
            time.sleep(0.5)

    # --- checkpoints and savepoints ------------------------------------------------------------
    def checkpoints(self, job_id: str) -> CheckpointCounts:
        result = self._call("GET", f"/jobs/{job_id}/checkpoints")
        counts = result.get("counts", {})
        latest = (result.get("latest") or {}).get("completed")
        checkpoint = None
        if latest:
            checkpoint = Checkpoint(
                id=int(latest["id"]), path=str(latest.get("external_path", "")),
                end_ms=int(latest.get("latest_ack_timestamp", 0)),
                state_size=int(latest.get("checkpointed_size", latest.get("state_size", 0))),
                is_savepoint=bool(latest.get("is_savepoint", False)))
        return CheckpointCounts(completed=int(counts.get("completed", 0)),
                                failed=int(counts.get("failed", 0)),
                                in_progress=int(counts.get("in_progress", 0)), latest=checkpoint)

    def checkpoint_details(self, job_id: str, checkpoint_id: int) -> dict[str, Any]:
        """Per-operator statistics of one checkpoint (``tasks``: vertex id → sizes)."""
        result: dict[str, Any] = self._call("GET", f"/jobs/{job_id}/checkpoints/details/{checkpoint_id}")
        return result

    def savepoint(self, job_id: str, target_dir: str, *, cancel_job: bool = False,
                  timeout_s: float = 300.0) -> str:
        """Take a canonical savepoint into ``target_dir`` (``file:///...``), optionally cancelling the
        job in the same step (see the module docstring; then it returns once the job is CANCELED);
        returns the savepoint's path."""
        trigger = self._call("POST", f"/jobs/{job_id}/savepoints",
                             json={"target-directory": target_dir, "cancel-job": cancel_job,
                                   "formatType": "CANONICAL"})["request-id"]
        deadline = time.monotonic() + timeout_s
        while True:
            status = self._call("GET", f"/jobs/{job_id}/savepoints/{trigger}")
            if status["status"]["id"] == "COMPLETED":
                operation = status.get("operation") or {}
                if "failure-cause" in operation:
                    cause = operation["failure-cause"]
                    raise FlinkError(f"savepoint of job {job_id} failed: "
                                     f"{cause.get('stack-trace', cause)}"[:4000])
                if cancel_job:
                    # The savepoint completes before the job has finished cancelling: callers may
                    # start its successor (the slots must be free) or check its state right away.
                    self.wait_for_state(job_id, {"CANCELED"}, timeout_s,
                                        fail_on=frozenset({"FAILED", "FINISHED"}))
                return str(operation["location"])
            if time.monotonic() > deadline:
                raise FlinkError(f"savepoint of job {job_id} not done after {timeout_s:.0f} s")
            time.sleep(0.5)


def _errors(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors")
    except ValueError:
        errors = None
    text = "; ".join(map(str, errors)) if errors else response.text
    return text[:4000]
