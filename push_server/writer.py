"""The bounded send path of one connection: straight to the socket while it keeps up.

There is no writer task and no queue in the common case: :meth:`Outbox.offer` hands a frame's wire
bytes to the transport at once (``transport.write`` never blocks; the kernel or the transport's
buffer takes them). Only when the transport says its buffer is above the high-water mark
(``pause_writing``, forwarded here as :meth:`Outbox.pause`) do frames wait in a backlog, in
order, until ``resume_writing`` (:meth:`Outbox.resume`) flushes it. That backlog is the bounded
send queue of the protocol (``SA_PUSH_SEND_QUEUE`` frames).

Backpressure policy: producers (the hub fanning out a stream entry) never wait. ``offer`` either
writes or queues the frame, or returns ``False`` when the backlog is full, and the hub then
disconnects that one client with ``SLOW_CLIENT`` (4001) — one slow reader costs the others nothing,
and a client that reconnects with its last offset recovers what it missed. Command replies use
``force=True`` so that a reply is never the reason for a disconnect; they are few and bounded by
the command rate limit. History replay during recovery waits for room instead (:meth:`put`),
because it is paced by the client and must not be lost.

Why no task: a writer task per connection costs a wake-up (event, future, task step) per frame
and ~4 KiB per idle connection; fan-out to thousands of clients is dominated by exactly that.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from push_server.frames import text_frame


class OutboxClosedError(Exception):
    """The connection is going away; nothing more will be sent."""


@dataclass(slots=True)
class SendStats:
    """Process-wide send numbers: a plain counter read at scrape time, and where latencies go."""

    frames: int = 0  # frames handed to a transport
    # Called once per backlog flush with the oldest flushed frame's wait (the send-latency metric).
    observe_latency: Callable[[float], None] | None = None


class Outbox:
    """Writes frames in order; holds at most ``maxsize`` of them while the socket is backed up."""

    __slots__ = ("_backlog", "_closed", "_paused", "_room", "_stats", "_write", "maxsize")

    def __init__(self, maxsize: int, write: Callable[[bytes], object],
                 stats: SendStats | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._write = write
        self._stats = stats if stats is not None else SendStats()
        # (wire bytes, enqueue time) — created only when the socket backs up
        self._backlog: deque[tuple[bytes, float]] | None = None
        self._paused = False
        self._closed = False
        self._room: asyncio.Future[None] | None = None  # set when a put() waits for room

    def __len__(self) -> int:
        """Frames waiting for the socket (0 while it keeps up)."""
        return 0 if self._backlog is None else len(self._backlog)

    def offer(self, frame: str, *, force: bool = False, wire: bytes | None = None) -> bool:
        """Write ``frame`` (its wire bytes, if built) or queue it; never blocks.

        False when closed, or when the backlog is full and ``force`` is not set.
        """
        if self._closed:
            return False
        data = text_frame(frame) if wire is None else wire
        if not self._paused and not self._backlog:
            self._write(data)
            self._stats.frames += 1
            return True
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        if not force and len(backlog) >= self.maxsize:
            return False
        backlog.append((data, time.monotonic()))
        return True

    def pause(self) -> None:
        """The transport's buffer is above its high-water mark: queue from now on."""
        self._paused = True

    def resume(self) -> None:
        """The transport drained below its low-water mark: flush the backlog (until paused again)."""
        self._paused = False
        backlog = self._backlog
        if not backlog:
            return
        oldest = backlog[0][1]
        written = 0
        while backlog and not self._paused:
            self._write(backlog.popleft()[0])  # may call pause() again (the transport's callback)
            written += 1
        self._stats.frames += written
        if self._stats.observe_latency is not None:
            self._stats.observe_latency(time.monotonic() - oldest)
        if not backlog:
            self._backlog = None
        self._wake()

    async def put(self, frame: str, *, timeout: float, limit: int | None = None) -> None:
        """Send ``frame`` once fewer than ``limit`` (default: maxsize) frames wait.

        Waits up to ``timeout`` s (TimeoutError: the client stalls). History replay uses a limit
        below maxsize so that live frames of the client's other subscriptions still find room.
        """
        high = self.maxsize if limit is None else max(1, min(limit, self.maxsize))
        async with asyncio.timeout(timeout):
            while len(self) >= high and not self._closed:
                if self._room is None or self._room.done():
                    self._room = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._room)
        if self._closed or not self.offer(frame, force=True):
            raise OutboxClosedError

    def close(self, *, discard: bool = False) -> None:
        """Idempotent: refuse new frames; drop the backlog if ``discard`` (else it still flushes)."""
        self._closed = True
        if discard:
            self._backlog = None
        self._wake()

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)
