"""Bring the local stack up and down, and remember what it started.

State lives in ``<stack dir>/state.json`` (ports, endpoints, processes with PID and start time) and
the endpoints every client needs are published in ``<stack dir>/endpoints.json``, which
:mod:`streaming_analytics.settings` reads. A file lock serialises concurrent ``up``/``down`` calls.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.stack import process
from devstack.stack.components import COMPONENTS, Component, ComponentError, StackContext
from devstack.stack.process import RunningProcess
from streaming_analytics import settings as settings_module


class StackError(RuntimeError):
    """The stack could not do what was asked; the message names the component and its log."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    state: str  # "running", "stopped", "degraded", "external"
    pids: tuple[int, ...]
    detail: str


class Stack:
    """The local stack rooted at one directory."""

    def __init__(self, stack_dir: Path, tools_dir: Path, environ: dict[str, str] | None = None) -> None:
        self.stack_dir = stack_dir.resolve()
        self.tools_dir = tools_dir.resolve()
        self.environ = dict(os.environ if environ is None else environ)
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        self._state_path = self.stack_dir / "state.json"

    @classmethod
    def from_settings(cls) -> Stack:
        s = settings_module.Settings.from_env()
        return cls(s.stack_dir, s.tools_dir)

    # --- state ---------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data: dict[str, dict[str, object]] = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            data = {}
        for key in ("ports", "endpoints", "processes"):
            data.setdefault(key, {})
        return data

    def _save(self, state: dict[str, dict[str, object]]) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self._state_path)
        endpoints = settings_module.endpoints_file(self.stack_dir)
        endpoints.write_text(json.dumps(state["endpoints"], indent=2, sort_keys=True))

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, object]]]:
        with (self.stack_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._load()
            try:
                yield state
            finally:
                self._save(state)

    @staticmethod
    def _processes(state: dict[str, dict[str, object]], component: str) -> list[RunningProcess]:
        raw = state["processes"].get(component, [])
        assert isinstance(raw, list)
        return [RunningProcess.from_json(p) for p in raw]

    def _context(self, state: dict[str, dict[str, object]]) -> StackContext:
        ports = {k: int(str(v)) for k, v in state["ports"].items()}
        endpoints = {k: str(v) for k, v in state["endpoints"].items()}
        return StackContext(self.stack_dir, self.tools_dir, self.environ, ports, endpoints)

    # --- operations ----------------------------------------------------------------------------
    def up(self, names: Sequence[str] | None = None, *, profiles: Sequence[str] = ("infra",),
           log: bool = True) -> list[str]:
        """Start the named components (or every one of ``profiles``) and their dependencies.

        Components already running and healthy are left alone. Returns the names started now. On a
        failure, what this call started is stopped again and :class:`StackError` says why.
        """
        wanted = _with_dependencies(names, profiles)
        started: list[str] = []
        with self._locked() as state:
            ctx = self._context(state)
            try:
                for component in wanted:
                    if self._running(state, ctx, component):
                        component.after_start(ctx)  # idempotent: heals an interrupted earlier start
                        continue
                    if log:
                        print(f"starting {component.name} ...", flush=True)
                    t0 = time.monotonic()
                    started.append(component.name)  # before starting: a failure must stop it too
                    self._start(state, ctx, component)
                    if log:
                        print(f"  {component.name} ready in {time.monotonic() - t0:.1f} s", flush=True)
            except (ComponentError, TimeoutError, OSError) as exc:
                for name in reversed(started):
                    self._stop_component(state, name)
                raise StackError(str(exc)) from exc
            finally:
                state["ports"] = dict(ctx.ports)
                state["endpoints"] = dict(ctx.endpoints)
        return started

    def _running(self, state: dict[str, dict[str, object]], ctx: StackContext, component: Component) -> bool:
        procs = self._processes(state, component.name)
        if component.external(ctx):
            component.prepare(ctx)
            return _probe(component, ctx)
        return bool(procs) and all(p.alive() for p in procs) and _probe(component, ctx)

    def _start(self, state: dict[str, dict[str, object]], ctx: StackContext, component: Component) -> None:
        self._stop_component(state, component.name)  # leftovers of a half-dead earlier run
        specs = component.prepare(ctx)
        running: list[RunningProcess] = []
        state["processes"][component.name] = running_json = []
        for spec in specs:
            proc = process.start(spec, ctx.log_path(spec.name))
            running.append(proc)
            running_json.append(proc.to_json())
            state["ports"], state["endpoints"] = dict(ctx.ports), dict(ctx.endpoints)
            self._save(state)  # record PIDs at once, so that `down` finds them even if we crash

        def ready() -> bool:
            for proc in running:
                if not proc.alive():
                    raise ComponentError(
                        f"{component.name}: process {proc.name} exited during start-up; last lines of "
                        f"{proc.log}:\n{_tail(Path(proc.log))}"
                    )
            return component.healthy(ctx)

        try:
            process.wait_until(ready, component.start_timeout_s, component.name, fatal=(ComponentError,))
        except ComponentError:
            raise
        except TimeoutError as exc:
            logs = "\n".join(f"--- {p.log}\n{_tail(Path(p.log))}" for p in running)
            raise ComponentError(f"{exc}\n{logs}") from None
        component.after_start(ctx)

    def down(self, names: Sequence[str] | None = None, *, log: bool = True) -> list[str]:
        """Stop the named components (default: all), in reverse start order, by recorded PID."""
        stopped: list[str] = []
        with self._locked() as state:
            order = [c.name for c in reversed(COMPONENTS) if names is None or c.name in names]
            for name in order:
                if self._stop_component(state, name):
                    stopped.append(name)
                    if log:
                        print(f"stopped {name}", flush=True)
        return stopped

    def _stop_component(self, state: dict[str, dict[str, object]], name: str) -> bool:
        procs = self._processes(state, name)
        any_alive = False
        for proc in reversed(procs):
            any_alive |= process.stop(proc)
        state["processes"].pop(name, None)
        return any_alive

    def restart(self, name: str) -> None:
        """Stop one component and start it again on the same ports (fault tests use this)."""
        self.down([name], log=False)
        self.up([name], log=False)

    def exited_processes(self) -> list[str] | None:
        """Names of recorded processes that are no longer running (by PID and start time, no
        probes); None when nothing is recorded any more (someone ran ``down``).

        While another ``up``/``down`` holds the stack's lock, processes stopping on purpose are not
        failures: report nothing until it is done.
        """
        with (self.stack_dir / ".lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []
            state = self._load()
        recorded = [p for raw in state["processes"].values() if isinstance(raw, list)
                    for p in (RunningProcess.from_json(d) for d in raw)]
        if not recorded:
            return None
        return [p.name for p in recorded if not p.alive()]

    def processes(self, name: str) -> list[RunningProcess]:
        """The recorded processes of one component (fault tests kill or restart them)."""
        return self._processes(self._load(), name)

    def status(self) -> list[ComponentStatus]:
        state = self._load()
        ctx = self._context(state)
        rows = []
        for component in COMPONENTS:
            procs = self._processes(state, component.name)
            if component.external(ctx):
                rows.append(ComponentStatus(component.name, "external", (), "user-provided server"))
                continue
            alive = [p for p in procs if p.alive()]
            if not procs:
                rows.append(ComponentStatus(component.name, "stopped", (), ""))
            elif len(alive) < len(procs):
                dead = ", ".join(p.name for p in procs if not p.alive())
                rows.append(ComponentStatus(component.name, "degraded", tuple(p.pid for p in alive),
                                            f"exited: {dead}"))
            else:
                healthy = _probe(component, ctx)
                urls = ", ".join(f"{k}: {v}" for k, v in component.urls(ctx).items())
                rows.append(ComponentStatus(component.name, "running" if healthy else "unhealthy",
                                            tuple(p.pid for p in alive), urls))
        return rows

    def urls(self) -> dict[str, str]:
        state = self._load()
        ctx = self._context(state)
        out: dict[str, str] = {}
        for component in COMPONENTS:
            if state["processes"].get(component.name) or component.external(ctx):
                out.update(component.urls(ctx))
        return out

    def endpoints(self) -> dict[str, str]:
        """What the stack published in endpoints.json (the SA_* variables of its services)."""
        return {k: str(v) for k, v in self._load()["endpoints"].items()}

    def log_files(self) -> list[Path]:
        return sorted((self.stack_dir / "logs").rglob("*.log"))


def _with_dependencies(names: Sequence[str] | None, profiles: Sequence[str]) -> list[Component]:
    known = {c.name: c for c in COMPONENTS}
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise StackError(f"unknown component(s) {', '.join(unknown)}; known: {', '.join(known)}")
        wanted = set(names)
    else:
        wanted = {c.name for c in COMPONENTS if c.profile in profiles}
    pending = list(wanted)
    while pending:
        for dep in known[pending.pop()].depends_on:
            if dep not in wanted:
                wanted.add(dep)
                pending.append(dep)
    return [c for c in COMPONENTS if c.name in wanted]


def _probe(component: Component, ctx: StackContext) -> bool:
    try:
        return component.healthy(ctx)
    except Exception:  # noqa: BLE001 - any failure of a health probe means "not healthy"
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
