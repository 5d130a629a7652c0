"""The bundle-batching skeleton every sink DoFn shares, and how it refuses a record it cannot write.

Elements are converted as they arrive and collected per bundle; a full batch is written at once and
the rest in ``finish_bundle`` — so a bundle (and, on Flink, the checkpoint that contains it)
completes only after everything it carried was written. Subclasses say how an element becomes an
item (:meth:`BatchingWriteFn.convert`) and how a batch is written (:meth:`BatchingWriteFn.write_batch`,
which raises if it cannot); connections and retries are theirs.

Why a sink refuses records instead of failing: one record the store cannot take (a NUL in a text
column, a value out of a column's range, a record a bug upstream built wrong) would otherwise fail the
bundle, and a runner that retries bundles or restarts from a checkpoint meets the same record again
— one record would stop the job for good. So an element whose conversion fails, or whose write fails
with an error the subclass calls a *record error* (:meth:`BatchingWriteFn.is_record_error`), is
refused: it leaves the DoFn as a :class:`~transforms.records.DeadLetter` with reason
``sink_rejected`` (the sink's output, in the element's own window), is counted in
``sink_rejected.<sink>`` and logged. Every other error — an outage, after the subclass' retries, or a
deployment fault such as a missing table — still fails the bundle. A batch that fails with a record
error is written again one record at a time, so only the records that fail alone are refused.
"""

# Beam's Python API (DoFn, Metrics) is untyped; we disable only that report here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Final, Generic, TypeVar

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from transforms import metrics
from transforms.records import DeadLetter
from transforms.sinks.convert import sink_rejection

log = logging.getLogger(__name__)

Item = TypeVar("Item")

#: What :meth:`BatchingWriteFn.convert` raises for an element it cannot turn into an item: about that
#: element's content (conversion is pure, it does no I/O), so the element is refused, never retried.
CONVERT_ERRORS: Final = (ValueError, TypeError, LookupError, ArithmeticError)


class BatchingWriteFn(beam.DoFn, Generic[Item]):
    """Collect converted elements within a bundle and write them in batches of ``batch_size``;
    output the elements the sink refused, as dead letters (see the module docstring)."""

    def __init__(self, *, batch_size: int, sink: str) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._batch_size = batch_size
        self._sink = sink
        self._rejected = Metrics.counter(metrics.NAMESPACE, metrics.sink_rejected(sink))
        self._batch: list[Item] = []
        self._origins: list[WindowedValue] = []

    def convert(self, element: Any) -> Item:
        """One input element as the item :meth:`write_batch` takes (subclass hook)."""
        raise NotImplementedError(f"{type(self).__name__} must define convert()")

    def write_batch(self, batch: list[Item]) -> None:
        """Write ``batch`` durably or raise (subclass hook)."""
        raise NotImplementedError(f"{type(self).__name__} must define write_batch()")

    def is_record_error(self, exc: Exception) -> bool:
        """Whether :meth:`write_batch` failed because of some item's content (subclass hook). The
        default, no: every write error fails the bundle."""
        return False

    def start_bundle(self) -> None:
        self._batch = []
        self._origins = []

    def process(self, element: Any, timestamp: Any = beam.DoFn.TimestampParam,
                window: Any = beam.DoFn.WindowParam) -> Iterator[WindowedValue]:
        origin = WindowedValue(element, timestamp, (window,))
        try:
            item = self.convert(element)
        except CONVERT_ERRORS as exc:
            yield self._refuse(origin, exc)
            return
        self._batch.append(item)
        self._origins.append(origin)
        if len(self._batch) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        yield from self._flush()

    def _flush(self) -> Iterator[WindowedValue]:
        batch, origins = self._batch, self._origins
        self._batch, self._origins = [], []
        if not batch:
            return
        try:
            self.write_batch(batch)
            return
        except Exception as exc:
            if not self.is_record_error(exc):
                raise
            log.warning("%s: a batch of %d failed on a record (%s: %s); writing its records one by one",
                        self._sink, len(batch), type(exc).__name__, str(exc).strip()[:300])
        for item, origin in zip(batch, origins, strict=True):
            try:
                self.write_batch([item])
            except Exception as exc:
                if not self.is_record_error(exc):
                    raise
                yield self._refuse(origin, exc)

    def _refuse(self, origin: WindowedValue, exc: Exception) -> WindowedValue:
        now_ms = int(time.time() * 1000)
        letter = sink_rejection(origin.value, sink=self._sink, error=exc, failed_at_ms=now_ms)
        self._rejected.inc()
        log.error("%s: refused a record, dead-lettered with reason %s: %s", self._sink, letter.reason_code,
                  letter.reason_detail)
        return WindowedValue(letter, origin.timestamp, origin.windows)


def write_refusing(records: PCollection[Any], step: str, fn: BatchingWriteFn[Any]) -> PCollection[DeadLetter]:
    """``records | step >> ParDo(fn)``: the sink's refused records (module docstring), re-windowed
    into the global window so that they can join the pipeline's other dead letters (a Flatten
    needs one windowing)."""
    refused: PCollection[DeadLetter] = (records | step >> beam.ParDo(fn)
                                        | "Refused" >> beam.WindowInto(GlobalWindows()))
    return refused
