"""The analytics graph: records → ParseEvents → EventTimeAggregates (dedup, the late-data rule, fixed
and sliding aggregates) and ScoreEvents (the anomaly model, through RunInference) → alerts.

:func:`build_pipeline` is the one place that wires the steps, so that tests (fed by a TestStream),
the DirectRunner and the Flink job all run the exact same graph; only the source in front of it and
the sinks behind it differ (``transforms/kafka_source.py``, ``transforms/sinks/``).

Step labels are part of the job's identity: Flink savepoints bind operator state (dedup ids, the
late-data knowledge, window panes) to them. Renaming ``ParseEvents``, ``EventTimeAggregates``,
``ScoreEvents`` — or a step inside them (docs/pipeline.md lists them) — makes a savepoint
unrestorable for that state.
"""

# Beam 2.77 ships partial annotations: its transform constructors (ParDo, Map, CombinePerKey,
# triggers, ...) are untyped, so calling them is reported everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection
from apache_beam.runners.portability.flink_runner import FlinkRunner
from apache_beam.runners.runner import PipelineResult, PipelineState

from models.anomaly import latest_model
from pipelines.flink_job import deploy_jar
from pipelines.flink_rest import FlinkRest
from pipelines.job_jar import JobJarRunner
from pipelines.runners import flink_job_base_jar
from streaming_analytics.db.migrate import migrate
from streaming_analytics.settings import Settings, worker_ref
from streaming_analytics.streams import CHANNEL_ALERTS, CHANNEL_FIXED, CHANNEL_SLIDING
from transforms import aggregates as agg
from transforms.aggregates import EventTimeAggregates, parse_dimensions
from transforms.dedup import DEFAULT_HORIZON_S, DEFAULT_SHARDS
from transforms.kafka_java_source import ReadFromKafkaJava
from transforms.kafka_source import ReadFromKafka
from transforms.parse import ParseEvents
from transforms.scoring import DEFAULT_REFRESH_INTERVAL_S, DEFAULT_THRESHOLD, ScoreEvents
from transforms.sinks.kafka import WriteDeadLettersToKafka
from transforms.sinks.postgres import (
    WriteAggregatesToPostgres,
    WriteAlertsToPostgres,
    WriteDeadLettersToPostgres,
)
from transforms.sinks.redis import WriteToRedisStreams

#: Stable step labels (see the module docstring).
PARSE_LABEL = "ParseEvents"
EVENT_TIME_LABEL = "EventTimeAggregates"
DEAD_LETTERS_LABEL = "DeadLetters"
SCORE_LABEL = "ScoreEvents"

DEFAULT_DIMENSIONS_SPEC = "event_type+country,category"
#: The Kafka source's watermark bound (``--max_out_of_orderness_s``).
DEFAULT_MAX_OUT_OF_ORDERNESS_S = 5.0


class AnalyticsOptions(PipelineOptions):
    """Tunables of the analytics graph; every default is the one documented in docs/pipeline.md."""

    @classmethod
    def _add_argparse_args(cls, parser: beam.options.pipeline_options._BeamArgumentParser) -> None:
        parser.add_argument("--fixed_window_s", type=float, default=agg.DEFAULT_FIXED_SIZE_S,
                            help="Fixed window size in seconds (default 60).")
        parser.add_argument("--sliding_window_s", type=float, default=agg.DEFAULT_SLIDING_SIZE_S,
                            help="Sliding window size in seconds (default 300).")
        parser.add_argument("--sliding_period_s", type=float, default=agg.DEFAULT_SLIDING_PERIOD_S,
                            help="Sliding window period in seconds (default 60).")
        parser.add_argument("--early_firing_delay_s", type=float, default=agg.DEFAULT_EARLY_FIRING_DELAY_S,
                            help="Processing-time delay of early panes in seconds; sub-second allowed "
                                 "(default 1).")
        parser.add_argument("--allowed_lateness_s", type=float, default=agg.DEFAULT_ALLOWED_LATENESS_S,
                            help="How long late events still update a closed window, in seconds of "
                                 "event time (default 120).")
        parser.add_argument("--max_out_of_orderness_s", type=float, default=DEFAULT_MAX_OUT_OF_ORDERNESS_S,
                            help="The Kafka source's watermark bound: its watermark is the highest event "
                                 "time read minus this, per partition (default 5).")
        parser.add_argument("--late_gate_margin_s", type=float, default=agg.DEFAULT_LATE_GATE_MARGIN_S,
                            help="Extra time windows are kept beyond the allowed lateness, for events the "
                                 "late-data rule admitted while its knowledge of the watermark lagged "
                                 "(default 60).")
        parser.add_argument("--late_gate_lookahead_s", type=float, default=agg.DEFAULT_LATE_GATE_LOOKAHEAD_S,
                            help="How far beyond the deadline of its newest event a dedup shard keeps "
                                 "learning the watermark (default 3600); bounds the work when the "
                                 "watermark jumps to the end of the input.")
        parser.add_argument("--dedup_horizon_s", type=float, default=DEFAULT_HORIZON_S,
                            help="How far back in event time duplicates are recognised (default 600); "
                                 "must cover window size + allowed lateness + margin.")
        parser.add_argument("--dedup_shards", type=int, default=DEFAULT_SHARDS,
                            help="Parallelism (key shards) of the dedup state and of the late-data "
                                 "rule, which runs in the same step (default 16).")
        parser.add_argument("--dimensions", default=DEFAULT_DIMENSIONS_SPEC,
                            help="Aggregate dimensions: comma separated, '+' joins fields "
                                 f"(default {DEFAULT_DIMENSIONS_SPEC!r}).")
        parser.add_argument("--bounded", action="store_true", default=False,
                            help="Batch mode for the source: stop at the end offsets seen at start.")
        parser.add_argument("--model_uri", default=None,
                            help="Anomaly model (.keras) to score events with; the job defaults to the "
                                 "newest version in SA_MODEL_DIR. Without one, build_pipeline scores "
                                 "nothing.")
        parser.add_argument("--alert_threshold", type=float, default=DEFAULT_THRESHOLD,
                            help="Anomaly score at or above which an event raises an alert (default 0.5).")
        parser.add_argument("--model_refresh_interval_s", type=float, default=DEFAULT_REFRESH_INTERVAL_S,
                            help="How often each worker looks for a newer model version in the "
                                 "model's directory (default 30); 0 disables hot refresh.")


@dataclass(frozen=True)
class AnalyticsOutputs:
    """The PCollections :func:`build_pipeline` returns, for the sinks (and tests) to consume."""

    fixed: PCollection[Any]  # Aggregate, kind "fixed"
    sliding: PCollection[Any]  # Aggregate, kind "sliding"
    dead_letters: PCollection[Any]  # DeadLetter: parse failures, too-late and unscorable events
    alerts: PCollection[Any] | None  # Alert; None when no model is configured


def event_time_aggregates(options: AnalyticsOptions) -> EventTimeAggregates:
    """The event-time step (dedup, late-data rule, fixed and sliding aggregates) from ``options``."""
    # Batch execution (bounded, not streaming) has no processing-time clock for early panes.
    streaming = options.view_as(StandardOptions).streaming
    return EventTimeAggregates(
        fixed_size_s=options.fixed_window_s, sliding_size_s=options.sliding_window_s,
        sliding_period_s=options.sliding_period_s,
        early_firing_delay_s=options.early_firing_delay_s if streaming else None,
        allowed_lateness_s=options.allowed_lateness_s, late_gate_margin_s=options.late_gate_margin_s,
        late_gate_lookahead_s=options.late_gate_lookahead_s,
        dimensions=parse_dimensions(options.dimensions),
        dedup_horizon_s=options.dedup_horizon_s, dedup_shards=options.dedup_shards,
    )


def build_pipeline(
    p: beam.Pipeline, records: PCollection[Any], options: PipelineOptions
) -> AnalyticsOutputs:
    """Wire the analytics steps onto ``records`` (record values or ``KafkaRecord``\\ s of ``p``).

    Raises ``ValueError`` for inconsistent options (see :class:`EventTimeAggregates`), e.g. a dedup
    horizon shorter than the time a window can still be updated.
    """
    if records.pipeline is not p:
        raise ValueError("records must belong to pipeline p")
    opts = options.view_as(AnalyticsOptions)
    event_time = event_time_aggregates(opts)
    parsed = records | PARSE_LABEL >> ParseEvents()
    judged = parsed.events | EVENT_TIME_LABEL >> event_time
    refused = [parsed.dead_letter, judged.too_late]
    alerts = None
    if opts.model_uri is not None:
        scored = judged.events | SCORE_LABEL >> scoring_transform(opts)
        alerts = scored.alerts
        refused.append(scored.dead_letters)
    dead_letters = tuple(refused) | DEAD_LETTERS_LABEL >> beam.Flatten()
    return AnalyticsOutputs(fixed=judged.fixed, sliding=judged.sliding, dead_letters=dead_letters,
                            alerts=alerts)


def scoring_transform(options: AnalyticsOptions) -> ScoreEvents:
    """The scoring step for ``options.model_uri``, refreshing from its directory."""
    assert options.model_uri is not None
    interval = options.model_refresh_interval_s
    return ScoreEvents(options.model_uri, threshold=options.alert_threshold,
                       refresh_interval_s=interval if interval > 0 else None)


# --- the job: Kafka in, Postgres / Redis / DLQ topic out ----------------------------------------------
READ_LABEL = "ReadEvents"


class IOOptions(PipelineOptions):
    """Source and sink tunables of the job. Endpoints (Kafka, Postgres, Redis) are not options: they
    come from the documented ``SA_*`` environment variables (streaming_analytics/settings.py)."""

    @classmethod
    def _add_argparse_args(cls, parser: beam.options.pipeline_options._BeamArgumentParser) -> None:
        parser.add_argument("--kafka_start", default="committed", choices=["committed", "earliest", "latest"],
                            help="Where a partition starts when the job has no checkpoint: the consumer "
                                 "group's committed offset (falling back to earliest), earliest or latest.")
        parser.add_argument("--kafka_idle_timeout_s", type=float, default=5.0,
                            help="A caught-up partition idle this long advances its watermark with the "
                                 "wall clock; 0 disables (for replays of old data).")
        parser.add_argument("--kafka_max_records_per_bundle", type=int, default=5_000,
                            help="A reader self-checkpoints after this many records in one bundle.")
        parser.add_argument("--kafka_max_read_time_s", type=float, default=1.0,
                            help="A reader self-checkpoints after this long in one bundle; bounds latency.")
        parser.add_argument("--endpoints", default="launcher", choices=["launcher", "workers"],
                            help="Where the Kafka, PostgreSQL and Redis endpoints and the model "
                                 "directory are read: from the launcher's SA_* settings, baked into "
                                 "the job (local runs), or from each worker's own SA_* environment "
                                 "when it connects (a job jar built once for Kubernetes: it then "
                                 "holds no endpoint or password).")
        parser.add_argument("--skip_migrations", action="store_true", default=False,
                            help="Do not apply the Postgres migrations before submitting the job.")
        parser.add_argument("--postgres_schema", default="public",
                            help="Postgres schema of the aggregates, alerts and dead-letter tables.")
        parser.add_argument("--kafka_reader", default="auto", choices=["auto", "python", "java"],
                            help="The Kafka read: `java` (KafkaIO as a native Flink source, through "
                                 "the expansion service), `python` (transforms/kafka_source.py), "
                                 "`auto`: java on Flink, python elsewhere.")
        parser.add_argument("--kafka_expansion_service", default=None,
                            help="host:port of the expansion service of the Java Kafka read "
                                 "(default: SA_BEAM_EXPANSION_SERVICE).")


class LaunchOptions(PipelineOptions):
    """What the launcher does with a job on Flink: write its portable job jar, or submit it."""

    @classmethod
    def _add_argparse_args(cls, parser: beam.options.pipeline_options._BeamArgumentParser) -> None:
        parser.add_argument("--job_jar", default=None,
                            help="Flink: write the portable job jar here and stop (do not submit). "
                                 "Without it the launcher writes a temporary jar and submits it to "
                                 "--flink_master through the REST API.")
        parser.add_argument("--restore_from", default=None,
                            help="Flink: start the job from this savepoint or retained checkpoint.")
        parser.add_argument("--allow_non_restored_state", action="store_true", default=False,
                            help="Flink: accept savepoint state no operator of this job claims (it is "
                                 "dropped). Off by default: a renamed stateful step must fail loudly.")


def build_job(p: beam.Pipeline, settings: Settings) -> AnalyticsOutputs:
    """The whole job on ``p``: :class:`ReadFromKafka` → :func:`build_pipeline` → every sink.

    With ``--endpoints=launcher`` (the default, local runs) endpoints are resolved here and travel
    inside the transforms, so the workers (Prism's loopback worker) need no configuration of their
    own. With ``--endpoints=workers`` the transforms carry :func:`worker_ref` placeholders that each
    worker resolves from its own ``SA_*`` environment when it connects — for a job jar that is built
    once and deployed to many places (the Helm chart sets those variables on the SDK harness), and
    that then holds no password. Topics, stream prefix and consumer group are part of the job's
    identity and always come from the launcher.
    """
    options = p.options
    opts = options.view_as(AnalyticsOptions)
    io = options.view_as(IOOptions)
    on_workers = io.endpoints == "workers"
    bootstrap = worker_ref("SA_KAFKA_BOOTSTRAP") if on_workers else settings.kafka_bootstrap
    dsn = worker_ref("SA_POSTGRES_DSN") if on_workers else settings.postgres_dsn
    redis_url = worker_ref("SA_REDIS_URL") if on_workers else settings.redis_url
    if opts.model_uri is None and on_workers:
        opts.model_uri = worker_ref("SA_MODEL_DIR")  # the newest version there, when a worker loads it
    elif opts.model_uri is None:
        newest = latest_model(settings.model_dir)
        if newest is None:
            raise FileNotFoundError(
                f"no anomaly model in SA_MODEL_DIR={settings.model_dir}: train one with "
                "`python -m models.train` (make run does it) or pass --model_uri")
        opts.model_uri = str(newest)
    idle = io.kafka_idle_timeout_s if io.kafka_idle_timeout_s > 0 else None
    ooo_ms = int(opts.max_out_of_orderness_s * 1000)
    if kafka_reader(options) == "java":
        if opts.bounded:
            raise ValueError("--bounded needs the Python Kafka read (--kafka_reader=python)")
        read: beam.PTransform[Any, Any] = ReadFromKafkaJava(
            expansion_service=io.kafka_expansion_service or settings.beam_expansion_service,
            bootstrap=bootstrap, topic=settings.topic_events, group_id=settings.consumer_group,
            start=io.kafka_start, max_out_of_orderness_ms=ooo_ms, idle_timeout_s=idle)
    else:
        read = ReadFromKafka(
            bootstrap=bootstrap, topic=settings.topic_events, group_id=settings.consumer_group,
            start=io.kafka_start, max_out_of_orderness_ms=ooo_ms, idle_timeout_s=idle, bounded=opts.bounded,
            max_records_per_bundle=io.kafka_max_records_per_bundle,
            max_read_time_s=io.kafka_max_read_time_s)
    records = p | READ_LABEL >> read
    out = build_pipeline(p, records, options)
    schema = io.postgres_schema

    def to_redis(channel: str) -> WriteToRedisStreams:
        return WriteToRedisStreams(channel, redis_url, prefix=settings.redis_stream_prefix,
                                   maxlen=settings.redis_stream_maxlen)

    # A sink's output is what it refused for the record's content (transforms/sinks/base.py): those
    # join the dead letters, and what the dead-letter table refuses still reaches the DLQ topic, so
    # no record stops the job and every refused one can be found (docs/sinks.md).
    refused = [
        out.fixed | "WriteFixedToPostgres" >> WriteAggregatesToPostgres(dsn, schema=schema),
        out.sliding | "WriteSlidingToPostgres" >> WriteAggregatesToPostgres(dsn, schema=schema),
        out.fixed | "WriteFixedToRedis" >> to_redis(CHANNEL_FIXED),
        out.sliding | "WriteSlidingToRedis" >> to_redis(CHANNEL_SLIDING),
    ]
    if out.alerts is not None:
        refused.append(out.alerts | "WriteAlertsToPostgres" >> WriteAlertsToPostgres(dsn, schema=schema))
        refused.append(out.alerts | "WriteAlertsToRedis" >> to_redis(CHANNEL_ALERTS))
    letters = (out.dead_letters, *refused) | "WithSinkRefusals" >> beam.Flatten()
    unstored = letters | "WriteDeadLettersToPostgres" >> WriteDeadLettersToPostgres(dsn, schema=schema)
    _ = ((letters, unstored) | "WithUnstoredDeadLetters" >> beam.Flatten()
         | "WriteDeadLettersToKafka" >> WriteDeadLettersToKafka(bootstrap, settings.topic_dlq))
    return out


def run(argv: list[str] | None = None, *, settings: Settings | None = None,
        wait: bool = True) -> PipelineResult:
    """The one entry point of the job: the CLI, the stack and the tests all call it.

    ``argv`` are Beam pipeline options plus :class:`AnalyticsOptions` and :class:`IOOptions`.
    Applies the Postgres migrations first (unless ``--skip_migrations``), so the sinks find their
    tables; with ``wait`` it blocks until the job ends (a bounded run, or Ctrl-C).
    """
    settings = settings or Settings.from_env()
    options = PipelineOptions(argv)
    if not options.view_as(AnalyticsOptions).bounded:
        options.view_as(StandardOptions).streaming = True  # an unbounded source needs streaming mode
    io = options.view_as(IOOptions)
    if on_flink(options):
        return _run_on_flink(options, settings, wait)
    if not io.skip_migrations:
        migrate(settings.postgres_dsn, schema=io.postgres_schema)
    p = beam.Pipeline(options=options)
    build_job(p, settings)
    result = p.run()
    if wait:
        result.wait_until_finish()
    return result


def on_flink(options: PipelineOptions) -> bool:
    return str(options.view_as(StandardOptions).runner or "").lower() in {"flinkrunner", "flink"}


def kafka_reader(options: PipelineOptions) -> str:
    """``python`` or ``java``: the Kafka read of this job (``--kafka_reader``, ``auto`` by runner)."""
    chosen = str(options.view_as(IOOptions).kafka_reader)
    if chosen == "auto":
        return "java" if on_flink(options) else "python"
    return chosen


def _run_on_flink(options: PipelineOptions, settings: Settings, wait: bool) -> PipelineResult:
    """Write the portable job jar; with ``--job_jar`` stop there, else submit it (REST) and return
    the running job. With ``wait`` block until it ends (streaming jobs end when cancelled)."""
    io = options.view_as(IOOptions)
    launch = options.view_as(LaunchOptions)
    if launch.job_jar:
        jar = Path(launch.job_jar)
        _write_job_jar(options, settings, jar)
        return JobJarWritten(jar)
    if not io.skip_migrations:
        migrate(settings.postgres_dsn, schema=io.postgres_schema)
    master = options.view_as(FlinkRunnerOptions).flink_master or settings.flink_rest_url
    with tempfile.TemporaryDirectory(prefix="sa-job-jar-") as tmp:
        jar = Path(tmp) / "job.jar"
        _write_job_jar(options, settings, jar)  # (sets --flink_master to [auto] inside the jar)
        result = deploy_jar(FlinkRest(FlinkRunner.add_http_scheme(master)), jar,
                            savepoint=launch.restore_from,
                            allow_non_restored_state=launch.allow_non_restored_state)
    if wait:
        result.wait_until_finish()
    return result


def _write_job_jar(options: PipelineOptions, settings: Settings, jar: Path) -> None:
    p = beam.Pipeline(runner=JobJarRunner(jar, flink_job_base_jar(settings)), options=options)
    build_job(p, settings)
    p.run().wait_until_finish()  # the jar is complete only once this returns


class JobJarWritten(PipelineResult):
    """The "result" of ``--job_jar``: the jar exists, nothing runs."""

    def __init__(self, jar: Path) -> None:
        super().__init__(PipelineState.DONE)
        self.jar = jar

    def wait_until_finish(self, duration: float | None = None) -> Any:
        return PipelineState.DONE


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=Settings.from_env().log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
