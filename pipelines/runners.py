"""Pipeline options for the runners this project runs the job on, in one place.

* ``flink`` — what ``make run`` uses and production runs: Beam's portable Flink runner (1.19,
  2.62, shaded by ``make install`` into ``.local/jars``) on the local Flink 1.19 session cluster.
  The launcher writes the portable job jar and submits it through Flink's REST API
  (``pipelines/job_jar.py``, ``pipelines/flink_job.py``); the job outlives the launcher. Python
  workers come from the stack's worker pool (EXTERNAL environment, ``SA_BEAM_WORKER_POOL``), the
  Kafka read is Java KafkaIO as a native Flink source (``transforms/kafka_java_source.py``, built
  by the expansion service at ``SA_BEAM_EXPANSION_SERVICE``).
* ``prism`` — Beam's portable local runner, built by ``make install`` into ``.local/bin/prism``,
  with the Python SDK harness in the launching process (LOOPBACK).
* ``direct`` — the DirectRunner; batch (``--bounded``) runs and TestStream tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from apache_beam.options.pipeline_options import PipelineOptions

from streaming_analytics.settings import Settings

RUNNERS: Final = ("flink", "prism", "direct")
#: Built by `make install` (tools/java/flink-runner, Flink 1.19, Beam 2.62): Beam's Flink runner with
#: our Kafka read and the loopback expansion service (the base of every job jar), and the same
#: classes for Flink's lib/ (minus what Flink's own lib/ holds).
FLINK_RUNNER_JAR: Final = "sa-beam-flink-1.19-2.62.0.jar"
FLINK_LIB_JAR: Final = "sa-beam-flink-lib-1.19-2.62.0.jar"
#: The base of our job jars: JobJarMain only, the runner itself comes from the cluster's lib/.
FLINK_JOB_BASE_JAR: Final = "sa-beam-flink-job-base-1.19-2.62.0.jar"
#: How long a job on Prism may run before Beam's job-state stream gives up (see runner_args).
PRISM_JOB_STREAM_DEADLINE_S: Final = 10 * 365 * 24 * 3600
#: Main class of our expansion service (binds loopback; Beam's stock one binds every interface).
EXPANSION_SERVER_MAIN: Final = "org.streaminganalytics.flink.LoopbackExpansionServer"


class FlinkJobOptions(PipelineOptions):
    """Options of Beam's Java Flink runner (``FlinkPipelineOptions``) that our Flink jobs set.

    Declared here so that the Python SDK knows them: it keeps them in the job jar's options (where
    ``JobJarMain`` hands them to the runner) and does not warn about them as unparseable.
    """

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument("--checkpointing_interval", type=int, default=None,
                            help="Flink: checkpoint interval in ms (SA_FLINK_CHECKPOINT_INTERVAL_S).")
        parser.add_argument("--max_bundle_time_mills", type=int, default=None,
                            help="Flink: longest a bundle stays open, in ms (SA_FLINK_MAX_BUNDLE_TIME_MS).")
        parser.add_argument("--finish_bundle_before_checkpointing", action="store_true", default=None,
                            help="Flink: finish the open bundle before a checkpoint barrier goes on.")
        parser.add_argument("--externalized_checkpoints_enabled", action="store_true", default=None,
                            help="Flink: keep checkpoints outside the job (restorable by path).")
        parser.add_argument("--retain_externalized_checkpoints_on_cancellation", action="store_true",
                            default=None, help="Flink: keep the last checkpoint when the job is cancelled.")


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
        # No SDF splits: Prism 2.77 splits bundles of stateful stages with timers wrongly
        # (apache/beam#35771: events counted twice).
        # Beam's portable runner opens the job's state and message streams with the job server
        # timeout as their *deadline*: at the default (300 s) every streaming job on Prism ended
        # after five minutes with DEADLINE_EXCEEDED (tests/integration/test_prism_job_lifetime.py).
        return ["--runner=PrismRunner", f"--prism_location={prism}", "--environment_type=LOOPBACK",
                "--experiments=disable_prism_server_singleton", "--experiments=prism_disable_sdf_split",
                f"--job_server_timeout={PRISM_JOB_STREAM_DEADLINE_S}", "--streaming"]
    if runner == "direct":
        return ["--runner=DirectRunner"]
    if runner == "flink":
        jar = flink_runner_jar(settings)
        if not jar.exists():
            raise RunnerUnavailable(f"{jar} missing: run `make install` (it builds Beam's Flink runner)")
        return ["--runner=FlinkRunner", f"--flink_master={settings.flink_rest_url}",
                f"--flink_job_server_jar={jar}", "--environment_type=EXTERNAL",
                f"--environment_config={settings.beam_worker_pool}", "--streaming",
                f"--checkpointing_interval={settings.flink_checkpoint_interval_s * 1000}",
                # Every Python stage holds its output until its bundle closes (by size or by time):
                # at a live rate the time bound is on the latency path once per stage.
                f"--max_bundle_time_mills={settings.flink_max_bundle_time_ms}",
                # A bundle open while a checkpoint barrier arrives can stall the checkpoint (seen with
                # one-shot stages); finishing it first keeps checkpoints short and regular.
                "--finish_bundle_before_checkpointing",
                # Flink hands the SDK cache tokens, so keyed state (dedup ids, the late-data gate)
                # is read once per worker instead of once per bundle; Beam 2.77's default is off.
                "--max_cache_memory_usage_mb=64",
                # Keep externalized checkpoints on cancel: the last resort for a restore.
                "--externalized_checkpoints_enabled", "--retain_externalized_checkpoints_on_cancellation",
                f"--kafka_expansion_service={settings.beam_expansion_service}"]
    raise RunnerUnavailable(f"unknown runner {runner!r}; known: {', '.join(RUNNERS)}")


def flink_runner_jar(settings: Settings) -> Path:
    """Beam's Flink runner jar that ``make install`` builds (the base of every job jar)."""
    return Path(settings.tools_dir) / "jars" / FLINK_RUNNER_JAR


def expansion_service_argv(java: str, tools_dir: Path, port: int) -> list[str]:
    """The command of the expansion service for the job's Java Kafka read on ``127.0.0.1:port``.

    EMBEDDED: the expanded KafkaIO runs inside the TaskManager JVM (no Java SDK container);
    ``use_deprecated_read`` must reach the expansion's own options, so that KafkaIO expands to a
    ``Read.Unbounded`` that the Flink runner turns into a native source (not a Java SDF).
    """
    jar = Path(tools_dir) / "jars" / FLINK_RUNNER_JAR
    return [java, "-Xmx512m", "-cp", str(jar), EXPANSION_SERVER_MAIN, str(port),
            "--defaultEnvironmentType=EMBEDDED", "--experiments=use_deprecated_read"]


def flink_job_base_jar(settings: Settings) -> Path:
    """The base of every job jar (``JobJarMain``; ``pipelines/job_jar.py`` adds the pipeline)."""
    return Path(settings.tools_dir) / "jars" / FLINK_JOB_BASE_JAR
