"""The bounded per-connection send queue.

Backpressure policy: producers (the hub fanning out a stream entry) never wait. :meth:`Outbox.offer`
either queues the frame or returns ``False`` when the queue is full, and the hub then disconnects
that one client with ``SLOW_CLIENT`` (4001) — one slow reader costs the others nothing, and a
client that reconnects with its last offset recovers what it missed. Command replies use
``force=True`` so that a reply is never the reason for a disconnect; they are few and bounded by
the command rate limit. History replay during recovery waits for room instead (:meth:`put`),
because it is paced by the client and must not be lost.

A frame may come with its wire bytes (``wire``, :func:`push_server.frames.text_frame`), built once
by the hub for all subscribers of a publication; the writer then sends those bytes as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class OutboxClosedError(Exception):
    """The connection is going away; nothing more will be sent."""


class Outbox:
    """A bounded FIFO of text frames with their enqueue time (for the send-latency metric)."""

    # (frame, enqueue time, pre-encoded WebSocket frame or None)

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._items: deque[tuple[str, float, bytes | None]] = deque()
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever get() takes a frame
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, frame: str, *, force: bool = False, wire: bytes | None = None) -> bool:
        """Queue ``frame`` (and its wire bytes, if built) unless the queue is full or closed; never blocks."""
        if self._closed:
            return False
        if not force and len(self._items) >= self.maxsize:
            return False
        self._items.append((frame, time.monotonic(), wire))
        self._readable.set()
        return True

    async def put(self, frame: str, *, timeout: float, limit: int | None = None) -> None:
        """Queue ``frame`` once fewer than ``limit`` (default: maxsize) frames wait.

        Waits up to ``timeout`` s (TimeoutError: the client stalls). History replay uses a limit
        below maxsize so that live frames of the client's other subscriptions still find room.
        """
        high = self.maxsize if limit is None else max(1, min(limit, self.maxsize))
        async with asyncio.timeout(timeout):
            while len(self._items) >= high and not self._closed:
                self._drained.clear()
                await self._drained.wait()
        if self._closed or not self.offer(frame, force=True):
            raise OutboxClosedError

    async def get(self) -> tuple[str, float, bytes | None]:
        """Next frame, its enqueue time (monotonic) and wire bytes (None: not pre-encoded).

        :class:`OutboxClosedError` once closed and empty.
        """
        while not self._items:
            if self._closed:
                raise OutboxClosedError
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._drained.set()
        return item

    def close(self, *, discard: bool = False) -> None:
        """Idempotent. Pending frames are still handed out by :meth:`get` unless ``discard``."""
        self._closed = True
        if discard:
            self._items.clear()
        self._readable.set()
        self._drained.set()
