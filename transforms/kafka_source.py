"""Kafka source for Beam Python, on kafka-python: ``ReadFromKafka``.

Beam's own ``ReadFromKafka`` is a Java cross-language transform (it needs a Java expansion
service and a Java SDK harness); this one is pure Python. It is built on Beam's
``UnboundedSource`` API (``apache_beam.io.unbounded_source``, Beam >= 2.76), which runs it as a
splittable DoFn with self-checkpointing, a manual watermark estimator and bundle finalization —
the same shape as Java's KafkaIO:

* **One sub-source per partition.** ``split()`` lists the topic's partitions; each sub-source's
  restriction carries a :class:`KafkaCheckpointMark` (the next offset to read and the highest event
  time seen), so a Flink checkpoint or savepoint holds the exact position of every partition and a
  restored job resumes there: no gap, no replay into the results.
* **Event-time watermark with bounded out-of-orderness.** Each record's timestamp is its event
  time (``event_time_ms`` taken from the payload without a full parse; the Kafka timestamp when
  the payload has none, e.g. a malformed record). The watermark is the highest event time seen
  minus ``max_out_of_orderness_ms``; event times more than ``max_future_skew_ms`` ahead of the
  wall clock count only up to that horizon, so one record from a broken clock cannot push the
  watermark into the future and make every honest event late. A partition that is caught up and
  idle for ``idle_timeout_s`` advances its watermark with the wall clock (minus the same bound),
  so one quiet partition does not stall every window; ``idle_timeout_s=None`` disables that
  (for replays of old data).
* **Offsets committed back** to the consumer group when the runner finalizes a checkpoint, so
  consumer lag is observable with the usual Kafka tools. The pipeline never *reads* committed
  offsets except as a start position (``start="committed"``): its position is its checkpoint.
* **Batches, reused consumers.** A reader owns one ``KafkaConsumer`` (``assign``, no group
  membership) and polls batches. At each checkpoint (a bundle boundary) it hands the live consumer,
  with the records it has fetched but not emitted, to a per-process pool keyed by partition and next
  offset; the reader that resumes from that checkpoint takes it back. Beam's own reader cache lives
  in one DoFn instance, and a runner that runs several bundles of the source at once (Prism, Flink)
  gives a resumed restriction to another instance more often than not: without the pool, every
  such bundle opened a new consumer (~90 ms of connect and first fetch, on the latency path).
* **Bounded mode** (``bounded=True``): the end offsets at split time are the stop offsets; each
  partition finishes there (watermark to +inf), so a batch run or a test terminates.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import apache_beam as beam
from apache_beam import coders
from apache_beam.coders import Coder
from apache_beam.io.unbounded_source import (
    CheckpointMark,
    ReadFromUnboundedSource,
    UnboundedReader,
    UnboundedSource,
)
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PBegin, PCollection
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from streaming_analytics.settings import worker_value
from transforms import metrics
from transforms.records import KafkaRecord
from transforms.retry import RetryPolicy, call_with_retry

_LOG = logging.getLogger(__name__)

START_POSITIONS: Final = ("committed", "earliest", "latest")
#: How long a bounded reader waits for records it knows exist before it gives up for this bundle.
_BOUNDED_FETCH_TIMEOUT_S: Final = 30.0
#: Client timeouts: fail (and retry) within seconds when the broker is away, reconnect within one.
_CLIENT_TIMEOUTS: Final[dict[str, int]] = {"request_timeout_ms": 15_000, "reconnect_backoff_max_ms": 1_000}
#: Per-bundle caps of a bounded read: effectively none (see ReadFromKafka).
_UNCAPPED_RECORDS: Final = 2**31 - 1
_UNCAPPED_SECONDS: Final = 24 * 3600.0
#: Resume delay of a partition that had no data (ReadFromKafka says why it must be 0).
_NO_RESUME_DELAY_S: Final = 0.0
_TIME_FIELD: Final = b'"event_time_ms"'
#: After the first ``"event_time_ms"``: separators, then 1-15 digits not followed by another digit
#: or by ``.``/``e``/``E`` (a float). One match instead of a byte-by-byte loop in Python.
_TIME_VALUE: Final = re.compile(rb"[ \t\r\n:]*([0-9]{1,15})(?![0-9.eE])")


def event_time_from_payload(value: bytes | None) -> int | None:
    """``event_time_ms`` of a JSON event without parsing the whole document (hot path).

    Returns None when the field is absent or not an integer; the caller then falls back to the
    Kafka timestamp. Validation proper happens in ``ParseEvents``.
    """
    if not value:
        return None
    i = value.find(_TIME_FIELD)
    if i < 0:
        return None
    match = _TIME_VALUE.match(value, i + len(_TIME_FIELD))
    return None if match is None else int(match[1])


# --- checkpoint mark -------------------------------------------------------------------------------
@dataclass
class KafkaCheckpointMark(CheckpointMark):
    """Resume position of one partition: the next offset to read, and the watermark state."""

    next_offset: int
    max_event_time_ms: int
    # Where to commit on finalization; not part of the position itself.
    bootstrap: str = field(default="", compare=False)
    topic: str = field(default="", compare=False)
    partition: int = field(default=0, compare=False)
    group_id: str | None = field(default=None, compare=False)

    def finalize_checkpoint(self) -> None:
        """Commit ``next_offset`` to the consumer group (idempotent: an absolute offset)."""
        if not self.group_id or self.next_offset < 0:
            return
        _OffsetCommitter.get(self.bootstrap, self.group_id).commit(self.topic, self.partition,
                                                                   self.next_offset)

    def __hash__(self) -> int:
        return hash((self.next_offset, self.max_event_time_ms))


class KafkaCheckpointMarkCoder(Coder):
    """Compact, deterministic encoding: two int64s, then the commit coordinates."""

    _HEAD = struct.Struct(">qqi")

    def encode(self, value: KafkaCheckpointMark) -> bytes:
        strings = [value.bootstrap, value.topic, value.group_id or ""]
        encoded = [s.encode() for s in strings]
        return (self._HEAD.pack(value.next_offset, value.max_event_time_ms, value.partition)
                + b"".join(struct.pack(">H", len(e)) + e for e in encoded))

    def decode(self, encoded: bytes) -> KafkaCheckpointMark:
        next_offset, max_time, partition = self._HEAD.unpack_from(encoded)
        pos = self._HEAD.size
        strings = []
        for _ in range(3):
            (length,) = struct.unpack_from(">H", encoded, pos)
            pos += 2
            strings.append(encoded[pos:pos + length].decode())
            pos += length
        return KafkaCheckpointMark(next_offset, max_time, strings[0], strings[1], partition,
                                   strings[2] or None)

    def is_deterministic(self) -> bool:
        return True


class KafkaRecordCoder(Coder):
    """Fast coder for :class:`KafkaRecord` (pickling a dataclass per element is slow)."""

    _HEAD = struct.Struct(">iqqii")  # partition, offset, timestamp (-1: none), key len, value len

    def encode(self, r: KafkaRecord) -> bytes:
        topic = r.topic.encode()
        key_len = -1 if r.key is None else len(r.key)
        value_len = -1 if r.value is None else len(r.value)
        ts = -1 if r.timestamp_ms is None else r.timestamp_ms
        return b"".join((struct.pack(">H", len(topic)), topic,
                         self._HEAD.pack(r.partition, r.offset, ts, key_len, value_len),
                         r.key or b"", r.value or b""))

    def decode(self, b: bytes) -> KafkaRecord:
        (topic_len,) = struct.unpack_from(">H", b)
        pos = 2 + topic_len
        topic = b[2:pos].decode()
        partition, offset, ts, key_len, value_len = self._HEAD.unpack_from(b, pos)
        pos += self._HEAD.size
        key = None if key_len < 0 else b[pos:pos + key_len]
        pos += max(key_len, 0)
        value = None if value_len < 0 else b[pos:pos + value_len]
        return KafkaRecord(topic, partition, offset, key, value, None if ts < 0 else ts)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return KafkaRecord


coders.registry.register_coder(KafkaRecord, KafkaRecordCoder)  # type: ignore[attr-defined]


class _OffsetCommitter:
    """One group-committing consumer per (bootstrap, group) per worker process."""

    _instances: ClassVar[dict[tuple[str, str], _OffsetCommitter]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, bootstrap: str, group_id: str) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(bootstrap_servers=worker_value(bootstrap), group_id=group_id,
                                       enable_auto_commit=False, client_id="sa-offset-committer")
        self._commit_lock = threading.Lock()
        self.commits: Any = Metrics.counter(metrics.NAMESPACE, metrics.KAFKA_OFFSET_COMMITS)

    @classmethod
    def get(cls, bootstrap: str, group_id: str) -> _OffsetCommitter:
        with cls._lock:
            key = (bootstrap, group_id)
            if key not in cls._instances:
                cls._instances[key] = cls(bootstrap, group_id)
            return cls._instances[key]

    def commit(self, topic: str, partition: int, offset: int) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        with self._commit_lock:
            self._consumer.commit({TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)})
        self.commits.inc()


# --- consumers handed over between bundles -------------------------------------------------------------
@dataclass
class _Session:
    """A live consumer positioned for ``next_offset``: its fetched, not yet emitted records and the
    reader's idle/end-offset bookkeeping travel with it."""

    consumer: Any
    buffer: deque[Any]
    next_offset: int
    idle_since: float | None
    end_offset: int
    end_checked_at: float
    released_at: float = 0.0


class _SessionPool:
    """Per-process hand-over of consumers from a checkpointing reader to the one that resumes there.

    One entry per partition (of one source config): a newer release replaces an older one. An entry
    is taken only by a reader resuming at exactly its offset, so a stale or duplicate resume (a
    retried bundle) opens its own consumer instead. Entries idle for ``idle_s`` are closed.
    """

    def __init__(self, idle_s: float = 60.0) -> None:
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._entries: dict[tuple[Any, ...], _Session] = {}

    def release(self, key: tuple[Any, ...], session: _Session) -> None:
        session.released_at = time.monotonic()
        with self._lock:
            replaced = self._entries.pop(key, None)
            self._entries[key] = session
            stale = self._evict_idle_locked()
        if replaced is not None and replaced.consumer is not session.consumer:
            stale.append(replaced)
        self._close(stale)

    def acquire(self, key: tuple[Any, ...], next_offset: int) -> _Session | None:
        with self._lock:
            session = self._entries.get(key)
            if session is not None and session.next_offset == next_offset:
                del self._entries[key]
            else:
                session = None
            stale = self._evict_idle_locked()
        self._close(stale)
        return session

    def _evict_idle_locked(self) -> list[_Session]:
        deadline = time.monotonic() - self._idle_s
        stale = [k for k, s in self._entries.items() if s.released_at < deadline]
        return [self._entries.pop(k) for k in stale]

    @staticmethod
    def _close(sessions: Iterable[_Session]) -> None:
        for session in sessions:
            try:
                session.consumer.close()
            except Exception:  # noqa: BLE001 - closing a dead consumer must not fail a bundle
                _LOG.warning("could not close a pooled Kafka consumer", exc_info=True)


_SESSIONS: Final = _SessionPool()


# --- source and reader ------------------------------------------------------------------------------
@dataclass(frozen=True)
class KafkaSourceConfig:
    """Everything a reader needs; small and stable, because Beam pickles it into every restriction."""

    bootstrap: str
    topic: str
    group_id: str | None
    start: str = "committed"
    max_out_of_orderness_ms: int = 5_000
    idle_timeout_s: float | None = 5.0
    max_future_skew_ms: int = 60_000
    broker_retry_budget_s: float = 300.0
    max_poll_records: int = 2_000
    poll_timeout_ms: int = 50
    bounded: bool = False

    def __post_init__(self) -> None:
        if self.start not in START_POSITIONS:
            raise ValueError(f"start={self.start!r}; expected one of {', '.join(START_POSITIONS)}")
        if self.max_out_of_orderness_ms < 0:
            raise ValueError("max_out_of_orderness_ms must be >= 0")


class KafkaPartitionSource(UnboundedSource):
    """The whole topic before ``split()``; one partition after it."""

    def __init__(self, config: KafkaSourceConfig, partition: int | None = None,
                 stop_offset: int | None = None) -> None:
        self.config = config
        self.partition = partition
        self.stop_offset = stop_offset

    def split(self, desired_num_splits: int, options: Any = None) -> Iterable[KafkaPartitionSource]:
        if self.partition is not None:
            return [self]
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=worker_value(self.config.bootstrap),
                                 enable_auto_commit=False)
        try:
            partitions = sorted(consumer.partitions_for_topic(self.config.topic) or ())
            if not partitions:
                raise RuntimeError(f"Kafka topic {self.config.topic!r} does not exist or has no partitions")
            ends: dict[int, int | None] = dict.fromkeys(partitions)
            if self.config.bounded:
                tps = [TopicPartition(self.config.topic, p) for p in partitions]
                ends = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
        finally:
            consumer.close()
        return [KafkaPartitionSource(self.config, p, ends[p]) for p in partitions]

    def create_reader(self, options: Any, checkpoint_mark: CheckpointMark | None) -> KafkaPartitionReader:
        if self.partition is None:
            raise RuntimeError("create_reader() on an unsplit KafkaPartitionSource")
        if checkpoint_mark is not None and not isinstance(checkpoint_mark, KafkaCheckpointMark):
            raise TypeError(f"not a Kafka checkpoint mark: {checkpoint_mark!r}")
        return KafkaPartitionReader(self.config, self.partition, self.stop_offset, checkpoint_mark)

    def get_checkpoint_mark_coder(self) -> Coder:
        return KafkaCheckpointMarkCoder()

    def default_output_coder(self) -> Coder:
        return KafkaRecordCoder()

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, KafkaPartitionSource) and other.config == self.config
                and other.partition == self.partition and other.stop_offset == self.stop_offset)

    def __hash__(self) -> int:
        return hash((self.config, self.partition, self.stop_offset))


class KafkaPartitionReader(UnboundedReader):
    """Reads one partition in batches with one consumer; position = next offset to read."""

    def __init__(self, config: KafkaSourceConfig, partition: int, stop_offset: int | None,
                 mark: KafkaCheckpointMark | None) -> None:
        self._config = config
        self._partition = partition
        self._stop_offset = stop_offset
        self._mark = mark
        self._consumer: Any = None
        self._tp: Any = None
        self._buffer: deque[Any] = deque()
        self._current: KafkaRecord | None = None
        self._current_ts = MIN_TIMESTAMP
        self._next_offset = -1
        self._max_event_ms = mark.max_event_time_ms if mark else -1
        self._idle_since: float | None = None
        self._end_offset = -1
        self._end_checked_at = float("-inf")
        self._watermark_ms: int | None = None  # the watermark last returned, and its Timestamp
        self._watermark = MIN_TIMESTAMP
        self._records: Any = Metrics.counter(metrics.NAMESPACE, metrics.KAFKA_RECORDS_READ)
        self._no_time: Any = Metrics.counter(metrics.NAMESPACE, metrics.KAFKA_RECORDS_WITHOUT_EVENT_TIME)

    # --- UnboundedReader ---
    def start(self) -> bool:
        from kafka import TopicPartition

        self._tp = TopicPartition(self._config.topic, self._partition)
        if self._mark is not None and self._take_session(self._mark.next_offset):
            return self.advance()
        # A reader may be (re)created while the broker is away (a restart, a failover): wait for it
        # within a budget instead of failing the bundle, which would fail the job on some runners.
        self._next_offset = self._connect_retrying()
        return self.advance()

    def _connect_retrying(self, offset: int | None = None) -> int:
        """:meth:`_connect`, retrying Kafka errors for ``broker_retry_budget_s``."""
        from kafka.errors import KafkaError

        policy = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=5.0,
                             max_elapsed_s=self._config.broker_retry_budget_s)
        return call_with_retry(lambda: self._connect(offset), policy=policy,
                               name=f"kafka source {self._config.topic}-{self._partition}: connect",
                               is_transient=lambda exc: isinstance(exc, KafkaError))

    def _connect(self, offset: int | None = None) -> int:
        """A new consumer positioned at ``offset`` (default: the start position); returns it."""
        from kafka import KafkaConsumer

        c = self._config
        self.close()
        self._consumer = KafkaConsumer(
            bootstrap_servers=worker_value(c.bootstrap), group_id=None, enable_auto_commit=False,
            max_poll_records=c.max_poll_records, fetch_max_wait_ms=c.poll_timeout_ms,
            client_id=f"sa-source-{c.topic}-{self._partition}", **_CLIENT_TIMEOUTS,
        )
        self._consumer.assign([self._tp])
        if offset is None:
            offset = self._initial_offset()
        self._consumer.seek(self._tp, offset)
        return offset

    def _session_key(self) -> tuple[Any, ...]:
        return (self._config, self._partition, self._stop_offset)

    def _take_session(self, next_offset: int) -> bool:
        """Adopt the pooled consumer positioned at ``next_offset``, if there is one."""
        session = _SESSIONS.acquire(self._session_key(), next_offset)
        if session is None:
            return False
        self.close()
        self._consumer = session.consumer
        self._buffer = session.buffer
        self._next_offset = session.next_offset
        self._idle_since = session.idle_since
        self._end_offset = session.end_offset
        self._end_checked_at = session.end_checked_at
        return True

    def _ensure_consumer(self) -> None:
        """After a checkpoint handed the consumer over: take it back, or open a new one there."""
        if self._consumer is not None or self._take_session(self._next_offset):
            return
        self._connect_retrying(self._next_offset)

    def advance(self) -> bool:
        # Once per record: the common case (a buffered record, no stop offset reached) makes no
        # method calls of ours beyond the payload scan.
        stop = self._stop_offset
        if stop is not None and self._next_offset >= stop:
            return False
        if self._consumer is None:
            self._ensure_consumer()
        buffer = self._buffer
        if not buffer:
            self._fill_buffer()
            if not buffer:
                if self._idle_since is None:
                    self._idle_since = time.monotonic()
                return False
        self._idle_since = None
        rec = buffer.popleft()
        offset = rec.offset
        if stop is not None and offset >= stop:
            buffer.clear()
            self._next_offset = stop
            return False
        value = rec.value
        event_ms = event_time_from_payload(value)
        if event_ms is None:
            self._no_time.inc()
            event_ms = rec.timestamp if rec.timestamp is not None and rec.timestamp >= 0 else 0
        self._current = KafkaRecord(rec.topic, rec.partition, offset, rec.key, value, rec.timestamp)
        self._current_ts = Timestamp(micros=event_ms * 1000)
        if event_ms > self._max_event_ms:
            # A record stamped far in the future (a broken producer clock) must not drag the
            # watermark ahead and make every honest event late: it only advances it up to
            # now + skew. (Only a record past the maximum can move it, so only then the clock.)
            horizon_ms = int(time.time() * 1000) + self._config.max_future_skew_ms
            self._max_event_ms = max(self._max_event_ms, min(event_ms, horizon_ms))
        self._next_offset = offset + 1
        self._records.inc()
        return True

    def _fill_buffer(self) -> None:
        # Unbounded: one short poll; "no data now" lets the SDF defer and come back. Bounded: the
        # records up to the stop offset exist, so wait for them — a bounded read then finishes in
        # one bundle per partition (see ReadFromKafka for why that matters).
        deadline = time.monotonic() + (_BOUNDED_FETCH_TIMEOUT_S if self._stop_offset is not None else 0)
        while True:
            batch = self._consumer.poll(timeout_ms=self._config.poll_timeout_ms,
                                        max_records=self._config.max_poll_records)
            for records in batch.values():
                self._buffer.extend(records)
            if self._buffer or time.monotonic() >= deadline:
                return

    def get_current(self) -> KafkaRecord:
        if self._current is None:
            raise RuntimeError("get_current() before a successful start()/advance()")
        return self._current

    def get_current_timestamp(self) -> Timestamp:
        return self._current_ts

    def get_watermark(self) -> Timestamp:
        if self._finished():
            return MAX_TIMESTAMP
        bound = self._config.max_out_of_orderness_ms
        wm_ms = self._max_event_ms - bound if self._max_event_ms >= 0 else None
        idle = self._config.idle_timeout_s
        if (idle is not None and self._idle_since is not None
                and time.monotonic() - self._idle_since >= idle and self._caught_up()):
            now_ms = int(time.time() * 1000) - bound
            wm_ms = now_ms if wm_ms is None else max(wm_ms, now_ms)
        if wm_ms is None:
            return MIN_TIMESTAMP
        # Asked once per record; the Timestamp is rebuilt only when the watermark moved.
        if wm_ms != self._watermark_ms:
            self._watermark_ms = wm_ms
            self._watermark = Timestamp(micros=max(wm_ms, 0) * 1000)
        return self._watermark

    def get_checkpoint_mark(self) -> KafkaCheckpointMark:
        c = self._config
        mark = KafkaCheckpointMark(self._next_offset, self._max_event_ms, c.bootstrap, c.topic,
                                   self._partition, c.group_id)
        # A bundle boundary: whichever reader resumes from this mark (this one, parked by Beam, or
        # a new one in another DoFn instance) takes the live consumer from the pool.
        if self._consumer is not None and not self._finished():
            _SESSIONS.release(self._session_key(), _Session(
                self._consumer, self._buffer, self._next_offset, self._idle_since,
                self._end_offset, self._end_checked_at))
            self._consumer = None
            self._buffer = deque()
        return mark

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # --- helpers ---
    def _initial_offset(self) -> int:
        if self._mark is not None:
            return self._mark.next_offset
        c = self._config
        if c.start == "committed" and c.group_id:
            committed = self._committed_offset()
            if committed is not None:
                return committed
        if c.start == "latest":
            return int(self._consumer.end_offsets([self._tp])[self._tp])
        return int(self._consumer.beginning_offsets([self._tp])[self._tp])

    def _committed_offset(self) -> int | None:
        from kafka import KafkaConsumer

        probe = KafkaConsumer(bootstrap_servers=worker_value(self._config.bootstrap),
                              group_id=self._config.group_id,
                              enable_auto_commit=False, **_CLIENT_TIMEOUTS)
        try:
            committed = probe.committed(self._tp)
        finally:
            probe.close()
        return None if committed is None else int(committed)

    def _finished(self) -> bool:
        return self._stop_offset is not None and self._next_offset >= self._stop_offset

    def _caught_up(self) -> bool:
        # Asked on every watermark poll of an idle partition: look the end offset up once a second.
        from kafka.errors import KafkaError

        now = time.monotonic()
        if now - self._end_checked_at >= 1.0 and self._consumer is not None:
            try:
                self._end_offset = int(self._consumer.end_offsets([self._tp])[self._tp])
            except KafkaError:
                # Broker unreachable: we cannot know we are caught up, so the clock must not move
                # the watermark; the reader keeps polling and the consumer reconnects by itself.
                return False
            self._end_checked_at = now
        return self._next_offset >= self._end_offset


class ReadFromKafka(beam.PTransform[Any, Any]):
    """Read a topic as timestamped :class:`KafkaRecord` elements (see the module docstring).

    A partition with no data right now self-checkpoints with **no resume delay** (Beam's
    ``poll_interval`` 0; the reader's own poll already waits ``poll_timeout_ms``). Prism sets the
    source's watermark from the residuals of the bundle that finished last, and parks a delayed
    residual outside the bundles that follow: the watermark would then run ahead of a partition
    that paused, and its next records would be late (issue 9's Prism finding, pinned by
    tests/integration/test_prism_source_watermark.py). Without a delay every bundle holds every
    partition's residual, so the watermark is the minimum over all partitions.
    """

    def __init__(self, *, bootstrap: str, topic: str, group_id: str | None = None,
                 start: str = "committed", max_out_of_orderness_ms: int = 5_000,
                 idle_timeout_s: float | None = 5.0, bounded: bool = False,
                 max_records_per_bundle: int = 5_000, max_read_time_s: float = 1.0) -> None:
        super().__init__()
        self._config = KafkaSourceConfig(bootstrap=bootstrap, topic=topic, group_id=group_id, start=start,
                                         max_out_of_orderness_ms=max_out_of_orderness_ms,
                                         idle_timeout_s=idle_timeout_s, bounded=bounded)
        self._max_records_per_bundle = max_records_per_bundle
        self._max_read_time_s = max_read_time_s

    def expand(self, pbegin: PBegin) -> PCollection[KafkaRecord]:
        # A bounded read does not self-checkpoint: each partition is one bundle up to its stop
        # offset. A batch run gains nothing from intermediate checkpoints, and the DirectRunner's
        # batch executor would run downstream stages between the rounds of a checkpointed read
        # with the watermark at +inf, firing event-time timers (dedup expiry, window GC) early.
        bounded = self._config.bounded
        records: PCollection[KafkaRecord] = pbegin | "ReadUnboundedKafka" >> ReadFromUnboundedSource(
            KafkaPartitionSource(self._config),
            poll_interval=_NO_RESUME_DELAY_S,
            max_records_per_bundle=_UNCAPPED_RECORDS if bounded else self._max_records_per_bundle,
            max_read_time_seconds=_UNCAPPED_SECONDS if bounded else self._max_read_time_s,
        )
        return records
