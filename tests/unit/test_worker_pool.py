"""The loopback worker pool (pipelines/worker_pool.py) with a real gRPC client: it listens on the
interface it is given and nowhere else, starts each worker as `sdk_worker_main` with the job's
provisioned options and endpoints in its environment, stops it on request, and a pool that dies
takes its workers with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from apache_beam.portability.api import (
    beam_fn_api_pb2,
    beam_fn_api_pb2_grpc,
    beam_provision_api_pb2,
    endpoints_pb2,
)
from google.protobuf import struct_pb2

from pipelines.worker_pool import WORKER_COMMAND, serve

#: A worker that does what the real one does first (die with the pool), then waits to be stopped.
SLEEPING_WORKER = [sys.executable, "-c",
                   "import time; from pipelines.worker_pool import run_worker; "
                   "run_worker(lambda: time.sleep(600))"]


def _info() -> Any:
    options = struct_pb2.Struct()
    options.update({"beam:option:max_cache_memory_usage_mb:v1": "100", "beam:option:job_name:v1": "t"})
    return beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=options, runner_capabilities=["beam:protocol:x:v1"],
        logging_endpoint=endpoints_pb2.ApiServiceDescriptor(url="127.0.0.1:1"))


def _request(worker_id: str) -> Any:
    return beam_fn_api_pb2.StartWorkerRequest(
        worker_id=worker_id, control_endpoint=endpoints_pb2.ApiServiceDescriptor(url="127.0.0.1:2"),
        provision_endpoint=endpoints_pb2.ApiServiceDescriptor(url="127.0.0.1:3"))


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(x) for x in out.split()]


def _gone(pid: int, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_starts_a_worker_with_the_provisioned_options_and_stops_it(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def provision(url: str, worker_id: str) -> Any:
        asked.append((url, worker_id))
        return _info()

    before = set(_children(os.getpid()))  # the suite may have children of its own (Prism, ...)
    server, _pool, port = serve("127.0.0.1", 0, tmp_path, provision, SLEEPING_WORKER)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
            response = stub.StartWorker(_request("w1"), timeout=30)
            assert response.error == ""
            assert asked == [("127.0.0.1:3", "w1")]
            (pid,) = set(_children(os.getpid())) - before
            env = _environ(pid)
            assert env["WORKER_ID"] == "w1"
            assert json.loads(env["PIPELINE_OPTIONS"])["beam:option:max_cache_memory_usage_mb:v1"] == "100"
            assert 'url: "127.0.0.1:2"' in env["CONTROL_API_SERVICE_DESCRIPTOR"]
            assert 'url: "127.0.0.1:1"' in env["LOGGING_API_SERVICE_DESCRIPTOR"]
            assert env["RUNNER_CAPABILITIES"] == "beam:protocol:x:v1"
            assert Path(env["SEMI_PERSISTENT_DIRECTORY"]).parent == tmp_path
            assert env["SA_WORKER_POOL_PID"] == str(os.getpid())
            assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
            stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="w1"), timeout=30)
            assert _gone(pid)
    finally:
        server.stop(0)


def test_a_failing_provision_is_reported_to_the_runner(tmp_path: Path) -> None:
    def provision(url: str, worker_id: str) -> Any:
        raise RuntimeError("runner unreachable")

    before = set(_children(os.getpid()))
    server, _pool, port = serve("127.0.0.1", 0, tmp_path, provision)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
            response = stub.StartWorker(_request("w2"), timeout=30)
        assert "runner unreachable" in response.error
        assert set(_children(os.getpid())) - before == set()
    finally:
        server.stop(0)


def _listening_addresses(port: int) -> set[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    # gRPC listens on an IPv6 socket bound to the v4-mapped loopback address: the same interface.
    return {line.split()[3].rsplit(":", 1)[0].removeprefix("[::ffff:").removesuffix("]")
            for line in out.splitlines() if line.strip()}


def test_the_pool_process_listens_on_loopback_only(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = subprocess.Popen([sys.executable, "-m", "pipelines.worker_pool", "--port", str(port),
                             "--work-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _listening_addresses(port):
            assert pool.poll() is None, pool.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert _listening_addresses(port) == {"127.0.0.1"}
        # A real StartWorker (the provision endpoint does not answer: the pool reports the error).
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
            response = stub.StartWorker(_request("w3"), timeout=60)
        assert "provision" in response.error.lower() or "unavailable" in response.error.lower()
    finally:
        pool.send_signal(signal.SIGKILL)
        pool.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_the_pool(tmp_path: Path, sig: int) -> None:
    """A pool killed without clean-up (SIGKILL) leaves no orphan worker (PR_SET_PDEATHSIG)."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pipelines.worker_pool import serve\n"
        "from tests.unit.test_worker_pool import SLEEPING_WORKER, _info, _request\n"
        "server, pool, port = serve('127.0.0.1', 0, Path(sys.argv[1]), lambda u, w: _info(),\n"
        "                           SLEEPING_WORKER)\n"
        "pool.StartWorker(_request('w4'), None)\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        (worker,) = _children(proc.pid)
        proc.send_signal(sig)
        proc.wait(10)
        assert _gone(worker)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_default_worker_runs_beams_sdk_harness_behind_the_parent_check() -> None:
    expected = (sys.executable, "-m", "pipelines.worker_pool", "--run-worker")
    assert expected == WORKER_COMMAND
    # Started outside a pool, the worker refuses to run (nothing would stop it).
    result = subprocess.run(list(WORKER_COMMAND), capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SA_WORKER_POOL_PID": "1"}, check=False)
    assert result.returncode != 0 and "worker pool is gone" in result.stderr
