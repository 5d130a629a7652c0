"""TLS and connection limits of the real push server (a real process, real Redis, real clients).

- TLS: with ``SA_PUSH_TLS_CERT``/``SA_PUSH_TLS_KEY`` set the server speaks ``wss://`` (a
  self-signed certificate for 127.0.0.1, made here with ``cryptography``); a client trusting it
  subscribes and receives, a plain ``ws://`` client on the same port does not get in.
- Limits: ``SA_PUSH_MAX_CONNECTIONS`` (per process) and ``SA_PUSH_MAX_CONNECTIONS_PER_USER``; the
  connection over a limit is closed with 4003 (TOO_MANY_CONNECTIONS), the others keep receiving,
  and the slot is free again once a client leaves.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage

from push_server import disconnect
from push_server.devtokens import claims_for, hs256
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_ALERTS, StreamEntry
from tests.support.push_process import PushServerProcess, close_code, recv_json, send_json, xadd
from tests.support.waiting import until

pytestmark = pytest.mark.integration

SECRET = "limits-tls-secret-of-sufficient-length-4242"
MAX_CONNECTIONS = 4
MAX_PER_USER = 2
Served = tuple[PushServerProcess, redis.Redis, str]  # a server, a Redis client, the stream prefix


# --- helpers --------------------------------------------------------------------------------------

def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for IP 127.0.0.1 (and its key), as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def token(server: PushServerProcess, sub: str) -> str:
    s = Settings.from_env(server.env)
    return hs256(s, claims_for(s, sub=sub, channels=["*"]))


def alert(n: int) -> StreamEntry:
    return StreamEntry(f"alert|l{n}", 0, "ON_TIME", True, {"alert_id": f"l{n}", "n": n})


async def open_ws(server: PushServerProcess, sub: str) -> ClientConnection:
    """Connect as ``sub`` (first-message auth); the server's reply is left unread."""
    ws = await connect(server.ws, ssl=server.client_ssl())
    await send_json(ws, {"type": "connect", "id": 1, "token": token(server, sub)})
    return ws


async def subscriber(server: PushServerProcess, sub: str) -> ClientConnection:
    """An authenticated client subscribed to alerts."""
    ws = await open_ws(server, sub)
    hello = await recv_json(ws)
    assert hello["type"] == "connected" and hello["user"] == sub, hello
    await send_json(ws, {"type": "subscribe", "id": 2, "channel": CHANNEL_ALERTS})
    reply = await recv_json(ws)
    assert reply["type"] == "subscribed" and reply["channel"] == CHANNEL_ALERTS, reply
    return ws


async def offsets(ws: ClientConnection, count: int) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        doc = await recv_json(ws, timeout=10)
        assert doc["type"] == "pub" and doc["channel"] == CHANNEL_ALERTS, doc
        out.append(doc["offset"])
    return out


async def all_receive(clients: list[ClientConnection], client: redis.Redis, prefix: str,
                      first: int) -> None:
    """Publish three alerts; every client gets exactly them, in order, and still answers ping."""
    ids = xadd(client, prefix, CHANNEL_ALERTS, [alert(first + i) for i in range(3)])
    for ws in clients:
        assert await offsets(ws, 3) == ids
        await send_json(ws, {"type": "ping", "id": 7})
        assert await recv_json(ws) == {"type": "pong", "id": 7}


async def wait_connections(server: PushServerProcess, expected: int) -> None:
    """Until the server counts ``expected`` open connections (closing is asynchronous)."""
    await until(lambda: asyncio.to_thread(server.metric, "push_connections_open"),
                lambda current: current == expected, what=f"{expected} connections open")


def refusals(server: PushServerProcess) -> float:
    return server.metric("push_disconnects_total", f'code="{disconnect.TOO_MANY_CONNECTIONS.code}"')


def clean(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


# --- TLS ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"))
    prefix = f"test-push-tls-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    client.ping()  # Redis must be there: fail, never skip
    server = PushServerProcess({"SA_REDIS_URL": redis_url, "SA_REDIS_STREAM_PREFIX": prefix,
                                "SA_PUSH_BROKER": "redis", "SA_JWT_SECRET": SECRET,
                                "SA_PUSH_HISTORY": "none",
                                "SA_PUSH_TLS_CERT": str(cert), "SA_PUSH_TLS_KEY": str(key)})
    with server:
        yield server, client, prefix
    clean(client, prefix)


def test_tls_serves_wss_with_the_configured_certificate(tls_server: Served) -> None:
    server, client, prefix = tls_server
    assert server.ws.startswith("wss://127.0.0.1:")
    assert server.get("/healthz") == (200, '{"status":"ok"}')  # over https, trusting only our cert

    async def scenario() -> tuple[str | None, list[str], list[str]]:
        async with await subscriber(server, "tls-user") as ws:
            ids = xadd(client, prefix, CHANNEL_ALERTS, [alert(i) for i in range(3)])
            received = await offsets(ws, 3)
            tls = ws.transport.get_extra_info("ssl_object")
            version = tls.version() if isinstance(tls, ssl.SSLObject) else None
            return version, ids, received

    version, ids, received = asyncio.run(scenario())
    assert version is not None and version.startswith("TLS")
    assert received == ids


def test_tls_port_refuses_plain_websocket_and_untrusting_clients(tls_server: Served) -> None:
    server, client, prefix = tls_server
    plain = server.ws.replace("wss://", "ws://", 1)

    async def scenario() -> None:
        # Plaintext HTTP upgrade to a TLS listener: no WebSocket handshake happens.
        with pytest.raises(InvalidMessage, match="did not receive a valid HTTP response"):
            async with connect(plain, open_timeout=5) as ws:
                await ws.recv()
        # A TLS client with default trust (our certificate is self-signed) refuses the server.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(server.ws, ssl=ssl.create_default_context(), open_timeout=5):
                pass
        # The listener still serves a proper client afterwards.
        async with await subscriber(server, "tls-after") as ws:
            ids = xadd(client, prefix, CHANNEL_ALERTS, [alert(100)])
            assert await offsets(ws, 1) == ids

    asyncio.run(scenario())


# --- limits ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(redis_url: str) -> Iterator[Served]:
    prefix = f"test-push-limits-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    client.ping()
    server = PushServerProcess({"SA_REDIS_URL": redis_url, "SA_REDIS_STREAM_PREFIX": prefix,
                                "SA_PUSH_BROKER": "redis", "SA_JWT_SECRET": SECRET,
                                "SA_PUSH_HISTORY": "none",
                                "SA_PUSH_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
                                "SA_PUSH_MAX_CONNECTIONS_PER_USER": str(MAX_PER_USER)})
    with server:
        yield server, client, prefix
    clean(client, prefix)


def test_per_user_limit_closes_the_extra_connection_with_4003(limited: Served) -> None:
    server, client, prefix = limited

    async def scenario() -> None:
        await wait_connections(server, 0)
        before = await asyncio.to_thread(refusals, server)
        alice = [await subscriber(server, "alice") for _ in range(MAX_PER_USER)]
        extra = await open_ws(server, "alice")  # under the process limit, over alice's
        assert await close_code(extra) == disconnect.TOO_MANY_CONNECTIONS.code
        assert extra.close_reason == disconnect.TOO_MANY_CONNECTIONS.reason
        bob = await subscriber(server, "bob")  # other users are not affected
        await all_receive([*alice, bob], client, prefix, first=0)
        assert await asyncio.to_thread(refusals, server) == before + 1
        # A slot of alice's comes free when one of her connections closes.
        await alice.pop().close()
        await wait_connections(server, MAX_PER_USER)  # alice's remaining one and bob
        alice.append(await subscriber(server, "alice"))
        await all_receive([*alice, bob], client, prefix, first=10)
        for ws in [*alice, bob]:
            await ws.close()

    asyncio.run(scenario())


def test_process_limit_closes_the_extra_connection_with_4003(limited: Served) -> None:
    server, client, prefix = limited

    async def scenario() -> None:
        await wait_connections(server, 0)
        before = await asyncio.to_thread(refusals, server)
        clients = [await subscriber(server, f"user{i}") for i in range(MAX_CONNECTIONS)]
        # Refused at admission, before any command: a fresh user, so only the process limit applies.
        extra = await connect(server.ws)
        assert await close_code(extra) == disconnect.TOO_MANY_CONNECTIONS.code
        assert extra.close_reason == disconnect.TOO_MANY_CONNECTIONS.reason
        assert disconnect.TOO_MANY_CONNECTIONS.reconnect  # 4003 tells the client to come back later
        await all_receive(clients, client, prefix, first=20)
        assert await asyncio.to_thread(refusals, server) == before + 1
        assert await asyncio.to_thread(server.metric, "push_connections_active") == MAX_CONNECTIONS
        # Once one leaves, a new client gets in (and the limit holds again after it).
        await clients.pop(0).close()
        await wait_connections(server, MAX_CONNECTIONS - 1)
        clients.append(await subscriber(server, "late"))
        again = await connect(server.ws)
        assert await close_code(again) == disconnect.TOO_MANY_CONNECTIONS.code
        await all_receive(clients, client, prefix, first=30)
        assert await asyncio.to_thread(refusals, server) == before + 2
        for ws in clients:
            await ws.close()

    asyncio.run(scenario())


def test_sent_frames_and_send_latency_are_exported_exactly(limited: Served) -> None:
    """push_messages_sent_total counts every frame written (kept in a plain int, exported at
    scrape time); push_send_latency_seconds gets one observation per writer batch."""
    server, client, prefix = limited

    def sample() -> tuple[float, float]:
        return (server.metric("push_messages_sent_total"),
                server.metric("push_send_latency_seconds_count"))

    async def scenario() -> tuple[tuple[float, float], tuple[float, float]]:
        await wait_connections(server, 0)
        before = await asyncio.to_thread(sample)
        async with await subscriber(server, "counted") as ws:  # frames: connected, subscribed
            await all_receive([ws], client, prefix, first=40)  # 3 pubs and a pong
            # The writer adds its batch right after the last write.
            after = await until(lambda: asyncio.to_thread(sample),
                                lambda now: now[0] >= before[0] + 2 + 3 + 1, what="six frames counted")
        return before, after

    before, after = asyncio.run(scenario())
    assert after[0] - before[0] == 2 + 3 + 1
    assert 1 <= after[1] - before[1] <= 2 + 3 + 1
    body = server.get("/metrics")[1]
    assert "# TYPE push_messages_sent_total counter" in body
    assert 'push_send_latency_seconds_bucket{le="+Inf"}' in body
