"""ScoreEvents: every valid, deduplicated event scored by the anomaly model; alerts above a threshold.

Beam's RunInference does the model work: it batches events (``BatchElements``, bounded by
``max_batch_size``), loads the model once per worker process and shares it between the DoFn
instances of that process (its ``Shared`` handle). The handler
(:class:`models.handler.NewestModelHandler`) swaps the model without a restart: publishing
``anomaly-v<N+1>.keras`` (``python -m models.train``) into the model directory makes every worker
score with it within ``refresh_interval_s``, and alerts record which version scored them.

Alerts are deterministic per event (``alert_id`` derives from the event id): a replay after a
restart re-emits the same alert, which the Postgres sink inserts once and stream readers
recognise by its key ``alert|<event id>``.
"""

# Beam's transform constructors are untyped (see pipelines/analytics_pipeline.py).
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.pvalue import PCollection

from models.anomaly import model_input, model_version
from models.handler import NewestModelHandler
from streaming_analytics.events import Event
from transforms import metrics

DEFAULT_THRESHOLD: Final = 0.5
DEFAULT_MAX_BATCH_SIZE: Final = 512
DEFAULT_REFRESH_INTERVAL_S: Final = 30.0
#: Namespace of alert ids: uuid5(namespace, event id) is stable across runs and replays.
ALERT_NAMESPACE: Final = uuid.UUID("6f1c3d0e-5a43-4f0b-9a51-2f7f2f4e8c11")

#: (event id, user id, event time ms): what an alert needs from the event, carried through inference.
EventRef = tuple[str, str, int]


def alert_id(event_id: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, event_id))


def to_model_input(event: Event) -> tuple[EventRef, Any]:
    return (event.event_id, event.user_id, event.event_time_ms), model_input(event.features)


class _AlertsFn(beam.DoFn):
    """Keeps predictions at or above the threshold, as alert dicts (docs/stream-contract.md)."""

    def __init__(self, threshold: float) -> None:
        self._threshold = threshold
        self._scored = Metrics.counter(metrics.NAMESPACE, metrics.EVENTS_SCORED)
        self._alerts = Metrics.counter(metrics.NAMESPACE, metrics.ALERTS)

    def process(self, element: tuple[EventRef, PredictionResult]) -> Iterator[dict[str, Any]]:
        (event_id, user_id, event_time_ms), result = element
        self._scored.inc()
        score = float(result.inference[0])  # type: ignore[index]  # one sigmoid output per row
        if score < self._threshold:
            return
        self._alerts.inc()
        yield {
            "alert_id": alert_id(event_id),
            "event_id": event_id,
            "user_id": user_id,
            "score": round(score, 6),
            "model_version": model_version(result.model_id or ""),
            "event_time_ms": event_time_ms,
            "emitted_at_ms": int(time.time() * 1000),
        }


class ScoreEvents(beam.PTransform[PCollection[Event], PCollection[dict[str, Any]]]):
    """Events → alert dicts for events whose anomaly score is at least ``threshold``.

    ``model_uri`` is the model to start with; ``refresh_interval_s`` (None: off) is how often
    workers look for a newer version beside it. Inner step labels are stable.
    """

    def __init__(self, model_uri: str, *, threshold: float = DEFAULT_THRESHOLD,
                 refresh_interval_s: float | None = DEFAULT_REFRESH_INTERVAL_S,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold {threshold} must be in (0, 1]")
        self._model_uri = model_uri
        self._threshold = threshold
        self._refresh_interval_s = refresh_interval_s
        self._max_batch_size = max_batch_size

    def expand(self, events: PCollection[Event]) -> PCollection[dict[str, Any]]:
        model = NewestModelHandler(self._model_uri, refresh_interval_s=self._refresh_interval_s,
                                   max_batch_size=self._max_batch_size)
        handler: KeyedModelHandler[EventRef, Any, PredictionResult, Any] = KeyedModelHandler(model)
        alerts: PCollection[dict[str, Any]] = (
            events
            | "ToModelInput" >> beam.Map(to_model_input)
            | "RunInference" >> RunInference(handler)
            | "ToAlerts" >> beam.ParDo(_AlertsFn(self._threshold))
        )
        return alerts
