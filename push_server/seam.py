"""The seam between a Postgres replay and the Redis stream that follows it: no duplicate, no regress.

A recovery beyond the Redis stream sends each changed window (or alert) once from Postgres, at
the newest pane the table holds. The Redis range and the live stream that follow may still carry
panes of the same keys that the table row already includes — written to Redis a little after (or
before) the row, since the two sinks write independently. :class:`SeamFilter` remembers the pane
sent per key and drops any later stream entry of that key with a pane at or below it; the first
higher pane passes and ends the watch for that key.

The watch is bounded in time, not only in keys: once the stream reaches entries whose id time is
past ``until_ms`` (the end of the Postgres read plus the configured overlap), no entry can repeat a
row the replay read, so the filter switches itself off and its memory is released. Pure logic,
no I/O: unit-tested without Redis or Postgres.
"""

from __future__ import annotations

from push_server.protocol import Offset


class SeamFilter:
    """Per subscription: which (key, pane) the Postgres replay already delivered."""

    __slots__ = ("_sent", "until_ms")

    def __init__(self, *, until_ms: int) -> None:
        self._sent: dict[str, int] = {}
        self.until_ms = until_ms

    def __len__(self) -> int:
        return len(self._sent)

    @property
    def active(self) -> bool:
        """False once the filter can no longer drop anything."""
        return bool(self._sent)

    def note(self, key: str, pane: int) -> bool:
        """Record a row about to be sent from Postgres; False if that key/pane was sent already.

        A row read twice (it was updated while the replay paged through the table) is sent again
        only with a higher pane.
        """
        seen = self._sent.get(key)
        if seen is not None and pane <= seen:
            return False
        self._sent[key] = pane
        return True

    def admit(self, offset: Offset, key: str, pane: int) -> bool:
        """Whether a stream entry at ``offset`` still needs to go to the client."""
        if not self._sent:
            return True
        if offset[0] > self.until_ms:
            self._sent.clear()
            return True
        seen = self._sent.get(key)
        if seen is None:
            return True
        if pane <= seen:
            return False
        del self._sent[key]
        return True
