"""The stack manager on a second, private stack: port fallback, status, stop by PID, errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import redis

from devstack.stack.manager import Stack, StackError
from streaming_analytics.settings import Settings, endpoints_file


def test_redis_moves_to_a_free_port_when_the_default_is_taken(tmp_path: Path, settings: Settings) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        stack = Stack(tmp_path / "stack", settings.tools_dir,
                      {"SA_REDIS_URL": f"redis://127.0.0.1:{taken}/0"})
        # SA_REDIS_URL in the environment means "prefer this port"; Redis is not an external-DSN
        # component, so the stack starts its own and must pick another port.
        assert stack.up(["redis"], log=False) == ["redis"]
    try:
        published = json.loads(endpoints_file(tmp_path / "stack").read_text())
        port = int(published["SA_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        assert port != taken
        assert redis.Redis(port=port).ping()
        [row] = [r for r in stack.status() if r.name == "redis"]
        assert row.state == "running" and len(row.pids) == 1
        assert stack.up(["redis"], log=False) == [], "a healthy component is not started twice"
        [proc] = stack.processes("redis")
    finally:
        assert stack.down(log=False) == ["redis"]
    assert not proc.alive()
    assert [r.state for r in stack.status() if r.name == "redis"] == ["stopped"]


def test_a_component_that_cannot_start_is_reported_with_what_to_do(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack", tmp_path / "no-tools", {})
    with pytest.raises(StackError, match=r"Kafka jars missing .*make install"):
        stack.up(["kafka"], log=False)
    assert stack.status()[0].state == "stopped"


def test_unknown_components_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown component"):
        Stack(tmp_path, tmp_path, {}).up(["zookeeper"], log=False)
