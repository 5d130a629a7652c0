"""Late data on the real stack, in the situations a data engineer meets after every restart, deploy,
rollback or stalled consumer: the whole backlog is in the topic before the job starts.

The backlog is issue 9's, scaled down: records produced first to a 4-partition topic by the
generator (late, too-late, duplicate, malformed and out-of-order records), then the job started —
bounded on the DirectRunner, and live on Prism and on Flink (marker ``flink``), where it catches up
and then gets more records while it runs — and a live job stopped (on Flink with a savepoint, its
state restored), more events produced while it is down, the job started again. Each ends with the
exactness check of
tests/integration/pipeline_support.py: every window's final pane equals the independent computation
over the events the job admitted, every malformed record is dead-lettered by its position, every
valid event is either counted or refused as too late (never both), a refusal only where the event's
deadline lies behind its partition's event-time progress where it was delivered (so a refusal the
watermark did not yet justify, in whatever order the partitions were read, fails), one alert per
anomalous event.

Also here, because it needs Prism: the boundary pin of test_transforms_late_data on Prism, whose
GroupByKey drops an element already when the watermark *reaches* its deadline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState
from kafka import KafkaConsumer, TopicPartition

from devstack.generator import KIND_HEADER
from devstack.sandbox import private_job
from pipelines.analytics_pipeline import run
from pipelines.runners import runner_args
from streaming_analytics.events import parse_event
from streaming_analytics.settings import Settings
from tests.integration.live_support import LiveJob, start_job
from tests.integration.pipeline_support import (
    Checked,
    Lateness,
    Windows,
    check_results,
    consume_all,
    wait_for_committed_offsets,
)
from tests.unit.late_data_support import build_boundary_pin
from transforms.aggregates import KINDS

PARTITIONS = 4
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: Issue 9's workload at a test's size: 6,000 records over 120 s of event time.
BACKLOG = ("--count", "6000", "--rate", "50", "--malformed", "0.03", "--late", "0.02",
           "--too-late", "0.005", "--duplicate", "0.03", "--out-of-order", "0.1")
#: The job's defaults (the generator's late and too-late delays are made for them).
WINDOWS = Windows(fixed_s=60, sliding_s=300, period_s=60)
LATENESS = Lateness(allowed_s=120, source_bound_s=5)
#: Live: the job's defaults, and no idle timeout, as for any replay of old data (docs/pipeline.md):
#: the watermark then follows the records only, which the refusal check holds the job to, and does
#: not jump to the wall clock (where every later record of 2026-01-01 would be too late). (Prism
#: runs without SDF splits, pipelines/runners.py: its splits of stateful bundles that hold timers
#: count some events twice, apache/beam#35771.)
LIVE_ARGS = (*WINDOWS.args(), f"--allowed_lateness_s={LATENESS.allowed_s}",
             f"--max_out_of_orderness_s={LATENESS.source_bound_s}", "--early_firing_delay_s=1",
             "--kafka_idle_timeout_s=0")
#: The live runners; Flink needs the local Flink cluster (marker ``flink``).
LIVE_RUNNERS = ["prism", pytest.param("flink", marks=pytest.mark.flink)]


def produce(s: Settings, start_ms: int, seed: int, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "devstack.generator", "--topic", s.topic_events,
         "--bootstrap", s.kafka_bootstrap, "--start-ms", str(start_ms), "--seed", str(seed), *args],
        check=True, capture_output=True, timeout=300)


@pytest.fixture
def backlog(settings: Settings, unique_name: str) -> Iterator[Settings]:
    with private_job(settings, unique_name, PARTITIONS) as s:
        produce(s, T0, 977, *BACKLOG)
        yield s


def wait_until_exact(job: LiveJob, timeout_s: float = 300) -> Checked:
    """Poll the exactness check until it holds (early panes fire a second after their events)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job.assert_alive()
        try:
            return check_results(job.settings, job.settings.topic_events, PARTITIONS, WINDOWS, LATENESS)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(5)


def test_a_bounded_backlog_on_the_direct_runner_is_exact_and_refuses_nothing(backlog: Settings) -> None:
    """A batch run holds the watermark at -inf until the input ends, so Beam's windowing drops
    nothing and the rule refuses nothing (the old rule refused 17,960 of 40,000 here)."""
    s = backlog
    run([*runner_args("direct", s), "--bounded", f"--postgres_schema={s.topic_events}",
         "--kafka_start=earliest"], settings=s)
    checked = check_results(s, s.topic_events, PARTITIONS, WINDOWS, LATENESS)
    assert checked.refused == {}
    assert checked.windows > 500


@pytest.mark.slow
@pytest.mark.parametrize("runner", LIVE_RUNNERS)
def test_a_backlog_caught_up_live_and_what_follows_are_exact(runner: str, backlog: Settings,
                                                             tmp_path: Path) -> None:
    """The backlog first: whatever a runner refuses of it must be justified by the watermark when
    the event was judged (the check above). Prism hands a shard its pending batches oldest first,
    ahead of its timers, so it judges an already-queued backlog before the rule learns how far the
    watermark moved; Flink reads the partitions in turns and learns as it goes. Then 3,000 more
    records continue the stream while the job runs: their too-late records (15-20 minutes behind)
    are behind a watermark the rule has learnt by then, and every one of them must be refused by
    both kinds."""
    s = backlog
    job = start_job(runner, s, tmp_path / "job.log", *LIVE_ARGS)
    try:
        caught_up = wait_until_exact(job)
        backlog_ends = end_offsets(s)
        produce(s, T0 + 120_000, 978, "--count", "3000", *BACKLOG[2:])
        checked = wait_until_exact(job)
    except AssertionError as exc:
        # Prism 2.77 itself sometimes dies under this backlog (its gRPC data channel to the
        # launcher's worker breaks; seen in 2 of 4 runs on 2026-11-30, docs/status.md). That is
        # reported as what it is; wrong results still fail.
        if runner == "prism" and str(exc).startswith("the job died"):
            pytest.xfail(f"Prism crashed during the backlog (known, docs/status.md): {str(exc)[:300]}")
        raise
    finally:
        job.stop()
    too_late = {parse_event(r.value).event_id for r in consume_all(s, PARTITIONS)
                if r.offset >= backlog_ends[r.partition] and dict(r.headers)[KIND_HEADER] == b"too_late"}
    assert len(too_late) == 15  # 0.5 % of 3,000
    assert {e: checked.refused.get(e) for e in too_late} == dict.fromkeys(too_late, frozenset(KINDS))
    assert checked.windows > caught_up.windows > 500
    print(f"backlog: windows {caught_up.windows}, refused {len(caught_up.refused)}; then: windows "
          f"{checked.windows}, refused {len(checked.refused)}")


def end_offsets(s: Settings) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap)
    try:
        tps = [TopicPartition(s.topic_events, p) for p in range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.parametrize("runner", LIVE_RUNNERS)
def test_events_produced_while_the_job_is_down_are_exact_after_a_restart(
        runner: str, settings: Settings, unique_name: str, tmp_path: Path) -> None:
    """Prism keeps no state across a restart: the job resumes from the committed offsets with a
    fresh watermark. Flink stops with a savepoint and restores from it: offsets, windows, dedup ids
    and what the rule has learnt. The second batch starts 30 minutes of event time later (an
    outage), so that even its too-late records (up to 20 minutes behind) fall after the first
    batch's windows."""
    with private_job(settings, unique_name, PARTITIONS) as s:
        produce(s, T0, 11, "--count", "3000", *BACKLOG[2:])
        job = start_job(runner, s, tmp_path / "first.log", *LIVE_ARGS, "--kafka_start=committed")
        restore: tuple[str, ...] = ()
        try:
            first = wait_until_exact(job)
            if job.flink is not None:
                restore = (f"--restore_from={job.flink.savepoint(tmp_path / 'sp', cancel_job=True)}",)
            else:
                wait_for_committed_offsets(s, PARTITIONS)
        finally:
            job.stop()
        produce(s, T0 + 30 * 60_000, 12, "--count", "3000", *BACKLOG[2:])
        job = start_job(runner, s, tmp_path / "second.log", *LIVE_ARGS, "--kafka_start=committed",
                        *restore)
        try:
            both = wait_until_exact(job)
        finally:
            job.stop()
    assert both.windows > first.windows > 200
    assert set(first.refused) <= set(both.refused)


def test_on_prism_the_rule_refuses_exactly_what_the_group_by_key_drops(settings: Settings) -> None:
    options = PipelineOptions(runner_args("prism", settings))
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    build_boundary_pin(p, drops_at_deadline=True)
    assert p.run().wait_until_finish() == PipelineState.DONE
