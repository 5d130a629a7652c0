"""The sans-I/O session state machine: states, commands, limits, expiry, refresh."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import orjson
import pytest

from push_server import disconnect
from push_server.auth import TokenVerifier
from push_server.client import (
    Authenticated,
    ClientSession,
    Close,
    Effect,
    Send,
    SessionLimits,
    StartSubscription,
    State,
    StopSubscription,
)
from push_server.devtokens import claims_for, hs256
from streaming_analytics.settings import Settings
from streaming_analytics.streams import CHANNELS

pytestmark = pytest.mark.unit

SETTINGS = replace(Settings.from_env({}), jwt_secret="unit-test-secret-of-sufficient-length-0123")
VERIFIER = TokenVerifier.from_settings(SETTINGS)
NOW = 1_000.0


def token(sub: str = "alice", channels: tuple[str, ...] = ("aggregates.*",), **kw: Any) -> str:
    return hs256(SETTINGS, claims_for(SETTINGS, sub=sub, channels=channels, **kw))


def session(**limits: Any) -> ClientSession:
    return ClientSession("c1", verifier=VERIFIER, channels=CHANNELS, limits=SessionLimits(**limits),
                         now=NOW)


def cmd(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def connected(s: ClientSession, tok: str | None = None) -> ClientSession:
    effects = s.receive(cmd({"type": "connect", "id": 1, "token": tok or token()}), NOW)
    assert isinstance(effects[0], Authenticated)
    return s


def only_close(effects: list[Effect]) -> disconnect.Disconnect:
    assert len(effects) == 1 and isinstance(effects[0], Close), effects
    return effects[0].reason


def reply(effects: list[Effect]) -> dict[str, Any]:
    sends = [e for e in effects if isinstance(e, Send)]
    assert len(sends) == 1, effects
    doc: dict[str, Any] = orjson.loads(sends[0].frame)
    return doc


def test_connect_with_first_message() -> None:
    s = session()
    effects = s.receive(cmd({"type": "connect", "id": 1, "token": token()}), NOW)
    assert s.state is State.CONNECTED
    [auth] = effects
    assert isinstance(auth, Authenticated) and auth.claims.subject == "alice"
    assert orjson.loads(auth.reply) == {"type": "connected", "id": 1, "v": 1, "client": "c1", "user": "alice",
                                        "expires_at": auth.claims.expires_at,
                                        "channels": ["aggregates.fixed", "aggregates.sliding"]}


def test_connect_with_query_token() -> None:
    s = session()
    [auth] = s.open(token=token(), version="1", now=NOW)
    assert isinstance(auth, Authenticated) and s.state is State.CONNECTED
    assert s.open(token=None, version=None, now=NOW) == []


def test_bad_query_version_or_token_closes() -> None:
    assert only_close(session().open(token=None, version="9", now=NOW)) is disconnect.UNSUPPORTED_VERSION
    assert only_close(session().open(token="junk", version=None, now=NOW)) is disconnect.BAD_TOKEN


def test_commands_before_connect_are_a_state_error() -> None:
    s = session()
    assert only_close(s.receive(cmd({"type": "subscribe", "channel": "alerts"}), NOW)) is disconnect.BAD_STATE
    assert s.state is State.CLOSED
    assert s.receive(cmd({"type": "ping"}), NOW) == []  # closed sessions ignore input


def test_second_connect_is_a_state_error() -> None:
    s = connected(session())
    assert only_close(s.receive(cmd({"type": "connect", "token": token()}), NOW)) is disconnect.BAD_STATE


def test_subscribe_within_the_grant() -> None:
    s = connected(session())
    effects = s.receive(cmd({"type": "subscribe", "id": 2, "channel": "aggregates.fixed",
                             "keys": ["fixed|country|DE"], "since": "5-0"}), NOW)
    [start] = effects
    assert isinstance(start, StartSubscription)
    assert (start.cmd_id, start.channel, start.since) == (2, "aggregates.fixed", "5-0")
    assert start.keys is not None and start.keys.matches("fixed|country|DE|0|60000")
    assert s.subscriptions.keys() == {"aggregates.fixed"}


def test_forbidden_channel_closes() -> None:
    s = connected(session())
    assert only_close(s.receive(cmd({"type": "subscribe", "channel": "alerts"}), NOW)) \
        is disconnect.FORBIDDEN_CHANNEL


def test_non_fatal_subscription_errors() -> None:
    s = connected(session(max_subscriptions=1), token(channels=("*",)))
    assert reply(s.receive(cmd({"type": "subscribe", "id": 1, "channel": "nope"}), NOW))["code"] \
        == "unknown_channel"
    s.receive(cmd({"type": "subscribe", "channel": "alerts"}), NOW)
    assert reply(s.receive(cmd({"type": "subscribe", "id": 2, "channel": "alerts"}), NOW))["code"] \
        == "already_subscribed"
    assert reply(s.receive(cmd({"type": "subscribe", "id": 3, "channel": "aggregates.fixed"}), NOW)) == {
        "type": "error", "id": 3, "code": "too_many_subscriptions", "message": "limit 1"}
    unsubscribe = cmd({"type": "unsubscribe", "id": 4, "channel": "aggregates.fixed"})
    assert reply(s.receive(unsubscribe, NOW))["code"] == "not_subscribed"
    assert s.state is State.CONNECTED


def test_unsubscribe() -> None:
    s = connected(session())
    s.receive(cmd({"type": "subscribe", "channel": "aggregates.fixed"}), NOW)
    stop, send = s.receive(cmd({"type": "unsubscribe", "id": 9, "channel": "aggregates.fixed"}), NOW)
    assert stop == StopSubscription("aggregates.fixed")
    assert isinstance(send, Send)
    assert orjson.loads(send.frame) == {"type": "unsubscribed", "id": 9, "channel": "aggregates.fixed"}
    assert s.subscriptions == {}


def test_ping_pong() -> None:
    s = connected(session())
    assert reply(s.receive(cmd({"type": "ping", "id": 5}), NOW)) == {"type": "pong", "id": 5}
    assert s.receive(cmd({"type": "pong"}), NOW) == []


def test_rate_limit_allows_the_burst_then_closes() -> None:
    s = connected(session(command_rate=1.0, command_burst=3))
    for _ in range(2):  # the connect used one token of the burst
        assert s.receive(cmd({"type": "ping"}), NOW) != []
    assert only_close(s.receive(cmd({"type": "ping"}), NOW)) is disconnect.RATE_LIMITED


def test_rate_limit_refills_over_time() -> None:
    s = connected(session(command_rate=2.0, command_burst=1))
    for step in range(1, 20):
        assert isinstance(s.receive(cmd({"type": "ping"}), NOW + step * 0.5)[0], Send)


def test_protocol_violations_close_with_their_code() -> None:
    assert only_close(connected(session()).receive(b"\x00", NOW)) is disconnect.BINARY_FRAME
    assert only_close(connected(session()).receive("{", NOW)) is disconnect.MALFORMED
    assert only_close(connected(session()).receive(cmd({"type": "nope"}), NOW)) is disconnect.UNKNOWN_COMMAND
    big = cmd({"type": "ping"}) + " " * 2000
    assert only_close(connected(session(max_message_bytes=1000)).receive(big, NOW)) \
        is disconnect.MESSAGE_TOO_LARGE


def test_auth_timeout() -> None:
    s = session(auth_timeout_s=5.0)
    assert s.deadline() == NOW + 5.0
    assert s.tick(NOW + 4.9) == []
    assert only_close(s.tick(NOW + 5.0)) is disconnect.AUTH_TIMEOUT


def test_token_expiry_closes_unless_refreshed() -> None:
    start = time.time()
    s = connected(session(), token(ttl_s=30))
    exp = s.deadline()
    assert exp is not None and start + 25 < exp <= start + 31
    assert s.tick(exp - 1) == []
    later = token(ttl_s=3600)
    refreshed = reply(s.receive(cmd({"type": "refresh", "id": 3, "token": later}), NOW))
    assert refreshed["type"] == "refreshed" and refreshed["expires_at"] > exp
    assert s.tick(exp + 1) == []
    assert only_close(s.tick(refreshed["expires_at"])) is disconnect.TOKEN_EXPIRED


def test_refresh_must_keep_subject_and_cover_subscriptions() -> None:
    s = connected(session())
    assert only_close(s.receive(cmd({"type": "refresh", "token": token(sub="mallory")}), NOW)) \
        is disconnect.BAD_TOKEN
    s = connected(session())
    s.receive(cmd({"type": "subscribe", "channel": "aggregates.fixed"}), NOW)
    narrower = token(channels=("alerts",))
    assert only_close(s.receive(cmd({"type": "refresh", "token": narrower}), NOW)) \
        is disconnect.FORBIDDEN_CHANNEL


def test_refresh_with_an_invalid_token_closes() -> None:
    s = connected(session())
    expired = token(now=time.time() - 7200, ttl_s=60)
    assert only_close(s.receive(cmd({"type": "refresh", "token": expired}), NOW)) is disconnect.TOKEN_EXPIRED
