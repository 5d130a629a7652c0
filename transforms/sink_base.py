"""The bundle-batching skeleton every sink DoFn shares.

Elements are converted as they arrive and collected per bundle; a full batch is written at once and
the rest in ``finish_bundle`` — so a bundle (and, on Flink, the checkpoint that contains it)
completes only after everything it carried was written. Subclasses say how an element becomes an
item (:meth:`BatchingWriteFn.convert`) and how a batch is written (:meth:`BatchingWriteFn.write_batch`,
which raises if it cannot); connections and retries are theirs.
"""

# Beam's Python API (DoFn) is untyped; we disable only that report here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import apache_beam as beam

Item = TypeVar("Item")


class BatchingWriteFn(beam.DoFn, Generic[Item]):
    """Collect converted elements within a bundle and write them in batches of ``batch_size``."""

    def __init__(self, *, batch_size: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._batch_size = batch_size
        self._batch: list[Item] = []

    def convert(self, element: Any) -> Item:
        """One input element as the item :meth:`write_batch` takes (subclass hook)."""
        raise NotImplementedError(f"{type(self).__name__} must define convert()")

    def write_batch(self, batch: list[Item]) -> None:
        """Write ``batch`` durably or raise (subclass hook)."""
        raise NotImplementedError(f"{type(self).__name__} must define write_batch()")

    def start_bundle(self) -> None:
        self._batch = []

    def process(self, element: Any) -> Iterable[None]:
        self._batch.append(self.convert(element))
        if len(self._batch) >= self._batch_size:
            self._flush()
        return ()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._batch:
            self.write_batch(self._batch)
            self._batch = []
