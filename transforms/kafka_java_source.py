"""The Kafka read of the job on Flink: Beam's Java KafkaIO as a native Flink source, through
cross-language.

Why not the Python source (``transforms/kafka_source.py``) on Flink: Beam's Flink runner (1.19,
2.62 — the one served here) grows checkpoint state without bound for every Python splittable DoFn
source (apache/beam#27648: each self-checkpoint registers a new keyed-state descriptor). Java
KafkaIO expanded with ``--experiments=use_deprecated_read`` is a ``Read.Unbounded``, which the
runner translates into a Flink source operator that keeps each partition's reader checkpoint
(``KafkaCheckpointMark``: the next offset) in operator state — flat, restored exactly from a
checkpoint or savepoint, and committed to the consumer group when a checkpoint completes.

Our expansion service (``tools/java/flink-runner``, started by the stack on loopback) registers
:data:`URN`: KafkaIO with the event-time policy of the Python source, mirrored in Java
(``EventTimePolicy``: timestamp = the payload's ``event_time_ms``, else the Kafka timestamp;
watermark = highest event time - ``max_out_of_orderness_ms``, future skew capped, a caught-up idle
partition advancing with the clock), and every record re-encoded as the bytes
:class:`~transforms.kafka_source.KafkaRecordCoder` reads — topic, partition, offset, key, value,
Kafka timestamp — so dead letters keep their position. The expanded Java transforms run in the
TaskManager itself (EMBEDDED environment), not in a Python worker.

Endpoints: ``bootstrap`` may be a :func:`~streaming_analytics.settings.worker_ref` placeholder
(``env:SA_KAFKA_BOOTSTRAP``); the Java side then reads that variable from the TaskManager's own
environment when it connects (``--endpoints=workers``, one jar for every deployment).
"""

# Beam's Python API is untyped; calling it is reported everywhere, so we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from typing import Any, Final, NamedTuple

import apache_beam as beam
from apache_beam.pvalue import PBegin, PCollection
from apache_beam.transforms.external import ExternalTransform, NamedTupleBasedPayloadBuilder

from transforms.kafka_source import START_POSITIONS, KafkaRecordCoder
from transforms.records import KafkaRecord

#: The transform our expansion service registers (tools/java/flink-runner, KafkaReadEventsRegistrar).
URN: Final = "beam:transform:org.streaminganalytics:kafka_read_events:v1"


#: The payload of :data:`URN`; field names map to the Java configuration's setters. (The functional
#: form on purpose: with ``from __future__ import annotations`` a class body's annotations are strings,
#: which Beam's schema inference cannot read, and every field would travel as a pickled "any".)
KafkaReadEventsConfig = NamedTuple("KafkaReadEventsConfig", [  # noqa: UP014
    ("bootstrap_servers", str),
    ("topic", str),
    ("group_id", str),
    ("start", str),
    ("max_out_of_orderness_ms", int),
    ("idle_timeout_ms", int),
    ("max_future_skew_ms", int),
])


def _decode(encoded: bytes) -> KafkaRecord:
    return _CODER.decode(encoded)


_CODER: Final = KafkaRecordCoder()


class ReadFromKafkaJava(beam.PTransform[Any, Any]):
    """Read a topic as timestamped :class:`KafkaRecord`\\ s through Java KafkaIO (module docstring).

    The same records, timestamps and watermark rule as :class:`~transforms.kafka_source.ReadFromKafka`
    (``tests/integration/test_kafka_sources_agree.py`` holds them to it). Unbounded only: bounded
    runs use the Python source on the DirectRunner.
    """

    def __init__(self, *, expansion_service: str, bootstrap: str, topic: str, group_id: str,
                 start: str = "committed", max_out_of_orderness_ms: int = 5_000,
                 idle_timeout_s: float | None = 5.0, max_future_skew_ms: int = 60_000) -> None:
        super().__init__()
        if start not in START_POSITIONS:
            raise ValueError(f"start={start!r}; expected one of {', '.join(START_POSITIONS)}")
        if not group_id:
            raise ValueError("the Java Kafka read commits offsets to a consumer group: group_id is required")
        self._expansion_service = expansion_service
        self._config = KafkaReadEventsConfig(
            bootstrap_servers=bootstrap, topic=topic, group_id=group_id, start=start,
            max_out_of_orderness_ms=int(max_out_of_orderness_ms),
            idle_timeout_ms=0 if idle_timeout_s is None else round(idle_timeout_s * 1000),
            max_future_skew_ms=int(max_future_skew_ms))

    def expand(self, pbegin: PBegin) -> PCollection[KafkaRecord]:
        encoded = pbegin | "KafkaIO" >> ExternalTransform(
            URN, NamedTupleBasedPayloadBuilder(self._config), self._expansion_service)
        records: PCollection[KafkaRecord] = encoded | "DecodeRecords" >> beam.Map(_decode).with_output_types(
            KafkaRecord)
        return records
