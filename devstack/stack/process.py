"""Start and stop the stack's child processes, by PID only.

Each process is started in its own session (so its PID is also its process-group id and a
Ctrl-C in the developer's terminal reaches only the supervisor, which then stops the children in
order). Its identity is recorded as (PID, start time from /proc) so that a stale state file can
never make us signal an unrelated process that reused the PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for one stack process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None  # run as this user (PostgreSQL refuses to run as root)
    stop_timeout_s: float = 20.0
    stop_signal: int = signal.SIGTERM  # the process's own "shut down cleanly" signal


@dataclass(frozen=True)
class RunningProcess:
    """A process we started, as recorded in the stack's state file."""

    name: str
    pid: int
    start_ticks: int
    log: str
    stop_timeout_s: float = 20.0
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        return proc_start_ticks(self.pid) == self.start_ticks

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "start_ticks": self.start_ticks, "log": self.log,
                "stop_timeout_s": self.stop_timeout_s, "stop_signal": int(self.stop_signal)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RunningProcess:
        return cls(name=str(data["name"]), pid=int(str(data["pid"])),
                   start_ticks=int(str(data["start_ticks"])), log=str(data["log"]),
                   stop_timeout_s=float(str(data.get("stop_timeout_s", 20.0))),
                   stop_signal=int(str(data.get("stop_signal", int(signal.SIGTERM)))))


def proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has exited; it only waits to be reaped
        return None
    return int(fields[19])


def start(spec: ProcessSpec, log_path: Path) -> RunningProcess:
    """Start ``spec`` detached, appending its stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.env}
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(spec.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(  # fixed argv built by our own components
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=spec.cwd,
            env=env,
            start_new_session=True,
            user=spec.user,
            group=spec.user,
            extra_groups=[] if spec.user else None,
        )
    ticks = None
    for _ in range(50):
        ticks = proc_start_ticks(proc.pid)
        if ticks is not None or proc.poll() is not None:
            break
        time.sleep(0.01)
    if ticks is None:
        raise RuntimeError(f"{spec.name} exited at once (exit code {proc.poll()}); see {log_path}")
    return RunningProcess(spec.name, proc.pid, ticks, str(log_path), spec.stop_timeout_s, spec.stop_signal)


def stop(proc: RunningProcess) -> bool:
    """Send the process group its stop signal, wait, then SIGKILL it. Returns whether it ran."""
    if not proc.alive():
        return False
    _signal_group(proc.pid, signal.Signals(proc.stop_signal))
    deadline = time.monotonic() + proc.stop_timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            _wait_gone(proc.pid)
            return True
        time.sleep(0.1)
    _signal_group(proc.pid, signal.SIGKILL)
    for _ in range(50):
        if not proc.alive():
            break
        time.sleep(0.1)
    _wait_gone(proc.pid)
    return True


def kill(proc: RunningProcess, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to one recorded process (fault tests use this for kill -9)."""
    if proc.alive():
        os.kill(proc.pid, sig)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


def reap_children() -> None:
    """Reap every exited child of this process. A supervisor must: a child stopped by another
    process (`make stop` elsewhere) stays a zombie — and its PID taken — until its parent reaps it."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Reap ``pid`` if it is our child, and wait until not even its zombie is left: a restarted
    server checks whether its predecessor's PID still exists (PostgreSQL's postmaster.pid does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # not our child: init reaps it
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on host:port (we can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.25,
               fatal: tuple[type[Exception], ...] = ()) -> None:
    """Poll ``check()`` until it returns truthy; raise TimeoutError naming ``what`` otherwise.

    An exception of a ``fatal`` type ends the wait at once (a process that exited will not become
    ready); any other means "not yet".
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not yet"
            last_error = exc
        time.sleep(interval_s)
    detail = f" (last error: {last_error})" if last_error else ""
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s{detail}")
