"""One connection's protocol state machine, free of I/O (sans-I/O).

The asyncio layer (:mod:`push_server.connection`) feeds it what arrives — frames, the passage of
time — and carries out the :data:`Effect` values it returns, in order. Everything a reviewer needs
to reason about (which command is valid when, which close code a violation gets, rate limits,
token expiry and refresh) is here and unit-tested without sockets.

States: ``AWAITING_CONNECT`` → ``CONNECTED`` → ``CLOSED``. The first ``Close`` effect moves to
``CLOSED``; after that every input is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from push_server import disconnect, protocol
from push_server.auth import AuthError, Claims, TokenVerifier
from push_server.disconnect import Disconnect
from push_server.protocol import KeyFilter, ProtocolError


class State(enum.Enum):
    AWAITING_CONNECT = "awaiting_connect"
    CONNECTED = "connected"
    CLOSED = "closed"


# --- effects -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    """Queue this text frame to the client."""

    frame: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Register the connection for ``claims.subject`` (limits apply), then send ``reply``."""

    claims: Claims
    reply: str


@dataclass(frozen=True, slots=True)
class StartSubscription:
    """Subscribe in the hub (replaying history after ``since`` first), then reply."""

    cmd_id: int | None
    channel: str
    keys: KeyFilter | None
    since: str | None


@dataclass(frozen=True, slots=True)
class StopSubscription:
    """Unsubscribe in the hub (the reply follows as a separate :class:`Send`)."""

    channel: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this code; ``detail`` is for the server log only."""

    reason: Disconnect
    detail: str


Effect = Send | Authenticated | StartSubscription | StopSubscription | Close


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection limits; see the SA_PUSH_* variables in streaming_analytics/settings.py."""

    max_message_bytes: int = 65536
    max_subscriptions: int = 16
    command_rate: float = 20.0
    command_burst: int = 50
    auth_timeout_s: float = 10.0
    expiry_grace_s: float = 0.0


class TokenBucket:
    """Classic token bucket: ``burst`` commands at once, ``rate`` per second sustained."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ClientSession:
    """Protocol state of one connection. ``now`` arguments are wall-clock seconds (``time.time()``)."""

    def __init__(self, client_id: str, *, verifier: TokenVerifier, channels: Collection[str],
                 limits: SessionLimits, now: float) -> None:
        self.client_id = client_id
        self.state = State.AWAITING_CONNECT
        self.claims: Claims | None = None
        self.subscriptions: dict[str, KeyFilter | None] = {}
        self._verifier = verifier
        self._channels = frozenset(channels)
        self._limits = limits
        self._opened_at = now
        self._bucket = TokenBucket(limits.command_rate, limits.command_burst, now)

    # --- inputs ----------------------------------------------------------------------------------
    def open(self, *, token: str | None, version: str | None, now: float) -> list[Effect]:
        """The WebSocket is open; ``token``/``version`` are the URL query parameters, if any."""
        try:
            protocol.parse_version(version)
        except ProtocolError as exc:
            return self._close(exc.close, exc.detail)
        if token:
            if len(token) > protocol.MAX_TOKEN_CHARS:
                return self._close(disconnect.BAD_TOKEN, "token too long")
            return self._authenticate(None, token)
        return []

    def receive(self, data: str | bytes, now: float) -> list[Effect]:
        """One complete client frame (``bytes`` for a binary frame)."""
        if self.state is State.CLOSED:
            return []
        try:
            command = self._parse(data, now)
        except ProtocolError as exc:
            return self._close(exc.close, exc.detail)
        if self.state is State.AWAITING_CONNECT:
            return self._before_connect(command)
        return self._dispatch(command)

    def _parse(self, data: str | bytes, now: float) -> protocol.Command:
        # Rate limiting comes first so that floods of garbage cost no parsing.
        if not self._bucket.take(now):
            raise ProtocolError(disconnect.RATE_LIMITED, "command rate exceeded")
        return protocol.parse_command(data, max_bytes=self._limits.max_message_bytes)

    def _before_connect(self, command: protocol.Command) -> list[Effect]:
        if isinstance(command, protocol.Connect):
            return self._authenticate(command.id, command.token)
        if isinstance(command, protocol.Pong):
            return []
        return self._close(disconnect.BAD_STATE, f"{type(command).__name__} before connect")

    def _dispatch(self, command: protocol.Command) -> list[Effect]:
        match command:
            case protocol.Connect():
                return self._close(disconnect.BAD_STATE, "connect on a connected session")
            case protocol.Subscribe():
                return self._subscribe(command)
            case protocol.Unsubscribe():
                return self._unsubscribe(command)
            case protocol.Refresh():
                return self._refresh(command)
            case protocol.Ping():
                return [Send(protocol.pong(command.id))]
            case protocol.Pong():
                return []
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    def deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (auth timeout or token expiry)."""
        if self.state is State.AWAITING_CONNECT:
            return self._opened_at + self._limits.auth_timeout_s
        if self.state is State.CONNECTED and self.claims is not None:
            return self.claims.expires_at + self._limits.expiry_grace_s
        return None

    def tick(self, now: float) -> list[Effect]:
        """Time passed: enforce the auth timeout and token expiry."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        if self.state is State.AWAITING_CONNECT:
            return self._close(disconnect.AUTH_TIMEOUT, "no connect in time")
        return self._close(disconnect.TOKEN_EXPIRED, "token expired without refresh")

    def fail(self, reason: Disconnect, detail: str) -> list[Effect]:
        """The I/O layer hit a condition the session must close for (limits, backend errors)."""
        return self._close(reason, detail)

    # --- commands --------------------------------------------------------------------------------
    def _authenticate(self, cmd_id: int | None, token: str) -> list[Effect]:
        try:
            claims = self._verifier.verify(token)
        except AuthError as exc:
            return self._close(exc.close, exc.detail)
        self.claims = claims
        self.state = State.CONNECTED
        reply = protocol.connected(cmd_id, client=self.client_id, user=claims.subject,
                                   expires_at=claims.expires_at,
                                   channels=tuple(c for c in sorted(self._channels)
                                                  if claims.grant.allows(c)))
        return [Authenticated(claims, reply)]

    def _subscribe(self, command: protocol.Subscribe) -> list[Effect]:
        assert self.claims is not None
        channel = command.channel
        if channel not in self._channels:
            return [Send(protocol.error(command.id, code="unknown_channel",
                                        message=f"no channel {channel[:64]!r}"))]
        if not self.claims.grant.allows(channel):
            return self._close(disconnect.FORBIDDEN_CHANNEL, f"token does not grant {channel}")
        if channel in self.subscriptions:
            return [Send(protocol.error(command.id, code="already_subscribed", message=channel))]
        if len(self.subscriptions) >= self._limits.max_subscriptions:
            return [Send(protocol.error(command.id, code="too_many_subscriptions",
                                        message=f"limit {self._limits.max_subscriptions}"))]
        self.subscriptions[channel] = command.keys
        return [StartSubscription(command.id, channel, command.keys, command.since)]

    def _unsubscribe(self, command: protocol.Unsubscribe) -> list[Effect]:
        if command.channel not in self.subscriptions:
            return [Send(protocol.error(command.id, code="not_subscribed", message=command.channel[:64]))]
        del self.subscriptions[command.channel]
        return [StopSubscription(command.channel),
                Send(protocol.unsubscribed(command.id, channel=command.channel))]

    def _refresh(self, command: protocol.Refresh) -> list[Effect]:
        assert self.claims is not None
        try:
            claims = self._verifier.verify(command.token)
        except AuthError as exc:
            return self._close(exc.close, f"refresh: {exc.detail}")
        if claims.subject != self.claims.subject:
            return self._close(disconnect.BAD_TOKEN, "refresh token is for another subject")
        lost = [c for c in self.subscriptions if not claims.grant.allows(c)]
        if lost:
            return self._close(disconnect.FORBIDDEN_CHANNEL, f"refreshed token drops {lost[0]}")
        self.claims = claims
        return [Send(protocol.refreshed(command.id, expires_at=claims.expires_at))]

    def _close(self, reason: Disconnect, detail: str) -> list[Effect]:
        self.state = State.CLOSED
        return [Close(reason, detail)]

