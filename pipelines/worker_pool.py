"""The Python SDK harness as an EXTERNAL worker pool, listening on one interface only.

Beam's portable Flink runner starts Python workers through a *worker pool*: the TaskManager calls
``StartWorker`` with the endpoints of its Fn API servers, and the pool starts an SDK harness process
that connects back to them. Locally the pool runs beside the TaskManager (the stack starts and
supervises it); on Kubernetes it is a sidecar of the TaskManager pod (same network namespace, so
``127.0.0.1`` works there too).

Why our own and not ``apache_beam.runners.worker.worker_pool_main``:

* the stock pool binds ``[::]`` — an unauthenticated port that starts processes, on every
  interface; this one binds ``--host`` (default ``127.0.0.1``);
* the stock pool starts each worker as ``python -c "SdkHarness(...)"`` with a fixed state-cache
  size of 0 (every keyed-state access a round trip to the runner), logs to a pipe nobody reads, and
  never asks the runner for the job's pipeline options. This pool does what Beam's container boot
  program does: it fetches the job's provision info (pipeline options, logging endpoint) and starts
  ``apache_beam.runners.worker.sdk_worker_main`` with them, so ``--max_cache_memory_usage_mb``,
  the log level and experiments apply, and worker logs reach the TaskManager's log;
* workers are started with this interpreter (the venv's, not whatever ``python`` is first on
  PATH), with the checkout importable, and die with the pool (``PR_SET_PDEATHSIG``, set by the
  worker itself first thing — a ``preexec_fn`` would fork a process full of gRPC threads), so a
  killed pool leaves no orphan worker behind.

Staged artifacts are not installed: the pool's environment already holds the project's packages
(editable install locally, the image on Kubernetes).

    python -m pipelines.worker_pool --port 50000 [--host 127.0.0.1]
"""

# Beam's Python API is untyped; calling it is reported everywhere, so we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from apache_beam.portability.api import (
    beam_fn_api_pb2,
    beam_fn_api_pb2_grpc,
    beam_provision_api_pb2,
    beam_provision_api_pb2_grpc,
)
from google.protobuf import json_format, text_format

_LOG = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
#: How long a worker gets to exit after SIGTERM before it is killed.
_STOP_TIMEOUT_S = 10.0
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


#: The worker: Beam's SDK harness main, behind :func:`run_worker` (see the module docstring).
WORKER_COMMAND = (sys.executable, "-m", "pipelines.worker_pool", "--run-worker")
_PARENT_ENV = "SA_WORKER_POOL_PID"


def run_worker(main: Callable[[], object] | None = None) -> None:
    """In a worker process: die with the pool (SIGKILL on its death), then run ``main`` (default:
    Beam's SDK harness, ``sdk_worker_main``)."""
    import runpy

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if str(os.getppid()) != os.environ.get(_PARENT_ENV):
        sys.exit("the worker pool is gone")  # it died before prctl took effect
    if main is None:
        runpy.run_module("apache_beam.runners.worker.sdk_worker_main", run_name="__main__")
    else:
        main()


def provision_info(provision_url: str, worker_id: str, timeout_s: float = 30.0) -> Any:
    """The job's provision info (pipeline options, logging endpoint) from the runner."""
    with grpc.insecure_channel(provision_url) as channel:
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                         metadata=[("worker_id", worker_id)], timeout=timeout_s)
        return response.info


def worker_environment(request: Any, info: Any, semi_persistent_dir: str) -> dict[str, str]:
    """The environment ``sdk_worker_main`` reads (what Beam's container boot program sets)."""
    logging_endpoint = (info.logging_endpoint if info.HasField("logging_endpoint")
                        else request.logging_endpoint)
    control_endpoint = (info.control_endpoint if info.HasField("control_endpoint")
                        else request.control_endpoint)
    env = {
        **os.environ,
        "WORKER_ID": request.worker_id,
        "PIPELINE_OPTIONS": json.dumps(json_format.MessageToDict(info.pipeline_options)),
        "CONTROL_API_SERVICE_DESCRIPTOR": text_format.MessageToString(control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": text_format.MessageToString(logging_endpoint),
        "SEMI_PERSISTENT_DIRECTORY": semi_persistent_dir,
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
        # The workers import the project's packages (transforms, models, ...) from the checkout.
        "PYTHONPATH": os.pathsep.join(p for p in (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
        "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),
        _PARENT_ENV: str(os.getpid()),
    }
    if info.HasField("status_endpoint") and info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(info.status_endpoint)
    return env


class LoopbackWorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """Starts one ``sdk_worker_main`` process per ``StartWorker`` and stops it on ``StopWorker``."""

    def __init__(self, work_dir: Path, provision: Callable[[str, str], Any] = provision_info,
                 command: Sequence[str] = WORKER_COMMAND) -> None:
        self._work_dir = work_dir
        self._provision = provision
        self._command = list(command)
        self._lock = threading.Lock()
        self._workers: dict[str, subprocess.Popen[bytes]] = {}

    def StartWorker(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        try:
            info = self._provision(request.provision_endpoint.url, request.worker_id)
            semi_persistent = tempfile.mkdtemp(prefix=f"worker-{request.worker_id}-", dir=self._work_dir)
            env = worker_environment(request, info, semi_persistent)
            proc = subprocess.Popen(self._command, env=env, stdin=subprocess.DEVNULL)
        except Exception as exc:  # noqa: BLE001 - the runner gets the reason, the pool lives on
            _LOG.exception("could not start worker %s", request.worker_id)
            return beam_fn_api_pb2.StartWorkerResponse(error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._reap_locked()
            self._workers[request.worker_id] = proc
        _LOG.info("started worker %s (pid %d)", request.worker_id, proc.pid)
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        with self._lock:
            proc = self._workers.pop(request.worker_id, None)
        if proc is not None:
            _LOG.info("stopping worker %s (pid %d)", request.worker_id, proc.pid)
            _stop(proc)
        return beam_fn_api_pb2.StopWorkerResponse()

    def stop_all(self) -> None:
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for proc in workers:
            _stop(proc)

    def _reap_locked(self) -> None:
        for worker_id in [w for w, p in self._workers.items() if p.poll() is not None]:
            del self._workers[worker_id]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(host: str, port: int, work_dir: Path, provision: Callable[[str, str], Any] = provision_info,
          command: Sequence[str] = WORKER_COMMAND) -> tuple[grpc.Server, LoopbackWorkerPool, int]:
    """Start the pool's gRPC server on ``host:port`` (0: any free port); returns the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0)])
    pool = LoopbackWorkerPool(work_dir, provision, command)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the worker pool to {host}:{port}")
    server.start()
    return server, pool, bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.worker_pool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50000, help="port to listen on (default 50000)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where workers keep their semi-persistent files (default: a temp dir)")
    parser.add_argument("--run-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_worker:
        run_worker()
        return 0
    logging.basicConfig(level=os.environ.get("SA_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="sa-worker-pool-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    server, pool, port = serve(args.host, args.port, work_dir)
    _LOG.info("worker pool listening on %s:%d", args.host, port)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    _LOG.info("stopping")
    server.stop(grace=2).wait()
    pool.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
