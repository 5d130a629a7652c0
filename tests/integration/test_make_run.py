"""`make run`'s supervisor end to end: everything comes up, and Ctrl-C in its terminal or `make
stop` from another leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.stack.manager import Stack
from devstack.stack.process import proc_start_ticks
from streaming_analytics.settings import Settings


@pytest.mark.slow
@pytest.mark.parametrize("stop_with", ["ctrl_c", "make_stop"])
def test_run_starts_everything_and_stopping_leaves_no_process(tmp_path: Path, settings: Settings,
                                                              stop_with: str) -> None:
    stack_dir = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SA_")}
    env.update({"SA_STACK_DIR": str(stack_dir), "SA_TOOLS_DIR": str(settings.tools_dir),
                "SA_RUN_GENERATOR_RATE": "50"})
    # The test stack already holds the default ports: this run must move to free ones.
    supervisor = subprocess.Popen([sys.executable, "-m", "devstack.stack", "run"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    recorded = []
    try:
        assert supervisor.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = supervisor.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(output)
        assert "Press Ctrl-C" in text, text
        for what in ("Kafka bootstrap", "PostgreSQL", "Redis", "Flink web UI", "Events (kcat)", "Pipeline",
                     "Push WebSocket"):
            assert what in text
        stack = Stack(stack_dir, settings.tools_dir, env)
        names = ("kafka", "postgres", "redis", "flink", "flink-taskmanager", "worker-pool",
                 "expansion-service", "generator", "pipeline", "push-server")
        recorded = [p for name in names for p in stack.processes(name)]
        assert len(recorded) == len(names)
        assert all(p.alive() for p in recorded)
        # The job runs on the stack's own Flink cluster (the default runner).
        assert "runner flink" in text and "job " in text
    finally:
        if stop_with == "make_stop" and recorded:
            # What `make stop` runs, from another process; the supervisor must notice and end.
            down = subprocess.run([sys.executable, "-m", "devstack.stack", "down"], env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
            output.append(down.stdout + down.stderr)
        else:
            supervisor.send_signal(signal.SIGINT)
        rest, _ = supervisor.communicate(timeout=120)
        output.append(rest)
    text = "".join(output)
    assert supervisor.returncode == 0, text
    for proc in recorded:
        assert proc_start_ticks(proc.pid) != proc.start_ticks, f"{proc.name} (pid {proc.pid}) survived"
    assert "stopped kafka" in text
    if stop_with == "make_stop":
        assert "the stack was stopped elsewhere" in text
