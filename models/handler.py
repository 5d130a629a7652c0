"""A RunInference model handler that serves the newest model version and switches to newer ones.

Why not Beam's ``WatchFilePattern`` side input: it adds an unbounded source (a periodic impulse
feeding ``MatchContinuously``) to the job, which keeps a bounded run from ever finishing and, on
Beam 2.77's Prism runner, crashed the job when the runner split that source (a NaN progress in
the SDK's split computation). Checking the model directory from inside the handler needs no
extra source or side input, behaves the same on every runner (DirectRunner, Prism, Flink), and
keeps what RunInference gives: one loaded model per worker process, shared by its threads
(RunInference caches what :meth:`load_model` returns in a ``Shared`` handle).

Each worker looks for a newer ``anomaly-v<N>.keras`` at most every ``refresh_interval_s`` (one
``glob``), loads it beside the current one and swaps in a single assignment, so a batch is always
scored by exactly one version — named in each result's ``model_id``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models.anomaly import latest_model, version_of
from streaming_analytics.settings import worker_value


class _LiveModel:
    """What the workers share: the current (path, model) pair, and when to look again."""

    def __init__(self, path: Path, model: Any, refresh_interval_s: float | None) -> None:
        self.current: tuple[Path, Any] = (path, model)
        self._interval = refresh_interval_s
        self._next_check = time.monotonic() + (refresh_interval_s or 0.0)
        self._lock = threading.Lock()

    def get(self) -> tuple[Path, Any]:
        if self._interval is not None and time.monotonic() >= self._next_check:
            self._refresh()
        return self.current

    def _refresh(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking; score with the current model meanwhile
        try:
            assert self._interval is not None
            self._next_check = time.monotonic() + self._interval
            path, _ = self.current
            newest = latest_model(path.parent)
            if newest is not None and (version_of(newest) or 0) > (version_of(path) or 0):
                self.current = (newest, _load(newest))  # one assignment: readers see old or new
        finally:
            self._lock.release()


def _load(path: Path) -> Any:
    import keras  # TensorFlow is imported where models are loaded, not where graphs are built

    return keras.models.load_model(path)


class NewestModelHandler(ModelHandler[np.ndarray, PredictionResult, _LiveModel]):
    """Scores rows of :func:`models.anomaly.model_input` with the newest model version.

    ``model_uri`` is the version to start from (normally the newest, see
    :func:`models.anomaly.latest_model`), or a directory — the newest version in it when the
    worker loads the model; a :func:`~streaming_analytics.settings.worker_ref` is resolved on the
    worker. With ``refresh_interval_s`` the handler switches to newer versions that appear in the
    same directory, without a restart.
    """

    def __init__(self, model_uri: str, *, refresh_interval_s: float | None = None,
                 max_batch_size: int | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size)
        if refresh_interval_s is not None and refresh_interval_s <= 0:
            raise ValueError("refresh_interval_s must be positive (None disables refresh)")
        self._model_uri = model_uri
        self._refresh_interval_s = refresh_interval_s

    def load_model(self) -> _LiveModel:
        path = Path(worker_value(self._model_uri))
        if path.is_dir():
            newest = latest_model(path)
            if newest is None:
                raise FileNotFoundError(f"no anomaly model version in {path}")
            path = newest
        return _LiveModel(path, _load(path), self._refresh_interval_s)

    def run_inference(self, batch: Sequence[np.ndarray], model: _LiveModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        path, keras_model = model.get()
        scores = np.asarray(keras_model(np.stack(batch), training=False))
        model_id = str(path)
        return [PredictionResult(row, score, model_id)  # type: ignore[no-untyped-call]
                for row, score in zip(batch, scores, strict=True)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(row.nbytes for row in batch)

    def get_metrics_namespace(self) -> str:
        return "AnomalyModel"
