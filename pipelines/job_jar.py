"""Write the job as a portable Flink job jar, instead of running it.

The jar is what a FlinkDeployment runs (``jarURI``), what ``flink run [-s SAVEPOINT]`` runs, and what
the local stack and the lifecycle tooling upload through Flink's REST API: our ``JobJarMain``
(``tools/java/flink-runner``) with the pipeline's proto, options and staged artifacts under
``BEAM-PIPELINE/``. Its main translates the pipeline with Beam's Flink runner inside the Flink
client that runs the jar. The runner itself is not in the jar: our clusters carry it in Flink's
``lib/`` (the lib jar ``make install`` builds; the chart's Flink image likewise), so a job jar
weighs kilobytes and a cluster holds one copy of the runner's classes, whatever the number of jobs.

Beam's own ``--output_executable_path`` starts the Java job server (``java -jar``) to write the jar;
its job, artifact and expansion ports bind every interface. :class:`JobJarRunner` writes the same
jar from Python (Beam's ``UberJarBeamJob`` does the packing), with its short-lived artifact staging
server on loopback only and no Java process at all.
"""

# Beam's Python API is untyped; calling it is reported everywhere, so we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import logging
import shutil
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions
from apache_beam.portability.api import beam_artifact_api_pb2_grpc, beam_job_api_pb2, endpoints_pb2
from apache_beam.runners.portability import abstract_job_service, artifact_service
from apache_beam.runners.portability.flink_runner import FlinkRunner
from apache_beam.runners.portability.flink_uber_jar_job_server import FlinkUberJarJobServer
from apache_beam.runners.portability.portable_runner import JobServiceHandle

_LOG = logging.getLogger(__name__)


class _WriteJobJar(abstract_job_service.UberJarBeamJob):
    """One "job" whose run is: finish packing the jar and move it to ``output``."""

    def __init__(self, output: Path, executable_jar: str, job_id: str, job_name: str, *, pipeline: Any,
                 options: Any) -> None:
        super().__init__(executable_jar, job_id, job_name, pipeline, options)
        self._output = output

    def _start_artifact_service(self, jar: str, requested_port: int) -> int:
        # Beam's version binds [::]; the launcher stages into it from this process only.
        self._artifact_manager = abstract_job_service.JarArtifactManager(self._jar, self.ARTIFACT_FOLDER)
        self._artifact_staging_service = artifact_service.ArtifactStagingService(
            self._artifact_manager.file_writer)  # type: ignore[arg-type]
        self._artifact_staging_service.register_job(
            self._job_id,
            {env_id: env.dependencies
             for env_id, env in self._pipeline_proto.components.environments.items()})
        self._artifact_staging_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        port: int = self._artifact_staging_server.add_insecure_port(f"127.0.0.1:{requested_port}")
        beam_artifact_api_pb2_grpc.add_ArtifactStagingServiceServicer_to_server(
            self._artifact_staging_service, self._artifact_staging_server)
        self._artifact_staging_endpoint = endpoints_pb2.ApiServiceDescriptor(url=f"127.0.0.1:{port}")
        self._artifact_staging_server.start()
        return port

    def run(self) -> None:
        self._stop_artifact_service()  # writes the pipeline and options into the jar and closes it
        self._output.parent.mkdir(parents=True, exist_ok=True)
        partial = self._output.with_name(self._output.name + ".partial")
        shutil.move(self._jar, partial)
        partial.replace(self._output)  # never a half-written jar under the final name
        _LOG.info("wrote the job jar %s (%.0f MB)", self._output, self._output.stat().st_size / 1e6)
        self.set_state(beam_job_api_pb2.JobState.DONE)

    def cancel(self) -> None:
        self.set_state(beam_job_api_pb2.JobState.CANCELLED)

    def get_state_stream(self) -> Any:
        # The runner asks for the stream before it calls run(): follow the history as it grows.
        seen = 0
        while True:
            history = self._state_history
            while seen < len(history):
                yield history[seen]
                if self.is_terminal_state(history[seen][0]):
                    return
                seen += 1
            time.sleep(0.05)

    def get_message_stream(self) -> Any:
        return self.get_state_stream()


class _JobJarServer(FlinkUberJarJobServer):
    def __init__(self, output: Path, base_jar: Path, options: PipelineOptions) -> None:
        super().__init__("http://unused", options)
        self._output = output
        self._base_jar = base_jar

    def create_beam_job(self, job_id: str, job_name: str, pipeline: Any, options: Any) -> _WriteJobJar:
        return _WriteJobJar(self._output, str(self._base_jar), job_id, job_name, pipeline=pipeline,
                            options=options)


class JobJarRunner(FlinkRunner):
    """A FlinkRunner whose "run" writes the portable job jar to ``output`` on ``base_jar`` (the
    job-base jar ``make install`` builds; see the module docstring). ``--environment_type`` and
    ``--environment_config`` say where the job's Python workers will run (EXTERNAL: a worker pool
    beside each TaskManager).
    """

    def __init__(self, output: Path, base_jar: Path) -> None:
        super().__init__()
        if not base_jar.exists():
            raise FileNotFoundError(f"{base_jar} missing: run `make install` (it builds Beam's Flink runner)")
        self._output = output
        self._base_jar = base_jar

    def default_job_server(self, options: PipelineOptions) -> _JobJarServer:
        # The jar carries the pipeline's options. Its FlinkPipelineRunner must run the job in the
        # Flink client that runs the jar (`[auto]`), never submit it to the launcher's --flink_master
        # (on Kubernetes that address does not exist; Beam's own uber-jar path does the same).
        options.view_as(FlinkRunnerOptions).flink_master = "[auto]"
        return _JobJarServer(self._output, self._base_jar, options)

    def create_job_service_handle(self, job_service: Any, options: PipelineOptions) -> Any:
        # Keep the options only the Java runner knows (--checkpointing_interval, ...) in the jar.
        return JobServiceHandle(job_service, options, retain_unknown_options=True)


# --- make job-jar ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.job_jar [--output PATH] [-- JOB OPTIONS]`` (``make job-jar``): the
    portable job jar a FlinkDeployment runs, built with ``--endpoints=workers`` (each worker reads
    Kafka, PostgreSQL, Redis and the model directory from its own SA_* environment; the jar holds
    no endpoint or password) and Python workers in the TaskManager pod's worker pool.

    Starts a short-lived expansion service on loopback for the Java Kafka read if
    ``SA_BEAM_EXPANSION_SERVICE`` does not answer.
    """
    import argparse
    import shutil as _shutil
    import socket
    import subprocess
    import sys
    import time

    from pipelines.analytics_pipeline import run
    from pipelines.runners import expansion_service_argv, runner_args
    from streaming_analytics.settings import PROJECT_ROOT, Settings

    parser = argparse.ArgumentParser(prog="python -m pipelines.job_jar", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path,
                        default=PROJECT_ROOT / "var" / "job-jar" / "streaming-analytics-job.jar",
                        help="where to write the jar (default var/job-jar/streaming-analytics-job.jar)")
    parser.add_argument("--worker-pool", default="127.0.0.1:50000",
                        help="the worker pool the TaskManager starts Python workers from (default: the "
                             "chart's harness sidecar, 127.0.0.1:50000)")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="extra job options, after --")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    extra = [a for a in args.job_args if a != "--"]

    def answers(address: str) -> bool:
        host, port = address.rsplit(":", 1)
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((host, int(port))) == 0

    service: subprocess.Popen[bytes] | None = None
    address = settings.beam_expansion_service
    if not answers(address):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        java = _shutil.which("java") or "java"
        service = subprocess.Popen(expansion_service_argv(java, settings.tools_dir, port))
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while not answers(address):
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the expansion service did not start (see its output above)")
            time.sleep(0.5)
    try:
        flink = [a for a in runner_args("flink", settings) if not a.startswith("--environment_config=")]
        run([*flink, f"--environment_config={args.worker_pool}", f"--kafka_expansion_service={address}",
             "--endpoints=workers", f"--job_jar={args.output}", *extra], settings=settings)
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1000:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
