"""Pipeline options for the runners this project runs the job on, in one place.

* ``prism`` — Beam's portable local runner, built by ``make install`` into ``.local/bin/prism``.
  It runs the job in streaming mode with the Python SDK harness in the launching process
  (LOOPBACK). This is what ``make run`` uses while Beam's Flink job-server jar is not served to us
  (docs/status.md).
* ``direct`` — the DirectRunner; batch (``--bounded``) runs and TestStream tests.
* ``flink`` — Beam's portable Flink runner against the local session cluster. It needs
  ``.local/jars/beam-runners-flink-2.2-job-server-<beam version>.jar``; :func:`runner_args` says
  clearly when that jar is missing instead of letting Beam try to download it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import apache_beam

from streaming_analytics.settings import Settings

RUNNERS: Final = ("prism", "direct", "flink")
FLINK_JOB_SERVER: Final = f"beam-runners-flink-2.2-job-server-{apache_beam.__version__}.jar"


class RunnerUnavailable(RuntimeError):
    """The chosen runner cannot run here; the message says why and what to do."""


def runner_args(runner: str, settings: Settings) -> list[str]:
    """Beam options selecting ``runner`` for the streaming job."""
    tools = Path(settings.tools_dir)
    if runner == "prism":
        prism = tools / "bin" / "prism"
        if not prism.exists():
            raise RunnerUnavailable(f"{prism} missing: run `make install`")
        # Beam shares one Prism job server per process, created by whoever asks first (a
        # DirectRunner would ask for the released binary, which cannot be downloaded here).
        return ["--runner=PrismRunner", f"--prism_location={prism}", "--environment_type=LOOPBACK",
                "--experiments=disable_prism_server_singleton", "--streaming"]
    if runner == "direct":
        return ["--runner=DirectRunner"]
    if runner == "flink":
        jar = tools / "jars" / FLINK_JOB_SERVER
        if not jar.exists():
            raise RunnerUnavailable(
                f"{jar} missing: Beam's Flink job-server jar is not served by the Maven registry this "
                "machine reaches (docs/status.md); use SA_PIPELINE_RUNNER=prism")
        rest = urlsplit(settings.flink_rest_url)
        return ["--runner=FlinkRunner", f"--flink_master={rest.hostname}:{rest.port}",
                f"--flink_job_server_jar={jar}", "--environment_type=LOOPBACK", "--streaming",
                "--checkpointing_interval=10000"]
    raise RunnerUnavailable(f"unknown runner {runner!r}; known: {', '.join(RUNNERS)}")
