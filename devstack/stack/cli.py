"""Command line of the local stack.

    python -m devstack.stack up [COMPONENT ...]     start (default: kafka postgres redis flink)
    python -m devstack.stack run                    up + the platform's processes; Ctrl-C stops all
    python -m devstack.stack down [COMPONENT ...]   stop what the stack started
    python -m devstack.stack status                 one line per component
    python -m devstack.stack logs [COMPONENT] [-f]  show (or follow) the logs
    python -m devstack.stack env                    the endpoints as shell exports
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from devstack.stack.manager import Stack, StackError
from devstack.stack.process import reap_children


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start components and wait until healthy")
    up.add_argument("components", nargs="*")
    sub.add_parser("run", help="start everything, print where to look, stop all on Ctrl-C")
    down = sub.add_parser("down", help="stop components")
    down.add_argument("components", nargs="*")
    sub.add_parser("status", help="show component status")
    logs = sub.add_parser("logs", help="print logs")
    logs.add_argument("component", nargs="?")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=40)
    sub.add_parser("env", help="print the endpoints as shell exports")
    args = parser.parse_args(argv)

    stack = Stack.from_settings()
    try:
        if args.command == "up":
            stack.up(args.components or None)
            _print_urls(stack)
        elif args.command == "run":
            return _run(stack)
        elif args.command == "down":
            stopped = stack.down(args.components or None)
            if not stopped:
                print("nothing was running")
        elif args.command == "status":
            for row in stack.status():
                pids = ",".join(map(str, row.pids)) or "-"
                print(f"{row.name:<18} {row.state:<10} pid {pids:<14} {row.detail}")
        elif args.command == "logs":
            return _logs(stack, args.component, args.follow, args.lines)
        elif args.command == "env":
            for key, value in stack.endpoints().items():
                print(f"export {key}={shlex.quote(value)}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_urls(stack: Stack) -> None:
    print("\nThe stack is up:")
    for what, url in stack.urls().items():
        print(f"  {what:<16} {url}")
    print(f"  {'Logs':<16} {stack.stack_dir / 'logs'}  (make logs)")


def _run(stack: Stack) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stack.up(profiles=("infra", "app"))
        _print_urls(stack)
        print("\nPress Ctrl-C (or run `make stop` elsewhere) to stop everything.", flush=True)
        # Watch the recorded PIDs only: a health probe per component every tick is work the
        # supervisor does not need (`make status` probes on demand).
        while not stop.wait(0.5):
            reap_children()
            exited = stack.exited_processes()
            if exited is None:
                print("the stack was stopped elsewhere")
                return 0
            if exited:
                for name in exited:
                    print(f"error: {name} exited; see `make logs`", file=sys.stderr)
                return 1
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nstopping ...", flush=True)
        stack.down()


def _logs(stack: Stack, component: str | None, follow: bool, lines: int) -> int:
    files = [f for f in stack.log_files() if component is None or f.name.startswith(component)]
    if not files:
        print("no logs yet", file=sys.stderr)
        return 1
    argv = ["tail", "-n", str(lines)] + (["-F"] if follow else []) + [str(Path(f)) for f in files]
    try:
        return subprocess.call(argv)
    except KeyboardInterrupt:
        return 0
