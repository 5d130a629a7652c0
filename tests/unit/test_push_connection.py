"""The WebSocket connection protocol over an in-memory transport: handshake, commands, fan-out,
backpressure, closes and timers — every path without a socket or a running server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from push_server import disconnect
from push_server.broker import MemoryBroker
from push_server.connection import CLOSE_TIMEOUT_S, Connection
from push_server.devtokens import claims_for, hs256
from push_server.node import Node
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_FIXED, StreamEntry
from tests.support.waiting import until
from tests.unit.push_fakes import FakeTransport, Peer

pytestmark = pytest.mark.unit

SETTINGS = replace(Settings.from_env({}), jwt_secret="unit-secret-of-sufficient-length-0123456789",
                   push_history="none", push_send_queue=4, push_ping_interval_s=20,
                   push_auth_timeout_s=5, push_allowed_origins=("https://dash.example",))


def upgrade(path: str = "/ws", *, origin: str | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:8000", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def entry(n: int) -> StreamEntry:
    return StreamEntry(key="fixed|country|DE|0|60000", pane=n, timing="EARLY", final=False,
                       data={"count": n, "pad": "x" * 200})


class Env:
    """A node on the memory broker, inside a running event loop."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.settings = settings
        self.broker = MemoryBroker()
        self.node = Node(settings, broker=self.broker)

    def token(self, **overrides: object) -> str:
        return hs256(self.settings, claims_for(self.settings, sub="alice", channels=["*"], **overrides))

    def open(self, request: bytes | None = None) -> tuple[Connection, FakeTransport, Peer]:
        """A connection past the handshake (or refused by it), as the listener would hand it over."""
        connection = Connection(self.node)
        transport = FakeTransport(connection)
        connection.connection_made(transport)
        connection.data_received(upgrade() if request is None else request)
        head, sep, _frames = bytes(transport.wire).partition(b"\r\n\r\n")
        assert sep, "no HTTP response"
        del transport.wire[: len(head) + len(sep)]  # the peer reads the frames after it
        transport.response = head.decode()  # type: ignore[attr-defined]
        return connection, transport, Peer(transport)

    def connected(self) -> tuple[Connection, FakeTransport, Peer]:
        connection, transport, peer = self.open()
        peer.send_text(json.dumps({"type": "connect", "id": 1, "token": self.token()}))
        [reply] = peer.texts()
        assert json.loads(reply)["type"] == "connected"
        return connection, transport, peer


@pytest.fixture
def env() -> Iterator[Env]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    environment = Env()
    loop.run_until_complete(environment.node.start())
    yield environment
    loop.run_until_complete(environment.node.stop())
    loop.close()
    asyncio.set_event_loop(None)


def subscribe(peer: Peer, channel: str = CHANNEL_FIXED, **extra: object) -> None:
    peer.send_text(json.dumps({"type": "subscribe", "id": 2, "channel": channel, **extra}))


def test_handshake_connect_subscribe_and_receive(env: Env) -> None:
    connection, transport, peer = env.connected()
    assert transport.response.startswith("HTTP/1.1 101")  # type: ignore[attr-defined]
    subscribe(peer)
    assert json.loads(peer.texts()[0])["type"] == "subscribed"
    offsets = [env.broker.publish(CHANNEL_FIXED, entry(n)) for n in range(3)]
    pubs = [json.loads(t) for t in peer.texts()]
    assert [p["offset"] for p in pubs] == offsets and [p["data"]["count"] for p in pubs] == [0, 1, 2]
    assert env.node.send_stats.frames == 2 + 3
    assert connection in env.node.connections and env.node.hub.client_count == 1


def test_query_token_and_fragmented_command(env: Env) -> None:
    _, _, peer = env.open(upgrade(f"/ws?token={env.token()}"))
    [reply] = peer.texts()
    assert json.loads(reply)["type"] == "connected"
    command = json.dumps({"type": "ping", "id": 7}).encode()
    peer.send_frame(Frame(Opcode.TEXT, command[:5], fin=False))
    peer.send_frame(Frame(Opcode.CONT, command[5:], fin=True))
    assert json.loads(peer.texts()[0]) == {"type": "pong", "id": 7}


@pytest.mark.parametrize(("request_bytes", "status"), [
    (upgrade("/other"), "404"),
    (upgrade(origin="https://evil.example"), "403"),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "426"),  # not an upgrade
])
def test_refused_handshakes_answer_http_and_close(env: Env, request_bytes: bytes, status: str) -> None:
    connection, transport, _ = env.open(request_bytes)
    assert transport.response.split(" ")[1] == status  # type: ignore[attr-defined]
    assert transport.closed and env.node.hub.client_count == 0
    connection.connection_lost(None)
    assert connection not in env.node.connections


def test_allowed_origin_and_same_host_pass(env: Env) -> None:
    for origin in ("https://dash.example", "http://127.0.0.1:8000"):
        _, transport, _ = env.open(upgrade(origin=origin))
        assert transport.response.startswith("HTTP/1.1 101")  # type: ignore[attr-defined]


def test_invalid_utf8_fails_with_1007_and_binary_gets_4502(env: Env) -> None:
    _, _, peer = env.connected()
    peer.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
    assert Peer.close_code(peer.frames()) == 1007
    _, _, other = env.connected()
    other.send_binary(b"\x00\x01")
    assert Peer.close_code(other.frames()) == disconnect.BINARY_FRAME.code


def backed_up(env: Env) -> tuple[Connection, FakeTransport, Peer]:
    """A subscribed client whose peer stopped reading; its transport is full after one frame."""
    connection, transport, peer = env.connected()
    subscribe(peer)
    peer.texts()
    transport.block()
    transport.high = 100
    return connection, transport, peer


def test_a_backed_up_client_queues_then_flushes_in_order(env: Env) -> None:
    connection, transport, peer = backed_up(env)
    offsets = [env.broker.publish(CHANNEL_FIXED, entry(n)) for n in range(5)]  # 1 buffered + 4 queued
    assert len(connection.outbox) == 4
    transport.drain()
    assert [json.loads(t)["offset"] for t in peer.texts()] == offsets
    assert env.node.hub.client_count == 1


def test_a_slow_client_is_closed_with_4001_right_behind_what_the_socket_holds(env: Env) -> None:
    connection, transport, peer = backed_up(env)
    for n in range(6):  # 1 in the transport, 4 queued, the 6th does not fit
        env.broker.publish(CHANNEL_FIXED, entry(n))
    assert env.node.hub.client_count == 0 and len(connection.outbox) == 0  # backlog dropped
    transport.drain()
    frames = peer.frames()
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]
    assert Peer.close_code(frames) == disconnect.SLOW_CLIENT.code


def test_graceful_close_sends_the_backlog_first(env: Env) -> None:
    connection, transport, peer = backed_up(env)
    offsets = [env.broker.publish(CHANNEL_FIXED, entry(n)) for n in range(3)]
    connection.kick(disconnect.SHUTDOWN)
    assert Peer.close_code(peer.frames()) is None  # nothing yet: the socket is backed up
    transport.drain()
    frames = peer.frames()
    assert [json.loads(bytes(f.data))["offset"] for f in frames if f.opcode is Opcode.TEXT] == offsets
    assert frames[-1].opcode is Opcode.CLOSE and Peer.close_code(frames) == disconnect.SHUTDOWN.code
    peer.flush()  # the client's close echo completes the handshake
    assert transport.closed


def test_commands_wait_for_a_recovering_subscribe_and_keep_their_order(env: Env) -> None:
    async def scenario() -> None:
        offsets = [env.broker.publish(CHANNEL_FIXED, entry(n)) for n in range(3)]
        _, transport, peer = env.connected()
        subscribe(peer, since=offsets[0])
        peer.send_text(json.dumps({"type": "ping", "id": 9}))  # arrives while the replay runs
        assert not transport.reading
        texts = await until(peer.texts, lambda got: len(got) >= 4, what="the replay and the pong")
        docs = [json.loads(t) for t in texts]
        assert [d["type"] for d in docs] == ["subscribed", "pub", "pub", "pong"]
        assert [d["offset"] for d in docs[1:3]] == offsets[1:]
        assert transport.reading
        live = env.broker.publish(CHANNEL_FIXED, entry(9))
        assert [json.loads(t)["offset"] for t in peer.texts()] == [live]

    asyncio.get_event_loop().run_until_complete(scenario())


def test_timers_auth_timeout_keepalive_and_close_timeout(env: Env) -> None:
    connection, _, peer = env.open()
    opened = 1000.0
    connection.tick(opened, connection.session.deadline() - 1)  # type: ignore[union-attr]
    assert Peer.close_code(peer.frames()) is None
    connection.tick(opened, connection.session.deadline() + 0.1)  # type: ignore[union-attr]
    assert Peer.close_code(peer.frames()) == disconnect.AUTH_TIMEOUT.code

    alive, transport, peer = env.connected()
    base = time.monotonic()
    alive.tick(base + 19, time.time())
    assert peer.frames() == []
    alive.tick(base + 21, time.time())  # nothing heard for a ping interval: ping
    assert [f.opcode for f in peer.frames()] == [Opcode.PING]
    alive.tick(base + 42, time.time())  # no answer within another interval: cut with 1011
    assert Peer.close_code(peer.frames()) == 1011
    assert not transport.aborted
    alive.tick(base + 42 + CLOSE_TIMEOUT_S + 1, time.time())  # the peer never completes the close
    assert transport.aborted


WIRE_CLOSE_CODES = {1002, 1007, 1009, 1011}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4))
def test_raw_garbage_after_the_handshake_never_escapes_and_gets_a_documented_close(
        env: Env, garbage: list[bytes]) -> None:
    """Bytes that are not (valid) WebSocket frames: the protocol layer never raises into asyncio,
    and whatever close the server sends carries a documented code."""
    connection, transport, peer = env.connected()
    for chunk in garbage:
        if transport.closed:
            break
        connection.data_received(chunk)
    frames = peer.frames()
    code = Peer.close_code(frames)
    assert code is None or code in WIRE_CLOSE_CODES | {d.code for d in disconnect.ALL}
    connection.connection_lost(None)
    assert connection not in env.node.connections and env.node.hub.client_count == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.binary(max_size=400), more=st.binary(max_size=100))
def test_a_garbage_handshake_is_refused_without_an_exception(env: Env, head: bytes, more: bytes) -> None:
    connection = Connection(env.node)
    transport = FakeTransport(connection)
    connection.connection_made(transport)
    connection.data_received(head + b"\r\n\r\n")
    if more:  # what a client sends before it sees the refusal (the transport closes asynchronously)
        connection.data_received(more)
    assert connection.session is None  # never a WebSocket, so never a session
    connection.connection_lost(None)
    assert connection not in env.node.connections
