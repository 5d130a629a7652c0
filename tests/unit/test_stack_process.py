"""Process supervision primitives: start and stop by PID, and never signal a stranger."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from devstack.stack import process
from devstack.stack.components import kafka_cluster_id
from devstack.stack.process import ProcessSpec, RunningProcess


def sleeper(tmp_path: Path, name: str = "sleeper") -> RunningProcess:
    spec = ProcessSpec(name, [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                       stop_timeout_s=5)
    return process.start(spec, tmp_path / f"{name}.log")


def test_start_records_identity_and_stop_ends_the_process(tmp_path: Path) -> None:
    proc = sleeper(tmp_path)
    assert proc.alive()
    assert process.stop(proc) is True
    assert not proc.alive()
    assert process.stop(proc) is False  # idempotent


def test_a_reused_pid_is_not_ours_and_is_left_alone(tmp_path: Path) -> None:
    proc = sleeper(tmp_path)
    impostor = RunningProcess(proc.name, proc.pid, proc.start_ticks + 1, proc.log)
    try:
        assert not impostor.alive()
        assert process.stop(impostor) is False
        assert proc.alive(), "stop() signalled a process whose start time does not match"
    finally:
        process.stop(proc)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    proc = process.start(ProcessSpec("stubborn", [sys.executable, "-c", code], stop_timeout_s=0.5),
                         tmp_path / "stubborn.log")
    assert process.stop(proc) is True
    assert not proc.alive()


def test_output_goes_to_the_log(tmp_path: Path) -> None:
    proc = sleeper(tmp_path)
    try:
        process.wait_until(lambda: "up" in Path(proc.log).read_text(), 10, "log line")
    finally:
        process.stop(proc)


def test_port_helpers_see_a_taken_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert not process.port_is_free(taken)
        other = process.free_port()
        assert other != taken and process.port_is_free(other)


def test_kafka_cluster_ids_never_look_like_an_option() -> None:
    ids = {kafka_cluster_id() for _ in range(3000)}  # a leading "-" would come up ~47 times
    assert len(ids) == 3000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_wait_until_ends_at_once_on_a_fatal_error_and_retries_others() -> None:
    """A component whose process exited will not become ready: the stack reports it at once (with
    its log) instead of probing until the start timeout."""
    calls: list[int] = []

    class Exited(Exception):
        pass

    def check() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("connection refused")  # not yet
        raise Exited("process exited during start-up")

    started = time.monotonic()
    with pytest.raises(Exited):
        process.wait_until(check, timeout_s=60, what="x", interval_s=0.01, fatal=(Exited,))
    assert len(calls) == 3 and time.monotonic() - started < 5
