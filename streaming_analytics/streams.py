"""The live-stream contract between the pipeline (writer) and the push server (reader).

One Redis stream per channel, keyed ``<SA_REDIS_STREAM_PREFIX><channel>``. Every entry has the
same flat fields so that a reader can drop stale duplicates without decoding the payload:

=========  ===============================================================================
field      meaning
=========  ===============================================================================
``v``      contract version (``"1"``)
``key``    identity of the thing the entry updates, e.g. one aggregate window
           (``"<kind>|<dimension>|<dimension key>|<window start ms>|<window end ms>"``)
           or one alert (``"alert|<event id>"``)
``pane``   the pane's revision (:func:`pane_revision`; ``"0"`` for alerts): a reader that has
           already seen a higher one for the same ``key`` drops the entry
``timing`` ``EARLY`` / ``ON_TIME`` / ``LATE`` / ``UNKNOWN`` (Beam's ``PaneInfoTiming``)
``final``  ``"1"`` when no further pane will follow for this key, else ``"0"``
``data``   the payload, a JSON object (see docs/stream-contract.md)
=========  ===============================================================================

The Redis entry id is the stream offset clients resume from. This module is the single place in
code that knows stream names and entry fields; docs/stream-contract.md documents the payloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

CONTRACT_VERSION: Final = "1"

CHANNEL_FIXED: Final = "aggregates.fixed"
CHANNEL_SLIDING: Final = "aggregates.sliding"
CHANNEL_ALERTS: Final = "alerts"
CHANNELS: Final = (CHANNEL_FIXED, CHANNEL_SLIDING, CHANNEL_ALERTS)


def stream_key(prefix: str, channel: str) -> str:
    """Redis key of a channel's stream."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
    return f"{prefix}{channel}"


def window_key(kind: str, dimension: str, dimension_key: str, start_ms: int, end_ms: int) -> str:
    """Identity of one aggregate window, shared by the Postgres primary key and the stream."""
    return f"{kind}|{dimension}|{dimension_key}|{start_ms}|{end_ms}"


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry of a channel stream, independent of Redis."""

    key: str
    pane: int
    timing: str
    final: bool
    data: dict[str, Any]

    def to_fields(self) -> dict[str, bytes]:
        """Fields for ``XADD``."""
        return {
            "v": CONTRACT_VERSION.encode(),
            "key": self.key.encode(),
            "pane": str(self.pane).encode(),
            "timing": self.timing.encode(),
            "final": b"1" if self.final else b"0",
            "data": orjson.dumps(self.data),
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes] | dict[str, str]) -> StreamEntry:
        """Decode fields as returned by ``XREAD``/``XRANGE`` (bytes or str keys)."""
        f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}

        def text(name: str) -> str:
            value = f[name]
            return value.decode() if isinstance(value, bytes) else value

        return cls(
            key=text("key"),
            pane=int(text("pane")),
            timing=text("timing"),
            final=text("final") == "1",
            data=orjson.loads(f["data"]),
        )


#: Panes of one window emitted within the same millisecond are told apart by their index, up to this
#: (the Postgres sink orders rows the same way in SQL).
PANE_INDEX_CAP: Final = 999


def pane_revision(emitted_at_ms: int, pane_index: int) -> int:
    """The order of a window's panes that survives a restore: ``emitted_at_ms * 1000 + index``.

    Beam's pane index lives in the job's state, so a job restored from a savepoint — a rollback, a
    restart from a checkpoint after a crash — numbers a window's panes again from the index it had
    then, below the panes the sinks already hold. Ordered by index, the restored job's panes would
    be dropped as stale and a window could keep a pane that misses events for good. The restored
    job emits them later, though: ordered by when they were emitted (the pane index breaking ties
    within a millisecond), the newest pane of a window always wins, before and after a restore.
    (After a restore a window may briefly show its restored state before the replayed events
    catch up; its last pane is complete.)
    """
    return emitted_at_ms * (PANE_INDEX_CAP + 1) + min(pane_index, PANE_INDEX_CAP)


def is_newer(pane: int, last_seen_pane: int | None) -> bool:
    """Whether an entry with ``pane`` supersedes what a reader has seen for the same key."""
    return last_seen_pane is None or pane > last_seen_pane
