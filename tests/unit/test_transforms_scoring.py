"""ScoreEvents on the DirectRunner with a real trained model: alerts for exactly the anomalous
events the generator made, deterministic alert ids, the model version recorded; and with a model
that raises on some inputs: those events are dead letters with their reason, the rest scored."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from devstack.generator import EventGenerator, Fractions, GeneratorConfig
from devstack.stack.process import wait_until
from models.anomaly import latest_model, model_input, model_version, version_of
from models.handler import NewestModelHandler
from streaming_analytics.events import Event, parse_event
from tests.unit.test_transforms_support import event_doc, fresh_metrics_per_bundle
from transforms import metrics
from transforms.records import Alert, DeadLetter
from transforms.scoring import INFERENCE_FAILED_REASON, RowHandler, ScoreEvents, alert_id
from transforms.sinks.convert import ALERT_FIELDS


def generated(count: int, *, seed: int) -> tuple[list[Event], set[str]]:
    """Valid events only, and the ids of the anomalous ones (the generator's ground truth)."""
    config = GeneratorConfig(seed=seed, fractions=dataclasses.replace(
        Fractions(), out_of_order=0.0, late=0.0, too_late=0.0, duplicate=0.0, malformed=0.0,
        anomalous=0.02))
    events, anomalous = [], set()
    for record in EventGenerator(config).records(count, start_ms=1_767_225_600_000, interval_ms=5):
        event = parse_event(record.value)
        events.append(event)
        if record.kind == "anomalous":
            anomalous.add(event.event_id)
    return events, anomalous


def test_alerts_are_exactly_the_anomalous_events(model_dir: Path) -> None:
    model = latest_model(model_dir)
    assert model is not None and version_of(model) == 1
    events, anomalous = generated(2000, seed=123)  # another seed than training's
    assert len(anomalous) == 40
    with TestPipeline() as p:
        alerts, dead_letters = (p | beam.Create(events)
                                | ScoreEvents(str(model), threshold=0.5, max_batch_size=128))
        assert_that(alerts | "Ids" >> beam.Map(lambda a: a.event_id), equal_to(sorted(anomalous)),
                    label="OneAlertPerAnomalousEvent")
        assert_that(alerts | "Shape" >> beam.Map(
            lambda a: (a.alert_id == alert_id(a.event_id), a.model_version, 0.5 <= a.score <= 1.0)),
            equal_to([(True, "v1", True)] * len(anomalous)), label="AlertFields")
        assert_that(dead_letters, equal_to([]), label="NoDeadLetters")


def test_threshold_must_be_a_score() -> None:
    with pytest.raises(ValueError, match="threshold"):
        ScoreEvents("m.keras", threshold=0.0)


def test_alert_ids_are_stable_and_versions_named() -> None:
    assert alert_id("e1") == alert_id("e1") != alert_id("e2")
    assert model_version("/x/anomaly-v12.keras") == "v12" and version_of("/x/other.keras") is None


def test_the_handler_switches_to_a_newer_version_in_place(model_dir: Path, tmp_path: Path) -> None:
    v1 = latest_model(model_dir)
    assert v1 is not None
    shutil.copy(v1, tmp_path / v1.name)
    handler = NewestModelHandler(str(tmp_path / v1.name), refresh_interval_s=0.05)
    live = handler.load_model()  # what RunInference caches once per worker process
    rows = [model_input([1.0, 2.0, 3.0, 0.1, 0.0, 1.0])]
    assert [Path(r.model_id or "").name for r in handler.run_inference(rows, live)] == ["anomaly-v1.keras"]
    shutil.copy(v1, tmp_path / "anomaly-v2.keras")

    def scored_by() -> list[str]:
        return [Path(r.model_id or "").name for r in handler.run_inference(rows, live)]

    wait_until(lambda: scored_by() == ["anomaly-v2.keras"], 10, "scoring with v2", interval_s=0.05)
    (tmp_path / "anomaly-v1.keras").unlink()  # an older version never comes back
    time.sleep(0.1)  # two refresh intervals: a negative check has no event to wait for
    assert scored_by() == ["anomaly-v2.keras"]


# --- a model that cannot score some inputs ----------------------------------------------------------
POISON_AGE_DAYS = 9999  # account_age_days of the events the failing model raises on
FAILING_NAMESPACE = "FailingModel"


class PoisonError(ValueError):
    """What the failing model raises."""


class FakeModel:
    """What the failing handler "loads" (RunInference shares it through a weak reference)."""

    path = "/models/anomaly-v7.keras"


class FailingOnPoison(ModelHandler[np.ndarray, PredictionResult, FakeModel]):
    """Scores every row 0.9, but raises for a whole batch that holds a poisoned row — as a model
    does when one input breaks it. Batches are exactly ``batch_size`` rows (the last may be short),
    so that good events share failing batches and must be scored again."""

    def __init__(self, batch_size: int) -> None:
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)

    def load_model(self) -> FakeModel:
        return FakeModel()

    def run_inference(self, batch: Sequence[np.ndarray], model: FakeModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        poisoned = model_input([POISON_AGE_DAYS])[0]
        if any(row[0] == poisoned for row in batch):
            raise PoisonError(f"cannot score a batch of {len(batch)} with a poisoned row")
        return [PredictionResult(row, np.array([0.9]), model.path)  # type: ignore[no-untyped-call]
                for row in batch]

    def get_metrics_namespace(self) -> str:
        return FAILING_NAMESPACE


class ScoreWithFailingModel(ScoreEvents):
    def model_handler(self, max_batch_size: int) -> RowHandler:
        return FailingOnPoison(max_batch_size)


def test_events_the_model_cannot_score_are_dead_letters_and_the_rest_are_scored() -> None:
    poison = {3, 20, 21, 41}
    events = []
    for i in range(48):
        doc = event_doc(f"e{i:02d}", i, 10.0)
        if i in poison:
            doc["features"]["account_age_days"] = POISON_AGE_DAYS
        events.append(parse_event(orjson.dumps(doc)))
    good = sorted(e.event_id for i, e in enumerate(events) if i not in poison)
    bad = sorted(e.event_id for i, e in enumerate(events) if i in poison)

    p = TestPipeline()
    alerts, dead_letters = p | beam.Create(events) | ScoreWithFailingModel(
        "unused.keras", threshold=0.5, max_batch_size=8)
    assert_that(alerts | "AlertIds" >> beam.Map(lambda a: (a.event_id, a.model_version)),
                equal_to([(e, "v7") for e in good]), label="EveryOtherEventScored")

    def letter(d: DeadLetter) -> tuple[str, str, bool, bool]:
        return (orjson.loads(d.raw or b"")["event_id"], d.reason_code,
                "PoisonError" in d.reason_detail and "cannot score" in d.reason_detail,
                d.topic is None and d.offset is None)

    assert_that(dead_letters | "Letters" >> beam.Map(letter),
                equal_to([(e, INFERENCE_FAILED_REASON, True, True) for e in bad]),
                label="PoisonedEventsRefused")
    with fresh_metrics_per_bundle():
        result = p.run()
        result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter())["counters"]

    def total(namespace: str, name: str, step: str = "") -> int:
        return sum(c.committed for c in counters if c.key.metric.namespace == namespace
                   and c.key.metric.name == name and step in c.key.step)

    assert total(metrics.NAMESPACE, metrics.INFERENCE_FAILED_EVENTS) == len(bad)
    assert total(metrics.NAMESPACE, metrics.EVENTS_SCORED) == len(good)
    # Good events that shared a batch with a poisoned one were scored on the second, one-by-one pass.
    assert total(FAILING_NAMESPACE, "num_inferences", step="RunInferenceOneByOne") > 0


def test_alerts_carry_the_fields_the_sinks_write() -> None:
    assert tuple(f.name for f in dataclasses.fields(Alert)) == ALERT_FIELDS
