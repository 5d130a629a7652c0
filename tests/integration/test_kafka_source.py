"""The Python Kafka source against the real broker: positions, commits, watermarks, runners."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger, window
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from devstack.kafka_topics import ensure_topics
from devstack.stack.process import wait_until
from streaming_analytics.settings import Settings
from transforms.kafka_source import (
    KafkaCheckpointMarkCoder,
    KafkaPartitionSource,
    KafkaSourceConfig,
    ReadFromKafka,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PARTITIONS = 3
PER_PARTITION = 40


def produce(settings: Settings, topic: str, partitions: int = PARTITIONS, per_partition: int = PER_PARTITION,
            time_of: object = None) -> dict[tuple[int, int], int]:
    """Write ``per_partition`` events to every partition; return {(partition, offset): event time}."""
    ensure_topics(settings.kafka_bootstrap, {topic: partitions})
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    written: dict[tuple[int, int], int] = {}
    for p in range(partitions):
        for i in range(per_partition):
            t = T0 + p * 1000 + i * 100 if time_of is None else time_of(p, i)  # type: ignore[operator]
            meta = producer.send(topic, value=orjson.dumps({"event_time_ms": t, "i": i}), partition=p).get(30)
            written[(p, meta.offset)] = t
    producer.close()
    return written


def config(settings: Settings, topic: str, **overrides: object) -> KafkaSourceConfig:
    values: dict[str, object] = {"bootstrap": settings.kafka_bootstrap, "topic": topic,
                                 "group_id": f"g-{topic}", "start": "earliest", "idle_timeout_s": None}
    values.update(overrides)
    return KafkaSourceConfig(**values)  # type: ignore[arg-type]


def drain(reader: object, limit: int | None = None) -> list[tuple[int, int, int]]:
    """Read (partition, offset, timestamp ms) until no data (or ``limit`` records)."""
    out = []
    ok = reader.start()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (limit is None or len(out) < limit):
        if ok:
            rec = reader.get_current()  # type: ignore[attr-defined]
            out.append((rec.partition, rec.offset, reader.get_current_timestamp().micros // 1000))  # type: ignore[attr-defined]
        elif out and limit is None:
            break
        if limit is not None and len(out) >= limit:
            break
        ok = reader.advance()  # type: ignore[attr-defined]
    return out


def test_split_gives_one_source_per_partition(settings: Settings, unique_name: str) -> None:
    produce(settings, unique_name, per_partition=1)
    parts = list(KafkaPartitionSource(config(settings, unique_name)).split(10))
    assert sorted(p.partition for p in parts) == list(range(PARTITIONS))


def test_reader_resumes_strictly_after_its_checkpoint(settings: Settings, unique_name: str) -> None:
    written = produce(settings, unique_name)
    source = next(s for s in KafkaPartitionSource(config(settings, unique_name)).split(1) if s.partition == 1)
    first = source.create_reader(None, None)
    head = drain(first, limit=15)
    mark = KafkaCheckpointMarkCoder().decode(KafkaCheckpointMarkCoder().encode(first.get_checkpoint_mark()))
    first.close()
    second = source.create_reader(None, mark)
    tail = drain(second)
    second.close()
    offsets = [o for _, o, _ in head + tail]
    assert offsets == sorted({o for (p, o) in written if p == 1}), "gap or replay across the checkpoint"
    assert all(written[(p, o)] == t for p, o, t in head + tail), "timestamps are the payload event times"


def test_finalized_checkpoint_commits_the_offset_and_committed_start_resumes(
        settings: Settings, unique_name: str) -> None:
    produce(settings, unique_name)
    cfg = config(settings, unique_name, start="committed")
    source = next(s for s in KafkaPartitionSource(cfg).split(1) if s.partition == 0)
    reader = source.create_reader(None, None)
    head = drain(reader, limit=10)
    mark = reader.get_checkpoint_mark()
    reader.close()
    mark.finalize_checkpoint()
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=cfg.group_id,
                             enable_auto_commit=False)
    assert consumer.committed(TopicPartition(unique_name, 0)) == head[-1][1] + 1 == mark.next_offset
    consumer.close()
    resumed = source.create_reader(None, None)  # no checkpoint: starts from the committed offset
    assert drain(resumed, limit=1)[0][1] == mark.next_offset
    resumed.close()


def test_watermark_trails_the_highest_event_time_by_the_bound(settings: Settings, unique_name: str) -> None:
    produce(settings, unique_name, partitions=1)
    source = next(iter(KafkaPartitionSource(config(settings, unique_name, max_out_of_orderness_ms=2_000))
                       .split(1)))
    reader = source.create_reader(None, None)
    read = drain(reader)
    assert reader.get_watermark().micros // 1000 == max(t for *_, t in read) - 2_000
    reader.close()


def test_an_idle_caught_up_partition_advances_with_the_clock(settings: Settings, unique_name: str) -> None:
    produce(settings, unique_name, partitions=1, per_partition=5)
    source = next(iter(KafkaPartitionSource(config(settings, unique_name, idle_timeout_s=0.2,
                                                   max_out_of_orderness_ms=1_000)).split(1)))
    reader = source.create_reader(None, None)
    drain(reader)
    assert reader.get_watermark().micros // 1000 < T0 + 10_000  # still event-time driven

    def clock_driven() -> bool:
        reader.advance()  # finds nothing: the partition has been idle since the drain
        return reader.get_watermark().micros // 1000 > T0 + 10_000

    wait_until(clock_driven, 10, "the idle partition's watermark following the clock", interval_s=0.05)
    before_ms = int(time.time() * 1000)
    watermark_ms = reader.get_watermark().micros // 1000
    after_ms = int(time.time() * 1000)
    assert before_ms - 1_000 - 2_000 <= watermark_ms <= after_ms - 1_000
    reader.close()


def test_a_record_from_the_far_future_cannot_drag_the_watermark(settings: Settings, unique_name: str) -> None:
    far_future = int(time.time() * 1000) + 365 * 24 * 3600 * 1000
    produce(settings, unique_name, partitions=1, per_partition=3,
            time_of=lambda p, i: far_future if i == 1 else T0 + i)
    source = next(iter(KafkaPartitionSource(config(settings, unique_name)).split(1)))
    reader = source.create_reader(None, None)
    drain(reader)
    assert reader.get_watermark().micros // 1000 <= int(time.time() * 1000) + 60_000
    reader.close()


def test_bounded_read_on_the_direct_runner_yields_every_record_once(settings: Settings,
                                                                    unique_name: str) -> None:
    written = produce(settings, unique_name)
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        records = p | ReadFromKafka(bootstrap=settings.kafka_bootstrap, topic=unique_name, start="earliest",
                                    bounded=True, idle_timeout_s=None)
        assert_that(records | beam.Map(lambda r: (r.partition, r.offset)), equal_to(list(written)))


def test_windows_fire_from_the_kafka_watermark_on_prism(settings: Settings, unique_name: str) -> None:
    written = produce(settings, unique_name)
    expected = Counter((t - T0) // 1000 for t in written.values())  # 1-second windows
    prism = Path(settings.tools_dir) / "bin" / "prism"
    # Beam shares one Prism job server per process, created by whoever asks first; the DirectRunner
    # asks for the (unreachable) released binary, so opt out of the singleton.
    options = PipelineOptions(["--runner=PrismRunner", f"--prism_location={prism}", "--streaming",
                               "--environment_type=LOOPBACK",
                               "--experiments=disable_prism_server_singleton"])
    with beam.Pipeline(options=options) as p:
        counts = (
            p
            | ReadFromKafka(bootstrap=settings.kafka_bootstrap, topic=unique_name, start="earliest",
                            bounded=True, idle_timeout_s=None)
            | beam.WindowInto(window.FixedWindows(1), trigger=trigger.AfterWatermark(),
                              accumulation_mode=trigger.AccumulationMode.DISCARDING)
            | beam.Map(lambda r: ("all", 1))
            | beam.CombinePerKey(sum)
            | beam.ParDo(_WindowStart())
        )
        assert_that(counts, equal_to([((T0 // 1000 + k), n) for k, n in expected.items()]))


class _WindowStart(beam.DoFn):  # type: ignore[misc]
    def process(self, kv: tuple[str, int], w: object = beam.DoFn.WindowParam) -> object:
        yield int(w.start), kv[1]  # type: ignore[attr-defined]



def test_the_progress_a_runner_splits_by_is_finite_in_every_state(settings: Settings,
                                                                  unique_name: str) -> None:
    """Issue 8's Prism crash was ``cannot convert float NaN to integer`` in the SDK's split
    arithmetic (``_compute_split``), fed by an SDF's reported progress. The source's progress, as
    the SDK hands it to that arithmetic (the tracker's progress with the bytes emitted as completed
    work), must be a finite fraction in [0, 1] before the first record, while reading, at a
    self-checkpoint and after it, and a split request at any fraction must be answered."""
    import math

    from apache_beam.io.unbounded_source import _UnboundedSourceRestrictionProvider
    from apache_beam.runners.worker.bundle_processor import DataInputOperation

    produce(settings, unique_name, partitions=1, per_partition=20)
    (source,) = KafkaPartitionSource(config(settings, unique_name)).split(1)
    provider = _UnboundedSourceRestrictionProvider()
    tracker = provider.create_tracker(provider.initial_restriction(source))
    emitted_bytes = 0
    fractions = []

    def check() -> None:
        progress = tracker.current_progress().with_completed(emitted_bytes)
        fraction = progress.fraction_completed
        assert math.isfinite(fraction) and 0.0 <= fraction <= 1.0, progress
        fractions.append(fraction)
        for fraction_of_remainder in (0.0, 0.25, 0.5, 1.0):
            DataInputOperation._compute_split(0, fraction, 1, fraction_of_remainder, 1)

    check()
    claimed = 0
    deadline = time.monotonic() + 30
    while claimed < 10:
        assert time.monotonic() < deadline, f"{claimed} records claimed in 30 s"
        holder: list[object] = [None]
        assert tracker.try_claim(holder)
        if isinstance(holder[0], tuple):
            claimed += 1
            emitted_bytes += len(holder[0][0].value or b"")
        check()
    assert tracker.try_split(0.5) is None  # only self-checkpoints; a dynamic split is declined
    check()
    split = tracker.try_split(0)
    assert split is not None
    check()
    residual = provider.create_tracker(split[1])
    tracker = residual
    check()
    tracker._close_reader_if_open()
    assert len(fractions) >= 14
