"""Recovery: replay what a client missed after its last offset, before it goes live.

Two sources, in this order:

1. **Postgres** (only when ``since`` is older than what the Redis stream still holds): the rows
   whose change time falls in the trimmed gap, oldest change first, each at the newest pane the
   table holds (:class:`PostgresReplay`). The window is ``[ms(since) - overlap, ms(oldest held
   entry) + overlap]``; the overlap absorbs clock skew and lag between the two sinks, which write
   Redis and Postgres independently. docs/push-protocol.md states the exact guarantee.
2. **Redis** (:func:`replay`): every held entry in ``(since, until]``, ``until`` being the reader's
   position at the moment the subscription was added to the hub. Everything after it comes from
   the live reader (buffered by the hub meanwhile). That split point has no gap and no overlap,
   and a replay can never chase a fast stream forever.

At the seam between the two, a :class:`~push_server.seam.SeamFilter` drops stream entries that
repeat a pane Postgres already sent (and the hub keeps applying it to live entries for a while).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from push_server import protocol
from push_server.broker import Broker
from push_server.pg_history import Change, PostgresHistory, ms_after, ms_floor
from push_server.protocol import KeyFilter
from push_server.seam import SeamFilter

HISTORY_PAGE: Final = 256

Send = Callable[[str], Awaitable[None]]


async def replay(broker: Broker, channel: str, since: str, until: str, *, keys: KeyFilter | None,
                 send: Send, page: int = HISTORY_PAGE, seam: SeamFilter | None = None) -> str:
    """Send every held entry in ``(since, until]`` matching ``keys`` (and ``seam``), in order.

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
            if (entry is not None and (keys is None or keys.matches(entry.key))
                    and (seam is None or seam.admit(protocol.parse_offset(offset), entry.key, entry.pane))):
                await send(protocol.publication_frame(channel, offset, entry))
            last = offset
        if len(rows) < page:
            return until


class PostgresReplay:
    """The Postgres part of one recovery; :meth:`prepare` first, then :meth:`run`.

    Split in two so that the subscribe reply can say ``postgres+redis`` only after Postgres has
    actually answered (a failing first query degrades to ``recovered: false``, never a lie).
    """

    def __init__(self, store: PostgresHistory, channel: str, *, since: str, oldest: str | None,
                 overlap_ms: int, keys: KeyFilter | None, page: int = HISTORY_PAGE) -> None:
        since_ms = protocol.parse_offset(since)[0]
        self._store = store
        self._channel = channel
        self._since = since
        self._keys = keys
        self._page = page
        self._overlap_ms = overlap_ms
        self.lo = ms_floor(max(0, since_ms - overlap_ms))
        self.hi = None if oldest is None else ms_after(protocol.parse_offset(oldest)[0] + overlap_ms)
        self._first: list[Change] | None = None
        self.sent = 0

    async def prepare(self) -> None:
        """Read the first page (raises ``DatabaseUnavailableError`` if Postgres cannot answer)."""
        self._first = await self._fetch(None)

    async def _fetch(self, after: tuple[Any, ...] | None) -> list[Change]:
        return await self._store.changes(self._channel, lo=self.lo, hi=self.hi, after=after, limit=self._page)

    async def run(self, send: Send) -> SeamFilter:
        """Send every changed row, oldest change first; returns the filter for the stream that follows."""
        seam = SeamFilter(until_ms=0)
        rows = self._first if self._first is not None else await self._fetch(None)
        while True:
            for change in rows:
                entry = change.entry
                if (self._keys is None or self._keys.matches(entry.key)) and seam.note(entry.key, entry.pane):
                    await send(protocol.publication_frame(self._channel, self._since, entry,
                                                          source=protocol.SOURCE_POSTGRES))
                    self.sent += 1
            if len(rows) < self._page:
                break
            rows = await self._fetch(rows[-1].position)
        # A stream entry written after this moment (plus the overlap) cannot repeat a row we read.
        seam.until_ms = int(time.time() * 1000) + self._overlap_ms
        return seam
