"""Recovery: replay a channel's stream after a client's last offset, before it goes live.

The replay is bounded above by the reader's position at the moment the subscription was added to
the hub (``until``): everything up to it comes from history, everything after it from the live
reader (buffered by the hub meanwhile). That split point has no gap and no overlap, and a replay
can never chase a fast stream forever.

Only the Redis stream range is served today. The Postgres fallback for offsets older than what
Redis still holds slots in here (the ``subscribed`` reply already tells the client
``recovered: false`` when the stream cannot prove completeness).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from push_server import protocol
from push_server.broker import Broker
from push_server.protocol import KeyFilter

HISTORY_PAGE: Final = 256


async def replay(broker: Broker, channel: str, since: str, until: str, *, keys: KeyFilter | None,
                 send: Callable[[str], Awaitable[None]], page: int = HISTORY_PAGE) -> str:
    """Send every held entry in ``(since, until]`` matching ``keys``, in order.

    Returns the offset from which live delivery must continue: ``max(since, until)``. Live entries
    at or before it were (or, for a client ahead of a lagging reader, had been) delivered already.
    Pages use an exclusive start, so an entry is never read twice.
    """
    if protocol.parse_offset(since) >= protocol.parse_offset(until):
        return since
    last = since
    while True:
        rows = await broker.history(channel, last, until, limit=page)
        for offset, entry in rows:
            if entry is not None and (keys is None or keys.matches(entry.key)):
                await send(protocol.publication_frame(channel, offset, entry))
            last = offset
        if len(rows) < page:
            return until
