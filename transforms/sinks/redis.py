"""Redis streams sink: one stream per channel, entries per ``streaming_analytics.streams``.

Delivery is **at-least-once**: ``XADD`` is not idempotent, and when a connection breaks after Redis
ran a batch but before the reply arrived, the retry appends the batch again (as does a bundle that
Flink replays from a checkpoint). What makes that harmless is the stream contract: every entry
carries its window ``key`` and ``pane``; readers keep the highest pane per key and drop the rest
(:func:`streaming_analytics.streams.is_newer`), so a duplicate — always an identical copy of an entry
already delivered — changes nothing for them.

Each batch is sent as one ``MULTI``/``EXEC`` pipeline: Redis applies it whole or not at all, so a
connection killed mid-batch never leaves half a batch behind, and duplicates, when they happen, are
whole batches. Streams are trimmed on every ``XADD`` with an approximate ``MAXLEN`` (``~``), which
lets Redis drop whole radix-tree nodes — far cheaper than exact trimming, at the price of a stream
a little longer than ``maxlen``.

An element that cannot become an entry (its data cannot be JSON: a lone surrogate, an integer beyond
64 bits; a record lacking fields) is refused, not written: it leaves as a ``sink_rejected`` dead
letter (transforms/sinks/base.py). Redis takes any bytes in a field, so no write error is a record's
fault: every one that outlasts the retries fails the bundle.
"""

# Beam's Python API (DoFn, ParDo, Metrics counters) is untyped, so calling it is reported
# everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import apache_beam as beam
import redis
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection
from redis.backoff import NoBackoff
from redis.retry import Retry

from streaming_analytics.settings import worker_value
from streaming_analytics.streams import (
    CHANNEL_ALERTS,
    CHANNELS,
    StreamEntry,
    pane_revision,
    stream_key,
    window_key,
)
from transforms import metrics
from transforms.records import DeadLetter
from transforms.retry import RetryPolicy, call_with_retry
from transforms.sinks.base import BatchingWriteFn, write_refusing
from transforms.sinks.convert import aggregate_dict, alert_dict

DEFAULT_BATCH_SIZE: Final = 500
DEFAULT_CLIENT_NAME: Final = "streaming-analytics-sink"
DEFAULT_SOCKET_TIMEOUT_S: Final = 10.0
#: Alerts are single facts, not windows: pane 0, on time, final (docs/stream-contract.md).
ALERT_TIMING: Final = "ON_TIME"


def alert_key(event_id: str) -> str:
    """Stream ``key`` of an alert (``alert|<event id>``, per the stream contract)."""
    return f"alert|{event_id}"


def aggregate_entry(record: Any) -> StreamEntry:
    """Aggregate pane (record or dict) → stream entry keyed by its window."""
    a = aggregate_dict(record)
    return StreamEntry(
        key=window_key(a["kind"], a["dimension"], a["key"], a["window_start_ms"], a["window_end_ms"]),
        pane=pane_revision(int(a["emitted_at_ms"]), int(a["pane_index"])),
        timing=a["timing"],
        final=bool(a["is_final"]),
        data=a,
    )


def alert_entry(record: Mapping[str, Any] | Any) -> StreamEntry:
    """Alert dict → stream entry keyed by its event."""
    a = alert_dict(record)
    return StreamEntry(key=alert_key(a["event_id"]), pane=0, timing=ALERT_TIMING, final=True, data=a)


def is_transient(exc: Exception) -> bool:
    """Connection loss, timeouts and a server still loading its data set are worth a retry."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError)


class _XAddFn(BatchingWriteFn[dict[str, bytes]]):
    """``XADD`` entries in batches (one ``MULTI``/``EXEC`` each), retrying transient errors."""

    def __init__(self, *, redis_url: str, stream: str, channel: str, maxlen: int, batch_size: int,
                 retry_policy: RetryPolicy, client_name: str, socket_timeout_s: float) -> None:
        super().__init__(batch_size=batch_size, sink=f"redis.{channel}")
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self._url = redis_url
        self._stream = stream
        self._to_entry = alert_entry if channel == CHANNEL_ALERTS else aggregate_entry
        self._maxlen = maxlen
        self._policy = retry_policy
        self._client_name = client_name
        self._socket_timeout_s = socket_timeout_s
        self._written = Metrics.counter(metrics.NAMESPACE, metrics.sink_rows_written(self._sink))
        self._retries = Metrics.counter(metrics.NAMESPACE, metrics.sink_retries(self._sink))
        self._client: redis.Redis | None = None

    def setup(self) -> None:
        # The library's own retries are off (retries=0): one retry layer, ours, with its budget.
        self._client = redis.Redis.from_url(
            worker_value(self._url), client_name=self._client_name, retry=Retry(NoBackoff(), 0),
            socket_timeout=self._socket_timeout_s, socket_connect_timeout=self._socket_timeout_s,
        )
        # Connect now so a wrong URL fails the job at start, not at the first record.
        self._retrying(self._client.ping)

    def convert(self, element: Any) -> dict[str, bytes]:
        entry = element if isinstance(element, StreamEntry) else self._to_entry(element)
        return entry.to_fields()

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _retrying(self, action: Any) -> Any:
        return call_with_retry(action, name=self._sink, policy=self._policy, is_transient=is_transient,
                               on_retry=lambda _exc: self._retries.inc())

    def write_batch(self, batch: list[dict[str, bytes]]) -> None:
        self._retrying(lambda: self._xadd(batch))
        self._written.inc(len(batch))

    def _xadd(self, batch: list[dict[str, bytes]]) -> None:
        assert self._client is not None, "setup() not called"
        # redis-py drops a broken connection from its pool itself; the next attempt gets a new one.
        with self._client.pipeline(transaction=True) as pipe:
            for fields in batch:
                pipe.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.execute()


class WriteToRedisStreams(beam.PTransform[PCollection[Any], PCollection[DeadLetter]]):
    """Append aggregate panes (``aggregates.*`` channels) or alerts (``alerts``) to the channel's stream.

    Elements: :class:`~transforms.aggregates.Aggregate`, aggregate/alert dicts, or ready
    :class:`~streaming_analytics.streams.StreamEntry`\\ s. Tunables: ``redis_url``, ``prefix``
    (``SA_REDIS_STREAM_PREFIX``), ``maxlen`` (``SA_REDIS_STREAM_MAXLEN``, approximate), ``batch_size``
    (entries per ``MULTI``/``EXEC``), ``retry_policy``, ``client_name`` (shows in ``CLIENT LIST``),
    ``socket_timeout_s``. Counters: ``sink_rows_written.redis.<channel>``,
    ``sink_retries.redis.<channel>``, ``sink_rejected.redis.<channel>``. Output: the elements it
    refused, as ``sink_rejected`` dead letters. At-least-once; see the module docstring.
    """

    def __init__(
        self,
        channel: str,
        redis_url: str,
        *,
        prefix: str,
        maxlen: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_policy: RetryPolicy | None = None,
        client_name: str = DEFAULT_CLIENT_NAME,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
        self._fn = _XAddFn(redis_url=redis_url, stream=stream_key(prefix, channel), channel=channel,
                           maxlen=maxlen, batch_size=batch_size, retry_policy=retry_policy or RetryPolicy(),
                           client_name=client_name, socket_timeout_s=socket_timeout_s)

    def expand(self, records: PCollection[Any]) -> PCollection[DeadLetter]:
        return write_refusing(records, "XAdd", self._fn)
