"""ScoreEvents: every valid, deduplicated event scored by the anomaly model; alerts above a threshold.

Beam's RunInference does the model work: it batches events (``BatchElements``, bounded by
``max_batch_size``), loads the model once per worker process and shares it between the DoFn
instances of that process (its ``Shared`` handle). The handler
(:class:`models.handler.NewestModelHandler`) swaps the model without a restart: publishing
``anomaly-v<N+1>.keras`` (``python -m models.train``) into the model directory makes every worker
score with it within ``refresh_interval_s``, and alerts record which version scored them.

An event the model cannot score is a dead letter, not a crash: RunInference runs with Beam's
exception handling, so a batch whose inference raises leaves as a failed batch and the job carries
on. A batch fails as a whole, so its events are scored again one at a time (a second RunInference
with batches of one): the events that score go on to the alerts, and only those that fail again
become :class:`~transforms.records.DeadLetter`\\ s with reason ``inference_failed`` (counted by
``inference_failed_events``). A model that fails on everything therefore dead-letters every event
rather than stopping the job; the counter is what to alert on.

Alerts are deterministic per event (``alert_id`` derives from the event id): a replay after a
restart re-emits the same alert, which the Postgres sink inserts once and stream readers
recognise by its key ``alert|<event id>``.
"""

# Beam's transform constructors are untyped (see pipelines/analytics_pipeline.py).
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.pvalue import PCollection

from models.anomaly import model_input, model_version
from models.handler import NewestModelHandler
from streaming_analytics.events import Event
from transforms import metrics
from transforms.records import Alert, DeadLetter

DEFAULT_THRESHOLD: Final = 0.5
DEFAULT_MAX_BATCH_SIZE: Final = 512
DEFAULT_REFRESH_INTERVAL_S: Final = 30.0
#: Namespace of alert ids: uuid5(namespace, event id) is stable across runs and replays.
ALERT_NAMESPACE: Final = uuid.UUID("6f1c3d0e-5a43-4f0b-9a51-2f7f2f4e8c11")
#: Reason code of the dead letter of an event the model could not score.
INFERENCE_FAILED_REASON: Final = "inference_failed"
#: How much of the model's exception a dead letter keeps (a traceback is the workers' log's job).
MAX_DETAIL_CHARS: Final = 500

#: What RunInference carries: the event (for the alert or the dead letter) and its model input row.
KeyedInput = tuple[Event, np.ndarray]
#: A failed batch as Beam's exception handling emits it: the batch and (type, repr, traceback).
FailedBatch = tuple[Sequence[KeyedInput], tuple[type[BaseException], str, list[str]]]
#: The row scorer RunInference runs; :meth:`ScoreEvents.model_handler` builds it.
RowHandler = ModelHandler[np.ndarray, PredictionResult, Any]


def alert_id(event_id: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, event_id))


def to_model_input(event: Event) -> KeyedInput:
    return event, model_input(event.features)


class ScoringOutputs(NamedTuple):
    """What :class:`ScoreEvents` returns."""

    alerts: PCollection[Any]  # Alert: events scored at or above the threshold
    dead_letters: PCollection[Any]  # DeadLetter, reason inference_failed: events the model could not score


class _EventKeyedHandler(KeyedModelHandler[Event, np.ndarray, PredictionResult, Any]):
    """Beam's keyed handler with the whole event as the key (the alert and the dead letter need
    it), except for how a batch is weighed for RunInference's byte-size metric: Beam's pickles
    every key of every batch just to measure it, and an event (a frozen dataclass) takes ~5 µs to
    pickle — ~0.15 CPU-s per 30,000 events, for a metric. Here a batch weighs what the model
    reads, its rows."""

    def __init__(self, rows: RowHandler) -> None:
        super().__init__(rows)
        self._rows = rows

    def get_num_bytes(self, batch: Sequence[KeyedInput]) -> int:
        return self._rows.get_num_bytes([row for _, row in batch])


class _AlertsFn(beam.DoFn):
    """Keeps predictions at or above the threshold, as :class:`Alert`\\ s (docs/stream-contract.md)."""

    def __init__(self, threshold: float) -> None:
        self._threshold = threshold
        self._scored = Metrics.counter(metrics.NAMESPACE, metrics.EVENTS_SCORED)
        self._alerts = Metrics.counter(metrics.NAMESPACE, metrics.ALERTS)

    def process(self, element: tuple[Event, PredictionResult]) -> Iterator[Alert]:
        event, result = element
        self._scored.inc()
        score = float(result.inference[0])  # type: ignore[index]  # one sigmoid output per row
        if score < self._threshold:
            return
        self._alerts.inc()
        yield Alert(
            alert_id=alert_id(event.event_id),
            event_id=event.event_id,
            user_id=event.user_id,
            score=round(score, 6),
            model_version=model_version(result.model_id or ""),
            event_time_ms=event.event_time_ms,
            emitted_at_ms=int(time.time() * 1000),
        )


def failed_events(failed: FailedBatch) -> Iterator[KeyedInput]:
    """The events of a batch whose inference raised, to be scored again one by one."""
    batch, _ = failed
    yield from batch


class _UnscorableFn(beam.DoFn):
    """The events that failed alone, as dead letters with the model's exception; counted."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._failed = Metrics.counter(metrics.NAMESPACE, metrics.INFERENCE_FAILED_EVENTS)

    def process(self, failed: FailedBatch) -> Iterator[DeadLetter]:
        batch, (_, exc_repr, _) = failed
        failed_at_ms = int(self._clock() * 1000)
        for event, _ in batch:
            self._failed.inc()
            yield DeadLetter(raw=event.to_json(), reason_code=INFERENCE_FAILED_REASON,
                             reason_detail=f"the anomaly model raised {exc_repr}"[:MAX_DETAIL_CHARS],
                             topic=None, partition=None, offset=None, failed_at_ms=failed_at_ms)


class ScoreEvents(beam.PTransform[PCollection[Event], ScoringOutputs]):
    """Events → :class:`Alert`\\ s for events whose anomaly score is at least ``threshold``, and
    dead letters for events the model cannot score (see the module docstring).

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

    def model_handler(self, max_batch_size: int) -> RowHandler:
        """The handler that scores rows, in batches of at most ``max_batch_size`` (tests override
        it with a model that fails on chosen rows)."""
        return NewestModelHandler(self._model_uri, refresh_interval_s=self._refresh_interval_s,
                                  max_batch_size=max_batch_size)

    def expand(self, events: PCollection[Event]) -> ScoringOutputs:
        def run_inference(max_batch_size: int) -> RunInference[Any, Any]:
            handler = _EventKeyedHandler(self.model_handler(max_batch_size))
            inference: RunInference[Any, Any] = RunInference(handler)
            inference.with_exception_handling()  # failures go to a DLQ output (it returns self, untyped)
            return inference

        scored, failed = (events
                          | "ToModelInput" >> beam.Map(to_model_input)
                          | "RunInference" >> run_inference(self._max_batch_size))
        rescored, unscorable = (failed.failed_inferences
                                | "SplitFailedBatches" >> beam.FlatMap(failed_events)
                                | "RunInferenceOneByOne" >> run_inference(1))
        # Each scoring path turns its predictions into alerts before the two meet: a Flatten is a
        # stage boundary on the DirectRunner and on Prism, and every element crossing it is
        # encoded (pickled: an event with its prediction) and decoded again. Flattening the
        # predictions first cost about a tenth of a bounded run's CPU on both; the alerts are ~1 %
        # of the events.
        alerts: PCollection[Any] = (
            (scored | "ToAlerts" >> beam.ParDo(_AlertsFn(self._threshold)),
             rescored | "RescoredToAlerts" >> beam.ParDo(_AlertsFn(self._threshold)))
            | "Scored" >> beam.Flatten()
        )
        dead_letters: PCollection[Any] = (unscorable.failed_inferences
                                          | "ToDeadLetters" >> beam.ParDo(_UnscorableFn(time.time)))
        return ScoringOutputs(alerts=alerts, dead_letters=dead_letters)
