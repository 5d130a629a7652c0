"""Prism's watermark of an unbounded source with several splits (issue 9's Prism finding).

Prism 2.77 sets a splittable DoFn stage's output watermark from the residuals of the bundle that
finished *last* (``ElementManager.PersistBundle``: ``stage.estimatedOutput`` = the minimum of that
bundle's residual output watermarks), not from every split still outstanding. A split that has no
data for a moment self-checkpoints with the source's poll delay, and Prism parks that residual
until the delay has passed; a bundle of the other splits then sets the watermark to *their*
progress. So the watermark runs ahead of the parked split, and that split's next record can be
late although no record of its own ever was ahead of it: the GroupByKey drops it, and the
late-data rule refuses it (issue 9's "timers 12 to 60 minutes ahead of the data's progress" after a
restart on Prism, where partitions catch up at different times).

The project's Kafka source therefore never parks a residual (``ReadFromKafka``'s poll delay is 0):
every bundle of the source holds every partition's residual, and the watermark Prism takes is the
minimum over all of them. These tests pin both halves with a source of two splits that needs no
Kafka: a fast split far ahead in event time, and a slow one that pauses (no data) until the fast one
is done and then emits one more record just behind its own watermark + lateness. A correct runner
counts both of the slow split's records in their window; Prism with a poll delay drops the second.
If the first test starts failing, Prism has fixed its estimate: the source may park again
(docs/pipeline.md, "Late data").
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.coders import Coder
from apache_beam.io.unbounded_source import (
    CheckpointMark,
    ReadFromUnboundedSource,
    UnboundedReader,
    UnboundedSource,
)
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from pipelines.runners import runner_args
from streaming_analytics.settings import Settings

T0_S = 1_767_225_600  # 2026-01-01T00:00:00Z, a window start
#: The fast split: this many records, one per bundle, 30 minutes of event time ahead of the slow one.
FAST_RECORDS = 40
FAST_AHEAD_S = 30 * 60
#: The slow split's records: t0 + 1 s, then (after its pause) t0 + 2 s, both in window [t0, t0 + 60).
SLOW_TIMES_S = (T0_S + 1, T0_S + 2)


class _Position(CheckpointMark):
    def __init__(self, index: int) -> None:
        self.index = index

    def finalize_checkpoint(self) -> None:
        pass


class _PositionCoder(Coder):
    def encode(self, value: Any) -> bytes:
        return b"" if value is None else struct.pack(">q", value.index)

    def decode(self, encoded: bytes) -> Any:
        return _Position(struct.unpack(">q", encoded)[0]) if encoded else None

    def is_deterministic(self) -> bool:
        return True


class _Split(UnboundedSource):
    """One split: ``times_s`` emitted in order; the slow split emits its last record only once the
    fast split has written ``done`` (until then it has no data, like a partition between polls)."""

    def __init__(self, name: str, times_s: tuple[int, ...], done: str) -> None:
        self.name, self.times_s, self.done = name, times_s, done

    def split(self, desired_num_splits: int, options: Any = None) -> Iterable[_Split]:
        return [self]

    def create_reader(self, options: Any, checkpoint_mark: Any) -> _Reader:
        return _Reader(self, 0 if checkpoint_mark is None else checkpoint_mark.index)

    def get_checkpoint_mark_coder(self) -> Coder:
        return _PositionCoder()

    def default_output_coder(self) -> Coder:
        return beam.coders.StrUtf8Coder()


class _TwoSplits(_Split):
    def split(self, desired_num_splits: int, options: Any = None) -> Iterable[_Split]:
        fast = tuple(T0_S + FAST_AHEAD_S + i for i in range(FAST_RECORDS))
        return [_Split("fast", fast, self.done), _Split("slow", SLOW_TIMES_S, self.done)]


class _Reader(UnboundedReader):
    def __init__(self, split: _Split, next_index: int) -> None:
        self._split, self._next = split, next_index
        self._current: int | None = None

    def start(self) -> bool:
        return self.advance()

    def advance(self) -> bool:
        times = self._split.times_s
        if self._next >= len(times):
            if self._split.name == "fast":
                Path(self._split.done).touch()
            return False
        paused = self._split.name == "slow" and self._next == len(times) - 1
        if paused and not Path(self._split.done).exists():
            time.sleep(0.05)  # a poll that found nothing
            return False
        self._current = times[self._next]
        self._next += 1
        return True

    def get_current(self) -> str:
        return f"{self._split.name}@{self._current}"

    def get_current_timestamp(self) -> Timestamp:
        return Timestamp(seconds=self._current or 0)

    def get_watermark(self) -> Timestamp:
        if self._next >= len(self._split.times_s):
            return MAX_TIMESTAMP
        return MIN_TIMESTAMP if self._next == 0 else Timestamp(seconds=self._split.times_s[self._next - 1])

    def get_checkpoint_mark(self) -> _Position:
        return _Position(self._next)

    def close(self) -> None:
        pass


def _count_first_window(p: beam.Pipeline, done: Path, poll_interval_s: float) -> Any:
    records = p | ReadFromUnboundedSource(_TwoSplits("all", (), str(done)), poll_interval=poll_interval_s,
                                          max_records_per_bundle=1)
    return (records
            | beam.Filter(lambda r: r.startswith("slow@"))
            | beam.WindowInto(window.FixedWindows(60), allowed_lateness=0)
            | beam.combiners.Count.Globally().without_defaults())


def _run(settings: Settings, tmp_path: Path, poll_interval_s: float, expected: list[int]) -> None:
    options = PipelineOptions(runner_args("prism", settings))
    p = beam.Pipeline(options=options)
    assert_that(_count_first_window(p, tmp_path / "fast-done", poll_interval_s), equal_to(expected))
    assert p.run().wait_until_finish() == PipelineState.DONE


@pytest.mark.parametrize("attempt", range(2))
def test_prism_runs_the_watermark_ahead_of_a_parked_split(settings: Settings, tmp_path: Path,
                                                          attempt: int) -> None:
    """With a poll delay, the slow split's residual is parked while the fast split's bundles run:
    the window of the slow split closes at the fast split's watermark and its second record is
    dropped as late, although the slow split's own watermark never passed it."""
    _run(settings, tmp_path, poll_interval_s=1.0, expected=[1])


@pytest.mark.parametrize("attempt", range(2))
def test_without_a_poll_delay_the_watermark_waits_for_every_split(settings: Settings, tmp_path: Path,
                                                                   attempt: int) -> None:
    """The Kafka source's setting (no poll delay): every bundle holds both residuals, the watermark
    is the slow split's, and both of its records are counted."""
    _run(settings, tmp_path, poll_interval_s=0.0, expected=[2])
