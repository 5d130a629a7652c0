"""The analytics graph: records → ParseEvents → DeduplicateEvents → fixed and sliding aggregates.

:func:`build_pipeline` is the one place that wires the steps, so that tests (fed by a TestStream),
the DirectRunner and the Flink job all run the exact same graph; only the source in front of it and
the sinks behind it differ (``transforms/kafka_source.py``, ``transforms/sinks*.py``).

Step labels are part of the job's identity: Flink savepoints bind operator state (dedup ids, late
gate, window panes) to them. Renaming ``ParseEvents``, ``DeduplicateEvents``, ``FixedAggregates``
or ``SlidingAggregates`` — or a step inside them — makes a savepoint unrestorable for that state.
"""

# Beam 2.77 ships partial annotations: its transform constructors (ParDo, Map, CombinePerKey,
# triggers, ...) are untyped, so calling them is reported everywhere; we disable only that code here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import PCollection

from transforms import aggregates as agg
from transforms.aggregates import WindowedAggregates, parse_dimensions
from transforms.dedup import DEFAULT_HORIZON_S, DeduplicateEvents
from transforms.parse import ParseEvents

#: Stable step labels (see the module docstring).
PARSE_LABEL = "ParseEvents"
DEDUP_LABEL = "DeduplicateEvents"
FIXED_LABEL = "FixedAggregates"
SLIDING_LABEL = "SlidingAggregates"
DEAD_LETTERS_LABEL = "DeadLetters"

DEFAULT_DIMENSIONS_SPEC = "event_type+country,category"


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
        parser.add_argument("--max_out_of_orderness_s", type=float,
                            default=agg.DEFAULT_MAX_OUT_OF_ORDERNESS_S,
                            help="Bounded out-of-orderness of event times (default 5); the late gate's "
                                 "watermark estimate. Keep it equal to the source's watermark bound.")
        parser.add_argument("--late_gate_margin_s", type=float, default=agg.DEFAULT_LATE_GATE_MARGIN_S,
                            help="Extra time windows are kept beyond the allowed lateness so that the "
                                 "GroupByKey never drops what the late gate let in (default 60).")
        parser.add_argument("--late_gate_shards", type=int, default=agg.DEFAULT_LATE_GATE_SHARDS,
                            help="Parallelism (key shards) of the late gate (default 16).")
        parser.add_argument("--dedup_horizon_s", type=float, default=DEFAULT_HORIZON_S,
                            help="How far back in event time duplicates are recognised (default 600); "
                                 "must cover window size + allowed lateness + margin.")
        parser.add_argument("--dimensions", default=DEFAULT_DIMENSIONS_SPEC,
                            help="Aggregate dimensions: comma separated, '+' joins fields "
                                 f"(default {DEFAULT_DIMENSIONS_SPEC!r}).")
        parser.add_argument("--bounded", action="store_true", default=False,
                            help="Batch mode for the source: stop at the end offsets seen at start.")


@dataclass(frozen=True)
class AnalyticsOutputs:
    """The PCollections :func:`build_pipeline` returns, for the sinks (and tests) to consume."""

    fixed: PCollection[Any]  # Aggregate, kind "fixed"
    sliding: PCollection[Any]  # Aggregate, kind "sliding"
    dead_letters: PCollection[Any]  # DeadLetter: parse failures and too-late events


def aggregate_transforms(options: AnalyticsOptions) -> tuple[WindowedAggregates, WindowedAggregates]:
    """The fixed and sliding aggregate steps configured from ``options``."""
    dimensions = parse_dimensions(options.dimensions)
    common = {
        "early_firing_delay_s": options.early_firing_delay_s,
        "allowed_lateness_s": options.allowed_lateness_s,
        "dimensions": dimensions,
        "max_out_of_orderness_s": options.max_out_of_orderness_s,
        "late_gate_margin_s": options.late_gate_margin_s,
        "late_gate_shards": options.late_gate_shards,
    }
    fixed = WindowedAggregates(agg.FIXED, size_s=options.fixed_window_s, **common)
    sliding = WindowedAggregates(
        agg.SLIDING, size_s=options.sliding_window_s, period_s=options.sliding_period_s, **common
    )
    return fixed, sliding


def build_pipeline(
    p: beam.Pipeline, records: PCollection[Any], options: PipelineOptions
) -> AnalyticsOutputs:
    """Wire the analytics steps onto ``records`` (record values or ``KafkaRecord``\\ s of ``p``).

    Raises ``ValueError`` if the dedup horizon is shorter than the time a window can still be
    updated: a re-delivery the dedup step had forgotten could then be counted twice.
    """
    if records.pipeline is not p:
        raise ValueError("records must belong to pipeline p")
    opts = options.view_as(AnalyticsOptions)
    fixed_step, sliding_step = aggregate_transforms(opts)
    needed = max(fixed_step.retention_s, sliding_step.retention_s)
    if opts.dedup_horizon_s < needed:
        raise ValueError(
            f"dedup_horizon_s={opts.dedup_horizon_s} is shorter than window size + allowed lateness + "
            f"late gate margin ({needed} s): late re-deliveries could be double counted"
        )
    parsed = records | PARSE_LABEL >> ParseEvents()
    events = parsed.events | DEDUP_LABEL >> DeduplicateEvents(horizon_s=opts.dedup_horizon_s)
    fixed = events | FIXED_LABEL >> fixed_step
    sliding = events | SLIDING_LABEL >> sliding_step
    dead_letters = (
        parsed.dead_letter,
        fixed[agg.TOO_LATE],
        sliding[agg.TOO_LATE],
    ) | DEAD_LETTERS_LABEL >> beam.Flatten()
    return AnalyticsOutputs(
        fixed=fixed[agg.AGGREGATES], sliding=sliding[agg.AGGREGATES], dead_letters=dead_letters
    )
