"""Hostile and broken clients against the real server: every case gets its documented close code,
and a well-behaved client connected all along keeps receiving."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from push_server import disconnect
from push_server.devtokens import claims_for, hs256
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNEL_ALERTS, StreamEntry
from tests.support.push_process import PushServerProcess, close_code, recv_json, send_json, xadd

pytestmark = pytest.mark.integration

SECRET = "bad-input-secret-of-sufficient-length-4242"
AUTH_TIMEOUT_S = 2
DOCUMENTED = {d.code for d in disconnect.ALL} | {1009}


class Env:
    def __init__(self, server: PushServerProcess, client: redis.Redis, prefix: str,
                 rsa_key: rsa.RSAPrivateKey) -> None:
        self.server = server
        self.redis = client
        self.prefix = prefix
        self.rsa_key = rsa_key
        self.settings = Settings.from_env(server.env)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        doc = claims_for(self.settings, sub=f"user-{uuid.uuid4().hex[:6]}", channels=["*"])
        doc.update(overrides)
        return doc

    def token(self, **overrides: Any) -> str:
        return hs256(self.settings, self.claims(**overrides))


@pytest.fixture(scope="module")
def env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "test"
    jwks = Path(tmp_path_factory.mktemp("jwks")) / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    prefix = f"test-push-bad-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    client.ping()
    server = PushServerProcess({
        "SA_REDIS_URL": redis_url, "SA_REDIS_STREAM_PREFIX": prefix, "SA_PUSH_BROKER": "redis",
        "SA_JWT_SECRET": SECRET, "SA_JWT_PUBLIC_KEYS_FILE": str(jwks), "SA_PUSH_MAX_MESSAGE_BYTES": "4096",
        "SA_PUSH_AUTH_TIMEOUT_S": str(AUTH_TIMEOUT_S), "SA_PUSH_COMMAND_RATE": "5",
        "SA_PUSH_COMMAND_BURST": "10",
    })
    with server:
        yield Env(server, client, prefix, key)
    for k in client.scan_iter(match=f"{prefix}*"):
        client.delete(k)
    client.close()


async def outcome(env: Env, *, first: str | bytes | None = None, token: str | None = None,
                  query: str = "", then: list[str | bytes] | None = None) -> int | None:
    """Connect (token in the URL when given), send frames, return the server's close code."""
    url = env.server.ws + (f"?token={token}" if token else "") + query
    async with connect(url, max_size=None) as ws:
        if first is not None:
            await ws.send(first)
        for frame in then or []:
            try:
                await ws.send(frame)
            except ConnectionClosed:
                break
        return await close_code(ws)


def authed(env: Env, *frames: str | bytes) -> int | None:
    return asyncio.run(outcome(env, first=json.dumps({"type": "connect", "token": env.token()}),
                               then=list(frames)))


def token_case(env: Env, token: str) -> int | None:
    return asyncio.run(outcome(env, first=json.dumps({"type": "connect", "token": token})))


def test_protocol_violations(env: Env) -> None:
    assert authed(env, "{not json") == disconnect.MALFORMED.code
    assert authed(env, '{"type": "publish", "channel": "alerts"}') == disconnect.UNKNOWN_COMMAND.code
    assert authed(env, '{"type": "ping", "sneaky": true}') == disconnect.MALFORMED.code
    assert authed(env, b'{"type": "ping"}') == disconnect.BINARY_FRAME.code
    assert authed(env, json.dumps({"type": "ping", "pad": "x" * 5000})) == disconnect.MESSAGE_TOO_LARGE.code
    assert authed(env, "x" * (2 << 20)) == 1009  # beyond the transport cap: WebSocket's own code
    assert authed(env, *[json.dumps({"type": "ping"})] * 40) == disconnect.RATE_LIMITED.code
    assert asyncio.run(outcome(env, first='{"type": "ping"}')) == disconnect.BAD_STATE.code
    assert asyncio.run(outcome(env, query="?v=2")) == disconnect.UNSUPPORTED_VERSION.code


def test_auth_timeout(env: Env) -> None:
    started = time.time()
    assert asyncio.run(outcome(env)) == disconnect.AUTH_TIMEOUT.code
    # Never before the configured timeout (the server's session clock is the wall clock too); how
    # much later depends on the machine's load and is not this test's business.
    assert time.time() - started >= AUTH_TIMEOUT_S


def test_bad_tokens(env: Env) -> None:
    now = int(time.time())
    assert token_case(env, jwt.encode(env.claims(), key=None, algorithm="none")) == disconnect.BAD_TOKEN.code
    assert token_case(env, env.token(exp=now - 600)) == disconnect.TOKEN_EXPIRED.code
    assert token_case(env, env.token(nbf=now + 600)) == disconnect.BAD_TOKEN.code
    assert token_case(env, env.token(aud="other")) == disconnect.BAD_TOKEN.code
    assert token_case(env, env.token(iss="other")) == disconnect.BAD_TOKEN.code
    assert token_case(env, hs256(env.settings, env.claims(), secret="not-the-secret-but-long-enough-0000")) \
        == disconnect.BAD_TOKEN.code
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert token_case(env, jwt.encode(env.claims(), other, algorithm="RS256", headers={"kid": "test"})) \
        == disconnect.BAD_TOKEN.code
    assert asyncio.run(outcome(env, token="garbage")) == disconnect.BAD_TOKEN.code


def test_rs256_token_and_refresh(env: Env) -> None:
    async def scenario() -> dict[str, Any]:
        token = jwt.encode(env.claims(sub="rsa-user"), env.rsa_key, algorithm="RS256",
                           headers={"kid": "test"})
        async with connect(f"{env.server.ws}?token={token}") as ws:
            assert (await recv_json(ws))["user"] == "rsa-user"
            fresh = hs256(env.settings, {**env.claims(sub="rsa-user"), "exp": int(time.time()) + 7200})
            await send_json(ws, {"type": "refresh", "id": 5, "token": fresh})
            return await recv_json(ws)

    reply = asyncio.run(scenario())
    assert reply["type"] == "refreshed" and reply["id"] == 5 and reply["expires_at"] > time.time() + 7000


def test_token_expiry_closes_a_live_connection(env: Env) -> None:
    # exp 1 s ahead plus the leeway (default 5 s): the server closes it then, not before.
    expires_at = int(time.time()) + 1
    assert asyncio.run(outcome(env, token=env.token(exp=expires_at))) == disconnect.TOKEN_EXPIRED.code
    assert time.time() >= expires_at + env.settings.jwt_leeway_s


def test_others_keep_being_served_during_abuse(env: Env) -> None:
    async def scenario() -> list[str]:
        async with connect(f"{env.server.ws}?token={env.token()}") as good:
            await recv_json(good)
            await send_json(good, {"type": "subscribe", "channel": CHANNEL_ALERTS})
            await recv_json(good)
            abusers = [outcome(env, first=frame) for frame in
                       ("{", b"\x00\x01", '{"type":"connect","token":"x"}', "[]" * 3000)]
            codes = await asyncio.gather(*abusers)
            assert all(code in DOCUMENTED for code in codes), codes
            ids = xadd(env.redis, env.prefix, CHANNEL_ALERTS,
                       [StreamEntry("alert|ok", 0, "ON_TIME", True, {"alert_id": "ok"})])
            got = await recv_json(good)
            assert got["type"] == "pub"
            return [got["offset"], *ids]

    got, *written = asyncio.run(scenario())
    assert [got] == written


frames = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=64),
    st.dictionaries(st.sampled_from(["type", "id", "channel", "keys", "since", "token", "v", "x"]),
                    st.one_of(st.none(), st.integers(-5, 2**60), st.text(max_size=30),
                              st.sampled_from(["subscribe", "unsubscribe", "ping", "pong", "refresh",
                                               "connect", "alerts", "aggregates.fixed", "1-0"]),
                              st.lists(st.text(max_size=10), max_size=3)),
                    max_size=5).map(json.dumps),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
def test_fuzzed_frames_get_a_reply_or_a_documented_close(env: Env, frame: str | bytes) -> None:
    async def scenario() -> None:
        async with connect(f"{env.server.ws}?token={env.token()}") as ws:
            assert (await recv_json(ws))["type"] == "connected"
            try:
                await ws.send(frame)
                await send_json(ws, {"type": "ping", "id": 424242})
                while (await recv_json(ws))["type"] != "pong":
                    pass  # replies to the fuzzed frame (subscribed, error, ...)
            except ConnectionClosed:
                assert ws.close_code in DOCUMENTED, (frame, ws.close_code)

    asyncio.run(scenario())
