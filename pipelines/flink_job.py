"""Run the portable job jar on a Flink session cluster and follow it: the submission path of the
local stack, the tests and (later) the lifecycle tooling.

:func:`deploy_jar` uploads the jar, runs it (from a savepoint when given) and waits until every
task runs; :class:`FlinkJobResult` is the job as a Beam ``PipelineResult`` (state, wait, cancel)
plus savepoints. The job lives on the cluster: the launcher may exit.
"""

# Beam's Python API is untyped; calling it is reported everywhere, so we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Final

from apache_beam.runners.runner import PipelineResult, PipelineState

from pipelines.flink_rest import TERMINAL_STATES, FlinkError, FlinkRest

_LOG = logging.getLogger(__name__)

#: The main class of our job jars (pipelines/job_jar.py; tools/java/flink-runner).
ENTRY_CLASS: Final = "org.streaminganalytics.flink.JobJarMain"

_BEAM_STATE: Final = {
    "INITIALIZING": PipelineState.STARTING, "CREATED": PipelineState.STARTING,
    "RUNNING": PipelineState.RUNNING, "FAILING": PipelineState.RUNNING,
    "RESTARTING": PipelineState.RUNNING, "RECONCILING": PipelineState.RUNNING,
    "SUSPENDED": PipelineState.RUNNING, "CANCELLING": PipelineState.CANCELLING,
    "CANCELED": PipelineState.CANCELLED, "FAILED": PipelineState.FAILED, "FINISHED": PipelineState.DONE,
}


class FlinkJobResult(PipelineResult):
    """A job on a Flink cluster, seen through its REST API."""

    def __init__(self, rest: FlinkRest, job_id: str) -> None:
        super().__init__(PipelineState.RUNNING)
        self.rest = rest
        self.job_id = job_id

    @property
    def state(self) -> Any:
        return _BEAM_STATE.get(self.rest.job_state(self.job_id), PipelineState.UNKNOWN)

    def flink_state(self) -> str:
        return self.rest.job_state(self.job_id)

    def wait_until_finish(self, duration: float | None = None) -> Any:
        """Until the job ends (or ``duration`` ms pass); a FAILED job raises with its cause."""
        deadline = None if duration is None else time.monotonic() + duration / 1000
        while True:
            state = self.rest.job_state(self.job_id)
            if state in TERMINAL_STATES:
                if state == "FAILED":
                    raise FlinkError(f"job {self.job_id} failed: {self.rest.root_exception(self.job_id)}")
                return _BEAM_STATE[state]
            if deadline is not None and time.monotonic() > deadline:
                return _BEAM_STATE.get(state, PipelineState.UNKNOWN)
            time.sleep(1)

    def cancel(self) -> Any:
        if self.rest.job_state(self.job_id) not in TERMINAL_STATES:
            self.rest.cancel(self.job_id)
            self.rest.wait_for_state(self.job_id, {"CANCELED", "FAILED", "FINISHED"}, 120,
                                     fail_on=frozenset())
        return self.state

    def savepoint(self, target_dir: Path, *, cancel_job: bool = False) -> str:
        """A canonical savepoint into ``target_dir`` (optionally cancelling the job); its path."""
        return self.rest.savepoint(self.job_id, target_dir.resolve().as_uri(), cancel_job=cancel_job)

    def metrics(self) -> Any:
        raise NotImplementedError("read the job's metrics from Flink's REST API or Prometheus")


def deploy_jar(rest: FlinkRest, jar: Path, *, savepoint: str | None = None,
               allow_non_restored_state: bool = False, timeout_s: float = 300.0) -> FlinkJobResult:
    """Upload ``jar``, run it (restoring ``savepoint`` when given) and wait until all its tasks run.

    ``allow_non_restored_state``: accept a savepoint holding state that no operator of this job
    claims (that state is dropped) — a deliberate choice, never a default.
    """
    jar_id = rest.upload_jar(jar)
    try:
        job_id = rest.run_jar(jar_id, entry_class=ENTRY_CLASS, savepoint=savepoint,
                              allow_non_restored_state=allow_non_restored_state)
    finally:
        # The cluster keeps what a running job needs in its blob store; the upload itself can go.
        rest.delete_jar(jar_id)
    _LOG.info("job %s submitted%s", job_id, f" from savepoint {savepoint}" if savepoint else "")
    rest.wait_until_tasks_running(job_id, timeout_s)
    return FlinkJobResult(rest, job_id)


# --- the job under `make run`: submit, follow, savepoint on stop ---------------------------------------
def supervise(argv: list[str], state_dir: Path, poll_s: float = 2.0) -> int:
    """Run the job on Flink and stay with it: what the local stack runs as its ``pipeline`` process.

    Submits the job (from the savepoint the last stop left in ``state_dir``, if any), records its id
    in ``state_dir/job.json``, and exits non-zero if the job ends by itself (Flink restarts failed
    tasks on its own; an ended streaming job means its restarts are exhausted). On SIGTERM/SIGINT
    (``make stop``) it takes a savepoint that cancels the job atomically and records it, so the
    next ``make run`` resumes with the same offsets, dedup ids and open windows.
    """
    import json
    import signal
    import threading

    from pipelines.analytics_pipeline import run

    state_dir.mkdir(parents=True, exist_ok=True)
    last = state_dir / "last-savepoint"
    restore = last.read_text().strip() if last.exists() else None
    if restore and not Path(restore.removeprefix("file:")).exists():
        _LOG.warning("the recorded savepoint %s is gone; starting from the committed offsets", restore)
        restore = None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    args = [*argv, f"--restore_from={restore}"] if restore else argv
    try:
        result = run(args, wait=False)
    except FlinkError as exc:
        hint = (f" (the job could not start from the savepoint {restore}: if the job's stateful steps "
                f"changed, delete {last} to start from the committed offsets, or add "
                "--allow_non_restored_state to SA_PIPELINE_ARGS)") if restore else ""
        _LOG.error("%s%s", exc, hint)
        return 1
    assert isinstance(result, FlinkJobResult)
    (state_dir / "job.json").write_text(json.dumps({"job_id": result.job_id, "restored_from": restore}))
    _LOG.info("job %s running; Flink web UI: %s/#/job/running/%s", result.job_id, result.rest.url,
              result.job_id)
    while not stop.wait(poll_s):
        try:
            state = result.flink_state()
        except FlinkError as exc:
            _LOG.warning("cannot reach Flink: %s", exc)
            continue
        if state in TERMINAL_STATES:
            _LOG.error("job %s is %s: %s", result.job_id, state, result.rest.root_exception(result.job_id))
            return 1
    _LOG.info("stopping job %s with a savepoint", result.job_id)
    path = result.savepoint(state_dir / "savepoints", cancel_job=True)
    last.write_text(path + "\n")
    _LOG.info("savepoint %s; the next start resumes from it", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.flink_job --state-dir DIR -- PIPELINE ARGS``: see :func:`supervise`."""
    import argparse
    import sys

    from streaming_analytics.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m pipelines.flink_job", description=supervise.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="where the job id and the savepoints of `make stop` are kept")
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER,
                        help="the job's options (after --), e.g. the runner's from pipelines.runners")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # force: importing Beam already logged a warning, which set up a root handler at WARNING.
    logging.basicConfig(level=Settings.from_env().log_level, force=True,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    pipeline_args = [a for a in args.pipeline_args if a != "--"]
    return supervise(pipeline_args, args.state_dir)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the job result classes that
    # analytics_pipeline returns are pipelines.flink_job's.
    from pipelines import flink_job  # noqa: PLW0406 - on purpose, see above

    raise SystemExit(flink_job.main())
