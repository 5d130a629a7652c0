"""The push server end to end: a real server process, real Redis, real WebSocket clients.

Run: SA_REDIS_URL=redis://127.0.0.1:6391/0 pytest -m integration tests/integration/test_push_*.py
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect

from push_server import disconnect
from push_server.devtokens import claims_for, hs256
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_ALERTS, CHANNEL_FIXED, CHANNEL_SLIDING, StreamEntry
from tests.support.push_process import PushServerProcess, close_code, recv_json, send_json, xadd
from tests.support.waiting import until

pytestmark = pytest.mark.integration

SECRET = "integration-secret-of-sufficient-length-42"


class Env:
    """One server and its isolated stream prefix."""

    def __init__(self, server: PushServerProcess, redis_client: redis.Redis, prefix: str) -> None:
        self.server = server
        self.redis = redis_client
        self.prefix = prefix
        self.settings = Settings.from_env({**server.env})

    def token(self, sub: str = "alice", channels: tuple[str, ...] = ("*",), **kw: Any) -> str:
        return hs256(self.settings, claims_for(self.settings, sub=sub, channels=channels, **kw))

    def publish(self, channel: str, entries: list[StreamEntry], maxlen: int | None = None) -> list[str]:
        return xadd(self.redis, self.prefix, channel, entries, maxlen=maxlen)


@pytest.fixture(scope="module")
def env(redis_url: str) -> Iterator[Env]:
    prefix = f"test-push-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    client.ping()  # Redis must be there: fail, never skip
    server = PushServerProcess({
        "SA_REDIS_URL": redis_url, "SA_REDIS_STREAM_PREFIX": prefix, "SA_PUSH_BROKER": "redis",
        "SA_JWT_SECRET": SECRET, "SA_PUSH_SEND_QUEUE": "64", "SA_PUSH_MAX_MESSAGE_BYTES": "4096",
        "SA_PUSH_AUTH_TIMEOUT_S": "3", "SA_PUSH_ALLOWED_ORIGINS": "http://allowed.example",
        "SA_PUSH_MAX_CONNECTIONS_PER_USER": "200", "SA_LOG_LEVEL": "INFO",
        # Redis-only recovery here; the Postgres fallback is tested in test_push_history.py.
        "SA_PUSH_HISTORY": "none",
    })
    with server:
        yield Env(server, client, prefix)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def aggregate(key: str, n: int, pad: int = 0) -> StreamEntry:
    data: dict[str, Any] = {"kind": "fixed", "count": n, "pad": "x" * pad}
    return StreamEntry(key=key, pane=n, timing="EARLY", final=False, data=data)


async def subscribe(ws: Any, channel: str, **extra: Any) -> dict[str, Any]:
    await send_json(ws, {"type": "subscribe", "id": 2, "channel": channel, **extra})
    reply = await recv_json(ws)
    assert reply["type"] == "subscribed" and reply["channel"] == channel, reply
    return reply


async def connected(url: str, token: str) -> Any:
    ws = await connect(url)
    await send_json(ws, {"type": "connect", "id": 1, "token": token})
    reply = await recv_json(ws)
    assert reply["type"] == "connected", reply
    return ws


async def receive_pubs(ws: Any, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < count:
        doc = await recv_json(ws, timeout)
        if doc["type"] == "pub":
            out.append(doc)
    return out


def test_health_readiness_and_metrics(env: Env) -> None:
    assert env.server.get("/healthz") == (200, '{"status":"ok"}')
    assert env.server.get("/readyz")[0] == 200
    status, body = env.server.get("/metrics")
    assert status == 200
    for name in ("push_connections_active", "push_messages_sent_total", "push_send_latency_seconds_bucket",
                 "push_messages_dropped_total", "push_redis_read_errors_total"):
        assert name in body


def test_subscribe_and_receive_with_query_token(env: Env) -> None:
    async def scenario() -> None:
        async with connect(f"{env.server.ws}?token={env.token()}&v=1") as ws:
            hello = await recv_json(ws)
            assert hello["type"] == "connected" and hello["user"] == "alice"
            reply = await subscribe(ws, CHANNEL_SLIDING)
            ids = env.publish(CHANNEL_SLIDING, [aggregate(f"sliding|country|DE|{i}|{i + 1}", i)
                                                for i in range(5)])
            pubs = await receive_pubs(ws, 5)
            assert [p["offset"] for p in pubs] == ids
            assert pubs[0]["channel"] == CHANNEL_SLIDING and pubs[0]["data"]["count"] == 0
            assert pubs[0]["key"] == "sliding|country|DE|0|1" and pubs[0]["timing"] == "EARLY"
            assert reply["offset"] is not None
            await send_json(ws, {"type": "ping", "id": 9})
            assert await recv_json(ws) == {"type": "pong", "id": 9}

    asyncio.run(scenario())


def test_key_filter(env: Env) -> None:
    async def scenario() -> None:
        async with await connected(env.server.ws, env.token()) as ws:
            await subscribe(ws, CHANNEL_FIXED, keys=["fixed|country|DE"])
            entries = [aggregate(k, i) for i, k in enumerate(
                ["fixed|country|FR|0|1", "fixed|country|DE|0|1", "fixed|country|DEU|0|1",
                 "fixed|country|DE|1|2"])]
            ids = env.publish(CHANNEL_FIXED, entries)
            pubs = await receive_pubs(ws, 2)
            assert [p["offset"] for p in pubs] == [ids[1], ids[3]]
            await send_json(ws, {"type": "ping", "id": 1})  # nothing else was queued before the pong
            assert await recv_json(ws) == {"type": "pong", "id": 1}

    asyncio.run(scenario())


def test_forbidden_channel_closes_with_4505(env: Env) -> None:
    async def scenario() -> int | None:
        async with await connected(env.server.ws, env.token(channels=("aggregates.*",))) as ws:
            await send_json(ws, {"type": "subscribe", "channel": CHANNEL_ALERTS})
            return await close_code(ws)

    assert asyncio.run(scenario()) == disconnect.FORBIDDEN_CHANNEL.code


def test_reconnect_and_recover_without_gap_or_duplicate(env: Env) -> None:
    """A publisher writes all along; the client drops and resumes from its last offset twice."""

    async def scenario() -> tuple[list[str], list[str]]:
        stop = asyncio.Event()
        written: list[str] = []

        async def publisher() -> None:
            n = 0
            while not stop.is_set():
                written.extend(env.publish(CHANNEL_ALERTS, [
                    StreamEntry(f"alert|e{n}", 0, "ON_TIME", True, {"alert_id": f"a{n}"})]))
                n += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(publisher())
        received: list[str] = []
        last: str | None = None
        for _round in range(3):
            async with await connected(env.server.ws, env.token(sub="recoverer")) as ws:
                extra = {} if last is None else {"since": last}
                reply = await subscribe(ws, CHANNEL_ALERTS, **extra)
                if last is None:
                    last = reply["offset"]
                    # entries after the reply's offset are ours: remember where we started
                    start = last
                else:
                    assert reply["recovered"] is True
                for pub in await receive_pubs(ws, 40):
                    received.append(pub["offset"])
                    last = pub["offset"]
            # Away until entries were written that only Redis can give back on the next round.
            away_from = len(written)
            await until(lambda: len(written), lambda n: n >= away_from + 10,  # noqa: B023
                        what="entries written while the client is away")
        stop.set()
        await task
        expected = [o for o in written if _after(o, start)][: len(received)]
        return received, expected

    received, expected = asyncio.run(scenario())
    assert len(received) == 120
    assert len(set(received)) == len(received)
    assert received == expected


def _after(offset: str, start: str) -> bool:
    a, b = offset.split("-"), start.split("-")
    return (int(a[0]), int(a[1])) > (int(b[0]), int(b[1]))


def test_recovery_from_a_trimmed_offset_says_so(env: Env) -> None:
    async def scenario() -> dict[str, Any]:
        ids = env.publish(CHANNEL_FIXED, [aggregate("fixed|trim|x|0|1", i) for i in range(20)])
        env.publish(CHANNEL_FIXED, [aggregate("fixed|trim|x|0|1", 99)], maxlen=5)
        async with await connected(env.server.ws, env.token(sub="trim")) as ws:
            reply = await subscribe(ws, CHANNEL_FIXED, since=ids[0])
            pubs = await receive_pubs(ws, 5)
            assert pubs[-1]["data"]["count"] == 99
            return reply

    reply = asyncio.run(scenario())
    assert reply["recovered"] is False and reply["source"] == "redis"


def test_slow_client_is_disconnected_while_a_fast_one_keeps_receiving(env: Env) -> None:
    total = 1500

    async def scenario() -> tuple[int | None, int]:
        subscribed_before = await asyncio.to_thread(env.server.metric, "push_subscriptions",
                                                    f'channel="{CHANNEL_SLIDING}"')
        # The slow client shrinks its receive buffer and never reads until the end.
        sock = socket.socket()
        # Set before connecting: shrinking the buffer of an established connection stalls TCP.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", env.server.port))
        slow = await connect(env.server.ws, sock=sock, max_queue=1)
        await send_json(slow, {"type": "connect", "token": env.token(sub="slow")})
        await send_json(slow, {"type": "subscribe", "channel": CHANNEL_SLIDING})
        fast = await connected(env.server.ws, env.token(sub="fast"))
        await subscribe(fast, CHANNEL_SLIDING)
        # The slow client reads no reply: the server's subscription count shows it subscribed too.
        await until(lambda: asyncio.to_thread(env.server.metric, "push_subscriptions",
                                              f'channel="{CHANNEL_SLIDING}"'),
                    lambda n: n >= subscribed_before + 2, what="both clients subscribed")

        async def produce() -> None:
            for start in range(0, total, 100):
                env.publish(CHANNEL_SLIDING, [aggregate("sliding|big|x|0|1", i, pad=8000)
                                              for i in range(start, start + 100)])
                # Paced so that the fast reader (this very process) keeps up on a busy 2-core
                # machine; the slow client never reads, so the pace does not matter for it.
                await asyncio.sleep(0.05)

        async def slow_reader() -> int | None:
            # Reads nothing until the server has given up on it, then drains what is in flight
            # (within the server's close timeout) to see the close frame behind it.
            while await asyncio.to_thread(env.server.metric, "push_disconnects_total", 'code="4001"') < 1:
                await asyncio.sleep(0.1)
            return await close_code(slow, timeout=30)

        producer = asyncio.create_task(produce())
        slow_task = asyncio.create_task(slow_reader())
        pubs = await receive_pubs(fast, total, timeout=60)
        await producer
        counts = [p["data"]["count"] for p in pubs]
        assert counts == list(range(total))
        code = await asyncio.wait_for(slow_task, 60)
        await fast.close()
        return code, len(pubs)

    code, fast_received = asyncio.run(scenario())
    assert fast_received == total
    assert code == disconnect.SLOW_CLIENT.code
    assert env.server.metric("push_disconnects_total", 'code="4001"') >= 1
    assert env.server.metric("push_messages_dropped_total") >= 1


def test_one_reader_per_stream_whatever_the_number_of_clients(env: Env) -> None:
    async def scenario() -> int:
        clients = [await connected(env.server.ws, env.token(sub=f"many{i}")) for i in range(25)]
        for ws in clients:
            await subscribe(ws, CHANNEL_FIXED)
        # Every reader this server has is running once all clients got an entry; then count the
        # XREADs blocked in Redis (readers go back to blocking right after a delivery).
        ids = env.publish(CHANNEL_FIXED, [aggregate("fixed|many|x|0|1", 1)])
        for ws in clients:
            assert [p["offset"] for p in await receive_pubs(ws, 1)] == ids

        def blocked_reads() -> int:
            return sum(c.get("cmd") in ("xread", "xread|") for c in env.redis.client_list())

        blocked = await until(lambda: asyncio.to_thread(blocked_reads), lambda n: n >= 3,
                              what="this server's three stream readers blocked in XREAD")
        for ws in clients:
            await ws.close()
        return blocked

    # Readers of this server (3 channels) plus at most those of other servers sharing the Redis.
    blocked = asyncio.run(scenario())
    assert 3 <= blocked < 25


def test_origin_check(env: Env) -> None:
    async def attempt(origin: str) -> str:
        try:
            async with connect(env.server.ws, origin=origin) as ws:  # type: ignore[arg-type]
                await send_json(ws, {"type": "ping"})
                return "open"
        except Exception as exc:  # noqa: BLE001 - the rejected handshake is the expected outcome
            return type(exc).__name__

    assert asyncio.run(attempt("http://allowed.example")) == "open"
    assert asyncio.run(attempt(f"http://127.0.0.1:{env.server.port}")) == "open"
    assert asyncio.run(attempt("http://evil.example")) == "InvalidStatus"
