"""Process lifecycle against real services: graceful drain on SIGTERM, Redis restarted under clients."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect

from devstack.stack.process import free_port, wait_until
from push_server import disconnect
from push_server.devtokens import claims_for, hs256
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_ALERTS, StreamEntry
from tests.support.push_process import PushServerProcess, close_code, recv_json, send_json, xadd
from tests.support.waiting import until

pytestmark = pytest.mark.integration

SECRET = "lifecycle-secret-of-sufficient-length-4242"


def token(server: PushServerProcess, sub: str) -> str:
    s = Settings.from_env(server.env)
    return hs256(s, claims_for(s, sub=sub, channels=["*"]))


def alert(n: int) -> StreamEntry:
    return StreamEntry(f"alert|e{n}", 0, "ON_TIME", True, {"alert_id": f"a{n}", "n": n})


async def subscriber(server: PushServerProcess, sub: str) -> Any:
    ws = await connect(f"{server.ws}?token={token(server, sub)}")
    assert (await recv_json(ws))["type"] == "connected"
    await send_json(ws, {"type": "subscribe", "channel": CHANNEL_ALERTS})
    assert (await recv_json(ws))["type"] == "subscribed"
    return ws


def test_sigterm_drains_clients_with_reconnect_advice(redis_url: str) -> None:
    prefix = f"test-push-drain-{uuid.uuid4().hex[:8]}:"
    server = PushServerProcess({"SA_REDIS_URL": redis_url, "SA_REDIS_STREAM_PREFIX": prefix,
                                "SA_JWT_SECRET": SECRET, "SA_PUSH_DRAIN_TIMEOUT_S": "5"})
    with server:
        async def scenario() -> tuple[list[int | None], int]:
            clients = [await subscriber(server, f"drain{i}") for i in range(3)]
            server.proc.send_signal(15)  # type: ignore[union-attr]
            codes = [await close_code(ws, timeout=15) for ws in clients]
            exit_code = await asyncio.to_thread(server.proc.wait, 20)  # type: ignore[union-attr]
            return codes, exit_code

        codes, exit_code = asyncio.run(scenario())
        log = server.log()
    assert codes == [disconnect.SHUTDOWN.code] * 3
    assert exit_code == 0
    # The drain ended because the clients left, not because its timeout cut them.
    assert "draining 3 connections" in log and "drain timeout" not in log, log
    assert disconnect.SHUTDOWN.reconnect


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A real Redis of this test only (durable AOF), so that it can be restarted."""
    port = free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp_path),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    state = {"proc": proc}
    _wait_ready(port)
    yield f"redis://127.0.0.1:{port}/0", argv
    current = state["proc"]
    if current.poll() is None:
        current.terminate()
        current.wait(10)


def _wait_ready(port: int) -> None:
    wait_until(redis.Redis(port=port).ping, 10, "redis", interval_s=0.05)


def test_redis_restart_under_live_clients_loses_nothing(own_redis: tuple[str, list[str]]) -> None:
    url, argv = own_redis
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    prefix = "test-push-restart:"
    server = PushServerProcess({"SA_REDIS_URL": url, "SA_REDIS_STREAM_PREFIX": prefix,
                                "SA_JWT_SECRET": SECRET})
    with server:
        async def scenario() -> tuple[list[str], list[str], float]:
            ws = await subscriber(server, "survivor")
            client = redis.Redis.from_url(url)
            written = xadd(client, prefix, CHANNEL_ALERTS, [alert(i) for i in range(50)])
            client.shutdown(nosave=False)  # persists the AOF, then exits
            client.close()
            errors = await until(lambda: asyncio.to_thread(server.metric, "push_redis_read_errors_total"),
                                 what="the push server's reader failing against the stopped Redis")
            restarted = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
            try:
                await asyncio.to_thread(_wait_ready, port)
                client = redis.Redis.from_url(url)
                written += xadd(client, prefix, CHANNEL_ALERTS, [alert(i) for i in range(50, 100)])
                received = []
                while len(received) < len(written):
                    doc = await recv_json(ws, timeout=20)
                    received.append(doc["offset"])
                await ws.close()
                client.close()
            finally:
                restarted.terminate()
                restarted.wait(10)
            return written, received, errors

        written, received, errors = asyncio.run(scenario())
    assert received == written
    assert errors >= 1
