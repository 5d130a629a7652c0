"""Typed close codes of the push protocol, each with reconnect advice.

A client must be able to decide *mechanically* whether to reconnect, so the advice is encoded in
the code range itself (as Centrifugo does) and repeated in the :class:`Disconnect` value:

* ``4000-4499``: transient — reconnect with backoff (for ``TOKEN_EXPIRED``: with a fresh token);
* ``4500-4999``: terminal — the client (or its token) is wrong; reconnecting unchanged fails again.

The close reason is a short human text (the WebSocket limit is 123 bytes); the code is the contract.
docs/push-protocol.md has the same table; a unit test keeps the two in sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Why the server closes a connection, and whether the client should come back."""

    code: int
    reason: str
    reconnect: bool

    def __post_init__(self) -> None:
        if not 4000 <= self.code <= 4999:
            raise ValueError(f"close code {self.code} outside the application range 4000-4999")
        if self.reconnect != (self.code < 4500):
            raise ValueError(f"close code {self.code}: reconnect advice contradicts its range")
        if len(self.reason.encode()) > 123:
            raise ValueError("close reason longer than the 123 bytes a close frame can carry")


# --- transient: reconnect with backoff -------------------------------------------------------
SHUTDOWN: Final = Disconnect(4000, "server shutting down", reconnect=True)
SLOW_CLIENT: Final = Disconnect(4001, "slow client: send queue full", reconnect=True)
TOKEN_EXPIRED: Final = Disconnect(4002, "token expired", reconnect=True)
TOO_MANY_CONNECTIONS: Final = Disconnect(4003, "too many connections", reconnect=True)
RATE_LIMITED: Final = Disconnect(4004, "command rate limit exceeded", reconnect=True)
BACKEND_UNAVAILABLE: Final = Disconnect(4005, "stream backend unavailable", reconnect=True)
AUTH_TIMEOUT: Final = Disconnect(4006, "no connect command in time", reconnect=True)
INTERNAL_ERROR: Final = Disconnect(4007, "internal server error", reconnect=True)

# --- terminal: do not reconnect unchanged -----------------------------------------------------
MALFORMED: Final = Disconnect(4500, "malformed command", reconnect=False)
UNKNOWN_COMMAND: Final = Disconnect(4501, "unknown command", reconnect=False)
BINARY_FRAME: Final = Disconnect(4502, "binary frames are not supported", reconnect=False)
MESSAGE_TOO_LARGE: Final = Disconnect(4503, "message too large", reconnect=False)
BAD_TOKEN: Final = Disconnect(4504, "invalid token", reconnect=False)
FORBIDDEN_CHANNEL: Final = Disconnect(4505, "channel not permitted by token", reconnect=False)
UNSUPPORTED_VERSION: Final = Disconnect(4506, "unsupported protocol version", reconnect=False)
BAD_STATE: Final = Disconnect(4507, "command not valid in this connection state", reconnect=False)

ALL: Final[tuple[Disconnect, ...]] = (
    SHUTDOWN, SLOW_CLIENT, TOKEN_EXPIRED, TOO_MANY_CONNECTIONS, RATE_LIMITED, BACKEND_UNAVAILABLE,
    AUTH_TIMEOUT, INTERNAL_ERROR,
    MALFORMED, UNKNOWN_COMMAND, BINARY_FRAME, MESSAGE_TOO_LARGE, BAD_TOKEN, FORBIDDEN_CHANNEL,
    UNSUPPORTED_VERSION, BAD_STATE,
)

BY_CODE: Final[dict[int, Disconnect]] = {d.code: d for d in ALL}
if len(BY_CODE) != len(ALL):  # pragma: no cover - guards against a copy-paste slip above
    raise RuntimeError("duplicate close code")


def reconnect_advised(code: int) -> bool:
    """Client-side rule: reconnect for transient application codes and any non-application code."""
    return not 4500 <= code <= 4999
