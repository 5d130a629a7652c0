"""Dead-letter sink to Kafka: every refused record, with its raw bytes and reason, on the DLQ topic.

Why flush in ``finish_bundle``: a bundle (and, on Flink, the checkpoint that contains it) must not
complete before the broker has acknowledged (``acks=all``) every dead letter it produced — else a
crash right after the checkpoint would lose them. A send that ultimately fails fails the bundle, so
the runner replays it: delivery is at-least-once, and the record key (the source position, see
:func:`transforms.sinks.convert.dead_letter_key`) lets a consumer — or a compacted topic — drop
replays. The producer is idempotent, so its own internal retries never duplicate a record.

Record value (UTF-8 JSON)::

    {"v": 1, "raw_b64": "...", "reason_code": "not_json", "reason_detail": "...",
     "source": {"topic": "events", "partition": 3, "offset": 1234}, "failed_at_ms": 1764000000000}

``raw_b64`` is ``null`` for an empty record; ``source`` fields are ``null`` when the position is
unknown (events refused as too late). The header ``reason_code`` allows filtering without parsing.

This is the last dead-letter path (the Postgres table's refusals come here too), so a letter it
cannot send — one that cannot be encoded, or that the producer refuses outright (larger than
``max_request_size``) — has nowhere else to go: it is logged at ERROR with its key and counted in
``sink_rejected.kafka.dead_letters``, and the job carries on. A send the broker does not acknowledge
still fails the bundle (an outage, retried by the runner).
"""

# Beam's Python API (DoFn, ParDo, Metrics counters) is untyped, so calling it is reported
# everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from typing import Any, Final

import apache_beam as beam
import orjson
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError, RetriableError
from kafka.producer.future import FutureRecordMetadata

from streaming_analytics.settings import worker_value
from transforms import metrics
from transforms.records import DeadLetter
from transforms.retry import RetryPolicy, call_with_retry
from transforms.sinks.base import CONVERT_ERRORS
from transforms.sinks.convert import dead_letter_key, dead_letter_of

log = logging.getLogger(__name__)

DLQ_VALUE_VERSION: Final = 1
DEFAULT_MAX_IN_FLIGHT: Final = 1000
DEFAULT_DELIVERY_TIMEOUT_S: Final = 120.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0


class DeadLetterDeliveryError(RuntimeError):
    """The broker did not acknowledge some dead letters within the delivery timeout."""


def dlq_value(letter: DeadLetter) -> bytes:
    """The DLQ record value (see the module docstring)."""
    return orjson.dumps({
        "v": DLQ_VALUE_VERSION,
        "raw_b64": None if letter.raw is None else base64.b64encode(letter.raw).decode("ascii"),
        "reason_code": letter.reason_code,
        "reason_detail": letter.reason_detail,
        "source": {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
        "failed_at_ms": letter.failed_at_ms,
    })


def _producer_unreachable(exc: Exception) -> bool:
    """No broker answered the bootstrap (timeout, refused connection): worth another try."""
    return isinstance(exc, RetriableError)


class _ProduceDeadLettersFn(beam.DoFn):
    """Send each dead letter asynchronously; wait for every acknowledgement before a bundle ends."""

    def __init__(self, *, bootstrap_servers: str, topic: str, retry_policy: RetryPolicy,
                 max_in_flight: int, delivery_timeout_s: float, connect_timeout_s: float,
                 client_id: str) -> None:
        super().__init__()
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._policy = retry_policy
        self._max_in_flight = max_in_flight
        self._delivery_timeout_s = delivery_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._client_id = client_id
        self._sink = "kafka.dead_letters"
        self._written = Metrics.counter(metrics.NAMESPACE, metrics.sink_rows_written(self._sink))
        self._retries = Metrics.counter(metrics.NAMESPACE, metrics.sink_retries(self._sink))
        self._rejected = Metrics.counter(metrics.NAMESPACE, metrics.sink_rejected(self._sink))
        self._producer: KafkaProducer | None = None
        self._pending: list[FutureRecordMetadata] = []

    def setup(self) -> None:
        timeout_ms = int(self._delivery_timeout_s * 1000)
        # Once connected the producer retries sends itself (idempotently) until delivery_timeout_ms;
        # our policy only covers reaching a broker at start.
        self._producer = call_with_retry(
            lambda: KafkaProducer(
                bootstrap_servers=worker_value(self._bootstrap).split(","), client_id=self._client_id,
                acks="all",
                enable_idempotence=True, delivery_timeout_ms=timeout_ms,
                request_timeout_ms=min(30_000, timeout_ms), max_block_ms=timeout_ms, linger_ms=5,
                bootstrap_timeout_ms=int(self._connect_timeout_s * 1000),
            ),
            name=self._sink, policy=self._policy, is_transient=_producer_unreachable,
            on_retry=lambda _exc: self._retries.inc(),
        )

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, element: Any) -> Iterable[None]:
        assert self._producer is not None, "setup() not called"
        try:
            letter = dead_letter_of(element)
            key = dead_letter_key(letter)
            self._pending.append(self._producer.send(
                self._topic, key=key.encode(), value=dlq_value(letter),
                headers=[("reason_code", letter.reason_code.encode())],
            ))
        except (*CONVERT_ERRORS, MessageSizeTooLargeError) as exc:
            self._rejected.inc()
            log.error("%s: cannot send a dead letter, dropped (%s: %s): %.1000r", self._sink,
                      type(exc).__name__, exc, element)
            return ()
        if len(self._pending) >= self._max_in_flight:
            self._await_acks()
        return ()

    def finish_bundle(self) -> None:
        self._await_acks()

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def _await_acks(self) -> None:
        if not self._pending or self._producer is None:
            return
        pending, self._pending = self._pending, []
        self._producer.flush(timeout=self._delivery_timeout_s)
        failures: list[BaseException] = []
        for future in pending:
            if not future.is_done:
                failures.append(KafkaTimeoutError("not acknowledged within the delivery timeout"))
            elif future.failed():
                failures.append(future.exception)
        if failures:
            raise DeadLetterDeliveryError(
                f"{self._sink}: {len(failures)} of {len(pending)} dead letters not acknowledged by "
                f"topic {self._topic!r}; first error: {failures[0]!r}"
            ) from (failures[0] if isinstance(failures[0], KafkaError) else None)
        self._written.inc(len(pending))


class WriteDeadLettersToKafka(beam.PTransform[PCollection[Any], PCollection[None]]):
    """Produce :class:`~transforms.records.DeadLetter`\\ s (or dicts with its fields) to the DLQ topic.

    Tunables: ``bootstrap_servers``, ``topic`` (``SA_KAFKA_TOPIC_DLQ``), ``retry_policy`` (reaching a
    broker at start), ``max_in_flight`` (unacknowledged records before the DoFn waits),
    ``delivery_timeout_s`` (how long the producer retries one record), ``connect_timeout_s`` (one
    bootstrap attempt), ``client_id``. Counters:
    ``sink_rows_written.kafka.dead_letters``, ``sink_retries.kafka.dead_letters``,
    ``sink_rejected.kafka.dead_letters`` (letters it could not send at all; see the module docstring).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        retry_policy: RetryPolicy | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        client_id: str = "streaming-analytics-dlq",
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        if max_in_flight < 1 or delivery_timeout_s <= 0:
            raise ValueError("max_in_flight must be >= 1 and delivery_timeout_s > 0")
        self._fn = _ProduceDeadLettersFn(bootstrap_servers=bootstrap_servers, topic=topic,
                                         retry_policy=retry_policy or RetryPolicy(),
                                         max_in_flight=max_in_flight, delivery_timeout_s=delivery_timeout_s,
                                         connect_timeout_s=connect_timeout_s, client_id=client_id)

    def expand(self, records: PCollection[Any]) -> PCollection[None]:
        out: PCollection[None] = records | "ProduceDeadLetters" >> beam.ParDo(self._fn)
        return out
