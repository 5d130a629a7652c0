"""Where stream entries come from: the broker interface, Redis and in-memory implementations.

The Redis implementation runs exactly ONE reader task per channel stream per process. Each task
loops ``XREAD BLOCK`` from the last entry id it delivered and hands every entry to the sink (the
hub), which fans it out in memory — never one XREAD per client. On a Redis error the task waits with
exponential backoff (with jitter) and resumes from the same offset: nothing is skipped, nothing is
delivered twice. A reader starts from the stream's tail as it finds it at start-up (an explicit id,
never ``$``, so a reconnect cannot silently skip entries).

History for recovery is ``XRANGE`` with an exclusive start (``(<id>``), paged by the caller.

:func:`make_broker` is the one place that picks a backend by name; unknown names are an error.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from push_server.protocol import Offset, format_offset, parse_offset
from streaming_analytics.settings import ConfigError, Settings
from streaming_analytics.streams import CHANNELS, StreamEntry, stream_key

log = logging.getLogger(__name__)

Sink = Callable[[str, str, StreamEntry], object]
"""Receives ``(channel, offset, entry)`` for every entry, in stream order, per channel."""

BACKENDS: Final = ("redis", "memory")


class BrokerUnavailableError(Exception):
    """The backend could not answer (history, bounds); the caller should close with 4005."""


@dataclass(slots=True)
class BrokerStats:
    """Plain numbers the metrics collector reads at scrape time."""

    read_lag_ms: dict[str, float] = field(default_factory=dict)  # now - entry id time, last entry
    delivered: dict[str, int] = field(default_factory=dict)
    bad_entries: int = 0
    read_errors: int = 0


class Broker(Protocol):
    """What the push server needs from a stream backend."""

    stats: BrokerStats

    async def start(self, sink: Sink) -> None:
        """Begin delivering live entries of every channel to ``sink``."""

    async def close(self) -> None:
        """Stop the readers and release connections; idempotent."""

    def last_offset(self, channel: str) -> str | None:
        """Id of the last entry delivered to the sink (live delivery continues after it)."""

    async def history(self, channel: str, after: str, until: str, *,
                      limit: int) -> list[tuple[str, StreamEntry | None]]:
        """Up to ``limit`` entries in ``(after, until]``, oldest first.

        An entry that does not decode is returned as ``None`` (counted, not sent) so that paging
        by count still advances past it.
        """

    async def covers(self, channel: str, since: str) -> bool:
        """Whether every entry ever written after ``since`` is still held (see :func:`covers_rule`)."""

    async def first_offset(self, channel: str) -> str | None:
        """Id of the oldest entry still held (None: the stream is empty or gone)."""

    async def ping(self) -> bool:
        """Whether the backend answers now (readiness)."""


def make_broker(settings: Settings, *, channels: Sequence[str] = CHANNELS) -> Broker:
    """The backend named by ``SA_PUSH_BROKER``."""
    if settings.push_broker == "redis":
        # One XREAD batch is fanned out without yielding, so it must fit in a client's send queue
        # with room to spare, or a burst would disconnect even fast clients.
        batch = max(1, min(512, settings.push_send_queue // 2))
        return RedisStreamBroker(settings.redis_url, prefix=settings.redis_stream_prefix, channels=channels,
                                 batch=batch)
    if settings.push_broker == "memory":
        return MemoryBroker(channels=channels, maxlen=settings.redis_stream_maxlen)
    raise ConfigError(f"SA_PUSH_BROKER={settings.push_broker!r} is not one of {', '.join(BACKENDS)}")


def covers_rule(since: Offset, *, exists: bool, first: Offset | None, last_generated: Offset,
                removed_any: bool) -> bool:
    """Whether a stream provably still holds every entry after ``since``.

    Trimming (MAXLEN) only removes the oldest entries, so once ``since`` is at or after the oldest
    held entry nothing after it can be missing. ``0-0`` ("from the beginning") is covered only if
    nothing was ever removed. Anything else — a stream lost in a Redis restart, an offset older
    than the retained range — cannot be proven complete, and the client is told so.
    """
    if since == (0, 0):
        return not removed_any
    if not exists:
        return False
    if first is None:  # every entry removed: complete only if none was written after since
        return since >= last_generated
    return since >= first


def _decode_entry(fields: dict[bytes, bytes] | dict[str, str]) -> StreamEntry | None:
    try:
        return StreamEntry.from_fields(fields)
    except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStreamBroker:
    """Redis streams backend (one reader task per channel)."""

    def __init__(self, url: str, *, prefix: str, channels: Sequence[str] = CHANNELS,
                 block_ms: int = 1000, batch: int = 512, backoff_initial_s: float = 0.05,
                 backoff_max_s: float = 5.0) -> None:
        self._keys = {channel: stream_key(prefix, channel) for channel in channels}
        self._block_ms = block_ms
        self._batch = batch
        self._backoff = (backoff_initial_s, backoff_max_s)
        # socket_timeout must outlast a blocking XREAD, or every idle read would look like an error.
        self._redis = aioredis.from_url(url, protocol=2, socket_timeout=block_ms / 1000 + 5.0,
                                        socket_connect_timeout=3.0)
        self._last: dict[str, str | None] = dict.fromkeys(channels)
        self._tasks: list[asyncio.Task[None]] = []
        self._sink: Sink | None = None
        self._closed = False
        self.stats = BrokerStats()

    async def start(self, sink: Sink) -> None:
        if self._tasks:
            raise RuntimeError("broker already started")
        self._sink = sink
        for channel in self._keys:
            self._tasks.append(asyncio.create_task(self._read_loop(channel), name=f"xread:{channel}"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()

    def last_offset(self, channel: str) -> str | None:
        return self._last.get(channel)

    async def history(self, channel: str, after: str, until: str, *,
                      limit: int) -> list[tuple[str, StreamEntry | None]]:
        rows = await self._call(self._redis.xrange(self._keys[channel], min=f"({after}", max=until,
                                                   count=limit))
        out: list[tuple[str, StreamEntry | None]] = []
        for raw_id, fields in rows:
            entry = _decode_entry(fields)
            if entry is None:
                self.stats.bad_entries += 1
            out.append((_text(raw_id), entry))
        return out

    async def covers(self, channel: str, since: str) -> bool:
        try:
            info = await self._redis.xinfo_stream(self._keys[channel])
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise BrokerUnavailableError(f"redis: {exc}") from exc
            return covers_rule(parse_offset(since), exists=False, first=None, last_generated=(0, 0),
                               removed_any=False)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"redis: {type(exc).__name__}") from exc
        first_entry = info.get("first-entry")
        return covers_rule(
            parse_offset(since),
            exists=True,
            first=parse_offset(_text(first_entry[0])) if first_entry else None,
            last_generated=parse_offset(_text(info["last-generated-id"])),
            removed_any=int(info["entries-added"]) > int(info["length"]),
        )

    async def first_offset(self, channel: str) -> str | None:
        rows = await self._call(self._redis.xrange(self._keys[channel], min="-", max="+", count=1))
        return _text(rows[0][0]) if rows else None

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(1.0):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"redis: {type(exc).__name__}") from exc

    async def _tail(self, key: str) -> str:
        rows: Any = await self._redis.xrevrange(key, max="+", min="-", count=1)
        return _text(rows[0][0]) if rows else "0-0"

    async def _read_loop(self, channel: str) -> None:
        key = self._keys[channel]
        delay = self._backoff[0]
        while not self._closed:
            try:
                start = self._last[channel]
                if start is None:
                    start = self._last[channel] = await self._tail(key)
                    log.info("reader %s starts after %s", channel, start)
                response = await self._redis.xread({key: start}, count=self._batch, block=self._block_ms)
                for raw_id, fields in _stream_rows(response):
                    self._deliver(channel, _text(raw_id), fields)
                delay = self._backoff[0]
            except (RedisError, OSError) as exc:
                self.stats.read_errors += 1
                log.warning("reader %s: %s; retrying from %s in %.2fs", channel, type(exc).__name__,
                            self._last[channel], delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter only
                delay = min(delay * 2, self._backoff[1])

    def _deliver(self, channel: str, offset: str, fields: dict[bytes, bytes]) -> None:
        # The offset advances even past an undecodable entry: re-reading it would not fix it.
        self._last[channel] = offset
        entry = _decode_entry(fields)
        if entry is None:
            self.stats.bad_entries += 1
            log.warning("skipping malformed entry %s on %s", offset, channel)
            return
        self.stats.delivered[channel] = self.stats.delivered.get(channel, 0) + 1
        self.stats.read_lag_ms[channel] = max(0.0, time.time() * 1000 - parse_offset(offset)[0])
        assert self._sink is not None
        try:
            self._sink(channel, offset, entry)
        except Exception:  # the fan-out guards each client; this is a bug, keep reading
            log.exception("sink failed for %s %s", channel, offset)


def _stream_rows(response: Any) -> Iterable[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of an XREAD reply in RESP2 shape (the client is created with ``protocol=2``)."""
    if not response:
        return []
    return [row for _key, rows in response for row in rows]


class MemoryBroker:
    """In-process backend for unit tests and demos; same semantics as Redis, trimmed at ``maxlen``."""

    def __init__(self, *, channels: Sequence[str] = CHANNELS, maxlen: int = 10_000) -> None:
        self._streams: dict[str, list[tuple[Offset, StreamEntry]]] = {c: [] for c in channels}
        self._maxlen = maxlen
        self._sink: Sink | None = None
        self._last_id: Offset = (0, 0)
        self._delivered: dict[str, str | None] = {c: "0-0" for c in channels}
        self._added: dict[str, int] = dict.fromkeys(channels, 0)
        self.available = True  # tests flip this to simulate an outage
        self.stats = BrokerStats()

    async def start(self, sink: Sink) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._sink = None

    def publish(self, channel: str, entry: StreamEntry) -> str:
        """Append like XADD (ids strictly increasing) and deliver to the sink at once."""
        ms = int(time.time() * 1000)
        self._last_id = (ms, 0) if ms > self._last_id[0] else (self._last_id[0], self._last_id[1] + 1)
        stream = self._streams[channel]
        stream.append((self._last_id, entry))
        self._added[channel] += 1
        del stream[: max(0, len(stream) - self._maxlen)]
        offset = format_offset(self._last_id)
        self._delivered[channel] = offset
        if self._sink is not None:
            self._sink(channel, offset, entry)
        return offset

    def last_offset(self, channel: str) -> str | None:
        return self._delivered.get(channel)

    async def history(self, channel: str, after: str, until: str, *,
                      limit: int) -> list[tuple[str, StreamEntry | None]]:
        self._check()
        stream = self._streams[channel]
        start = bisect.bisect_right(stream, parse_offset(after), key=lambda row: row[0])
        end = bisect.bisect_right(stream, parse_offset(until), key=lambda row: row[0])
        return [(format_offset(o), e) for o, e in stream[start:min(end, start + limit)]]

    async def covers(self, channel: str, since: str) -> bool:
        self._check()
        stream = self._streams[channel]
        return covers_rule(parse_offset(since), exists=self._added[channel] > 0,
                           first=stream[0][0] if stream else None, last_generated=self._last_id,
                           removed_any=self._added[channel] > len(stream))

    async def first_offset(self, channel: str) -> str | None:
        self._check()
        stream = self._streams[channel]
        return format_offset(stream[0][0]) if stream else None

    async def ping(self) -> bool:
        return self.available

    def _check(self) -> None:
        if not self.available:
            raise BrokerUnavailableError("memory broker marked unavailable")
